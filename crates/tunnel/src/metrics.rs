//! L4 metrics (prometheus-client) labelled with the source and destination identities, and the
//! config stream's state. A connection resolves its series once, when it opens, and keeps their
//! counters: what it counts later are atomic adds, with no lock shared with other connections.

use ambit_controller_client::StreamState;
use ambit_hbone::TunnelRefusals;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    /// `outbound`, `inbound` or `inbound_plaintext`.
    pub direction: &'static str,
    pub source_identity: String,
    pub destination_identity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeltaLabels {
    /// `accepted` or `rejected` (NACKed).
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    /// `peer_share` or `node`.
    limit: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    received: Family<Labels, Counter>,
    denied: Family<Labels, Counter>,
    config_connected: Gauge,
    config_deltas: Family<DeltaLabels, Counter>,
    config_rejected_resources: Gauge,
    hbone_refused: Family<RefusedLabels, Counter>,
    /// Serializes scrapes while they copy the config stream's totals into the counters (two
    /// at once would both add the same difference). Scrapes only: connections never take it.
    render_lock: Mutex<()>,
}

/// One open connection's series, resolved when it opened.
#[derive(Debug)]
pub struct ConnectionMetrics {
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl ConnectionMetrics {
    /// `sent` is bytes from the source to the destination.
    pub fn closed(self, sent: u64, received: u64) {
        self.closed.inc();
        self.sent.inc_by(sent);
        self.received.inc_by(received);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ambit");
        let mut connection_family = |name: &str, help: &str, unit: Option<Unit>| {
            let family = Family::<Labels, Counter>::default();
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
                None => registry.register(name, help, family.clone()),
            }
            family
        };
        let opened = connection_family("tcp_connections_opened", "TCP connections opened", None);
        let closed = connection_family("tcp_connections_closed", "TCP connections closed", None);
        let sent = connection_family(
            "tcp_sent",
            "Bytes from source to destination, counted when the connection closes",
            Some(Unit::Bytes),
        );
        let received = connection_family(
            "tcp_received",
            "Bytes from destination to source, counted when the connection closes",
            Some(Unit::Bytes),
        );
        let denied = connection_family(
            "tcp_denied",
            "Connections denied by L4 policy, strict mode or the waypoint check",
            None,
        );
        let config_connected = Gauge::default();
        registry.register(
            "tunnel_config_connected",
            "Whether the config stream from the controller is up (1) or the tunnel serves its last good config or a mesh file (0)",
            config_connected.clone(),
        );
        let config_deltas = Family::<DeltaLabels, Counter>::default();
        for result in ["accepted", "rejected"] {
            let _ = config_deltas.get_or_create(&DeltaLabels { result });
        }
        registry.register(
            "tunnel_config_deltas",
            "Config deltas from the controller, by result",
            config_deltas.clone(),
        );
        let config_rejected_resources = Gauge::default();
        registry.register(
            "tunnel_config_rejected_resources",
            "Resources held but left out of the model (or held fail-safe): rejected alone, the rest applied",
            config_rejected_resources.clone(),
        );
        let hbone_refused = Family::<RefusedLabels, Counter>::default();
        for limit in ["peer_share", "node"] {
            let _ = hbone_refused.get_or_create(&RefusedLabels { limit });
        }
        registry.register(
            "tunnel_hbone_refused",
            "HBONE CONNECTs answered 503 at a tunnel limit: the client's share (peer_share) or the node's (node)",
            hbone_refused.clone(),
        );
        Self {
            registry,
            opened,
            closed,
            sent,
            received,
            denied,
            config_connected,
            config_deltas,
            config_rejected_resources,
            hbone_refused,
            render_lock: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// Counts a connection opened and hands back its series for the rest of its life.
    pub fn opened(&self, labels: &Labels) -> ConnectionMetrics {
        self.opened.get_or_create(labels).inc();
        ConnectionMetrics {
            closed: self.closed.get_or_create(labels).clone(),
            sent: self.sent.get_or_create(labels).clone(),
            received: self.received.get_or_create(labels).clone(),
        }
    }

    pub fn denied(&self, labels: &Labels) {
        self.denied.get_or_create(labels).inc();
    }

    /// The exposition text (OpenMetrics), with the config stream's state as of now when the
    /// tunnel has one, and the HBONE servers' refusals so far.
    pub fn render(&self, stream: Option<&StreamState>, refusals: TunnelRefusals) -> String {
        let _serialized = self
            .render_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let catch_up =
            |counter: &Counter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        for (limit, total) in [("peer_share", refusals.peer_share), ("node", refusals.node)] {
            catch_up(
                &self.hbone_refused.get_or_create(&RefusedLabels { limit }),
                total,
            );
        }
        if let Some(state) = stream {
            self.config_connected.set(i64::from(state.connected));
            for (result, total) in [("accepted", state.accepted), ("rejected", state.rejected)] {
                catch_up(
                    &self.config_deltas.get_or_create(&DeltaLabels { result }),
                    total,
                );
            }
            self.config_rejected_resources
                .set(i64::try_from(state.rejected_resources.len()).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_identity_labels() {
        let m = Metrics::default();
        let labels = Labels {
            direction: "inbound",
            source_identity: "spiffe://td/ns/a/sa/b".into(),
            destination_identity: "spiffe://td/ns/c/sa/d".into(),
        };
        let first = m.opened(&labels);
        let second = m.opened(&labels);
        first.closed(10, 20);
        second.closed(1, 2);
        m.denied(&labels);
        let text = m.render(
            None,
            TunnelRefusals {
                peer_share: 3,
                node: 0,
            },
        );
        let series = r#"{direction="inbound",source_identity="spiffe://td/ns/a/sa/b",destination_identity="spiffe://td/ns/c/sa/d"}"#;
        for expected in [
            format!("ambit_tcp_connections_opened_total{series} 2"),
            format!("ambit_tcp_connections_closed_total{series} 2"),
            format!("ambit_tcp_sent_bytes_total{series} 11"),
            format!("ambit_tcp_received_bytes_total{series} 22"),
            format!("ambit_tcp_denied_total{series} 1"),
            "ambit_tunnel_config_connected 0".to_owned(),
            r#"ambit_tunnel_hbone_refused_total{limit="peer_share"} 3"#.to_owned(),
            r#"ambit_tunnel_hbone_refused_total{limit="node"} 0"#.to_owned(),
        ] {
            assert!(text.contains(&expected), "{expected} missing:\n{text}");
        }
    }

    #[test]
    fn totals_are_copied_not_added_again() {
        let m = Metrics::default();
        let state = StreamState {
            connected: true,
            accepted: 3,
            rejected: 1,
            ..Default::default()
        };
        let refusals = TunnelRefusals {
            peer_share: 0,
            node: 2,
        };
        m.render(Some(&state), refusals);
        let text = m.render(Some(&state), refusals);
        for expected in [
            "ambit_tunnel_config_connected 1",
            r#"ambit_tunnel_config_deltas_total{result="accepted"} 3"#,
            r#"ambit_tunnel_config_deltas_total{result="rejected"} 1"#,
            "ambit_tunnel_config_rejected_resources 0",
            r#"ambit_tunnel_hbone_refused_total{limit="node"} 2"#,
        ] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
    }
}
