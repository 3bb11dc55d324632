//! Local rate limits (RateLimitPolicy) on the destination Service or on the route a request
//! matched: past its quota a request is answered 429 with `retry-after` (gRPC
//! RESOURCE_EXHAUSTED) and goes no further. Local to this replica: N waypoint replicas let N
//! times the quota through, which the docs say.
//!
//! The limiters are `governor`'s (GCRA: a burst of `burst`, then one request per
//! `interval / requests`). A limiter lives as long as its policy keeps the same quota, so a
//! config delta that changes nothing about it does not refill it.

use super::route::{Mirrored, RouteRef};
use super::{
    Downstream, GrpcCode, Inner, Request, Response, ResponseFuture, is_grpc, local_response,
};
use crate::destination::Target;
use crate::state::Shared;
use ambit_mesh::{RateLimit, RateLimitTarget};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, StatusCode};
use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// The limiters of the policies seen so far, by `namespace/name`, with the quota each was made
/// for.
#[derive(Debug, Default)]
pub struct Limiters {
    by_policy: Mutex<HashMap<String, (Quota, Arc<DefaultDirectRateLimiter>)>>,
}

impl Limiters {
    /// The limiter of `policy`, made anew when its quota changed. `None` for a policy whose
    /// quota cannot be (no requests, no interval): it limits nothing.
    fn limiter(&self, policy: &RateLimit) -> Option<Arc<DefaultDirectRateLimiter>> {
        let quota = quota(policy)?;
        let key = format!("{}/{}", policy.namespace, policy.name);
        let mut by_policy = self
            .by_policy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = by_policy
            .entry(key)
            .or_insert_with(|| (quota, Arc::new(RateLimiter::direct(quota))));
        if entry.0 != quota {
            *entry = (quota, Arc::new(RateLimiter::direct(quota)));
        }
        Some(entry.1.clone())
    }

    /// Drops the limiters of policies no longer in `current`.
    fn retain(&self, current: &[RateLimit]) {
        let mut by_policy = self
            .by_policy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if by_policy.len() > current.len() {
            by_policy.retain(|key, _| {
                current
                    .iter()
                    .any(|p| key == &format!("{}/{}", p.namespace, p.name))
            });
        }
    }
}

/// `requests` per `interval_ms`, in bursts of `burst` (at least `requests`).
fn quota(policy: &RateLimit) -> Option<Quota> {
    if policy.requests == 0 || policy.interval_ms == 0 {
        return None;
    }
    let period =
        (Duration::from_millis(policy.interval_ms) / policy.requests).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(policy.burst.max(policy.requests))?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// Whether `policy` applies to a request to `target` that matched `route`.
fn applies(policy: &RateLimit, target: &Target, route: Option<&RouteRef>) -> bool {
    match &policy.target {
        RateLimitTarget::Service(name) => matches!(
            target,
            Target::Service { namespace, name: service, .. }
                if *namespace == policy.namespace && service == name
        ),
        RateLimitTarget::HttpRoute(name) | RateLimitTarget::GrpcRoute(name) => {
            route.is_some_and(|r| {
                r.namespace == policy.namespace
                    && r.name == *name
                    && r.grpc == matches!(policy.target, RateLimitTarget::GrpcRoute(_))
            })
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
    limiters: Arc<Limiters>,
}

impl RateLimitLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            limiters: Arc::default(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            shared: self.shared.clone(),
            limiters: self.limiters.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    shared: Arc<Shared>,
    limiters: Arc<Limiters>,
}

impl<S: Inner> Service<Request> for RateLimited<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let mesh = self.shared.mesh();
        let policies = &mesh.config().rate_limits;
        if policies.is_empty() {
            return Box::pin(self.inner.call(request));
        }
        self.limiters.retain(policies);
        let Some(downstream) = request.extensions().get::<Downstream>() else {
            return Box::pin(self.inner.call(request));
        };
        if request.extensions().get::<Mirrored>().is_some() {
            // A copy: it must not spend the quota of the requests it copies.
            return Box::pin(self.inner.call(request));
        }
        let route = request.extensions().get::<RouteRef>();
        let target = &downstream.destination.target;
        for policy in policies.iter().filter(|p| applies(p, target, route)) {
            let Some(limiter) = self.limiters.limiter(policy) else {
                continue;
            };
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let mut response = local_response(
                    is_grpc(request.headers()),
                    StatusCode::TOO_MANY_REQUESTS,
                    GrpcCode::ResourceExhausted,
                    &format!("rate limited by {}/{}", policy.namespace, policy.name),
                );
                // Whole seconds, rounded up (RFC 9110 §10.2.3).
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
                return Box::pin(async { Ok(response) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(target: RateLimitTarget, requests: u32, interval_ms: u64, burst: u32) -> RateLimit {
        RateLimit {
            name: "limit".into(),
            namespace: "shop".into(),
            target,
            requests,
            interval_ms,
            burst,
        }
    }

    fn service(name: &str) -> Target {
        Target::Service {
            namespace: "shop".into(),
            name: name.into(),
            port: 80,
        }
    }

    #[test]
    fn a_quota_lets_its_burst_through_then_refuses() {
        let limiters = Limiters::default();
        let p = policy(RateLimitTarget::Service("back".into()), 5, 60_000, 0);
        let limiter = limiters.limiter(&p).unwrap();
        assert_eq!((0..20).filter(|_| limiter.check().is_ok()).count(), 5);
        // The same quota keeps its limiter (and what it has counted); a new quota starts over.
        assert!(limiters.limiter(&p).unwrap().check().is_err());
        let bigger = policy(RateLimitTarget::Service("back".into()), 5, 60_000, 8);
        let limiter = limiters.limiter(&bigger).unwrap();
        assert_eq!((0..20).filter(|_| limiter.check().is_ok()).count(), 8);
        // A quota of nothing limits nothing.
        assert!(
            limiters
                .limiter(&policy(RateLimitTarget::Service("back".into()), 0, 1000, 0))
                .is_none()
        );
        assert!(
            limiters
                .limiter(&policy(RateLimitTarget::Service("back".into()), 1, 0, 0))
                .is_none()
        );
    }

    #[test]
    fn policies_apply_to_their_service_or_route_only() {
        let on_service = policy(RateLimitTarget::Service("back".into()), 1, 1000, 0);
        assert!(applies(&on_service, &service("back"), None));
        assert!(!applies(&on_service, &service("front"), None));
        let route = RouteRef {
            namespace: "shop".into(),
            name: "canary".into(),
            grpc: false,
        };
        let on_route = policy(RateLimitTarget::HttpRoute("canary".into()), 1, 1000, 0);
        assert!(applies(&on_route, &service("back"), Some(&route)));
        assert!(!applies(&on_route, &service("back"), None));
        let on_grpc_route = policy(RateLimitTarget::GrpcRoute("canary".into()), 1, 1000, 0);
        assert!(!applies(&on_grpc_route, &service("back"), Some(&route)));
    }
}
