//! L4 metrics with source/destination identity labels, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// `outbound`, `inbound` or `inbound_plaintext`.
    pub direction: &'static str,
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
    denied: u64,
}

/// A metric family: name, help, and how to read it from the counters.
type Family = (&'static str, &'static str, fn(&Counters) -> u64);

#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<Labels, Counters>>,
}

impl Metrics {
    fn with(&self, labels: Labels, f: impl FnOnce(&mut Counters)) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(series.entry(labels).or_default());
    }

    pub fn opened(&self, labels: Labels) {
        self.with(labels, |c| c.opened += 1);
    }

    /// `sent` is bytes from the source to the destination.
    pub fn closed(&self, labels: Labels, sent: u64, received: u64) {
        self.with(labels, |c| {
            c.closed += 1;
            c.sent += sent;
            c.received += received;
        });
    }

    pub fn denied(&self, labels: Labels) {
        self.with(labels, |c| c.denied += 1);
    }

    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut out = String::new();
        let families: [Family; 5] = [
            (
                "ambit_tcp_connections_opened_total",
                "TCP connections opened",
                |c| c.opened,
            ),
            (
                "ambit_tcp_connections_closed_total",
                "TCP connections closed",
                |c| c.closed,
            ),
            (
                "ambit_tcp_sent_bytes_total",
                "Bytes from source to destination",
                |c| c.sent,
            ),
            (
                "ambit_tcp_received_bytes_total",
                "Bytes from destination to source",
                |c| c.received,
            ),
            (
                "ambit_tcp_denied_total",
                "Connections denied by L4 policy or mode",
                |c| c.denied,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (labels, counters) in &series {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",source_identity=\"{}\",destination_identity=\"{}\"}} {}",
                    labels.direction,
                    escape(&labels.source),
                    escape(&labels.destination),
                    value(counters)
                );
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The config stream's health: whether it is up, and deltas accepted and rejected (NACKed).
pub fn render_config_stream(state: &ambit_controller_client::StreamState) -> String {
    format!(
        "# HELP ambit_tunnel_config_connected Whether the config stream from the controller is up (1) or the tunnel serves its last good config (0).\n\
         # TYPE ambit_tunnel_config_connected gauge\n\
         ambit_tunnel_config_connected {}\n\
         # HELP ambit_tunnel_config_deltas_total Config deltas from the controller, by result.\n\
         # TYPE ambit_tunnel_config_deltas_total counter\n\
         ambit_tunnel_config_deltas_total{{result=\"accepted\"}} {}\n\
         ambit_tunnel_config_deltas_total{{result=\"rejected\"}} {}\n",
        u8::from(state.connected),
        state.accepted,
        state.rejected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_identity_labels() {
        let m = Metrics::default();
        let l = || Labels {
            direction: "inbound",
            source: "spiffe://td/ns/a/sa/b".into(),
            destination: "spiffe://td/ns/c/sa/d".into(),
        };
        m.opened(l());
        m.closed(l(), 10, 20);
        m.denied(l());
        let text = m.render();
        assert!(text.contains("ambit_tcp_connections_opened_total{direction=\"inbound\",source_identity=\"spiffe://td/ns/a/sa/b\",destination_identity=\"spiffe://td/ns/c/sa/d\"} 1"), "{text}");
        assert!(text.contains("ambit_tcp_sent_bytes_total{direction=\"inbound\",source_identity=\"spiffe://td/ns/a/sa/b\",destination_identity=\"spiffe://td/ns/c/sa/d\"} 10"));
        assert!(text.contains("ambit_tcp_received_bytes_total{direction=\"inbound\",source_identity=\"spiffe://td/ns/a/sa/b\",destination_identity=\"spiffe://td/ns/c/sa/d\"} 20"));
        assert!(text.contains("ambit_tcp_denied_total{direction=\"inbound\",source_identity=\"spiffe://td/ns/a/sa/b\",destination_identity=\"spiffe://td/ns/c/sa/d\"} 1"));
    }
}
