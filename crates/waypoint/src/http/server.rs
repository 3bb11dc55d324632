//! Serving HTTP on one accepted HBONE tunnel, with explicit bounds against hostile clients:
//! header size and count (431 past them), header read time (slowloris), HTTP/2 concurrent
//! streams, header list size (CONTINUATION floods), reset floods; and a graceful close
//! (GOAWAY / `Connection: close`) when the waypoint drains.
//!
//! hyper's header read timeout only starts once HTTP/1.1 has been told from HTTP/2, which takes
//! the client's first bytes, and HTTP/2 has none at all: a tunnel that sends nothing, trickles
//! the HTTP/2 preface or never ends its first HEADERS would be held forever. So the first
//! request of every tunnel must arrive within the header read timeout too; past it the
//! connection is closed gracefully (an HTTP/2 client gets GOAWAY, so an eager client that
//! connected early knows nothing was lost), and cut if the client has not gone one more
//! timeout later (a hostile one need not answer the GOAWAY's PING).

use super::{Downstream, Stack};
use crate::destination::Protocol;
use ambit_hbone::H2Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt;

/// Bounds of the downstream HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request head (line and headers) bytes buffered for HTTP/1.1; past it: 431.
    pub max_head_bytes: usize,
    /// Headers per HTTP/1.1 request; past it: 431.
    pub max_headers: usize,
    /// Time for a request's headers to arrive (slowloris); also for a tunnel's first request,
    /// in either protocol.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// Decoded HTTP/2 header list bytes (CONTINUATION floods are cut here).
    pub max_header_list_bytes: u32,
    /// Streams a client may reset before they are accepted (rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for the client's protocol errors before it closes.
    pub max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_header_list_bytes: 64 * 1024,
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 256,
        }
    }
}

fn builder(limits: &Limits, protocol: Protocol) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_head_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams);
    if protocol.upstream_h2() {
        builder = builder.http2_only();
    }
    builder
}

/// Serves requests on `stream` through `stack` until the client closes, or until `drain`
/// flips, when the connection is closed gracefully.
pub async fn serve(
    stream: H2Stream,
    downstream: Downstream,
    stack: Stack,
    limits: &Limits,
    mut drain: watch::Receiver<bool>,
) {
    let protocol = downstream.destination.protocol;
    let requested = Arc::new(AtomicBool::new(false));
    let first = requested.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        first.store(true, Ordering::Relaxed);
        let mut request = request.map(|body| body.boxed());
        request.extensions_mut().insert(downstream.clone());
        stack.clone().oneshot(request)
    });
    let builder = builder(limits, protocol);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let mut waiting_first = true;
    let mut closing_idle = false;
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "downstream HTTP connection ended with an error");
                }
                return;
            }
            () = first_request.as_mut(), if waiting_first => {
                if requested.load(Ordering::Relaxed) {
                    // A request came (perhaps just as the GOAWAY left): hyper takes it from here.
                    waiting_first = false;
                } else if !closing_idle {
                    tracing::debug!(timeout_ms = limits.header_read_timeout.as_millis() as u64, "no request within the header read timeout; closing the tunnel");
                    closing_idle = true;
                    connection.as_mut().graceful_shutdown();
                    first_request.as_mut().reset(tokio::time::Instant::now() + limits.header_read_timeout);
                } else {
                    tracing::debug!("the client kept an idle tunnel after GOAWAY; cutting it");
                    return;
                }
            }
            changed = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
