//! Caller authentication: the projected service-account token in `authorization: Bearer`,
//! checked by the apiserver (TokenReview) for the `ambit-ca` audience.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

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
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: &'static str) -> Self {
        Self { client, audience }
    }

    pub async fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Caller, AuthError> {
        let token = bearer(request.metadata()).ok_or(AuthError::NoToken(self.audience))?;
        self.review(token).await
    }

    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
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
