//! The capture rules, applied atomically with `nft -f -`: one table in each captured pod's
//! netns ([`install`]), and one pair of tables in the node's own netns ([`install_node`]) that
//! lets the node's probes in (see docs/capture.md, "Probes").

use crate::HBONE_PORT;
use ambit_handoff::{INBOUND_PORT, Mode, OUTBOUND_PORT, PROBE_SOURCE, TUNNEL_MARK};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const TABLE: &str = "ambit";
/// In the node's netns, one table per family: `inet` (SNAT of the node's own connections,
/// anti-spoofing for routed packets) and `bridge` (anti-spoofing for bridged ones).
const NODE_TABLE: &str = "ambit_node";
/// The set of captured pods' addresses the node's probes are rewritten for.
const PROBE_TARGETS: &str = "probe_targets";
/// DNS, the one non-TCP protocol an enrolled pod may send in strict mode.
const DNS_PORT: u16 = 53;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(
        "cannot run {program} (is it installed? the capture agent needs nsenter and nft): {source}"
    )]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("nft in netns {netns} failed: {stderr}")]
    Nft { netns: String, stderr: String },
}

/// A pod's ruleset. Starting with `table` + `delete table` makes the whole transaction
/// idempotent: it replaces whatever an earlier run left, or creates the table afresh.
///
/// - nat: TCP out to the tunnel's 15001, TCP in (but HBONE and the node's probes) to 15006;
///   the tunnel's own marked sockets and loopback go as they are.
/// - filter, both modes: IPv6 is refused (TCP reset, the rest dropped): the tunnel's
///   listeners and dials are IPv4 only, and a refusal here does not depend on that. Resets
///   go out (they are the refusals, and carry nothing).
/// - filter, strict mode: what the tunnel never sees (UDP, ICMP, any other protocol) is
///   dropped both ways, except DNS queries out and what belongs to an allowed connection
///   (DNS answers, ICMP errors such as "fragmentation needed" for a TCP connection).
pub fn ruleset(mode: Mode) -> String {
    let (strict, strict_out) = match mode {
        Mode::Strict => (
            "
    meta l4proto tcp accept
    ct state established,related accept
    counter drop"
                .to_owned(),
            format!(
                "
    meta l4proto tcp accept
    udp dport {DNS_PORT} accept
    ct state established,related accept
    counter drop"
            ),
        ),
        Mode::Permissive => (String::new(), String::new()),
    };
    format!(
        "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark {TUNNEL_MARK:#x} return
    oifname \"lo\" return
    meta l4proto tcp redirect to :{OUTBOUND_PORT}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta mark {TUNNEL_MARK:#x} return
    iifname \"lo\" return
    ip saddr {PROBE_SOURCE} return
    tcp dport {HBONE_PORT} return
    meta l4proto tcp redirect to :{INBOUND_PORT}
  }}
  chain inbound {{
    type filter hook input priority filter; policy accept;
    iifname \"lo\" accept
    meta nfproto ipv6 meta l4proto tcp reject with tcp reset
    meta nfproto ipv6 drop{strict}
  }}
  chain outbound {{
    type filter hook output priority mangle; policy accept;
    oifname \"lo\" accept
    meta nfproto ipv6 tcp flags & rst == rst accept
    meta nfproto ipv6 meta l4proto tcp reject with tcp reset
    meta nfproto ipv6 drop{strict_out}
  }}
}}
"
    )
}

/// The node's ruleset: the node's own TCP connections to its captured pods (kubelet's probes)
/// leave with [`PROBE_SOURCE`] as their source, which the pods' rules let through to the app;
/// no packet the node forwards or bridges may carry that source, so no pod (on this node or
/// another) can pass for a probe.
///
/// "The node's own": packets of a local socket (`meta skuid` exists only for those, never for
/// forwarded packets). "Its captured pods": the set `probe_targets`, which the agent keeps to
/// the addresses of the node's captured pods ([`set_probe_targets`]); any other destination (a
/// pod of another node, through an uplink that may be a veth too) keeps the node's address.
/// Replies come back through this netns, so conntrack undoes the SNAT.
pub fn node_ruleset() -> String {
    format!(
        "table inet {NODE_TABLE}
delete table inet {NODE_TABLE}
table bridge {NODE_TABLE}
delete table bridge {NODE_TABLE}
table inet {NODE_TABLE} {{
  set {PROBE_TARGETS} {{
    type ipv4_addr;
  }}
  chain probes {{
    type nat hook postrouting priority srcnat; policy accept;
    meta l4proto tcp meta skuid >= 0 ip daddr @{PROBE_TARGETS} snat ip to {PROBE_SOURCE}
  }}
  chain spoofed {{
    type filter hook forward priority filter; policy accept;
    ip saddr {PROBE_SOURCE} counter drop
  }}
}}
table bridge {NODE_TABLE} {{
  chain spoofed {{
    type filter hook forward priority filter; policy accept;
    ip saddr {PROBE_SOURCE} counter drop
  }}
}}
"
    )
}

fn removal(tables: &[(&str, &str)]) -> String {
    tables
        .iter()
        .map(|(family, name)| format!("table {family} {name}\ndelete table {family} {name}\n"))
        .collect()
}

const NODE_TABLES: [(&str, &str); 2] = [("inet", NODE_TABLE), ("bridge", NODE_TABLE)];

/// Runs `nft` in `netns`, or in the caller's own netns for `None`.
fn nft(netns: Option<&Path>, script: Option<&str>, args: &[&str]) -> Result<String, RulesError> {
    let mut command = match netns {
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display())).arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    let mut child = command
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RulesError::Spawn {
            program: "nsenter",
            source,
        })?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| RulesError::Spawn {
                program: "nft",
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RulesError::Spawn {
            program: "nft",
            source,
        })?;
    if !out.status.success() {
        return Err(RulesError::Nft {
            netns: netns.map_or_else(|| "of the node".into(), |n| n.display().to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or replaces) the capture rules for a pod served in `mode` in `netns` (a path such
/// as `/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn install(netns: &Path, mode: Mode) -> Result<(), RulesError> {
    nft(Some(netns), Some(&ruleset(mode)), &["-f", "-"]).map(|_| ())
}

/// Removes the capture rules; removing absent rules is not an error.
pub fn remove(netns: &Path) -> Result<(), RulesError> {
    nft(
        Some(netns),
        Some(&removal(&[("inet", TABLE)])),
        &["-f", "-"],
    )
    .map(|_| ())
}

/// Whether the capture rules are in place.
pub fn installed(netns: &Path) -> Result<bool, RulesError> {
    match nft(Some(netns), None, &["list", "table", "inet", TABLE]) {
        Ok(listing) => Ok(listing.contains(&format!("redirect to :{OUTBOUND_PORT}"))
            && listing.contains(&format!("redirect to :{INBOUND_PORT}"))),
        Err(RulesError::Nft { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Installs (or replaces) the node's probe rules in the caller's own netns (the agent runs in
/// the node's).
pub fn install_node() -> Result<(), RulesError> {
    nft(None, Some(&node_ruleset()), &["-f", "-"]).map(|_| ())
}

/// The script that makes `probe_targets` exactly `targets`, in one transaction.
fn probe_targets_script(targets: &std::collections::BTreeSet<std::net::Ipv4Addr>) -> String {
    let mut script = format!("flush set inet {NODE_TABLE} {PROBE_TARGETS}\n");
    if !targets.is_empty() {
        let elements: Vec<String> = targets.iter().map(ToString::to_string).collect();
        script += &format!(
            "add element inet {NODE_TABLE} {PROBE_TARGETS} {{ {} }}\n",
            elements.join(", ")
        );
    }
    script
}

/// Sets the addresses the node's probes are rewritten for: the node's captured pods.
pub fn set_probe_targets(
    targets: &std::collections::BTreeSet<std::net::Ipv4Addr>,
) -> Result<(), RulesError> {
    nft(None, Some(&probe_targets_script(targets)), &["-f", "-"]).map(|_| ())
}

/// Removes the node's probe rules; absent rules are not an error.
pub fn remove_node() -> Result<(), RulesError> {
    nft(None, Some(&removal(&NODE_TABLES)), &["-f", "-"]).map(|_| ())
}

/// Whether both of the node's tables are in place with their rules.
pub fn node_installed() -> Result<bool, RulesError> {
    let mut all = true;
    for (family, name) in NODE_TABLES {
        all &= match nft(None, None, &["list", "table", family, name]) {
            Ok(listing) => listing.contains(&format!("saddr {PROBE_SOURCE}")),
            Err(RulesError::Nft { .. }) => false,
            Err(e) => return Err(e),
        };
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_exempts_marked_traffic_hbone_and_probes() {
        let r = ruleset(Mode::Strict);
        assert!(r.contains("meta mark 0x539 return"));
        assert!(r.contains("tcp dport 15008 return"));
        assert!(r.contains("ip saddr 169.254.7.127 return"));
        assert!(r.contains("redirect to :15001"));
        assert!(r.contains("redirect to :15006"));
        // The probe exemption comes before the inbound redirect, or it would never apply.
        assert!(r.find("saddr 169.254.7.127") < r.find("redirect to :15006"));
        // Replace-or-create: the delete must come before the definition.
        let delete = r.find("delete table").unwrap_or(usize::MAX);
        let define = r.find("chain output").unwrap_or(0);
        assert!(delete < define);
    }

    #[test]
    fn strict_mode_drops_what_the_tunnel_never_sees() {
        let strict = ruleset(Mode::Strict);
        let permissive = ruleset(Mode::Permissive);
        assert_eq!(strict.matches("counter drop").count(), 2, "{strict}");
        assert!(strict.contains("udp dport 53 accept"));
        assert!(!permissive.contains("counter drop"), "{permissive}");
        for r in [&strict, &permissive] {
            assert_eq!(
                r.matches("meta nfproto ipv6 meta l4proto tcp reject with tcp reset")
                    .count(),
                2,
                "IPv6 is refused both ways in both modes: {r}"
            );
        }
    }

    #[test]
    fn probe_targets_are_replaced_whole() {
        let none = probe_targets_script(&Default::default());
        assert_eq!(none, "flush set inet ambit_node probe_targets\n");
        let two = ["10.1.0.9".parse().unwrap(), "10.1.0.3".parse().unwrap()]
            .into_iter()
            .collect();
        assert_eq!(
            probe_targets_script(&two),
            "flush set inet ambit_node probe_targets\nadd element inet ambit_node probe_targets { 10.1.0.3, 10.1.0.9 }\n"
        );
    }

    #[test]
    fn node_rules_snat_only_local_sockets_and_drop_the_source_elsewhere() {
        let r = node_ruleset();
        assert!(r.contains("meta skuid >= 0"), "{r}");
        assert!(r.contains("ip daddr @probe_targets"), "{r}");
        assert!(r.contains("snat ip to 169.254.7.127"), "{r}");
        assert_eq!(
            r.matches("hook forward").count(),
            2,
            "routed and bridged: {r}"
        );
        assert_eq!(r.matches("ip saddr 169.254.7.127 counter drop").count(), 2);
        assert_eq!(
            removal(&NODE_TABLES),
            "table inet ambit_node\ndelete table inet ambit_node\ntable bridge ambit_node\ndelete table bridge ambit_node\n"
        );
    }
}
