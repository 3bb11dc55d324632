//! Stores filled by hand, for the index's and the views' unit tests.
#![allow(clippy::unwrap_used)]

use super::{Change, Stores, Watched};
use crate::crd::{AuthorizationPolicy, Gateway, RequestAuthentication};
use crate::ratelimit::RateLimitPolicy;
use crate::request_authn::{Fetched, KeySources};
use crate::route_crd::{GRPCRoute, HTTPRoute, ReferenceGrant};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::json;

pub struct Cluster {
    namespaces: Writer<Namespace>,
    pods: Writer<Pod>,
    services: Writer<Service>,
    endpoint_slices: Writer<EndpointSlice>,
    gateways: Writer<Gateway>,
    policies: Writer<AuthorizationPolicy>,
    http_routes: Writer<HTTPRoute>,
    grpc_routes: Writer<GRPCRoute>,
    grants: Writer<ReferenceGrant>,
    request_authns: Writer<RequestAuthentication>,
    rate_limits: Writer<RateLimitPolicy>,
    secrets: Writer<Secret>,
    pub fetched: Fetched,
    pub refusals: crate::risk::Refusals,
}

pub trait Object: Watched + kube::Resource<DynamicType = ()> + Clone + 'static {
    fn writer(cluster: &mut Cluster) -> &mut Writer<Self>;
}

macro_rules! object {
    ($($kind:ty => $field:ident),*) => {$(
        impl Object for $kind {
            fn writer(cluster: &mut Cluster) -> &mut Writer<Self> {
                &mut cluster.$field
            }
        }
    )*};
}
object!(Namespace => namespaces, Pod => pods, Service => services,
    EndpointSlice => endpoint_slices, Gateway => gateways, AuthorizationPolicy => policies,
    HTTPRoute => http_routes, GRPCRoute => grpc_routes, ReferenceGrant => grants,
    RequestAuthentication => request_authns, Secret => secrets,
    RateLimitPolicy => rate_limits);

impl Cluster {
    pub fn new() -> Self {
        Self {
            namespaces: Writer::default(),
            pods: Writer::default(),
            services: Writer::default(),
            endpoint_slices: Writer::default(),
            gateways: Writer::default(),
            policies: Writer::default(),
            http_routes: Writer::default(),
            grpc_routes: Writer::default(),
            grants: Writer::default(),
            request_authns: Writer::default(),
            rate_limits: Writer::default(),
            secrets: Writer::default(),
            fetched: Fetched::default(),
            refusals: crate::risk::Refusals::default(),
        }
    }

    pub fn stores(&self) -> Stores {
        Stores {
            namespaces: self.namespaces.as_reader(),
            pods: self.pods.as_reader(),
            services: self.services.as_reader(),
            endpoint_slices: self.endpoint_slices.as_reader(),
            gateways: self.gateways.as_reader(),
            policies: self.policies.as_reader(),
            http_routes: self.http_routes.as_reader(),
            grpc_routes: self.grpc_routes.as_reader(),
            grants: self.grants.as_reader(),
            request_authns: self.request_authns.as_reader(),
            rate_limits: self.rate_limits.as_reader(),
            key_sources: KeySources {
                secrets: self.secrets.as_reader(),
                fetched: self.fetched.clone(),
            },
            refusals: self.refusals.clone(),
        }
    }

    /// Creates or updates `o`; returns the change the reflector would report.
    pub fn apply<K: Object>(&mut self, o: K) -> Change {
        let change = o.change();
        K::writer(self).apply_watcher_event(&Event::Apply(o));
        change
    }

    pub fn delete<K: Object>(&mut self, o: K) -> Change {
        let change = o.change();
        K::writer(self).apply_watcher_event(&Event::Delete(o));
        change
    }
}

pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

pub fn ns(name: &str, enrolled: bool) -> Namespace {
    let labels = if enrolled {
        json!({super::DATAPLANE_MODE_LABEL: "ambient"})
    } else {
        json!({})
    };
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

/// Pod `name` has uid `uid-<name>` and label `app: <sa>`, and is Ready.
pub fn pod(ns: &str, name: &str, sa: &str, node: &str, ip: &str) -> Pod {
    obj(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": {"app": sa}},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]},
    }))
}

/// `p` with its Ready condition set to `ready`.
pub fn with_ready(mut p: Pod, ready: bool) -> Pod {
    let status = if ready { "True" } else { "False" };
    let conditions = p
        .status
        .get_or_insert_default()
        .conditions
        .get_or_insert_default();
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(obj(json!({"type": "Ready", "status": status})));
    p
}

pub fn service(ns: &str, name: &str, ip: &str, port: i32) -> Service {
    obj(json!({"metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}}))
}

/// An EndpointSlice of service `svc` listing pods by name (uids `uid-<name>`).
pub fn slice(ns: &str, svc: &str, pods: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| json!({"addresses": ["10.9.9.9"], "targetRef": {"kind": "Pod", "name": p, "uid": format!("uid-{p}")}}))
        .collect();
    obj(
        json!({"metadata": {"namespace": ns, "name": format!("{svc}-abc"),
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}),
    )
}

/// An ALLOW policy for the workloads labeled `app: <app>`.
pub fn policy(ns: &str, name: &str, app: &str) -> AuthorizationPolicy {
    obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, "rules": [{"principals": ["spiffe://cluster.local/ns/shop/sa/front"]}]},
    }))
}

/// A waypoint Gateway that has served (its account is bound to it).
pub fn waypoint(ns: &str, name: &str, for_sa: &str) -> Gateway {
    let mut gw = new_waypoint(ns, name, for_sa);
    gw.metadata.annotations = Some(std::collections::BTreeMap::from([(
        crate::waypoint::SERVING_SINCE.to_owned(),
        "2026-01-01T00:00:00Z".to_owned(),
    )]));
    gw
}

/// A waypoint Gateway none of whose pods has been ready yet.
pub fn new_waypoint(ns: &str, name: &str, for_sa: &str) -> Gateway {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": ns, "name": name, "labels": {"ambit.dev/for-service-account": for_sa}},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }))
}

/// An HTTPRoute in `ns` with Service parents `parents` (`ns/name`, port name) and one rule
/// sending to `backends` (`ns/name`, port, weight).
pub fn http_route(
    ns: &str,
    name: &str,
    parents: &[&str],
    backends: &[(&str, i32, i32)],
) -> HTTPRoute {
    let parent_refs: Vec<_> = parents
        .iter()
        .map(|p| {
            let (pns, pname) = p.split_once('/').unwrap();
            json!({"group": "", "kind": "Service", "namespace": pns, "name": pname})
        })
        .collect();
    let backend_refs: Vec<_> = backends
        .iter()
        .map(|(b, port, weight)| {
            let (bns, bname) = b.split_once('/').unwrap();
            json!({"name": bname, "namespace": bns, "port": port, "weight": weight})
        })
        .collect();
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"parentRefs": parent_refs, "rules": [{"backendRefs": backend_refs}]},
    }))
}

/// A ReferenceGrant in `ns` letting HTTPRoutes of `from_ns` refer to its Services.
pub fn grant(ns: &str, from_ns: &str) -> ReferenceGrant {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"namespace": ns, "name": format!("from-{from_ns}")},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_ns}],
            "to": [{"group": "", "kind": "Service"}]},
    }))
}
