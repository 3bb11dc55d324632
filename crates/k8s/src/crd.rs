//! Custom resource types: ambit's `AuthorizationPolicy` (the CRD is generated from this type,
//! `cargo run -p ambit-controller --bin crdgen`), and the subset of Gateway API's `Gateway` and
//! `GatewayClass` the controller reads and writes (the real Gateway API CRDs are installed in a
//! cluster; tests install the minimal CRDs generated from these types).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may reach the selected workloads. Node tunnels enforce L4 fields; the waypoint of the
/// selected workloads' service account, where there is one, enforces all fields with the real
/// client's identity. `status.conditions` (type `Enforced`) says which applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "ap",
    status = "AuthorizationPolicyStatus",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Enforced","type":"string","jsonPath":".status.conditions[?(@.type==\"Enforced\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Enforced\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.action) && self.action == 'CUSTOM') == has(self.provider)",
    "message": "a CUSTOM policy names a provider, and only a CUSTOM policy does"
}]))]
pub struct AuthorizationPolicySpec {
    /// ALLOW (default), DENY, AUDIT (matches are logged, the decision is unchanged) or CUSTOM
    /// (a matching request is also checked by the external authorization `provider`).
    #[serde(default)]
    pub action: PolicyAction,
    /// CUSTOM only: the external authorization provider to ask, one of the mesh's
    /// (Helm value `extAuthz.providers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderRef>,
    /// The workloads of this namespace the policy applies to; none: all of them. For L7
    /// rules, the waypoints of the selected workloads' service accounts enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A request matching any rule matches the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Every label must be on the pod with this value.
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// An external authorization provider, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ProviderRef {
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9.-]+$"))]
    pub name: String,
}

impl PolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

/// `*`, or `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`. The controller checks the
/// rest (`.` and `..` segments).
const PRINCIPAL_PATTERN: &str =
    r"^(\*|spiffe://[a-z0-9._-]+/ns/[A-Za-z0-9._-]+/sa/[A-Za-z0-9._-]+)$";
/// An IPv4 address with an optional prefix length 0-32, exactly; or the shape of an IPv6 one
/// with an optional prefix length 0-128 (a pattern cannot say an IPv6 address whole, and CEL's
/// `isCIDR` needs Kubernetes 1.31, past the chart's 1.30): the controller checks the rest,
/// reports a policy that fails on it, and enforces it fail-safe.
const IP_BLOCK_PATTERN: &str = concat!(
    r"^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?",
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
);

/// Every non-empty field must match (each field matches if any of its values does).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Peer SPIFFE ids, e.g. `spiffe://cluster.local/ns/shop/sa/frontend`, or `*` (any
    /// authenticated peer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 2048), regex(pattern = PRINCIPAL_PATTERN)))]
    pub principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 253), regex(pattern = r"^[A-Za-z0-9._-]+$")))]
    pub namespaces: Vec<String>,
    /// Peer addresses or address ranges: `10.1.2.3`, `10.0.0.0/8`, `fd00::/8`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(max = 64), regex(pattern = IP_BLOCK_PATTERN)))]
    pub ip_blocks: Vec<String>,
    /// Destination ports, on the pod (the container port, not the Service port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1)))]
    pub ports: Vec<u16>,
    /// L7: HTTP methods, exact and case-sensitive (`GET`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")))]
    pub methods: Vec<String>,
    /// L7: paths without query: `/exact`, `/dir/*` (`/dir` and below), `/prefix*`, `*suffix`,
    /// `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// L7: request hosts, case-insensitive and without port: `exact.host`, `*.domain`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// L7: request headers. Every header named must match; several entries for one name are
    /// alternatives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// L7: the end user of a JWT the waypoint validated (see RequestAuthentication),
    /// `ISSUER/SUBJECT`: `exact`, `prefix*`, `*suffix`, or `*` (any valid token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub request_principals: Vec<String>,
    /// L7: requests whose end user is none of these (requests without a token too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1)))]
    pub not_request_principals: Vec<String>,
    /// L7: conditions on the validated JWT's claims; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<PolicyCondition>,
}

/// A condition on a claim of the request's validated JWT.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.values) || has(self.notValues)",
    "message": "a condition needs values or notValues"
}]))]
pub struct PolicyCondition {
    /// `request.auth.claims[NAME]`; nested claims `request.auth.claims[a][b]`.
    #[schemars(regex(pattern = r"^request\.auth\.claims(\[[^\[\]]+\])+$"))]
    pub key: String,
    /// The claim matches one of these (`exact`, `prefix*`, `*suffix`, `*`); a list claim, or
    /// a space-separated `scope`, when one element does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The claim matches none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    #[schemars(regex(pattern = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"))]
    pub name: String,
    /// `exact`, `prefix*`, `*suffix`, or `*` (present with any value).
    pub value: String,
}

/// What the controller reports about a policy (the Lease holder writes it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AuthorizationPolicyStatus {
    /// `Enforced`: `True`, or `False` with reason `Invalid`, `WaypointRequired` or
    /// `NamespaceNotEnrolled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Gateway API `Gateway` (v1), the fields ambit uses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Listener {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct GatewayAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

/// `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

/// Gateway API `GatewayClass` (v1), the fields ambit uses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "GatewayClassStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct GatewayClassStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// End-user authentication: the JWTs the selected workloads accept. Their service account's
/// waypoint validates tokens (the controller resolves each rule's keys and delivers them);
/// a request with an invalid token is refused (401), one without a token goes on
/// unauthenticated and AuthorizationPolicy decides (`requestPrincipals`, `when` on claims).
/// `status.conditions` (type `Ready`) says whether every rule has its keys.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    namespaced,
    shortname = "ra",
    status = "RequestAuthenticationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// The workloads of this namespace whose requests are authenticated; none: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// One rule per issuer; a token is checked by the rule of its `iss`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// The tokens of one issuer and where their keys are: exactly one of `jwks`, `jwksUri` and
/// `jwksSecretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.jwks), has(self.jwksUri), has(self.jwksSecretRef)].filter(x, x).size() == 1",
    "message": "exactly one of jwks, jwksUri and jwksSecretRef"
}]))]
pub struct JwtRuleSpec {
    /// The token's `iss`.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// The token's `aud` must hold one of these; empty: not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The key set (JWKS JSON), inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the controller fetches the key set (HTTPS, the system roots), and refreshes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"))]
    pub jwks_uri: Option<String>,
    /// A Secret of this namespace holding the key set; the Secret must carry the label
    /// `ambit.dev/jwks: "true"` (the controller watches only those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,
    /// Headers holding the token (after `prefix`); none here and in `fromParams`:
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeaderSpec>,
    /// Query parameters holding the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Claims copied into request headers for the app (top level or nested `a.b`); headers
    /// of these names sent by a client are always removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// Keep the token in the request to the app; by default it is removed.
    #[serde(default)]
    pub forward_original_token: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    /// The data key; default `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct JwtHeaderSpec {
    #[schemars(regex(pattern = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"))]
    pub name: String,
    /// E.g. `Bearer ` (case-insensitive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ClaimToHeaderSpec {
    #[schemars(regex(pattern = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"))]
    pub header: String,
    #[schemars(length(min = 1))]
    pub claim: String,
}

/// What the controller reports about a RequestAuthentication (the Lease holder writes it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RequestAuthenticationStatus {
    /// `Ready`: `True`, or `False` with reason `Invalid` or `KeysUnavailable` (its tokens
    /// are refused until the keys come).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The checked-in CRD manifest of `RequestAuthentication`, as YAML.
pub fn request_authentication_crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let header = "# Generated by `cargo run -p ambit-controller --bin crdgen requestauthentications`; do not edit.\n";
    Ok(format!(
        "{header}{}",
        serde_saphyr::to_string(&RequestAuthentication::crd())?
    ))
}

/// The checked-in CRD manifest of `AuthorizationPolicy`, as YAML.
pub fn authorization_policy_crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let header = "# Generated by `cargo run -p ambit-controller --bin crdgen`; do not edit.\n";
    Ok(format!(
        "{header}{}",
        serde_saphyr::to_string(&AuthorizationPolicy::crd())?
    ))
}
