//! Endpoint choice: the destination's ready endpoints of the served account (or of the
//! backend Service a route chose), read from the
//! current model per request (so a long keep-alive connection follows scale-ups and
//! readiness), picked by power of two choices on outstanding requests. A request holds its
//! endpoint's slot until its response has streamed to the end.

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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Outstanding requests per endpoint.
#[derive(Debug, Default)]
pub struct Load {
    outstanding: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One outstanding request; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Load {
    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut map = self
            .outstanding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Endpoints come and go: forget idle counters of gone ones once the map grows.
        if map.len() > 4096 {
            map.retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
        }
        map.entry(addr).or_default().clone()
    }

    pub fn outstanding(&self, addr: SocketAddr) -> usize {
        self.counter(addr).load(Ordering::Acquire)
    }

    /// Picks among `endpoints` (power of two choices, least outstanding) and takes a slot.
    pub fn pick(&self, endpoints: &[Endpoint]) -> Option<(usize, Slot)> {
        let chosen = match endpoints.len() {
            0 => return None,
            1 => 0,
            n => {
                let a = fastrand::usize(..n);
                // A second, different candidate.
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                if self.outstanding(endpoints[b].addr) < self.outstanding(endpoints[a].addr) {
                    b
                } else {
                    a
                }
            }
        };
        let counter = self.counter(endpoints[chosen].addr);
        counter.fetch_add(1, Ordering::AcqRel);
        Some((chosen, Slot(counter)))
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
        }
    }

    #[test]
    fn two_choices_avoid_the_busy_endpoint_and_slots_are_released() {
        let load = Load::default();
        let eps = [endpoint(1), endpoint(2)];
        // Endpoint 1 is busy: with two endpoints both are always candidates.
        let busy: Vec<Slot> = (0..3)
            .map(|_| {
                let c = load.counter(eps[0].addr);
                c.fetch_add(1, Ordering::AcqRel);
                Slot(c)
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
}
