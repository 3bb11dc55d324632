//! The request path: hyper serves each HBONE tunnel of an HTTP destination, and every request
//! goes through tower layers, outermost first:
//!
//! 1. [`telemetry`]: `traceparent`, the request metrics and the access log line;
//! 2. [`route`]: the HTTPRoute/GRPCRoute rule: backend Service, filters, redirect, mirrors;
//! 3. [`retry`]: the rule's timeouts and retries, under a retry budget;
//! 4. [`balance`]: the endpoint (power of two choices, least outstanding requests), or the
//!    backend's own waypoint when a route sends to pods behind one;
//! 5. [`authn`]: the end user's JWT, under the rules of the endpoint's workload;
//! 6. [`authz`]: L4 and L7 authorization with the client's identity and the end user,
//!    against that endpoint;
//! 7. [`extauthz`]: the external authorization providers of matching CUSTOM policies;
//! 8. [`forward`]: HTTP to the endpoint over pooled HBONE ([`upstream`]).
//!
//! Every layer answers errors as responses, so the stack never fails.

pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod extauthz;
pub mod forward;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod server;
pub mod span;
pub mod telemetry;
pub mod upstream;

use crate::destination::{Destination, Endpoint, Protocol};
use crate::state::Shared;
use ambit_identity::SpiffeId;
use ambit_mesh::Mesh;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub type Body = BoxBody<Bytes, hyper::Error>;
pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;
/// The whole stack as one cloneable service.
pub type Stack = BoxCloneSyncService<Request, Response, Infallible>;

/// The connection a request came on, in every request's extensions.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's verified identity (its tunnel's certificate).
    pub peer: SpiffeId,
    pub peer_addr: SocketAddr,
    pub destination: Arc<Destination>,
}

/// The endpoint chosen for a request, and the model it was chosen from: in the request's
/// extensions after `balance`, and in the response's for telemetry.
#[derive(Debug, Clone)]
pub struct Picked {
    pub mesh: Arc<Mesh>,
    pub endpoint: Endpoint,
    /// What the endpoint's Service port speaks: how the request goes upstream.
    pub protocol: Protocol,
}

/// The stack for `shared`'s destinations, sending through `upstreams`.
pub fn stack(shared: Arc<Shared>, upstreams: Arc<upstream::Upstreams>) -> Stack {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(telemetry::TelemetryLayer::new(shared.clone()))
            .layer(route::RouteLayer::new(shared.clone()))
            .layer(ratelimit::RateLimitLayer::new(shared.clone()))
            .layer(retry::RetryLayer::new(shared.metrics.clone()))
            .layer(balance::BalanceLayer::new(shared.clone()))
            .layer(authn::AuthnLayer::new(shared.clone()))
            .layer(authz::AuthzLayer)
            .layer(extauthz::ExtAuthzLayer::new(shared))
            .service(forward::Forward::new(upstreams)),
    )
}

/// What every layer wraps: the rest of the stack.
pub trait Inner:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// The future every layer returns.
pub type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

/// The authority the client addressed: the URI's (HTTP/2 `:authority`), else `Host`
/// (HTTP/1.1).
pub fn authority<B>(request: &http::Request<B>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// gRPC status codes the waypoint answers with itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The status a gRPC client reads from an HTTP status (gRPC's
    /// `doc/http-grpc-status-mapping.md`).
    pub fn from_http(status: u16) -> Self {
        match status {
            400 => Self::Internal,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::Unimplemented,
            429 | 502 | 503 | 504 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }
}

/// An answer of the waypoint's own: for gRPC a trailers-only response with the status (HTTP
/// 200, as gRPC requires), for HTTP `status` with a short text body.
pub fn local_response(grpc: bool, status: StatusCode, code: GrpcCode, message: &str) -> Response {
    let mut response = if grpc {
        let mut r = http::Response::new(empty());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code as u32));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = http::Response::new(full(format!("{message}\n")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    response
        .headers_mut()
        .insert("server", HeaderValue::from_static("ambit-waypoint"));
    response
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest percent-encoded.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grpc_denials_are_trailers_only_with_a_status() {
        let r = local_response(
            true,
            StatusCode::FORBIDDEN,
            GrpcCode::PermissionDenied,
            "denied by policy ns/déjà",
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "denied by policy ns/d%C3%A9j%C3%A0"
        );
        let r = local_response(
            false,
            StatusCode::FORBIDDEN,
            GrpcCode::PermissionDenied,
            "denied",
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get("grpc-status").is_none());
    }
}
