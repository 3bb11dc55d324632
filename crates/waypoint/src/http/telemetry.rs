//! Per-request telemetry (SP 800-233 HIGH-REQ2): W3C `traceparent` propagated as a child span
//! (started when absent or malformed; exported over OTLP when that is on, see [`super::span`]),
//! a request counter and duration histogram labelled with
//! source and destination identity, service, method, code and gRPC status, and one JSON access
//! log line per request, written when the response ends.

use super::body::Observed;
use super::span::{End, RequestSpan, Start};
use super::{Downstream, Inner, Picked, Request, Response, ResponseFuture, authority};
use crate::access_log::RequestLine;
use crate::metrics::{RequestLabels, method_label};
use crate::state::Shared;
use http::HeaderValue;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

const TRACEPARENT: &str = "traceparent";

/// A W3C trace context: version 00, trace id, parent (span) id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid (W3C).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        fn hex(s: &str, len: usize) -> Option<&str> {
            (s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then_some(s)
        }
        if hex(version, 2)? == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(hex(trace, 32)?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(span, 16)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(flags, 2)?, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled.
    pub fn start() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: 0x01,
        }
    }

    /// The waypoint's span within this trace.
    pub fn child(self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..self
        }
    }

    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

impl TelemetryLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;
    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What the access log line and the metrics need once the response is over.
struct Record {
    shared: Arc<Shared>,
    start: Instant,
    labels: RequestLabels,
    trace_id: u128,
    span_id: u64,
    src_addr: String,
    authority: String,
    path: String,
    protocol: &'static str,
    version: http::Version,
    /// The exported span, when OTLP export is on.
    span: Option<RequestSpan>,
}

fn version_str(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// `network.protocol.version` of OpenTelemetry's conventions: the version without `HTTP/`.
fn protocol_version(version: http::Version) -> &'static str {
    version_str(version)
        .strip_prefix("HTTP/")
        .unwrap_or_default()
}

impl Record {
    fn finish(mut self, trailers: Option<&http::HeaderMap>, clean: bool) {
        if let Some(status) = trailers.and_then(|t| t.get("grpc-status")) {
            self.labels.grpc_status = status.to_str().unwrap_or_default().to_owned();
        }
        let duration = self.start.elapsed();
        self.shared.metrics.request(&self.labels, duration);
        let l = &self.labels;
        self.shared.access_log.request(&RequestLine {
            src: &self.src_addr,
            src_identity: &l.source_identity,
            dst_identity: &l.destination_identity,
            dst_service: &l.destination_service,
            authority: &self.authority,
            method: &l.method,
            path: &self.path,
            protocol: self.protocol,
            version: version_str(self.version),
            code: &l.response_code,
            grpc_status: &l.grpc_status,
            duration_ms: duration.as_secs_f64() * 1e3,
            complete: clean,
            trace_id: &format!("{:032x}", self.trace_id),
            span_id: &format!("{:016x}", self.span_id),
        });
        if let Some(span) = self.span {
            span.end(&End {
                status: self.labels.response_code.parse().unwrap_or_default(),
                grpc_status: self.labels.grpc_status.parse().ok(),
                destination_identity: &self.labels.destination_identity,
                complete: clean,
            });
        }
    }
}

impl<S: Inner> Service<Request> for Telemetry<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let start = Instant::now();
        let parent = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let downstream = request.extensions().get::<Downstream>().cloned();
        let authority = authority(&request).unwrap_or_default().to_owned();
        let method = method_label(request.method()).to_owned();
        let path = request.uri().path().to_owned();
        let version = request.version();
        let (trace, span) = match &self.shared.tracer {
            Some(tracer) => {
                let head = Start {
                    method: &method,
                    path: &path,
                    authority: &authority,
                    version: protocol_version(version),
                    downstream: downstream.as_ref(),
                };
                let (span, trace) = RequestSpan::start(tracer, parent, &head);
                (trace, Some(span))
            }
            None => (
                parent.map_or_else(TraceContext::start, TraceContext::child),
                None,
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&trace.header()) {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let (source_identity, src_addr, destination_service, protocol) = match &downstream {
            Some(d) => (
                d.peer.to_string(),
                d.peer_addr.to_string(),
                d.destination.service(),
                d.destination.protocol.as_str(),
            ),
            None => Default::default(),
        };
        let shared = self.shared.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let destination_identity = response
                .extensions()
                .get::<Picked>()
                .map(|p| p.endpoint.identity.to_string())
                .unwrap_or_default();
            let grpc_status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let record = Record {
                shared,
                start,
                labels: RequestLabels {
                    source_identity,
                    destination_identity,
                    destination_service,
                    method,
                    response_code: response.status().as_str().to_owned(),
                    grpc_status,
                },
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                src_addr,
                authority,
                path,
                protocol,
                version,
                span,
            };
            Ok(response.map(|body| {
                Observed::new(
                    body,
                    Box::new(move |trailers, clean| record.finish(trailers, clean)),
                )
                .boxed()
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly_and_continued_as_a_child() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        let child = t.child();
        assert_eq!(child.trace_id, t.trace_id);
        assert_ne!(child.span_id, t.span_id);
        assert!(
            child
                .header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(child.header().ends_with("-01"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let fresh = TraceContext::start();
        assert_eq!(TraceContext::parse(&fresh.header()), Some(fresh));
    }
}
