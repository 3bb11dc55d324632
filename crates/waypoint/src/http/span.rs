//! The OpenTelemetry server span of one request, when span export is on (`--otlp-endpoint`):
//! a child of the caller's `traceparent`, with the attributes of OpenTelemetry's HTTP
//! semantic conventions and the mesh identities, ended when the response body ends.

use super::Downstream;
use super::route::RouteRef;
use ambit_telemetry::otlp::{Span, Tracer, UrlPath};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, Tracer as _};
use opentelemetry::{Context, KeyValue};

/// The peer identities (SPIFFE ids), which OpenTelemetry has no convention for.
const SOURCE_PRINCIPAL: &str = "ambit.source.principal";
const DESTINATION_PRINCIPAL: &str = "ambit.destination.principal";
const DESTINATION_SERVICE: &str = "ambit.destination.service";
/// `namespace/name` of the route matched; OpenTelemetry's `http.route` is a path template,
/// which Gateway API routes do not have.
const ROUTE: &str = "ambit.route";

/// Span export: the tracer, and what of the path the spans carry.
#[derive(Debug)]
pub struct Tracing {
    pub tracer: Tracer,
    pub url_path: UrlPath,
}

impl Tracing {
    /// The spans carry the route matched (the route layer hands it over).
    pub fn names_routes(&self) -> bool {
        self.url_path == UrlPath::Route
    }
}

/// What the span is started with: the request's head.
#[derive(Debug)]
pub struct Start<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub version: &'static str,
    pub downstream: Option<&'a Downstream>,
}

/// What the span is ended with: the response.
#[derive(Debug)]
pub struct End<'a> {
    pub status: u16,
    /// gRPC's status code, when the response has one.
    pub grpc_status: Option<i64>,
    pub destination_identity: &'a str,
    /// The route the request matched, when it did.
    pub route: Option<&'a RouteRef>,
    /// The response body ended as framed (not cut off).
    pub complete: bool,
}

#[derive(Debug)]
pub struct RequestSpan(Span);

impl RequestSpan {
    /// Starts the span under `parent` (the caller's span, if it sent a valid `traceparent`;
    /// else a new trace). The sampler decides either way. Returns it with the context to send
    /// upstream: its own ids and the caller's `tracestate`.
    pub fn start(tracing: &Tracing, parent: &Context, head: &Start<'_>) -> (Self, SpanContext) {
        let mut attributes = vec![
            KeyValue::new("http.request.method", head.method.to_owned()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("network.protocol.name", "http"),
            KeyValue::new("network.protocol.version", head.version),
        ];
        if tracing.url_path == UrlPath::Full {
            attributes.push(KeyValue::new("url.path", head.path.to_owned()));
        }
        if let Some((host, port)) = head.authority.rsplit_once(':') {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
            if let Ok(port) = port.parse::<u16>() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        } else if !head.authority.is_empty() {
            attributes.push(KeyValue::new("server.address", head.authority.to_owned()));
        }
        if let Some(d) = head.downstream {
            attributes.extend([
                KeyValue::new("client.address", d.peer_addr.ip().to_string()),
                KeyValue::new("client.port", i64::from(d.peer_addr.port())),
                KeyValue::new(SOURCE_PRINCIPAL, d.peer.to_string()),
            ]);
            let service = d.destination.service();
            if !service.is_empty() {
                attributes.push(KeyValue::new(DESTINATION_SERVICE, service));
            }
        }
        let tracer = &tracing.tracer;
        let span = tracer
            .span_builder(head.method.to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        let context = span.span_context().clone();
        (Self(span), context)
    }

    /// Ends the span with the response's outcome. A server span is an error on a 5xx (a 4xx
    /// is the client's), on gRPC's server-side failures, or when the body was cut off.
    pub fn end(mut self, end: &End<'_>) {
        let span = &mut self.0;
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(end.status),
            ));
            if let Some(code) = end.grpc_status {
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
            }
            if !end.destination_identity.is_empty() {
                span.set_attribute(KeyValue::new(
                    DESTINATION_PRINCIPAL,
                    end.destination_identity.to_owned(),
                ));
            }
            // Set only where `url_path` is `route` (see `Telemetry::call`).
            if let Some(route) = end.route {
                span.set_attribute(KeyValue::new(
                    ROUTE,
                    format!("{}/{}", route.namespace, route.name),
                ));
            }
            let error = if end.status >= 500 {
                Some(end.status.to_string())
            } else if let Some(code @ (2 | 4 | 12 | 13 | 14 | 15)) = end.grpc_status {
                Some(format!("grpc {code}"))
            } else if !end.complete {
                Some("response body cut off".to_owned())
            } else {
                None
            };
            if let Some(error) = error {
                span.set_attribute(KeyValue::new("error.type", error.clone()));
                span.set_status(Status::error(error));
            }
        }
        span.end();
    }
}
