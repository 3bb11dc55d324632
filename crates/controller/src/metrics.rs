//! Prometheus metrics (prometheus-client: a few counters and gauges, each an atomic) and the
//! health endpoints, served on 15014.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySubscriber {
    subscriber: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ByRequirement {
    namespace: String,
    profile: String,
    requirement: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ByNamespace {
    namespace: String,
}

/// A gauge family whose whole set of series is replaced at once: series left out go.
#[derive(Debug)]
struct Replaced<L> {
    family: Family<L, Gauge>,
    series: Mutex<BTreeSet<L>>,
}

impl<L: Clone + Ord + std::hash::Hash + EncodeLabelSet + std::fmt::Debug> Replaced<L> {
    fn new(family: Family<L, Gauge>) -> Self {
        Self {
            family,
            series: Mutex::new(BTreeSet::new()),
        }
    }

    fn replace(&self, now: BTreeMap<L, i64>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for gone in series.iter().filter(|l| !now.contains_key(l)) {
            self.family.remove(gone);
        }
        for (labels, value) in &now {
            self.family.get_or_create(labels).set(*value);
        }
        *series = now.into_keys().collect();
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ca_requests: Family<ByResult, Counter>,
    token_reviews: Family<ByResult, Counter>,
    config_nacks: Family<BySubscriber, Counter>,
    config_rejected: Family<ByKind, Counter>,
    config_pushes: Family<ByKind, Counter>,
    reconciles: Family<ByResult, Counter>,
    subscribers: Gauge,
    leader: Gauge,
    risk_unmet: Replaced<ByRequirement>,
    risk_refused: Replaced<ByNamespace>,
    ready: AtomicBool,
}

/// Registers `metric` under `name` and hands it back.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("ambit");
        let metrics = Self {
            ca_requests: registered(
                &mut r,
                "ca_requests",
                "Certificate requests, by result",
                Family::default(),
            ),
            token_reviews: registered(
                &mut r,
                "token_reviews",
                "Callers' tokens, by outcome: a TokenReview each, or cached",
                Family::default(),
            ),
            config_nacks: registered(
                &mut r,
                "config_nacks",
                "Config deltas a subscriber rejected",
                Family::default(),
            ),
            config_rejected: registered(
                &mut r,
                "config_rejected_resources",
                "Resources a subscriber rejected alone (applying the rest of its delta), by kind",
                Family::default(),
            ),
            config_pushes: registered(
                &mut r,
                "config_pushes",
                "Config deltas pushed to subscribers, initial or change",
                Family::default(),
            ),
            reconciles: registered(
                &mut r,
                "waypoint_reconciles",
                "Waypoint Gateway reconciles, by result",
                Family::default(),
            ),
            subscribers: registered(
                &mut r,
                "config_subscribers",
                "Config streams connected now",
                Gauge::default(),
            ),
            leader: registered(
                &mut r,
                "leader",
                "1 while this replica holds the leader Lease",
                Gauge::default(),
            ),
            risk_unmet: Replaced::new(registered(
                &mut r,
                "risk_requirement_unmet",
                "Each requirement of a labelled namespace's risk profile: 1 unmet, 0 met",
                Family::default(),
            )),
            risk_refused: Replaced::new(registered(
                &mut r,
                "risk_refused_service_accounts",
                "Service accounts of a namespace whose inbound traffic its enforced risk profile refuses",
                Family::default(),
            )),
            registry: r,
            ready: AtomicBool::new(false),
        };
        // The results known in advance start at 0, so a rate over them needs no first event.
        for result in ["signed", "denied", "unauthenticated", "invalid", "error"] {
            let _ = metrics.ca_requests.get_or_create(&ByResult {
                result: result.into(),
            });
        }
        for result in ["authenticated", "refused", "error", "cached", "limited"] {
            let _ = metrics.token_reviews.get_or_create(&ByResult {
                result: result.into(),
            });
        }
        for kind in ["initial", "change"] {
            let _ = metrics
                .config_pushes
                .get_or_create(&ByKind { kind: kind.into() });
        }
        for result in ["applied", "invalid", "conflict", "error"] {
            let _ = metrics.reconciles.get_or_create(&ByResult {
                result: result.into(),
            });
        }
        metrics
    }
}

impl Metrics {
    /// CA requests by result: signed, denied, unauthenticated, invalid, error.
    pub fn ca_request(&self, result: &str) {
        let result = result.to_owned();
        self.ca_requests.get_or_create(&ByResult { result }).inc();
    }

    /// A caller's token, by outcome: authenticated, refused or error (a TokenReview each),
    /// cached (none), or limited (none: turned away by the rate limit).
    pub fn token_review(&self, result: &str) {
        let result = result.to_owned();
        self.token_reviews.get_or_create(&ByResult { result }).inc();
    }

    /// A config delta the client rejected.
    pub fn config_nack(&self, subscriber: &str) {
        let subscriber = subscriber.to_owned();
        self.config_nacks
            .get_or_create(&BySubscriber { subscriber })
            .inc();
    }

    /// A resource a client rejected alone (and applied the rest of its delta), by kind.
    pub fn config_rejected(&self, kind: &str) {
        let kind = kind.to_owned();
        self.config_rejected.get_or_create(&ByKind { kind }).inc();
    }

    pub fn config_push(&self, kind: &str) {
        let kind = kind.to_owned();
        self.config_pushes.get_or_create(&ByKind { kind }).inc();
    }

    pub fn reconcile(&self, result: &str) {
        let result = result.to_owned();
        self.reconciles.get_or_create(&ByResult { result }).inc();
    }

    pub fn subscriber_connected(&self, delta: i64) {
        self.subscribers.inc_by(delta);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// How the namespaces labelled with a risk profile stand now: `unmet` per
    /// `[namespace, profile, requirement]`, and the count of refused service accounts per
    /// namespace. The series of namespaces left out (no longer labelled) go.
    pub fn set_risk(
        &self,
        unmet: impl IntoIterator<Item = ([String; 3], bool)>,
        refused: impl IntoIterator<Item = (String, usize)>,
    ) {
        self.risk_unmet.replace(
            unmet
                .into_iter()
                .map(|([namespace, profile, requirement], unmet)| {
                    let labels = ByRequirement {
                        namespace,
                        profile,
                        requirement,
                    };
                    (labels, i64::from(unmet))
                })
                .collect(),
        );
        self.risk_refused.replace(
            refused
                .into_iter()
                .map(|(namespace, n)| {
                    (
                        ByNamespace { namespace },
                        i64::try_from(n).unwrap_or(i64::MAX),
                    )
                })
                .collect(),
        );
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `/metrics`, `/healthz` (process up), `/readyz` (caches synced, CA loaded).
pub fn router(metrics: std::sync::Arc<Metrics>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let m = metrics.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }),
        )
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
        m.subscriber_connected(1);
        m.subscriber_connected(1);
        m.subscriber_connected(-1);
        m.set_leader(true);
        let requirement = |ns: &str, id: &str| [ns.to_owned(), "high".to_owned(), id.to_owned()];
        m.set_risk(
            [
                (requirement("shop", "LOW-REQ1"), false),
                (requirement("shop", "MEDIUM-REQ1"), true),
                (requirement("old", "LOW-REQ1"), true),
            ],
            [("shop".to_owned(), 2), ("old".to_owned(), 1)],
        );
        m.set_risk(
            [
                (requirement("shop", "LOW-REQ1"), false),
                (requirement("shop", "MEDIUM-REQ1"), true),
            ],
            [("shop".to_owned(), 2)],
        );
        let text = m.render();
        assert!(
            !text.contains("\"old\""),
            "a namespace no longer labelled stays:\n{text}"
        );
        for expected in [
            "ambit_config_nacks_total{subscriber=\"node/n1\"} 2",
            "ambit_ca_requests_total{result=\"denied\"} 1",
            "ambit_config_subscribers 1",
            "ambit_leader 1",
            "ambit_risk_requirement_unmet{namespace=\"shop\",profile=\"high\",requirement=\"LOW-REQ1\"} 0",
            "ambit_risk_requirement_unmet{namespace=\"shop\",profile=\"high\",requirement=\"MEDIUM-REQ1\"} 1",
            "ambit_risk_refused_service_accounts{namespace=\"shop\"} 2",
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
    }
}
