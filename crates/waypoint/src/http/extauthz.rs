//! External authorization per request: when `authz` found CUSTOM policies matching the request
//! (and DENY/ALLOW policies let it through), it leaves [`Ask`] with their providers, and this
//! layer asks each one (`ambit-extauthz`: Envoy's ext_authz v3, gRPC or HTTP) before the
//! request goes on. A denial is answered with the provider's status, headers and body (gRPC
//! clients get the matching `grpc-status`); an allowance applies the provider's header changes
//! to the request and adds its response headers to the client's answer. A provider that cannot
//! answer in its timeout leads to its failure mode (closed: `status_on_error`; open: on).
//!
//! The provider's server is the one call a waypoint makes besides HBONE: it dials
//! `service:port` in plain gRPC (HTTP/2) or HTTP/1.1, pooled per provider. Under a retrying
//! route each attempt is checked again (each may reach another workload).

use super::{
    Body, Downstream, GrpcCode, Inner, Picked, Request, Response, ResponseFuture, authority, full,
    is_grpc, local_response,
};
use crate::state::Shared;
use ambit_extauthz::{CheckInput, Clients, Decision, Denied, Peer};
use ambit_policy::ExtAuthzProvider;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The providers to ask about a request, in the request's extensions (set by `authz`).
#[derive(Debug, Clone)]
pub struct Ask(pub Vec<String>);

#[derive(Debug, Clone)]
pub struct ExtAuthzLayer {
    shared: Arc<Shared>,
    clients: Arc<Clients>,
}

impl ExtAuthzLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            clients: Arc::default(),
        }
    }
}

impl<S> Layer<S> for ExtAuthzLayer {
    type Service = ExtAuthz<S>;
    fn layer(&self, inner: S) -> ExtAuthz<S> {
        ExtAuthz {
            inner,
            shared: self.shared.clone(),
            clients: self.clients.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtAuthz<S> {
    inner: S,
    shared: Arc<Shared>,
    clients: Arc<Clients>,
}

impl<S: Inner> Service<Request> for ExtAuthz<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let Some(Ask(providers)) = request.extensions_mut().remove::<Ask>() else {
            return Box::pin(self.inner.call(request));
        };
        // The clone takes the place of the service that was polled ready.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        let clients = self.clients.clone();
        Box::pin(async move {
            match check(&shared, &clients, &providers, request).await {
                Ok((request, downstream)) => {
                    let mut inner = inner;
                    let mut response = inner.call(request).await?;
                    for (name, value) in downstream {
                        response.headers_mut().append(name, value);
                    }
                    Ok(response)
                }
                Err(response) => Ok(response),
            }
        })
    }
}

/// Asks every provider in turn; the request (with their header changes) and the headers for
/// the client's response, or the answer that ends the request.
async fn check(
    shared: &Shared,
    clients: &Clients,
    providers: &[String],
    request: Request,
) -> Result<(Request, Vec<(HeaderName, HeaderValue)>), Response> {
    let grpc = is_grpc(request.headers());
    let refuse = |status, message: &str| local_response(grpc, status, grpc_code(status), message);
    let (Some(downstream), Some(picked)) = (
        request.extensions().get::<Downstream>().cloned(),
        request.extensions().get::<Picked>().cloned(),
    ) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "request without a connection or an endpoint",
        ));
    };
    let host = authority(&request).unwrap_or_default().to_owned();
    let (mut parts, body) = request.into_parts();
    let wanted: Vec<&ExtAuthzProvider> = providers
        .iter()
        .filter_map(|name| picked.mesh.ext_authz_provider(name))
        .collect();
    let body_limit = wanted
        .iter()
        .filter_map(|p| p.include_request_body_in_check)
        .map(|b| b.max_request_bytes as usize)
        .max();
    let (body, buffered) = match body_limit {
        None => (body, None),
        Some(limit) => match Buffered::read(body, limit).await {
            Ok((body, buffered)) => (body, Some(buffered)),
            Err(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ));
            }
        },
    };
    let source = downstream.peer.to_string();
    let destination = picked.endpoint.identity.to_string();
    let size = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let mut to_client = Vec::new();
    let metrics = &shared.metrics;
    for name in providers {
        let Some(provider) = picked.mesh.ext_authz_provider(name) else {
            metrics.ext_authz(name, "error_denied", None);
            tracing::warn!(provider = %name, "a CUSTOM policy names an ext_authz provider the mesh does not declare: denied");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                &format!("RBAC: access denied: ext_authz provider {name} is not configured"),
            ));
        };
        let client = match clients.get(provider) {
            Ok(c) => c,
            Err(e) => {
                metrics.ext_authz(name, "error_denied", None);
                tracing::warn!(provider = %name, error = %e, "ext_authz provider unusable: denied");
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    &format!("ext_authz provider {name} is unusable"),
                ));
            }
        };
        let body = match (&provider.include_request_body_in_check, &buffered) {
            (Some(settings), Some(b)) => {
                let max = settings.max_request_bytes as usize;
                if b.data.len() > max && !settings.allow_partial_message {
                    metrics.ext_authz(name, "denied", None);
                    return Err(refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large for external authorization",
                    ));
                }
                let cut = b.data.len() > max || !b.complete;
                Some((&b.data[..b.data.len().min(max)], cut))
            }
            _ => None,
        };
        let input = CheckInput {
            source: Peer {
                principal: &source,
                address: downstream.peer_addr,
            },
            destination: Peer {
                principal: &destination,
                address: picked.endpoint.addr,
            },
            method: &parts.method,
            path: &path,
            host: &host,
            scheme: "http",
            version: parts.version,
            headers: &parts.headers,
            body,
            size,
        };
        let started = Instant::now();
        let checked = client.check(&input).await;
        metrics.ext_authz(name, checked.outcome.label(), Some(started.elapsed()));
        if let Some(e) = &checked.error {
            tracing::warn!(provider = %name, error = %e, outcome = checked.outcome.label(), "ext_authz provider failed");
        }
        match checked.decision {
            Decision::Allow(allowed) => {
                allowed.apply(&mut parts.headers);
                to_client.extend(allowed.downstream);
            }
            Decision::Deny(denied) => return Err(denial(grpc, denied)),
        }
    }
    Ok((http::Request::from_parts(parts, body), to_client))
}

/// The gRPC status a denial's HTTP status stands for (as Envoy maps local replies).
fn grpc_code(status: StatusCode) -> GrpcCode {
    match status {
        StatusCode::UNAUTHORIZED => GrpcCode::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => GrpcCode::Unavailable,
        _ => GrpcCode::PermissionDenied,
    }
}

/// The provider's denial as the client's answer.
fn denial(grpc: bool, denied: Denied) -> Response {
    let mut response = if grpc {
        let message = String::from_utf8_lossy(&denied.body).into_owned();
        let message = if message.is_empty() {
            "denied by external authorization".to_owned()
        } else {
            message
        };
        local_response(true, denied.status, grpc_code(denied.status), &message)
    } else {
        let mut r = http::Response::new(full(denied.body));
        *r.status_mut() = denied.status;
        r
    };
    for (name, value) in denied.headers {
        if !grpc || !name.as_str().starts_with("grpc-") {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The start of a request body, read for the check; the rest stays unread.
struct Buffered {
    data: Bytes,
    /// The whole body is in `data`.
    complete: bool,
}

impl Buffered {
    /// Reads frames until `limit` bytes are in (one byte more, to tell an exact fit from a
    /// longer body) or the body ends; the body to send on replays them, then the rest.
    async fn read(mut body: Body, limit: usize) -> Result<(Body, Buffered), hyper::Error> {
        let mut frames = VecDeque::new();
        let mut data = BytesMut::new();
        let mut complete = false;
        while data.len() <= limit {
            match body.frame().await {
                None => {
                    complete = true;
                    break;
                }
                Some(frame) => {
                    let frame = frame?;
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    frames.push_back(frame);
                }
            }
        }
        let replay = Replay {
            frames,
            rest: (!complete).then_some(body),
        };
        Ok((
            http_body_util::combinators::BoxBody::new(replay),
            Buffered {
                data: data.freeze(),
                complete,
            },
        ))
    }
}

/// Frames already read, then the rest of the body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + buffered);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn the_body_read_for_the_check_is_replayed_whole() {
        for (chunks, limit, complete) in [
            (&[&b"hello "[..], b"world"][..], 64, true),
            (&[&b"hello "[..], b"world"][..], 3, false),
            (&[][..], 8, true),
        ] {
            let (body, buffered) = Buffered::read(body_of(chunks), limit).await.unwrap();
            assert_eq!(buffered.complete, complete);
            assert!(buffered.data.len() >= chunks.concat().len().min(limit));
            let all = body.collect().await.unwrap().to_bytes();
            assert_eq!(all, chunks.concat());
        }
    }

    #[test]
    fn denials_keep_the_providers_status_and_headers() {
        let denied = Denied {
            status: StatusCode::UNAUTHORIZED,
            headers: vec![(
                HeaderName::from_static("x-ext-authz-check-result"),
                HeaderValue::from_static("denied"),
            )],
            body: Bytes::from_static(b"no"),
        };
        let r = denial(false, denied.clone());
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["x-ext-authz-check-result"], "denied");
        let r = denial(true, denied);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "16");
    }
}
