//! Caller authentication: the projected service-account token in `authorization: Bearer`,
//! checked by the apiserver (TokenReview) for the `ambit-ca` audience. Answers are remembered
//! briefly per token and reviews are rate-limited, so callers cannot turn the controller into a
//! TokenReview flood against the apiserver.

use crate::config::ReviewRate;
use crate::metrics::Metrics;
use aws_lc_rs::digest::{SHA256, digest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long an authenticated token's review is reused. Short, because the apiserver's answer
/// can change (the bound pod deleted, the token revoked): this is how long a dead token may
/// still be honored.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at once; past it expired answers are dropped, then the oldest.
const REVIEW_CACHE_ENTRIES: usize = 4096;
/// How long a call waits for its turn at the rate limit before it is turned away.
const REVIEW_WAIT: Duration = Duration::from_secs(5);

/// `authentication.kubernetes.io/node-name` extra of pod-bound tokens.
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no bearer token: send the projected service-account token (audience {0}) as `authorization: Bearer <token>`"
    )]
    NoToken(&'static str),
    #[error("the token was rejected by TokenReview: {0}")]
    Rejected(String),
    #[error("the token is not for audience {expected} (it is for {actual:?})")]
    WrongAudience {
        expected: &'static str,
        actual: Vec<String>,
    },
    #[error("the token does not belong to a service account (user {0:?})")]
    NotAServiceAccount(String),
    #[error("TokenReview failed: {0}")]
    Review(#[from] kube::Error),
    #[error("too many token reviews at once (over {0}/s); retry shortly")]
    Busy(u32),
}

impl AuthError {
    /// The gRPC status for a caller turned away: unavailable (retry) when the controller is
    /// busy or the apiserver failed, unauthenticated otherwise.
    pub fn status(&self) -> tonic::Status {
        match self {
            AuthError::Busy(_) | AuthError::Review(_) => {
                tonic::Status::unavailable(self.to_string())
            }
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// Who called, as the apiserver vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// Node of the pod the token is bound to, when the token says.
    pub node: Option<String>,
    /// Pod the token is bound to, when the token says.
    pub pod: Option<String>,
}

#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    audience: &'static str,
    reviewed: Arc<Mutex<HashMap<TokenHash, (Instant, Caller)>>>,
    limit: Arc<DefaultDirectRateLimiter>,
    rate: ReviewRate,
    metrics: Arc<Metrics>,
}

/// SHA-256 of a token: what the cache keeps instead of the token.
type TokenHash = [u8; 32];

fn token_hash(token: &str) -> TokenHash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    hash
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    pub fn new(
        client: kube::Client,
        audience: &'static str,
        rate: ReviewRate,
        metrics: Arc<Metrics>,
    ) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            client,
            audience,
            reviewed: Arc::default(),
            limit: Arc::new(RateLimiter::direct(quota)),
            rate,
            metrics,
        }
    }

    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let token = bearer(request.metadata()).ok_or(AuthError::NoToken(self.audience))?;
        self.review(token).await
    }

    /// The caller `token` belongs to: remembered for [`REVIEW_TTL`] once authenticated,
    /// otherwise a TokenReview, when the rate limit lets one through within [`REVIEW_WAIT`]
    /// (counted as `limited` when it does not). Refusals are not remembered: a forged token
    /// costs a review, so the limit bounds them.
    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let hash = token_hash(token);
        if let Some(caller) = self.remembered(&hash) {
            self.metrics.token_review("cached");
            return Ok(caller);
        }
        if let Err(busy) = self.wait_for_turn().await {
            self.metrics.token_review("limited");
            return Err(busy);
        }
        let result = self.review_now(token).await;
        self.metrics.token_review(match &result {
            Ok(_) => "authenticated",
            Err(AuthError::Review(_)) => "error",
            Err(_) => "refused",
        });
        if let Ok(caller) = &result {
            self.remember(hash, caller.clone());
        }
        result
    }

    fn remembered(&self, hash: &TokenHash) -> Option<Caller> {
        let reviewed = self.reviewed.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, caller) = reviewed.get(hash)?;
        (at.elapsed() < REVIEW_TTL).then(|| caller.clone())
    }

    fn remember(&self, hash: TokenHash, caller: Caller) {
        let mut reviewed = self.reviewed.lock().unwrap_or_else(PoisonError::into_inner);
        if reviewed.len() >= REVIEW_CACHE_ENTRIES {
            reviewed.retain(|_, (at, _)| at.elapsed() < REVIEW_TTL);
        }
        if reviewed.len() >= REVIEW_CACHE_ENTRIES
            && let Some(oldest) = reviewed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| *k)
        {
            reviewed.remove(&oldest);
        }
        reviewed.insert(hash, (Instant::now(), caller));
    }

    async fn wait_for_turn(&self) -> Result<(), AuthError> {
        let give_up = Instant::now() + REVIEW_WAIT;
        loop {
            let Err(not_until) = self.limit.check() else {
                return Ok(());
            };
            let turn = Instant::now() + not_until.wait_time_from(DefaultClock::default().now());
            if turn > give_up {
                let per_second = self.rate.per_second.get();
                tracing::warn!(
                    per_second,
                    "token reviews over their rate limit; turning a caller away"
                );
                return Err(AuthError::Busy(per_second));
            }
            tokio::time::sleep_until(turn).await;
        }
    }

    async fn review_now(&self, token: &str) -> Result<Caller, AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.to_string()]),
            },
            ..Default::default()
        };
        let status = api
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| a == self.audience) {
            return Err(AuthError::WrongAudience {
                expected: self.audience,
                actual: audiences,
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        caller_of(&username, first(EXTRA_NODE_NAME), first(EXTRA_POD_NAME))
    }
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let v = metadata.get("authorization")?.to_str().ok()?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    (!token.trim().is_empty()).then(|| token.trim())
}

/// `system:serviceaccount:<ns>:<sa>` -> caller.
fn caller_of(
    username: &str,
    node: Option<String>,
    pod: Option<String>,
) -> Result<Caller, AuthError> {
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(|| AuthError::NotAServiceAccount(username.to_string()))?;
    match rest.split_once(':') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => Ok(Caller {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
            node,
            pod,
        }),
        _ => Err(AuthError::NotAServiceAccount(username.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn service_account_usernames() {
        let c = caller_of(
            "system:serviceaccount:ambit-system:ambit-tunnel",
            Some("n1".into()),
            None,
        )
        .unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str()),
            ("ambit-system", "ambit-tunnel")
        );
        assert_eq!(c.node.as_deref(), Some("n1"));
        for bad in [
            "admin",
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "system:serviceaccount:a:b:c",
        ] {
            assert!(caller_of(bad, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_header() {
        let mut r = tonic::Request::new(());
        assert_eq!(bearer(r.metadata()), None);
        r.metadata_mut()
            .insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(r.metadata()), Some("abc"));
        r.metadata_mut()
            .insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(r.metadata()), None);
    }
}
