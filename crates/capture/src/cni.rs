//! The chained CNI plugin (CNI spec 1.0): runs after the pod's network is set up.
//!
//! Every pod is recorded in the state directory, captured or not (the agent reconciles them
//! all with the enrollment). ADD asks the tunnel, which decides; it fails closed when the
//! tunnel cannot decide (see [`starts_uncaptured`] for the one exception), so no enrolled pod
//! ever sends traffic uncaptured while the node boots.

use crate::pod;
use crate::rules;
use crate::state::{self, PodRecord};
use ambit_handoff::Enrollment;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// CNI error codes (spec: 11 = try again later).
const CODE_TRY_AGAIN: u32 = 11;
const CODE_INVALID_CONFIG: u32 = 7;
const CODE_INTERNAL: u32 = 999;

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// The error as the runtime expects it on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg}).to_string()
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: String,
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`, split (`K8S_POD_NAME`, `K8S_POD_NAMESPACE`, `K8S_POD_UID`, ...).
    pub args: HashMap<String, String>,
}

impl Invocation {
    pub fn from_env() -> Self {
        let args = std::env::var("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            command: std::env::var("CNI_COMMAND").unwrap_or_default(),
            netns: std::env::var_os("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            args,
        }
    }

    fn arg(&self, key: &str) -> Result<&str, CniError> {
        self.args
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| CniError::new(CODE_INVALID_CONFIG, format!("CNI_ARGS lacks {key}")))
    }
}

/// The version of the network config, for error replies.
pub fn config_version(config: &str) -> String {
    serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".into())
}

/// Runs one invocation; returns what to print on stdout.
pub fn run(invocation: &Invocation, config: &str) -> Result<String, CniError> {
    let conf: Value = serde_json::from_str(config)
        .map_err(|e| CniError::new(CODE_INVALID_CONFIG, format!("network config: {e}")))?;
    let version = config_version(config);
    let socket = conf
        .get("tunnelSocket")
        .and_then(Value::as_str)
        .unwrap_or(ambit_handoff::DEFAULT_SOCKET);
    let socket = Path::new(socket);
    let state = Path::new(
        conf.get("stateDir")
            .and_then(Value::as_str)
            .unwrap_or(state::DEFAULT_STATE_DIR),
    );
    let boot_exempt: Vec<&str> = conf
        .get("bootExemptNamespaces")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Absent in entries written before it existed: on, as the agent's default.
    let reuse = conf
        .get("timeWaitReuse")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match invocation.command.as_str() {
        "VERSION" => Ok(json!({
            "cniVersion": version,
            "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]
        })
        .to_string()),
        "ADD" => {
            add(invocation, socket, state, &boot_exempt, reuse)?;
            let mut result = conf.get("prevResult").cloned().unwrap_or_else(|| json!({}));
            if let Some(map) = result.as_object_mut() {
                map.insert("cniVersion".into(), Value::String(version));
            }
            Ok(result.to_string())
        }
        "DEL" => {
            if let Ok(uid) = invocation.arg("K8S_POD_UID") {
                // The tunnel may be gone or may not know the pod: DEL must still succeed.
                let _ = pod::tell_removed(socket, uid);
                state::forget(state, uid).map_err(internal)?;
            }
            if let Some(netns) = &invocation.netns
                && netns.exists()
            {
                rules::remove(netns).map_err(internal)?;
            }
            Ok(String::new())
        }
        "CHECK" => {
            let netns = netns(invocation)?;
            // A pod recorded as not captured needs no rules (the agent may capture it later);
            // any other must have them.
            let captured = match invocation.arg("K8S_POD_UID") {
                Ok(uid) => state::load(state, uid)
                    .map_err(internal)?
                    .is_none_or(|r| r.captured),
                Err(_) => true,
            };
            match rules::installed(&netns) {
                Ok(installed) if installed || !captured => Ok(String::new()),
                Ok(_) => Err(CniError::new(
                    CODE_INTERNAL,
                    "the ambit capture rules are missing from the pod netns",
                )),
                Err(e) => Err(internal(e)),
            }
        }
        other => Err(CniError::new(
            CODE_INVALID_CONFIG,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(CODE_INTERNAL, e.to_string())
}

fn netns(invocation: &Invocation) -> Result<PathBuf, CniError> {
    invocation
        .netns
        .clone()
        .ok_or_else(|| CniError::new(CODE_INVALID_CONFIG, "CNI_NETNS is not set"))
}

/// ADD: the tunnel decides; its answer is applied both ways and recorded. A pod the tunnel
/// cannot decide on (unreachable, or refusing: draining, no view yet) is not started (code 11:
/// the runtime retries), unless the last enrollment the agent saw says it is not enrolled: see
/// [`starts_uncaptured`].
fn add(
    invocation: &Invocation,
    socket: &Path,
    state: &Path,
    boot_exempt: &[&str],
    reuse: bool,
) -> Result<(), CniError> {
    let record = PodRecord {
        uid: invocation.arg("K8S_POD_UID")?.into(),
        name: invocation.arg("K8S_POD_NAME")?.into(),
        namespace: invocation.arg("K8S_POD_NAMESPACE")?.into(),
        netns: netns(invocation)?,
        captured: false,
        time_wait_reuse: false,
    };
    let sysctls = pod::Sysctls::on_node(reuse);
    match pod::enroll(state, socket, &record, &sysctls) {
        Ok(_) => Ok(()),
        Err(e) if e.tunnel_undecided() => {
            if let Some(why) = starts_uncaptured(
                state::saved_enrollment(state).as_ref(),
                &record,
                boot_exempt,
            ) {
                pod::uninstall(state, &record, &sysctls.proc).map_err(internal)?;
                eprintln!(
                    "ambit-capture: the node tunnel cannot decide ({e}); pod {} {why}, so it starts uncaptured (the agent captures it if it is enrolled)",
                    record.label()
                );
                return Ok(());
            }
            Err(CniError::new(
                CODE_TRY_AGAIN,
                format!(
                    "the ambit node tunnel is not ready ({e}); refusing to start pod {} uncaptured",
                    record.label()
                ),
            ))
        }
        // Rules may be in (recorded as captured); DEL, which the runtime runs after a failed
        // ADD, removes both.
        Err(e) => Err(CniError::new(CODE_TRY_AGAIN, e.to_string())),
    }
}

/// With the tunnel unable to decide, why a new pod may start uncaptured (`None`: it waits). If
/// the agent saved a synced enrollment that does not capture the pod. Without one (the node is
/// booting, ambit was just installed) every pod waits, as an enrolled one must: a pod of an
/// enrolled namespace never starts in plaintext. A namespace labeled while the tunnel is down
/// has its new pods start plain and captured by the agent once the tunnel is back, as its
/// running pods are. The one exception is `boot_exempt`: ambit's own namespace and what the
/// mesh needs to come up (cluster DNS), whose pods are never enrolled in practice; without it a
/// cluster powered on at once never starts (each tunnel waits for the controller's first
/// config, the controller's pods wait for a tunnel).
pub fn starts_uncaptured(
    saved: Option<&Enrollment>,
    record: &PodRecord,
    boot_exempt: &[&str],
) -> Option<&'static str> {
    if saved.is_some_and(|e| e.synced && !e.captures(&record.uid, &record.namespace)) {
        Some("was not enrolled as last seen")
    } else if boot_exempt.contains(&record.namespace.as_str()) {
        Some("is in a namespace the mesh needs to come up")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pod_args() -> HashMap<String, String> {
        [
            ("K8S_POD_UID", "u1"),
            ("K8S_POD_NAME", "p"),
            ("K8S_POD_NAMESPACE", "demo"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn add_fails_closed_without_a_tunnel() {
        let inv = Invocation {
            command: "ADD".into(),
            netns: Some("/proc/self/ns/net".into()),
            args: pod_args(),
        };
        let err = run(
            &inv,
            r#"{"cniVersion":"1.0.0","name":"k","type":"ambit-capture","tunnelSocket":"/nonexistent/t.sock","stateDir":"/nonexistent/state"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, CODE_TRY_AGAIN);
        assert!(err.msg.contains("not ready"), "{}", err.msg);
        assert!(err.msg.contains("demo/p (u1)"), "{}", err.msg);
        assert!(err.to_json("1.0.0").contains("\"code\":11"));
    }

    #[test]
    fn without_a_tunnel_only_a_known_unenrolled_pod_starts() {
        let record = PodRecord {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "demo".into(),
            netns: "/run/netns/x".into(),
            captured: false,
            time_wait_reuse: false,
        };
        let view = |synced: bool, namespaces: &[&str], opted_out: &[&str]| Enrollment {
            synced,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            opted_out: opted_out.iter().map(|s| s.to_string()).collect(),
            ..Enrollment::default()
        };
        let starts = |saved: Option<&Enrollment>| starts_uncaptured(saved, &record, &[]).is_some();
        assert!(!starts(None), "nothing known: wait");
        assert!(starts(Some(&view(true, &["other"], &[]))));
        assert!(!starts(Some(&view(true, &["demo"], &[]))));
        assert!(starts(Some(&view(true, &["demo"], &["u1"]))));
        assert!(!starts(Some(&view(false, &[], &[]))));
        // What the mesh needs to come up starts whatever is known; nothing else does.
        let system = PodRecord {
            namespace: "ambit-system".into(),
            ..record.clone()
        };
        let exempt = ["ambit-system", "kube-system"];
        assert!(starts_uncaptured(None, &system, &exempt).is_some());
        assert!(starts_uncaptured(None, &record, &exempt).is_none());
        assert!(starts_uncaptured(Some(&view(true, &["demo"], &[])), &record, &exempt).is_none());
    }

    #[test]
    fn version_and_bad_input() {
        let inv = Invocation {
            command: "VERSION".into(),
            ..Default::default()
        };
        let out = run(&inv, r#"{"cniVersion":"1.0.0"}"#).unwrap();
        assert!(out.contains("supportedVersions"));
        assert_eq!(run(&inv, "not json").unwrap_err().code, CODE_INVALID_CONFIG);
        let inv = Invocation {
            command: "ADD".into(),
            args: pod_args(),
            ..Default::default()
        };
        assert!(
            run(&inv, r#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .msg
                .contains("CNI_NETNS")
        );
    }

    #[test]
    fn args_are_split() {
        let inv = Invocation {
            args: "K8S_POD_UID=u;K8S_POD_NAME=n"
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(inv.arg("K8S_POD_UID").unwrap(), "u");
        assert!(inv.arg("K8S_POD_NAMESPACE").is_err());
    }
}
