//! OTLP span export: a real waypoint on loopback exports a server span per request to an
//! in-process OTLP/gRPC collector (tonic serving OpenTelemetry's own TraceService), continuing
//! the caller's W3C trace and handing its own span to the upstream pod in `traceparent`.

#![allow(clippy::unwrap_used)]

mod support;

use ambit_identity::testing::TestPki;
use ambit_waypoint::run::Running;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::*;

/// What the collector received: each span with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

#[derive(Debug, Clone, Default)]
struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let service = string(&attributes, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector on `127.net.0.100`; its endpoint URL and what it receives.
async fn collector(net: u8) -> (String, Received) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip(net, 100), 0))
        .await
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::default();
    let received = collector.0.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (endpoint, received)
}

/// The mesh's two `back` pods on `net` and a collector: what every test here starts from.
async fn backends_and_collector(net: u8) -> (TestPki, String, Received) {
    let pki = TestPki::new("cluster.local");
    pod(&pki, ip(net, 11), "back", "back-1").await;
    pod(&pki, ip(net, 12), "back", "back-2").await;
    let (endpoint, received) = collector(net).await;
    (pki, endpoint, received)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// Service `back` (two pods, every path through route `shop/back`) and Service `gone`, whose
/// one pod of `back` is not running (the waypoint cannot reach it: a 5xx of its own).
fn mesh(net: u8) -> String {
    format!(
        r#"
workloads:
{}  - {{uid: b9, name: back-9, namespace: shop, serviceAccount: back, node: n9, ips: ["127.{net}.0.19"]}}
services:
{}  - name: gone
    namespace: shop
    vips: ["10.96.{net}.3"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [b9]
routes:
  - name: back
    namespace: shop
    parents: [{{namespace: shop, name: back, port: 80}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /}}}}]
"#,
        back_pods(net, 2),
        back_service(net, 2),
    )
}

/// The waypoint of `shop/back` serving [`mesh`] on `net`, with `flags` (its tracing).
async fn back_waypoint(pki: &TestPki, net: u8, flags: &[&str]) -> Running {
    waypoint_with(pki, net, &mesh(net), (SERVED_SA, WAYPOINT_SA), flags).await
}

/// `GET path` on `target` over HTTP/1.1 as `shop/front`, with `traceparent` (and
/// [`CALLER_STATE`]) if given; the status and the `traceparent` the upstream pod saw.
async fn send(
    client: &Client,
    target: &str,
    path: &str,
    traceparent: Option<&str>,
) -> (u16, String) {
    let (status, seen, _) = send_traced(client, target, path, traceparent).await;
    (status, seen)
}

/// [`send`], and the `tracestate` the upstream pod saw.
async fn send_traced(
    client: &Client,
    target: &str,
    path: &str,
    traceparent: Option<&str>,
) -> (u16, String, String) {
    let mut sender = client.http1(target).await;
    let mut request = get(path, target);
    if let Some(value) = traceparent {
        let headers = request.headers_mut();
        headers.insert("traceparent", value.parse().unwrap());
        headers.insert("tracestate", CALLER_STATE.parse().unwrap());
    }
    let (status, headers, _) = text(sender.send_request(request).await.unwrap()).await;
    let seen = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        status,
        seen("x-seen-traceparent"),
        seen("x-seen-tracestate"),
    )
}

/// `00-TRACE-SPAN-FLAGS` as bytes: the trace id, the span id and the flags.
fn ids(traceparent: &str) -> (Vec<u8>, Vec<u8>, u8) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    (hex(parts[1]), hex(parts[2]), hex(parts[3])[0])
}

/// Waits until the collector holds `n` spans; they are returned in the order received.
async fn spans(received: &Received, n: usize) -> Vec<(String, Span)> {
    eventually(&format!("{n} spans at the collector"), || {
        received.lock().unwrap().len() >= n
    })
    .await;
    received.lock().unwrap().clone()
}

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_STATE: &str = "vendor=abc,other=1";

#[tokio::test]
async fn each_request_is_a_server_span_in_the_callers_trace() {
    let net = 141;
    let (pki, endpoint, received) = backends_and_collector(net).await;
    let waypoint = back_waypoint(
        &pki,
        net,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-service-name",
            "wp-test",
            "--otlp-url-path",
            "full",
        ],
    )
    .await;
    let client = Client::new(&pki, NS, "front", waypoint.hbone_addr);
    let back = format!("10.96.{net}.1:80");

    let (status, continued, state) = send_traced(&client, &back, "/hello", Some(CALLER)).await;
    assert_eq!(status, 200);
    assert_eq!(state, CALLER_STATE, "the caller's tracestate goes on");
    let (status, started) = send(&client, &back, "/new", None).await;
    assert_eq!(status, 200);
    let (failed, _) = send(&client, &format!("10.96.{net}.3:80"), "/x", Some(CALLER)).await;
    assert!(failed >= 500, "{failed}");
    // Draining sends what the batch still holds.
    waypoint.drain().await;
    let spans = spans(&received, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let by_path = |path: &str| -> &Span {
        &spans
            .iter()
            .find(|(_, s)| string(&s.attributes, "url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no span of {path}: {spans:#?}"))
            .1
    };

    // The caller's trace goes on: the span's parent is the caller's, and the pod gets the
    // waypoint's span as its parent.
    let (caller_trace, caller_span, _) = ids(CALLER);
    let (upstream_trace, upstream_parent, flags) = ids(&continued);
    let hello = by_path("/hello");
    assert_eq!(hello.trace_id, caller_trace);
    assert_eq!(hello.parent_span_id, caller_span);
    assert_eq!(hello.trace_state, CALLER_STATE);
    assert_eq!(upstream_trace, caller_trace);
    assert_eq!(
        hello.span_id, upstream_parent,
        "the pod's parent is the span"
    );
    assert_eq!(flags, 1, "sampled");
    assert_eq!(hello.name, "GET");
    assert_eq!(hello.kind, SpanKind::Server as i32);
    let a = &hello.attributes;
    assert_eq!(string(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(int(a, "http.response.status_code"), Some(200));
    assert_eq!(
        string(a, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(string(a, "server.address"), Some(format!("10.96.{net}.1")));
    assert_eq!(int(a, "server.port"), Some(80));
    assert_eq!(
        string(a, "ambit.source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/front")
    );
    assert_eq!(
        string(a, "ambit.destination.principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/back")
    );
    assert_eq!(
        string(a, "ambit.destination.service").as_deref(),
        Some("back.shop")
    );
    assert_eq!(
        hello.status.clone().unwrap_or_default().code,
        StatusCode::Unset as i32
    );

    // No caller's trace: a new one, the span its root.
    let new = by_path("/new");
    let (new_trace, new_parent, _) = ids(&started);
    assert_eq!(new.trace_id, new_trace);
    assert_ne!(new.trace_id, caller_trace);
    assert!(new.parent_span_id.is_empty(), "{new:?}");
    assert_eq!(new.span_id, new_parent);

    // The waypoint's own 503 is the server's failure.
    let gone = by_path("/x");
    assert_eq!(
        int(&gone.attributes, "http.response.status_code"),
        Some(i64::from(failed))
    );
    assert_eq!(
        gone.status.clone().unwrap_or_default().code,
        StatusCode::Error as i32
    );
    assert!(spans.iter().all(|(service, _)| service == "wp-test"));
}

/// A caller that marks every request sampled (`-01`) gets the ratio, not all: the waypoint
/// draws the decision itself (the caller's flag and trace id do not count) and sends it
/// upstream. Spans name the route by default, not the path.
#[tokio::test]
async fn the_ratio_holds_against_a_caller_that_samples_everything() {
    let net = 142;
    let (pki, endpoint, received) = backends_and_collector(net).await;
    let waypoint = back_waypoint(
        &pki,
        net,
        &["--otlp-endpoint", &endpoint, "--otlp-sampling", "0.25"],
    )
    .await;
    let client = Client::new(&pki, NS, "front", waypoint.hbone_addr);
    let back = format!("10.96.{net}.1:80");
    // 200 at 0.25: 50 expected, sd 6.1; the bounds are 4 sd away.
    const N: usize = 200;
    let mut sampled_upstream = 0;
    for i in 0..N {
        let (status, continued) = send(&client, &back, &format!("/user/{i}"), Some(CALLER)).await;
        assert_eq!(status, 200);
        assert_eq!(
            ids(&continued).0,
            ids(CALLER).0,
            "the caller's trace goes on"
        );
        sampled_upstream += usize::from(ids(&continued).2 & 1);
    }
    assert!(
        (25..=75).contains(&sampled_upstream),
        "{sampled_upstream} of {N} sampled"
    );
    waypoint.drain().await;
    let spans = spans(&received, sampled_upstream).await;
    assert_eq!(
        spans.len(),
        sampled_upstream,
        "what goes upstream as sampled is exported"
    );
    for (_, span) in &spans {
        assert_eq!(string(&span.attributes, "url.path"), None, "{span:?}");
        assert_eq!(
            string(&span.attributes, "ambit.route").as_deref(),
            Some("shop/back")
        );
    }

    // Without an endpoint there is no exporter; the trace still goes on as a child.
    let off = back_waypoint(&pki, net, &[]).await;
    assert!(off.shared.tracer.is_none());
    let client = Client::new(&pki, NS, "front", off.hbone_addr);
    let (status, continued) = send(&client, &back, "/off", Some(CALLER)).await;
    assert_eq!(status, 200);
    let (trace, parent, _) = ids(&continued);
    assert_eq!(trace, ids(CALLER).0);
    assert_ne!(parent, ids(CALLER).1);
    off.drain().await;
    assert_eq!(
        received.lock().unwrap().len(),
        sampled_upstream,
        "nothing more exported"
    );
}

/// `--otlp-url-path none`: neither the path nor the route.
#[tokio::test]
async fn spans_can_carry_neither_path_nor_route() {
    let net = 144;
    let (pki, endpoint, received) = backends_and_collector(net).await;
    let waypoint = back_waypoint(
        &pki,
        net,
        &["--otlp-endpoint", &endpoint, "--otlp-url-path", "none"],
    )
    .await;
    let client = Client::new(&pki, NS, "front", waypoint.hbone_addr);
    let (status, _) = send(&client, &format!("10.96.{net}.1:80"), "/secret", None).await;
    assert_eq!(status, 200);
    waypoint.drain().await;
    let spans = spans(&received, 1).await;
    let a = &spans[0].1.attributes;
    assert_eq!(string(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(string(a, "url.path"), None);
    assert_eq!(string(a, "ambit.route"), None);
}

/// The real binary, as a Deployment runs it (multi-threaded runtime, settings from flags):
/// SIGTERM drains it and sends the spans still batched before it exits.
#[tokio::test]
async fn the_binary_sends_its_last_spans_when_terminated() {
    let net = 143;
    let (pki, endpoint, received) = backends_and_collector(net).await;
    let waypoint =
        ChildWaypoint::start(&pki, net, &mesh(net), &["--otlp-endpoint", &endpoint]).await;
    let client = Client::new(&pki, NS, "front", waypoint.hbone_addr());
    let (status, continued) = send(
        &client,
        &format!("10.96.{net}.1:80"),
        "/child",
        Some(CALLER),
    )
    .await;
    assert_eq!(status, 200);
    // The batch is sent every 5 s: before that, only the drain on SIGTERM sends it.
    let pid = rustix::process::Pid::from_raw(i32::try_from(waypoint.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let spans = spans(&received, 1).await;
    let (service, span) = &spans[0];
    assert_eq!(service, "ambit-waypoint");
    assert_eq!(span.trace_id, ids(CALLER).0);
    assert_eq!(span.span_id, ids(&continued).1);
    assert_eq!(
        string(&span.attributes, "ambit.route").as_deref(),
        Some("shop/back")
    );
}
