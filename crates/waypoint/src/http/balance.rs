//! Endpoint choice: the destination's ready endpoints of the served account (or of the
//! backend Service a route chose), read from the current model per request (so a long
//! keep-alive connection follows scale-ups and readiness), picked by power of two choices on
//! outstanding requests. A request holds its endpoint's slot until its response has streamed
//! to the end.
//!
//! Outlier detection: an endpoint that answers 5xx (or cannot be reached) five times in a row
//! is ejected — not picked — for 30 s, longer each time it is ejected again (up to 5 min),
//! and back once that time is over. Never all of them: when every endpoint is ejected, all are
//! candidates again, since a guess beats a certain failure.

use super::body::Observed;
use super::route::Routed;
use super::{
    Downstream, GrpcCode, Inner, Picked, Request, Response, ResponseFuture, is_grpc, local_response,
};
use crate::destination::{self, Endpoint};
use crate::state::Shared;
use http::StatusCode;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// Consecutive failures that eject an endpoint.
const EJECT_AFTER_FAILURES: u32 = 5;
const BASE_EJECTION: Duration = Duration::from_secs(30);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Outstanding requests and health per endpoint.
#[derive(Debug, Default)]
pub struct Load {
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

#[derive(Debug, Default)]
struct EndpointState {
    outstanding: AtomicUsize,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    /// Times ejected so far: each ejection lasts longer.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl EndpointState {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|until| now < until)
    }
}

/// One outstanding request; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<EndpointState>);

impl Slot {
    /// Records how the request ended: a failure counts toward ejection, a success clears the
    /// count.
    pub fn outcome(&self, failed: bool) {
        let mut health = self.0.health();
        if !failed {
            health.consecutive_failures = 0;
            return;
        }
        health.consecutive_failures += 1;
        if health.consecutive_failures >= EJECT_AFTER_FAILURES {
            let ejection = BASE_EJECTION
                .saturating_mul(health.ejections.saturating_add(1))
                .min(MAX_EJECTION);
            health.ejected_until = Some(Instant::now() + ejection);
            health.ejections += 1;
            health.consecutive_failures = 0;
            tracing::info!(
                ejected_for_s = ejection.as_secs(),
                "endpoint ejected after consecutive failures"
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Load {
    fn state(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Endpoints come and go: forget idle, healthy ones that are gone once the map grows.
        if map.len() > 4096 {
            let now = Instant::now();
            map.retain(|_, e| {
                e.outstanding.load(Ordering::Acquire) > 0
                    || Arc::strong_count(e) > 1
                    || e.ejected(now)
            });
        }
        map.entry(addr).or_default().clone()
    }

    pub fn outstanding(&self, addr: SocketAddr) -> usize {
        self.state(addr).outstanding.load(Ordering::Acquire)
    }

    /// Picks among `endpoints` that are not ejected (among all when every one is), by power of
    /// two choices on outstanding requests, and takes a slot.
    pub fn pick(&self, endpoints: &[Endpoint]) -> Option<(usize, Slot)> {
        let now = Instant::now();
        let states: Vec<Arc<EndpointState>> =
            endpoints.iter().map(|e| self.state(e.addr)).collect();
        let mut candidates: Vec<usize> = (0..endpoints.len())
            .filter(|&i| !states[i].ejected(now))
            .collect();
        if candidates.is_empty() {
            candidates = (0..endpoints.len()).collect();
        }
        let load = |i: usize| states[i].outstanding.load(Ordering::Acquire);
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let a = fastrand::usize(..n);
                // A second, different candidate.
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                if load(b) < load(a) { b } else { a }
            }
        };
        let state = states[chosen].clone();
        state.outstanding.fetch_add(1, Ordering::AcqRel);
        Some((chosen, Slot(state)))
    }
}

#[derive(Debug, Clone)]
pub struct BalanceLayer {
    shared: Arc<Shared>,
    load: Arc<Load>,
}

impl BalanceLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            load: Arc::default(),
        }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            shared: self.shared.clone(),
            load: self.load.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Balance<S> {
    inner: S,
    shared: Arc<Shared>,
    load: Arc<Load>,
}

impl<S: Inner> Service<Request> for Balance<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let Some(downstream) = request.extensions().get::<Downstream>().cloned() else {
            let r = local_response(
                grpc,
                StatusCode::INTERNAL_SERVER_ERROR,
                GrpcCode::Unavailable,
                "request without a connection",
            );
            return Box::pin(async { Ok(r) });
        };
        let mesh = self.shared.mesh();
        let (endpoints, protocol) = match request.extensions().get::<Routed>() {
            Some(routed) => (
                destination::backend_endpoints(&mesh, self.shared.served(), &routed.target),
                routed.protocol,
            ),
            None => (
                destination::endpoints(&mesh, self.shared.served(), &downstream.destination.target),
                downstream.destination.protocol,
            ),
        };
        let Some((i, slot)) = self.load.pick(&endpoints) else {
            let r = local_response(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                GrpcCode::Unavailable,
                &format!("no ready endpoint for {}", downstream.destination.authority),
            );
            return Box::pin(async { Ok(r) });
        };
        let picked = Picked {
            mesh,
            endpoint: endpoints[i].clone(),
            protocol,
        };
        request.extensions_mut().insert(picked.clone());
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            slot.outcome(response.status().is_server_error());
            response.extensions_mut().insert(picked);
            Ok(response.map(|body| Observed::new(body, Box::new(move |_, _| drop(slot))).boxed()))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn endpoint(i: u8) -> Endpoint {
        Endpoint {
            uid: format!("p{i}"),
            addr: SocketAddr::from(([10, 0, 0, i], 8080)),
            identity: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
            waypoint: None,
        }
    }

    #[test]
    fn two_choices_avoid_the_busy_endpoint_and_slots_are_released() {
        let load = Load::default();
        let eps = [endpoint(1), endpoint(2)];
        // Endpoint 1 is busy: with two endpoints both are always candidates.
        let busy: Vec<Slot> = (0..3)
            .map(|_| {
                let state = load.state(eps[0].addr);
                state.outstanding.fetch_add(1, Ordering::AcqRel);
                Slot(state)
            })
            .collect();
        for _ in 0..20 {
            let (i, slot) = load.pick(&eps).unwrap();
            assert_eq!(i, 1);
            drop(slot);
        }
        drop(busy);
        assert_eq!(load.outstanding(eps[0].addr), 0);
        assert!(load.pick(&[]).is_none());
        let (i, _slot) = load.pick(&eps[..1]).unwrap();
        assert_eq!(i, 0);
        assert_eq!(load.outstanding(eps[0].addr), 1);
    }

    #[test]
    fn spreads_over_idle_endpoints() {
        let load = Load::default();
        let eps: Vec<Endpoint> = (1..=4).map(endpoint).collect();
        let mut seen = [0usize; 4];
        let mut held = Vec::new();
        for _ in 0..400 {
            let (i, slot) = load.pick(&eps).unwrap();
            seen[i] += 1;
            held.push(slot);
        }
        // Least outstanding keeps them within a few of each other.
        let (min, max) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        assert!(max - min <= 8, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_is_ejected_for_a_while_and_never_all_of_them() {
        let load = Load::default();
        let eps: Vec<Endpoint> = (1..=2).map(endpoint).collect();
        let fail = |i: usize| {
            let state = load.state(eps[i].addr);
            state.outstanding.fetch_add(1, Ordering::AcqRel);
            Slot(state).outcome(true);
        };
        // Four failures and a success: not consecutive, no ejection.
        for _ in 0..4 {
            fail(0);
        }
        load.pick(&eps[..1]).unwrap().1.outcome(false);
        fail(0);
        assert!((0..50).any(|_| load.pick(&eps).unwrap().0 == 0));
        for _ in 0..4 {
            fail(0);
        }
        // Five in a row: ejected, the other endpoint takes everything.
        assert!((0..50).all(|_| load.pick(&eps).unwrap().0 == 1));
        // Both ejected (endpoint 1 ten seconds later): both are candidates again.
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            fail(1);
        }
        let picked: std::collections::BTreeSet<usize> =
            (0..50).map(|_| load.pick(&eps).unwrap().0).collect();
        assert_eq!(picked.len(), 2, "never all ejected: {picked:?}");
        // Endpoint 0 returns after its ejection time (endpoint 1, ejected later, not yet).
        tokio::time::advance(BASE_EJECTION - Duration::from_secs(10)).await;
        assert!((0..50).all(|_| load.pick(&eps).unwrap().0 == 0));
        // Ejected again, it stays out twice as long.
        for _ in 0..5 {
            fail(0);
        }
        tokio::time::advance(BASE_EJECTION).await;
        assert!(load.state(eps[0].addr).ejected(Instant::now()));
        tokio::time::advance(BASE_EJECTION).await;
        assert!(!load.state(eps[0].addr).ejected(Instant::now()));
    }
}
