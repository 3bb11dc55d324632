//! The resources of the model, as sources deliver them.

use ambit_policy::{ExtAuthzProvider, Policy, RequestAuthentication};
use ambit_route::Route;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Everything a data plane needs to know, from one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Namespaces enrolled in the mesh: their new pods are captured before the pods
    /// themselves are known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub waypoints: Vec<Waypoint>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// JWT rules, applied by waypoints (`ambit-authn`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_authentications: Vec<RequestAuthentication>,
    /// HTTPRoutes and GRPCRoutes attached to Services, applied by waypoints (`ambit-route`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// External authorization servers CUSTOM policies name, asked by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext_authz_providers: Vec<ExtAuthzProvider>,
    /// Local rate limits on Services and routes, applied by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

impl MeshConfig {
    pub fn from_yaml(text: &str) -> Result<Self, serde_saphyr::Error> {
        serde_saphyr::from_str(text)
    }

    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        serde_saphyr::to_string(self)
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The node it runs on.
    pub node: String,
    /// Empty until the pod has addresses.
    pub ips: Vec<IpAddr>,
    /// Whether it is enrolled: its traffic goes through a tunnel that speaks HBONE on 15008.
    /// `false` for pods that are not, or that opted out of an enrolled namespace.
    #[serde(default = "yes")]
    pub hbone: bool,
    /// The pod's Ready condition: only ready workloads are picked behind a Service.
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The waypoint its service account is bound to (`<namespace>/<name>`), whether or not that
    /// waypoint has an address yet: the binding, not the address, decides that its traffic
    /// goes through a waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
}

fn yes() -> bool {
    true
}

/// A Kubernetes Service: VIPs, ports and the workloads behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Workload uids.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
    /// The port's name; its prefix (`http`, `http2`, `grpc`, ...) tells the protocol when
    /// `app_protocol` is empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Kubernetes `appProtocol`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_protocol: String,
}

/// A waypoint proxy serving one service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    /// The service account whose traffic it handles.
    pub for_service_account: String,
    /// Its own service account (its identity).
    pub service_account: String,
    /// Where it terminates HBONE.
    pub address: SocketAddr,
}

/// A local rate limit (RateLimitPolicy) on a Service or a route of its namespace: each waypoint
/// replica serving it lets `requests` through per `interval_ms`, in bursts of up to `burst`
/// (at least `requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub namespace: String,
    pub target: RateLimitTarget,
    pub requests: u32,
    pub interval_ms: u64,
    #[serde(default)]
    pub burst: u32,
}

/// What a rate limit is attached to, in its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name")]
pub enum RateLimitTarget {
    Service(String),
    #[serde(rename = "HTTPRoute")]
    HttpRoute(String),
    #[serde(rename = "GRPCRoute")]
    GrpcRoute(String),
}
