//! The chained CNI plugin (CNI spec 1.0): runs after the pod's network is set up.
//!
//! ADD fails closed: if the node tunnel is not ready, the pod is not created (the runtime
//! retries), so no enrolled pod ever sends traffic uncaptured while the node boots.

use crate::handoff::{self, Request};
use crate::rules;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
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
        .unwrap_or(crate::DEFAULT_SOCKET);
    let socket = Path::new(socket);
    let state = Path::new(
        conf.get("stateDir")
            .and_then(Value::as_str)
            .unwrap_or(crate::agent::DEFAULT_STATE_DIR),
    );
    match invocation.command.as_str() {
        "VERSION" => Ok(json!({
            "cniVersion": version,
            "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]
        })
        .to_string()),
        "ADD" => {
            let netns = netns(invocation)?;
            add(invocation, &netns, socket)?;
            let record = crate::agent::PodRecord {
                uid: invocation.arg("K8S_POD_UID")?.into(),
                name: invocation.arg("K8S_POD_NAME")?.into(),
                namespace: invocation.arg("K8S_POD_NAMESPACE")?.into(),
                netns: netns.clone(),
            };
            crate::agent::remember(state, &record)
                .map_err(|e| CniError::new(CODE_INTERNAL, e.to_string()))?;
            let mut result = conf.get("prevResult").cloned().unwrap_or_else(|| json!({}));
            if let Some(map) = result.as_object_mut() {
                map.insert("cniVersion".into(), Value::String(version));
            }
            Ok(result.to_string())
        }
        "DEL" => {
            if let Ok(uid) = invocation.arg("K8S_POD_UID") {
                // The tunnel may be gone or may not know the pod: DEL must still succeed.
                let _ = handoff::send(socket, &Request::Remove { uid: uid.into() }, None);
                crate::agent::forget(state, uid)
                    .map_err(|e| CniError::new(CODE_INTERNAL, e.to_string()))?;
            }
            if let Some(netns) = &invocation.netns
                && netns.exists()
            {
                rules::remove(netns).map_err(|e| CniError::new(CODE_INTERNAL, e.to_string()))?;
            }
            Ok(String::new())
        }
        "CHECK" => {
            let netns = netns(invocation)?;
            match rules::installed(&netns) {
                Ok(true) => Ok(String::new()),
                Ok(false) => Err(CniError::new(
                    CODE_INTERNAL,
                    "the ambit capture rules are missing from the pod netns",
                )),
                Err(e) => Err(CniError::new(CODE_INTERNAL, e.to_string())),
            }
        }
        other => Err(CniError::new(
            CODE_INVALID_CONFIG,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

fn netns(invocation: &Invocation) -> Result<PathBuf, CniError> {
    invocation
        .netns
        .clone()
        .ok_or_else(|| CniError::new(CODE_INVALID_CONFIG, "CNI_NETNS is not set"))
}

fn add(invocation: &Invocation, netns: &Path, socket: &Path) -> Result<(), CniError> {
    if !handoff::tunnel_ready(socket) {
        return Err(CniError::new(
            CODE_TRY_AGAIN,
            format!(
                "the ambit node tunnel is not ready (no listener on {}); refusing to start the pod uncaptured",
                socket.display()
            ),
        ));
    }
    enroll(
        netns,
        socket,
        Request::Add {
            uid: invocation.arg("K8S_POD_UID")?.into(),
            name: invocation.arg("K8S_POD_NAME")?.into(),
            namespace: invocation.arg("K8S_POD_NAMESPACE")?.into(),
        },
    )
    .map_err(|e| CniError::new(CODE_TRY_AGAIN, e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error(transparent)]
    Handoff(#[from] handoff::HandoffError),
    #[error("cannot open netns {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
}

/// Captures a pod: rules first, then the handoff, so the tunnel's listeners exist before any
/// connection could be redirected to them only if the handoff succeeds; on a failed handoff the
/// rules stay, and the pod's traffic fails closed rather than leaving uncaptured.
pub fn enroll(netns: &Path, socket: &Path, request: Request) -> Result<(), EnrollError> {
    let fd: OwnedFd = std::fs::File::open(netns)
        .map_err(|source| EnrollError::Netns {
            path: netns.display().to_string(),
            source,
        })?
        .into();
    rules::install(netns)?;
    handoff::send(socket, &request, Some(&fd))?;
    Ok(())
}

/// Releases a pod: the tunnel forgets it, the rules go (opt-out or delete).
pub fn release(netns: &Path, socket: &Path, uid: &str) -> Result<(), EnrollError> {
    rules::remove(netns)?;
    handoff::send(socket, &Request::Remove { uid: uid.into() }, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn add_fails_closed_without_a_tunnel() {
        let inv = Invocation {
            command: "ADD".into(),
            netns: Some("/proc/self/ns/net".into()),
            args: HashMap::new(),
        };
        let err = run(
            &inv,
            r#"{"cniVersion":"1.0.0","name":"k","type":"ambit-capture","tunnelSocket":"/nonexistent/t.sock"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, CODE_TRY_AGAIN);
        assert!(err.msg.contains("not ready"), "{}", err.msg);
        assert!(err.to_json("1.0.0").contains("\"code\":11"));
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
