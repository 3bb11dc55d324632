//! Prometheus metrics (text exposition, hand-rolled: a handful of counters and gauges) and
//! the health endpoints, served on 15014.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    subscribers: AtomicI64,
    leader: AtomicBool,
    ready: AtomicBool,
}

impl Metrics {
    fn inc(&self, name: &'static str, labels: String) {
        if let Ok(mut m) = self.counters.lock() {
            *m.entry((name, labels)).or_default() += 1;
        }
    }

    /// CA requests by result: signed, denied, unauthenticated, invalid, error.
    pub fn ca_request(&self, result: &str) {
        self.inc("ambit_ca_requests_total", format!("result=\"{result}\""));
    }

    /// A caller's token, by outcome: authenticated, refused or error (a TokenReview each), or
    /// cached (none).
    pub fn token_review(&self, result: &str) {
        self.inc("ambit_token_reviews_total", format!("result=\"{result}\""));
    }

    /// A config delta the client rejected.
    pub fn config_nack(&self, subscriber: &str) {
        self.inc(
            "ambit_config_nacks_total",
            format!("subscriber=\"{subscriber}\""),
        );
    }

    /// A resource a client rejected alone (and applied the rest of its delta), by kind.
    pub fn config_rejected(&self, kind: &str) {
        self.inc(
            "ambit_config_rejected_resources_total",
            format!("kind=\"{kind}\""),
        );
    }

    pub fn config_push(&self, kind: &str) {
        self.inc("ambit_config_pushes_total", format!("kind=\"{kind}\""));
    }

    pub fn reconcile(&self, result: &str) {
        self.inc(
            "ambit_waypoint_reconciles_total",
            format!("result=\"{result}\""),
        );
    }

    pub fn subscriber_connected(&self, delta: i64) {
        self.subscribers.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(m) = self.counters.lock() {
            let mut last = "";
            for ((name, labels), v) in m.iter() {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    last = name;
                }
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        let _ = writeln!(out, "# TYPE ambit_config_subscribers gauge");
        let _ = writeln!(
            out,
            "ambit_config_subscribers {}",
            self.subscribers.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE ambit_leader gauge");
        let _ = writeln!(
            out,
            "ambit_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

/// `/metrics`, `/healthz` (process up), `/readyz` (caches synced, CA loaded).
pub fn router(metrics: std::sync::Arc<Metrics>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    axum::Router::new()
        .route("/metrics", get(move || async move { m.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if metrics.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready: caches syncing")
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.config_nack("node/n1");
        m.config_nack("node/n1");
        m.ca_request("denied");
        m.set_leader(true);
        let text = m.render();
        assert!(
            text.contains("ambit_config_nacks_total{subscriber=\"node/n1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ambit_ca_requests_total{result=\"denied\"} 1"),
            "{text}"
        );
        assert!(text.contains("ambit_leader 1"), "{text}");
    }
}
