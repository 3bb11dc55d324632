//! On SIGTERM: a rolling upgrade, or `helm uninstall`?
//!
//! - Upgrade (or a node drain, or a deleted agent pod): the DaemonSet is still there. Pods
//!   keep their rules (their traffic fails closed while no tunnel serves them) and the next
//!   agent replays them to the next tunnel.
//! - Uninstall: the DaemonSet is gone or being deleted. Every capture rule, the conflist entry
//!   and the plugin binary are removed, so pods go on in plain TCP.
//!
//! The agent asks the apiserver for its own DaemonSet with its service-account token (the
//! chart grants `get` on that one object). `helm uninstall` deletes the RBAC objects and the
//! service account right after the DaemonSet, before the kubelet even stops the agent, so
//! at SIGTERM the answer is as often 401 (the account is gone) or 403 (the binding is gone) as
//! 404. Those count as uninstall only if the same request succeeded when the agent started:
//! the rights it had were revoked since. An apiserver that cannot be reached keeps the rules
//! (fail closed), and the log says so.

use k8s_openapi::api::apps::v1::DaemonSet;
use std::time::Duration;

/// The agent's apiserver client: in a pod, its service-account token; elsewhere (tests,
/// tools), the kubeconfig.
pub async fn client() -> Result<kube::Client, String> {
    let config = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().map_err(|e| e.to_string())
    } else {
        kube::Config::infer().await.map_err(|e| e.to_string())
    };
    config.and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string()))
}

/// Where the agent's DaemonSet is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for DaemonSetRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one GET of the DaemonSet gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Present {
        deleting: bool,
    },
    /// The apiserver answered with this HTTP status.
    Status(u16),
    /// No answer (connection, TLS, timeout) or no configuration.
    Unreachable(String),
}

/// The agent's last act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Keep every rule, entry and binary; `why` goes to the log.
    Keep {
        why: String,
    },
    Uninstall {
        why: String,
    },
}

/// The decision, from the GET at SIGTERM and whether the GET at start succeeded.
pub fn ending(at_term: &Observation, worked_at_start: bool) -> Ending {
    match at_term {
        Observation::Present { deleting: true } => Ending::Uninstall {
            why: "the DaemonSet is being deleted".into(),
        },
        Observation::Present { deleting: false } => Ending::Keep {
            why: "the DaemonSet is still there (upgrade or restart)".into(),
        },
        Observation::Status(404) => Ending::Uninstall {
            why: "the DaemonSet is gone".into(),
        },
        Observation::Status(code @ (401 | 403)) if worked_at_start => Ending::Uninstall {
            why: format!("the agent's rights were revoked since it started (HTTP {code})"),
        },
        Observation::Status(code) => Ending::Keep {
            why: format!("the apiserver answered HTTP {code}; failing closed"),
        },
        Observation::Unreachable(e) => Ending::Keep {
            why: format!("the apiserver cannot be reached ({e}); failing closed"),
        },
    }
}

const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's apiserver client, or why it has none.
#[derive(Debug)]
pub struct Apiserver {
    api: Result<kube::Api<DaemonSet>, String>,
    daemonset: DaemonSetRef,
}

impl Apiserver {
    /// In-cluster config when running in a pod (`KUBERNETES_SERVICE_HOST`), else the usual
    /// kubeconfig inference.
    pub fn connect(client: Result<kube::Client, String>, daemonset: DaemonSetRef) -> Self {
        let api = client.map(|client| kube::Api::namespaced(client, &daemonset.namespace));
        Self { api, daemonset }
    }

    pub fn daemonset(&self) -> &DaemonSetRef {
        &self.daemonset
    }

    pub async fn observe(&self) -> Observation {
        let api = match &self.api {
            Ok(api) => api,
            Err(e) => return Observation::Unreachable(format!("no apiserver config: {e}")),
        };
        match tokio::time::timeout(GET_TIMEOUT, api.get(&self.daemonset.name)).await {
            Ok(Ok(ds)) => Observation::Present {
                deleting: ds.metadata.deletion_timestamp.is_some(),
            },
            Ok(Err(kube::Error::Api(status))) => Observation::Status(status.code),
            Ok(Err(e)) => Observation::Unreachable(e.to_string()),
            Err(_) => Observation::Unreachable(format!("no answer in {GET_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uninstalls(o: Observation, at_start: bool) -> bool {
        matches!(ending(&o, at_start), Ending::Uninstall { .. })
    }

    #[test]
    fn tells_uninstall_from_upgrade() {
        assert!(uninstalls(Observation::Status(404), false));
        assert!(uninstalls(Observation::Present { deleting: true }, true));
        assert!(!uninstalls(Observation::Present { deleting: false }, true));
        // RBAC deleted by helm right after the DaemonSet: revoked rights mean uninstall...
        assert!(uninstalls(Observation::Status(401), true));
        assert!(uninstalls(Observation::Status(403), true));
        // ...but rights that never worked say nothing.
        assert!(!uninstalls(Observation::Status(403), false));
        assert!(!uninstalls(Observation::Status(500), true));
        let keep = ending(&Observation::Unreachable("timeout".into()), true);
        assert!(
            matches!(&keep, Ending::Keep { why } if why.contains("failing closed")),
            "{keep:?}"
        );
    }

    #[test]
    fn daemonset_refs_parse() {
        let r: DaemonSetRef = "ambit-system/ambit-node"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.namespace, "ambit-system");
        assert_eq!(r.name, "ambit-node");
        assert_eq!(r.to_string(), "ambit-system/ambit-node");
        for bad in ["ambit-node", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<DaemonSetRef>().is_err(), "{bad}");
        }
    }
}
