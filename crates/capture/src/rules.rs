//! The redirect rules, applied atomically with `nft -f -` inside the pod's netns.

use crate::HBONE_PORT;
use ambit_handoff::{INBOUND_PORT, OUTBOUND_PORT, TUNNEL_MARK};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const TABLE: &str = "ambit";

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

/// The ruleset. Starting with `table` + `delete table` makes the whole transaction idempotent:
/// it replaces whatever an earlier run left, or creates the table afresh.
pub fn ruleset() -> String {
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
    tcp dport {HBONE_PORT} return
    meta l4proto tcp redirect to :{INBOUND_PORT}
  }}
}}
"
    )
}

fn removal() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

fn nft(netns: &Path, script: Option<&str>, args: &[&str]) -> Result<String, RulesError> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("nft")
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
            netns: netns.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or replaces) the capture rules in `netns` (a path such as `/run/netns/NAME` or
/// `/proc/PID/ns/net`).
pub fn install(netns: &Path) -> Result<(), RulesError> {
    nft(netns, Some(&ruleset()), &["-f", "-"]).map(|_| ())
}

/// Removes the capture rules; removing absent rules is not an error.
pub fn remove(netns: &Path) -> Result<(), RulesError> {
    nft(netns, Some(&removal()), &["-f", "-"]).map(|_| ())
}

/// Whether the capture rules are in place.
pub fn installed(netns: &Path) -> Result<bool, RulesError> {
    match nft(netns, None, &["list", "table", "inet", TABLE]) {
        Ok(listing) => Ok(listing.contains(&format!("redirect to :{OUTBOUND_PORT}"))
            && listing.contains(&format!("redirect to :{INBOUND_PORT}"))),
        Err(RulesError::Nft { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_exempts_marked_traffic_and_hbone() {
        let r = ruleset();
        assert!(r.contains("meta mark 0x539 return"));
        assert!(r.contains("tcp dport 15008 return"));
        assert!(r.contains("redirect to :15001"));
        assert!(r.contains("redirect to :15006"));
        // Replace-or-create: the delete must come before the definition.
        let delete = r.find("delete table").unwrap_or(usize::MAX);
        let define = r.find("chain output").unwrap_or(0);
        assert!(delete < define);
    }
}
