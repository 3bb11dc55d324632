//! Prometheus metrics (prometheus-client): per request, labelled with who called whom; per
//! TCP connection; and the config stream's state. No global lock on the data path: each
//! series is an atomic, found through a read-locked family map.

use ambit_controller_client::StreamState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub source_identity: String,
    pub destination_identity: String,
    /// `name.namespace`, empty for a pod addressed directly.
    pub destination_service: String,
    /// The standard methods, `OTHER` for the rest (bounded cardinality).
    pub method: String,
    pub response_code: String,
    /// Empty unless gRPC.
    pub grpc_status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub source_identity: String,
    pub destination_service: String,
    /// `forwarded`, `denied`, `not_served`, `unreachable`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    /// `retried`, or `budget_exhausted` when the retry budget refused one.
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    /// `sent`, or `skipped` (body over 64 KiB or unfinished, or too many in flight).
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwtLabels {
    /// `authenticated`, `no_token` or `invalid`.
    result: &'static str,
    /// Why an invalid token was refused (`expired`, `signature`, ...); empty otherwise.
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExtAuthzLabels {
    provider: String,
    /// `allowed`, `denied`, `error_allowed` (failed, fail-open), `error_denied` (failed).
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExtAuthzDurationLabels {
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeltaLabels {
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 62.5 µs .. ~16 s: a waypoint hop and a local ext_authz check take well under 0.5 ms,
    // so buckets starting there put nearly every sample in the first one.
    Histogram::new(exponential_buckets(0.0000625, 2.0, 19))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    connections: Family<ConnectionLabels, Counter>,
    tcp_bytes_sent: Counter,
    tcp_bytes_received: Counter,
    config_connected: Gauge,
    config_deltas: Family<DeltaLabels, Counter>,
    access_log_dropped: Counter,
    retries: Family<RetryLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
    jwt: Family<JwtLabels, Counter>,
    ext_authz: Family<ExtAuthzLabels, Counter>,
    ext_authz_duration: HistogramFamily<ExtAuthzDurationLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ambit_waypoint");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP and gRPC requests handled",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from the request's headers to the end of the response",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "HBONE tunnels accepted from clients, by outcome",
            connections.clone(),
        );
        let tcp_bytes_sent = Counter::default();
        registry.register_with_unit(
            "tcp_sent",
            "Bytes of TCP (non-HTTP) traffic sent to clients",
            prometheus_client::registry::Unit::Bytes,
            tcp_bytes_sent.clone(),
        );
        let tcp_bytes_received = Counter::default();
        registry.register_with_unit(
            "tcp_received",
            "Bytes of TCP (non-HTTP) traffic received from clients",
            prometheus_client::registry::Unit::Bytes,
            tcp_bytes_received.clone(),
        );
        let config_connected = Gauge::default();
        registry.register(
            "config_connected",
            "1 while the config stream to the controller is up",
            config_connected.clone(),
        );
        let config_deltas = Family::<DeltaLabels, Counter>::default();
        registry.register(
            "config_deltas",
            "Config deltas from the controller, accepted or rejected",
            config_deltas.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Retries of route rules, and retries the retry budget refused",
            retries.clone(),
        );
        let mirrors = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirrors",
            "Copies of requests for RequestMirror backends, sent or skipped",
            mirrors.clone(),
        );
        let jwt = Family::<JwtLabels, Counter>::default();
        registry.register(
            "jwt",
            "Requests to workloads with JWT rules, by outcome of request authentication",
            jwt.clone(),
        );
        let ext_authz = Family::<ExtAuthzLabels, Counter>::default();
        registry.register(
            "ext_authz",
            "External authorization checks (CUSTOM policies), by provider and result",
            ext_authz.clone(),
        );
        let ext_authz_duration: HistogramFamily<ExtAuthzDurationLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "ext_authz_duration",
            "Time an external authorization check took, failures and timeouts included",
            prometheus_client::registry::Unit::Seconds,
            ext_authz_duration.clone(),
        );
        Self {
            ext_authz,
            ext_authz_duration,
            registry,
            access_log_dropped,
            retries,
            mirrors,
            jwt,
            requests,
            request_duration,
            connections,
            tcp_bytes_sent,
            tcp_bytes_received,
            config_connected,
            config_deltas,
        }
    }
}

/// The method as a label: the standard ones as they are, others folded.
pub fn method_label(method: &http::Method) -> &str {
    match *method {
        http::Method::GET
        | http::Method::HEAD
        | http::Method::POST
        | http::Method::PUT
        | http::Method::DELETE
        | http::Method::CONNECT
        | http::Method::OPTIONS
        | http::Method::TRACE
        | http::Method::PATCH => method.as_str(),
        _ => "OTHER",
    }
}

impl Metrics {
    pub fn request(&self, labels: &RequestLabels, duration: Duration) {
        self.requests.get_or_create(labels).inc();
        self.request_duration
            .get_or_create(labels)
            .observe(duration.as_secs_f64());
    }

    pub fn connection(&self, labels: &ConnectionLabels) {
        self.connections.get_or_create(labels).inc();
    }

    pub fn tcp_bytes(&self, sent: u64, received: u64) {
        self.tcp_bytes_sent.inc_by(sent);
        self.tcp_bytes_received.inc_by(received);
    }

    /// Brings the dropped access log lines' counter up to `total`.
    pub fn retry(&self, outcome: crate::http::retry::RetryOutcome) {
        let outcome = match outcome {
            crate::http::retry::RetryOutcome::Retried => "retried",
            crate::http::retry::RetryOutcome::BudgetExhausted => "budget_exhausted",
        };
        self.retries.get_or_create(&RetryLabels { outcome }).inc();
    }

    /// `count` mirror copies of one request, sent or skipped.
    pub fn mirrors(&self, outcome: crate::http::route::MirrorOutcome, count: usize) {
        let outcome = match outcome {
            crate::http::route::MirrorOutcome::Sent => "sent",
            crate::http::route::MirrorOutcome::Skipped => "skipped",
        };
        self.mirrors
            .get_or_create(&MirrorLabels { outcome })
            .inc_by(count as u64);
    }

    /// A request authentication outcome: `reason` is the refusal's label, or empty.
    pub fn jwt(&self, result: &'static str, reason: &'static str) {
        self.jwt.get_or_create(&JwtLabels { result, reason }).inc();
    }

    /// An external authorization check of `provider`: its result and, when the provider was
    /// asked, how long that took.
    pub fn ext_authz(&self, provider: &str, result: &'static str, took: Option<Duration>) {
        self.ext_authz
            .get_or_create(&ExtAuthzLabels {
                provider: provider.to_owned(),
                result,
            })
            .inc();
        if let Some(took) = took {
            self.ext_authz_duration
                .get_or_create(&ExtAuthzDurationLabels {
                    provider: provider.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn access_log_dropped(&self, total: u64) {
        self.access_log_dropped
            .inc_by(total.saturating_sub(self.access_log_dropped.get()));
    }

    /// The exposition text, with the config stream's state as of now.
    pub fn render(&self, stream: Option<&StreamState>) -> String {
        if let Some(s) = stream {
            self.config_connected.set(i64::from(s.connected));
            let set = |result: &str, value: u64| {
                let counter = self.config_deltas.get_or_create(&DeltaLabels {
                    result: result.into(),
                });
                counter.inc_by(value.saturating_sub(counter.get()));
            };
            set("accepted", s.accepted);
            set("rejected", s.rejected);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_requests_with_their_labels() {
        let m = Metrics::default();
        let labels = RequestLabels {
            source_identity: "spiffe://cluster.local/ns/a/sa/client".into(),
            destination_identity: "spiffe://cluster.local/ns/b/sa/server".into(),
            destination_service: "echo.b".into(),
            method: "GET".into(),
            response_code: "200".into(),
            grpc_status: String::new(),
        };
        m.request(&labels, Duration::from_millis(3));
        m.request(&labels, Duration::from_millis(3));
        let text = m.render(Some(&StreamState {
            connected: true,
            accepted: 3,
            ..Default::default()
        }));
        assert!(
            text.contains(r#"ambit_waypoint_requests_total{source_identity="spiffe://cluster.local/ns/a/sa/client",destination_identity="spiffe://cluster.local/ns/b/sa/server",destination_service="echo.b",method="GET",response_code="200",grpc_status=""} 2"#),
            "{text}"
        );
        assert!(
            text.contains("ambit_waypoint_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("ambit_waypoint_config_connected 1"), "{text}");
        assert!(
            text.contains(r#"ambit_waypoint_config_deltas_total{result="accepted"} 3"#),
            "{text}"
        );
        m.jwt("invalid", "expired");
        let text = m.render(None);
        assert!(
            text.contains(r#"ambit_waypoint_jwt_total{result="invalid",reason="expired"} 1"#),
            "{text}"
        );
        m.ext_authz("authz", "error_denied", Some(Duration::from_millis(2)));
        let text = m.render(None);
        assert!(
            text.contains(
                r#"ambit_waypoint_ext_authz_total{provider="authz",result="error_denied"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ambit_waypoint_ext_authz_duration_seconds_count{provider="authz"} 1"#),
            "{text}"
        );
        let brew = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&brew), "OTHER");
    }
}
