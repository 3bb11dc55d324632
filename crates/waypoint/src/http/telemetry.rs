//! Per-request telemetry (SP 800-233 HIGH-REQ2): W3C `traceparent` and `tracestate` propagated as a child span
//! (started when absent or malformed; exported over OTLP when that is on, see [`super::span`]),
//! a request counter and duration histogram labelled with
//! source and destination identity, service, method, code and gRPC status, and one JSON access
//! log line per request, written when the response ends.

use super::body::Observed;
use super::route::RouteRef;
use super::span::{End, RequestSpan, Start};
use super::{Downstream, Inner, Picked, Request, Response, ResponseFuture, authority};
use crate::access_log::RequestLine;
use crate::metrics::{RequestLabels, method_label};
use crate::state::Shared;
use ambit_telemetry::otlp::TraceContextPropagator;
use http::HeaderValue;
use http_body_util::BodyExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

/// W3C Trace Context's `traceparent` and `tracestate`, read and written by OpenTelemetry's
/// propagator (a valid `traceparent` or none; `tracestate` kept with it).
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = http::HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        // An empty `tracestate` goes: what the caller sent belonged to its own trace.
        match HeaderValue::from_str(&value) {
            Ok(value) if !value.is_empty() => {
                self.0.insert(name, value);
            }
            _ => {
                self.0.remove(name);
            }
        }
    }
}

/// The waypoint's place in the trace when it exports no span: a child of the caller's span,
/// or a new trace, sampled.
fn untraced(parent: &opentelemetry::Context) -> SpanContext {
    let span_id = SpanId::from(fastrand::u64(1..));
    let parent = parent.span();
    let parent = parent.span_context();
    if parent.is_valid() {
        SpanContext::new(
            parent.trace_id(),
            span_id,
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )
    } else {
        SpanContext::new(
            TraceId::from(fastrand::u128(1..)),
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
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
    trace: SpanContext,
    src_addr: String,
    authority: String,
    path: String,
    protocol: &'static str,
    version: http::Version,
    /// The exported span, when OTLP export is on.
    span: Option<RequestSpan>,
    /// The route matched, when the span names it.
    route: Option<RouteRef>,
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
            trace_id: &self.trace.trace_id().to_string(),
            span_id: &self.trace.span_id().to_string(),
        });
        if let Some(span) = self.span {
            span.end(&End {
                status: self.labels.response_code.parse().unwrap_or_default(),
                grpc_status: self.labels.grpc_status.parse().ok(),
                destination_identity: &self.labels.destination_identity,
                route: self.route.as_ref(),
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
        let parent = propagator().extract(&Headers(request.headers()));
        let downstream = request.extensions().get::<Downstream>().cloned();
        let authority = authority(&request).unwrap_or_default().to_owned();
        let method = method_label(request.method()).to_owned();
        let path = request.uri().path().to_owned();
        let version = request.version();
        let (trace, span) = match &self.shared.tracer {
            Some(tracing) => {
                let head = Start {
                    method: &method,
                    path: &path,
                    authority: &authority,
                    version: protocol_version(version),
                    downstream: downstream.as_ref(),
                };
                let (span, trace) = RequestSpan::start(tracing, &parent, &head);
                (trace, Some(span))
            }
            None => (untraced(&parent), None),
        };
        propagator().inject_context(
            &opentelemetry::Context::new().with_remote_span_context(trace.clone()),
            &mut HeadersMut(request.headers_mut()),
        );
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
            let mut response = call.await?;
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
            let route = response.extensions_mut().remove::<RouteRef>();
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
                trace,
                src_addr,
                authority,
                path,
                protocol,
                version,
                span,
                route,
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

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn traceparent_is_continued_as_a_child_with_its_tracestate() {
        let caller = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc,other=1"),
        ]);
        let child = untraced(&propagator().extract(&Headers(&caller)));
        let mut upstream = caller.clone();
        propagator().inject_context(
            &opentelemetry::Context::new().with_remote_span_context(child.clone()),
            &mut HeadersMut(&mut upstream),
        );
        let sent = upstream["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"), "{sent}");
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "a span of its own: {sent}"
        );
        assert_eq!(upstream["tracestate"], "vendor=abc,other=1");
    }

    #[test]
    fn a_bad_traceparent_starts_a_trace_and_drops_its_tracestate() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            let mut h = headers(&[("traceparent", bad), ("tracestate", "vendor=abc")]);
            let trace = untraced(&propagator().extract(&Headers(&h)));
            propagator().inject_context(
                &opentelemetry::Context::new().with_remote_span_context(trace.clone()),
                &mut HeadersMut(&mut h),
            );
            let sent = h["traceparent"].to_str().unwrap();
            assert!(
                !sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad}: {sent}"
            );
            assert!(sent.ends_with("-01"), "{sent}");
            assert!(!h.contains_key("tracestate"), "{bad}");
        }
    }
}
