//! HTTP to endpoints over HBONE, pooled. Each upstream HTTP connection is one CONNECT tunnel to
//! the pod's `IP:15008`, multiplexed with others on the waypoint's pooled TLS connections to
//! that pod's node tunnel, as the waypoint's own identity, expecting the pod's; or, for a
//! backend behind its own waypoint, to that waypoint, expecting its identity, with the backend
//! Service's address as the target.
//!
//! - HTTP/2 (h2c, gRPC): one HTTP/2 connection per endpoint, shared by all requests.
//! - HTTP/1.1: idle keep-alive connections per endpoint, each reused once its response has
//!   been read to the end. A request on a pooled connection that closed before it was sent is
//!   retried once on a new connection: it never reached the app.
//!
//! Written on hyper's connection API rather than hyper-util's pooled `Client` because the
//! pool key must be the endpoint while the request keeps the client's `:authority`, and the
//! legacy client keys its pool by the request's authority.

use super::Body;
use crate::destination::Endpoint;
use ambit_hbone::{HboneError, HbonePool, PoolKey, TunnelHeaders};
use ambit_identity::SpiffeId;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;
/// An idle HTTP/1.1 connection older than this is closed rather than reused: apps commonly
/// time out idle keep-alive connections after 60 s or more.
const IDLE_H1_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("HBONE to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: HboneError,
    },
    #[error("HTTP handshake with {endpoint}: {source}")]
    Handshake {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {endpoint}: {source}")]
    Request {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether the endpoint could not be reached at all (503), rather than failed mid-request
    /// (502).
    pub fn unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }
}

fn handshake_error(endpoint: &Endpoint, source: hyper::Error) -> UpstreamError {
    UpstreamError::Handshake {
        endpoint: endpoint.addr,
        source,
    }
}

/// Drives an upstream connection until it closes.
fn spawn_connection<F>(connection: F, protocol: &'static str)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, protocol, "upstream connection ended");
        }
    });
}

struct IdleH1 {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

pub struct Upstreams {
    pool: HbonePool,
    local: SpiffeId,
    h1: Mutex<HashMap<SocketAddr, Vec<IdleH1>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
    /// Held while dialing an endpoint's HTTP/2 connection, so a burst makes one.
    h2_dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("local", &self.local)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No code path leaves these maps half-updated across a panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Upstreams {
    pub fn new(pool: HbonePool, local: SpiffeId) -> Self {
        Self {
            pool,
            local,
            h1: Mutex::default(),
            h2: Mutex::default(),
            h2_dialing: Mutex::default(),
        }
    }

    /// The HBONE pool, for TCP forwarding.
    pub fn pool(&self) -> &HbonePool {
        &self.pool
    }

    async fn tunnel(
        &self,
        endpoint: &Endpoint,
    ) -> Result<TokioIo<ambit_hbone::H2Stream>, UpstreamError> {
        let key = PoolKey::new(
            self.local.clone(),
            endpoint.hbone_peer(),
            vec![endpoint.identity.clone()],
        );
        let stream = self
            .pool
            .connect(&key, endpoint.addr, &TunnelHeaders::default())
            .await
            .map_err(|source| UpstreamError::Connect {
                endpoint: endpoint.addr,
                source,
            })?;
        Ok(TokioIo::new(stream))
    }

    /// Sends `request` (origin-form URI) over HTTP/1.1. Upgrades (WebSocket) are possible:
    /// the connection of a `101` response is not reused.
    pub async fn send_h1(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let request_error = |source| UpstreamError::Request {
            endpoint: endpoint.addr,
            source,
        };
        while let Some(mut sender) = self.idle_h1(endpoint.addr) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.recycle_h1(endpoint.addr, sender, &response);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the connection had closed. Try the next one.
                    Some(back) => request = back,
                    None => return Err(request_error(e.into_error())),
                },
            }
        }
        let io = self.tunnel(endpoint).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| handshake_error(endpoint, source))?;
        spawn_connection(connection.with_upgrades(), "HTTP/1.1");
        let response = sender.send_request(request).await.map_err(request_error)?;
        self.recycle_h1(endpoint.addr, sender, &response);
        Ok(response)
    }

    fn idle_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.h1);
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < IDLE_H1_TIMEOUT && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns the connection to the idle list once the response has been read to the end.
    fn recycle_h1(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut sender: http1::SendRequest<Body>,
        response: &http::Response<Incoming>,
    ) {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(this) = this.upgrade() else { return };
            let mut idle = lock(&this.h1);
            let list = idle.entry(addr).or_default();
            if list.len() < MAX_IDLE_H1 {
                list.push(IdleH1 {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    /// Sends `request` (absolute URI) over the endpoint's HTTP/2 connection.
    pub async fn send_h2(
        &self,
        endpoint: &Endpoint,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut sender = self.h2_sender(endpoint).await?;
        sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Request {
                endpoint: endpoint.addr,
                source,
            })
    }

    fn live_h2(&self, addr: SocketAddr) -> Option<http2::SendRequest<Body>> {
        let mut map = lock(&self.h2);
        match map.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(&addr);
                None
            }
            None => None,
        }
    }

    async fn h2_sender(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(s) = self.live_h2(endpoint.addr) {
            return Ok(s);
        }
        let dialing = lock(&self.h2_dialing)
            .entry(endpoint.addr)
            .or_default()
            .clone();
        let _dialing = dialing.lock().await;
        if let Some(s) = self.live_h2(endpoint.addr) {
            return Ok(s);
        }
        let io = self.tunnel(endpoint).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| handshake_error(endpoint, source))?;
        spawn_connection(connection, "HTTP/2");
        lock(&self.h2).insert(endpoint.addr, sender.clone());
        Ok(sender)
    }
}
