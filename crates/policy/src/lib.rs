//! L4 authorization: who may open a connection to which workload port.
//!
//! Semantics (as Istio's L4 AuthorizationPolicy): a matching DENY policy wins; otherwise, if
//! any ALLOW policy applies to the workload, the connection must match one of them; with no
//! ALLOW policy it is allowed.

use crate::cidr::Cidr;
use crate::model::Workload;
use ambit_identity::SpiffeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Which workloads a policy applies to: its namespace, narrowed by a label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyScope {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One rule: every non-empty field must match. An empty rule matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Rule {
    /// SPIFFE ids (`spiffe://td/ns/N/sa/S`); `*` matches any authenticated peer.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Source namespaces (authenticated peers only).
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Destination (target) ports.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Policy {
    pub name: String,
    pub namespace: String,
    pub action: Action,
    /// No selector: every workload of the namespace.
    #[serde(default)]
    pub selector: Option<PolicyScope>,
    /// A policy matches a connection when one of its rules does. An ALLOW policy without
    /// rules allows nothing; a DENY policy without rules denies nothing.
    #[serde(default)]
    pub rules: Vec<L4Rule>,
}

/// Who is connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The verified peer identity; `None` for plaintext.
    pub identity: Option<SpiffeId>,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, by the named policy or (`None`) by the default deny of ALLOW policies.
    Deny(Option<String>),
}

impl L4Policy {
    fn applies_to(&self, workload: &Workload) -> bool {
        self.namespace == workload.namespace
            && self.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| workload.labels.get(k) == Some(v))
            })
    }

    fn matches(&self, port: u16, source: &Source) -> bool {
        self.rules.iter().any(|r| r.matches(port, source))
    }
}

impl L4Rule {
    fn matches(&self, port: u16, source: &Source) -> bool {
        let principal_ok = self.principals.is_empty()
            || source.identity.as_ref().is_some_and(|id| {
                let id = id.to_string();
                self.principals.iter().any(|p| p == "*" || *p == id)
            });
        let namespace_ok = self.namespaces.is_empty()
            || source
                .identity
                .as_ref()
                .is_some_and(|id| self.namespaces.iter().any(|n| n == id.namespace()));
        let ip_ok = self.ip_blocks.is_empty()
            || self.ip_blocks.iter().any(|b| {
                b.parse::<Cidr>()
                    .map(|c| c.contains(source.ip))
                    .unwrap_or(false)
            });
        let port_ok = self.ports.is_empty() || self.ports.contains(&port);
        principal_ok && namespace_ok && ip_ok && port_ok
    }
}

pub(crate) fn evaluate(
    policies: &[L4Policy],
    workload: &Workload,
    port: u16,
    source: &Source,
) -> Decision {
    let applicable = || policies.iter().filter(|p| p.applies_to(workload));
    if let Some(p) = applicable().find(|p| p.action == Action::Deny && p.matches(port, source)) {
        return Decision::Deny(Some(p.name.clone()));
    }
    let mut allows = applicable()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| p.matches(port, source)) {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}
