//! The policy types, as sources deliver them (mesh YAML, the controller's config stream) and
//! as callers describe a connection or a request.

use crate::cidr::{Cidr, CidrError};
use ambit_identity::SpiffeId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Once any ALLOW policy applies to a workload, a request must match one of them.
    #[serde(alias = "ALLOW")]
    Allow,
    /// A matching DENY policy refuses the request, whatever ALLOW policies say.
    #[serde(alias = "DENY")]
    Deny,
    /// Never changes the decision; a match is reported in [`Verdict::audit`].
    #[serde(alias = "AUDIT")]
    Audit,
    /// A matching CUSTOM policy sends the request to its external authorization provider
    /// ([`Policy::provider`]), named in [`Verdict::ext_authz`]; the caller asks it. Where no
    /// provider can be asked (L4), a CUSTOM policy that may match denies.
    #[serde(alias = "CUSTOM")]
    Custom,
}

/// Which workloads a policy applies to: its namespace, narrowed by a label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyScope {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl PolicyScope {
    /// Whether a policy of `namespace` narrowed by `scope` applies to `target`'s workload.
    pub fn selects(namespace: &str, scope: Option<&Self>, target: &Target<'_>) -> bool {
        namespace == target.namespace
            && scope.is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| target.labels.get(k) == Some(v))
            })
    }
}

/// An IP block of a rule (`ADDRESS` or `ADDRESS/PREFIX`), parsed once when it is made so that
/// a connection is never the one paying for the parse. A malformed block keeps its text (it
/// serializes as written) and [`Policy::validate`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBlock {
    text: String,
    parsed: Result<Cidr, CidrError>,
}

impl IpBlock {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = text.parse();
        Self { text, parsed }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed block, or why the text is not one.
    pub fn cidr(&self) -> Result<&Cidr, &CidrError> {
        self.parsed.as_ref()
    }
}

impl From<String> for IpBlock {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for IpBlock {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// One rule: every non-empty field must match, and a field matches when any of its values
/// does (`headers`: every header name named must match, see [`HeaderMatch`]). An empty rule
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// SPIFFE ids (`spiffe://td/ns/N/sa/S`); `*` matches any authenticated peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Source namespaces (authenticated peers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Source addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    /// Destination (target) ports, on the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// L7: HTTP methods, exact and case-sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// L7: `/exact`, `/prefix/*` (also matches `/prefix`), `/any-prefix*`, `*suffix`, `*`;
    /// matched against the normalized path without its query ([`crate::normalize_path`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// L7: the request's host (`:authority` or `Host`, without its port), case-insensitive:
    /// `exact.host`, `*.suffix.host`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// L7: request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// L7: the end user a validated JWT names, `ISSUER/SUBJECT`: `exact`, `prefix*`,
    /// `*suffix`, or `*` (any authenticated request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// L7: matches when none of these does (so also a request without a token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// L7: conditions on the validated token's claims, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

impl Rule {
    /// Whether the rule has fields only an HTTP request has (and so only a waypoint checks).
    pub fn is_l7(&self) -> bool {
        !self.methods.is_empty()
            || !self.paths.is_empty()
            || !self.hosts.is_empty()
            || !self.headers.is_empty()
            || !self.request_principals.is_empty()
            || !self.not_request_principals.is_empty()
            || !self.when.is_empty()
    }
}

/// A `when` condition: `key` names a claim of the request's validated token,
/// `request.auth.claims[NAME]`, nested as `request.auth.claims[a][b]`. The claim must match
/// one of `values` (if any) and none of `not_values` (if any); values are `exact`,
/// `prefix*`, `*suffix` or `*`. A list-valued claim, and a space-separated `scope`, `scp` or
/// `permission` string, matches a value when one of its elements does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The end user of a request, from a token the waypoint validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAuth {
    /// `ISSUER/SUBJECT`.
    pub principal: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// A request header a rule requires. Names are case-insensitive. Values: `exact`, `prefix*`,
/// `*suffix`, or `*` (present with any value). Entries for different names must all match;
/// entries for one name are alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// An authorization policy: what it does to which workloads, for which requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub action: Action,
    /// No selector: every workload of the namespace.
    #[serde(default)]
    pub selector: Option<PolicyScope>,
    /// A policy matches a request when one of its rules does. An ALLOW policy without rules
    /// allows nothing; a DENY policy without rules denies nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// CUSTOM only: the name of the external authorization provider to ask
    /// ([`crate::ExtAuthzProvider`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

impl Policy {
    /// Whether any rule has L7 fields.
    pub fn has_l7_rules(&self) -> bool {
        self.rules.iter().any(Rule::is_l7)
    }
}

/// Who is connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The verified peer identity; `None` for plaintext.
    pub identity: Option<SpiffeId>,
    pub ip: IpAddr,
}

/// The workload being reached, and on which of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub port: u16,
}

/// An HTTP request, as the waypoint parsed it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a http::Method,
    /// The request target's path as received (origin form); its query is ignored.
    pub path: &'a str,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1); a `:port` is ignored.
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The validated token's principal and claims; `None`: no token was presented.
    pub auth: Option<&'a RequestAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, by the named policy or (`None`) by the default deny of ALLOW policies.
    Deny(Option<String>),
}

/// A decision, and the AUDIT policy that matched, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The name of the first matching AUDIT policy.
    pub audit: Option<String>,
    /// The external authorization providers of the matching CUSTOM policies, each named once
    /// in slice order: the request is allowed only if every one of them allows it too. Empty
    /// when the decision is a deny.
    pub ext_authz: Vec<String>,
}
