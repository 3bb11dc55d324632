//! The `RateLimitPolicy` custom resource (`ambit.dev/v1alpha1`): local rate limits the
//! controller compiles for the waypoints. Its CRD is generated from these types.

use crate::crd::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A local rate limit on Services and routes of this namespace: each waypoint replica serving
/// a target lets `local.requests` per `local.unit` through (bursts of up to `local.burst`) and
/// answers the rest 429 (gRPC RESOURCE_EXHAUSTED). Each target has a quota of its own.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    shortname = "rlp",
    status = "RateLimitPolicyStatus",
    printcolumn = r#"{"name":"Requests","type":"integer","jsonPath":".spec.local.requests"}"#,
    printcolumn = r#"{"name":"Unit","type":"string","jsonPath":".spec.local.unit"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What the limit is attached to, in this namespace; each target gets the whole quota.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["group", "kind", "name"]
    ))]
    pub target_refs: Vec<TargetRef>,
    pub local: LocalRateLimit,
}

/// Gateway API's `LocalPolicyTargetReference`: a Service (group `""`) or an HTTPRoute or
/// GRPCRoute (group `gateway.networking.k8s.io`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.kind == 'Service' ? self.group == '' : self.group == 'gateway.networking.k8s.io'",
    "message": "a Service is in group \"\", HTTPRoute and GRPCRoute in gateway.networking.k8s.io"
}]))]
pub struct TargetRef {
    #[schemars(regex(pattern = r"^(gateway\.networking\.k8s\.io)?$"))]
    pub group: String,
    pub kind: TargetKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    Service,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
        }
    }
}

/// A quota per waypoint replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimit {
    /// Requests let through per `unit`.
    #[schemars(range(min = 1))]
    pub requests: u32,
    pub unit: RateUnit,
    /// Requests let through at once after a quiet spell; at least (and by default) `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    pub fn millis(self) -> u64 {
        match self {
            Self::Second => 1_000,
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
        }
    }
}

/// What the controller reports about a RateLimitPolicy (the Lease holder writes it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RateLimitPolicyStatus {
    /// `Accepted`: `True`, or `False` with reason `NamespaceNotEnrolled` or `TargetNotFound`
    /// (the targets that exist are limited all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
