//! The mesh index: cluster objects in, a [`Snapshot`] of versioned config resources out, and
//! each subscriber's view of it. Pure: the reflectors feed it, unit tests feed it by hand.

use crate::crd::{AuthorizationPolicy, Gateway};
use crate::waypoint::{WAYPOINT_CLASS, waypoint_for};
use ambit_proto::config::v1 as pb;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Namespace label that enrolls it; on a pod, `none` opts the pod out.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";

/// What a subscriber is, and so what it sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscriber {
    /// A node tunnel: every mesh workload, service and waypoint (outbound), and the policies
    /// of its own node's workloads (inbound).
    Node(String),
    /// A waypoint for the service account `(namespace, name)`: that account's workloads, the
    /// services selecting them, their policies and the waypoint itself.
    Waypoint(String, String),
}

impl std::fmt::Display for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "node/{n}"),
            Self::Waypoint(ns, sa) => write!(f, "waypoint/{ns}/{sa}"),
        }
    }
}

/// One resource with its content version.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: String,
    pub resource: Arc<pb::Resource>,
}

/// Everything the mesh knows, keyed by resource name.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub resources: BTreeMap<String, Entry>,
    /// Counts snapshots published; consecutive generations differ by `changed`.
    pub generation: u64,
    /// Names added, changed or removed since generation `generation - 1`.
    pub changed: Arc<BTreeSet<String>>,
}

/// The cluster objects the index reads.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub namespaces: &'a [Arc<Namespace>],
    pub pods: &'a [Arc<Pod>],
    pub services: &'a [Arc<Service>],
    pub endpoint_slices: &'a [Arc<EndpointSlice>],
    pub gateways: &'a [Arc<Gateway>],
    pub policies: &'a [Arc<AuthorizationPolicy>],
}

fn label<'a>(m: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    m.labels.as_ref()?.get(key).map(String::as_str)
}

fn ns_name(m: &kube::api::ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// A stable content hash (FNV-1a 64) of the encoded resource: the same content has the same
/// version across controller restarts, so a resuming client is sent only real changes.
fn version_of(resource: &pb::Resource) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in resource.encode_to_vec() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn entry(name: String, kind: pb::resource::Kind) -> (String, Entry) {
    let mut resource = pb::Resource {
        name: name.clone(),
        version: String::new(),
        kind: Some(kind),
    };
    let version = version_of(&resource);
    resource.version = version.clone();
    (
        name,
        Entry {
            version,
            resource: Arc::new(resource),
        },
    )
}

pub fn build(inputs: &Inputs<'_>, trust_domain: &str) -> Snapshot {
    let enrolled: BTreeSet<&str> = inputs
        .namespaces
        .iter()
        .filter(|n| {
            label(&n.metadata, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_AMBIENT)
                && n.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut resources = BTreeMap::new();

    // Services by (namespace, name): slices and waypoints look theirs up.
    let services_by_name: BTreeMap<(&str, &str), &Arc<Service>> = inputs
        .services
        .iter()
        .filter_map(|s| {
            Some((
                (
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ),
                s,
            ))
        })
        .collect();

    // Waypoints first: workloads point at the waypoint of their service account.
    let mut waypoint_of_sa: BTreeMap<(String, String), String> = BTreeMap::new();
    for gw in inputs.gateways {
        if gw.spec.gateway_class_name != WAYPOINT_CLASS {
            continue;
        }
        let Ok(for_sa) = waypoint_for(gw) else {
            continue;
        };
        let (ns, name) = ns_name(&gw.metadata);
        let vips = services_by_name
            .get(&(ns.as_str(), name.as_str()))
            .map(|s| cluster_ips(s))
            .unwrap_or_default();
        waypoint_of_sa.insert((ns.clone(), for_sa.clone()), format!("{ns}/{name}"));
        let wp = pb::Waypoint {
            name: name.clone(),
            namespace: ns.clone(),
            for_service_account: for_sa,
            identity: format!("spiffe://{trust_domain}/ns/{ns}/sa/{name}"),
            vips,
        };
        let (k, e) = entry(
            format!("waypoint/{ns}/{name}"),
            pb::resource::Kind::Waypoint(wp),
        );
        resources.insert(k, e);
    }

    // Service membership from EndpointSlices: pod uid -> service -> service port -> target.
    let mut membership: BTreeMap<String, BTreeMap<String, pb::PortMap>> = BTreeMap::new();
    for slice in inputs.endpoint_slices {
        let (ns, _) = ns_name(&slice.metadata);
        if !enrolled.contains(ns.as_str()) {
            continue;
        }
        let Some(svc_name) = label(&slice.metadata, "kubernetes.io/service-name") else {
            continue;
        };
        let Some(svc) = services_by_name.get(&(ns.as_str(), svc_name)) else {
            continue;
        };
        let mut ports = BTreeMap::new();
        for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port);
            if let (Ok(port), Some(Ok(target))) =
                (u32::try_from(sp.port), slice_port.map(u32::try_from))
            {
                ports.insert(port, target);
            }
        }
        for ep in &slice.endpoints {
            let Some(uid) = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.uid.clone())
            else {
                continue;
            };
            membership
                .entry(uid)
                .or_default()
                .entry(format!("{ns}/{svc_name}"))
                .or_default()
                .ports
                .extend(ports.iter().map(|(k, v)| (*k, *v)));
        }
    }

    for ns in &enrolled {
        let (k, e) = entry(
            format!("namespace/{ns}"),
            pb::resource::Kind::Namespace(pb::Namespace {
                name: (*ns).to_owned(),
            }),
        );
        resources.insert(k, e);
    }

    for pod in inputs.pods {
        let m = &pod.metadata;
        let (ns, name) = ns_name(m);
        if !enrolled.contains(ns.as_str())
            // Leaves the mesh as soon as deletion starts, not after the grace period.
            || m.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let status = pod.status.as_ref();
        if spec.host_network == Some(true)
            || matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        // A scheduled pod is listed before it has addresses: the node tunnel learns of it
        // before the CNI plugin asks whether to capture it.
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.clone())
            .collect();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.clone()));
        }
        let (Some(uid), Some(node)) = (m.uid.clone(), spec.node_name.clone()) else {
            continue;
        };
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let wl = pb::Workload {
            uid: uid.clone(),
            name,
            namespace: ns.clone(),
            identity: format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"),
            waypoint: waypoint_of_sa
                .get(&(ns.clone(), sa.clone()))
                .cloned()
                .unwrap_or_default(),
            service_account: sa,
            node,
            ips,
            services: membership.remove(&uid).unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            opted_out: label(m, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_NONE),
        };
        let (k, e) = entry(format!("workload/{uid}"), pb::resource::Kind::Workload(wl));
        resources.insert(k, e);
    }

    for svc in inputs.services {
        let (ns, name) = ns_name(&svc.metadata);
        if !enrolled.contains(ns.as_str()) {
            continue;
        }
        let ports = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| pb::ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u32::try_from(p.port).unwrap_or(0),
                target_port: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                        u32::try_from(*i).unwrap_or(0)
                    }
                    Some(_) => 0,
                    None => u32::try_from(p.port).unwrap_or(0),
                },
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
            })
            .collect();
        let s = pb::Service {
            hostname: format!("{name}.{ns}.svc.cluster.local"),
            vips: cluster_ips(svc),
            name: name.clone(),
            namespace: ns.clone(),
            ports,
        };
        let (k, e) = entry(
            format!("service/{ns}/{name}"),
            pb::resource::Kind::Service(s),
        );
        resources.insert(k, e);
    }

    for p in inputs.policies {
        let (ns, name) = ns_name(&p.metadata);
        if !enrolled.contains(ns.as_str()) {
            continue;
        }
        let ap = pb::AuthorizationPolicy {
            name: name.clone(),
            namespace: ns.clone(),
            action: p.spec.action.as_str().into(),
            match_labels: p
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            rules: p
                .spec
                .rules
                .iter()
                .map(|r| pb::Rule {
                    principals: r.principals.clone(),
                    namespaces: r.namespaces.clone(),
                    ip_blocks: r.ip_blocks.clone(),
                    ports: r.ports.iter().map(|p| u32::from(*p)).collect(),
                    methods: r.methods.clone(),
                    paths: r.paths.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| pb::HeaderMatch {
                            name: h.name.clone(),
                            value: h.value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let (k, e) = entry(
            format!("authorizationpolicy/{ns}/{name}"),
            pb::resource::Kind::AuthorizationPolicy(ap),
        );
        resources.insert(k, e);
    }
    Snapshot {
        resources,
        generation: 0,
        changed: Arc::default(),
    }
}

fn cluster_ips(s: &Service) -> Vec<String> {
    let Some(spec) = s.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.clone());
    }
    ips.retain(|ip| ip != "None" && !ip.is_empty());
    ips
}

fn policy_applies(p: &pb::AuthorizationPolicy, w: &pb::Workload) -> bool {
    p.namespace == w.namespace
        && p.match_labels
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
}

impl Snapshot {
    /// The names and versions `subscriber` should hold.
    pub fn view(&self, subscriber: &Subscriber) -> BTreeMap<&str, &Entry> {
        let workloads = || {
            self.resources
                .values()
                .filter_map(|e| match &e.resource.kind {
                    Some(pb::resource::Kind::Workload(w)) => Some(w),
                    _ => None,
                })
        };
        let mut out = BTreeMap::new();
        match subscriber {
            Subscriber::Node(node) => {
                let local: Vec<&pb::Workload> = workloads().filter(|w| &w.node == node).collect();
                for (k, e) in &self.resources {
                    let keep = match &e.resource.kind {
                        Some(pb::resource::Kind::AuthorizationPolicy(p)) => {
                            local.iter().any(|w| policy_applies(p, w))
                        }
                        Some(_) => true,
                        None => false,
                    };
                    if keep {
                        out.insert(k.as_str(), e);
                    }
                }
            }
            Subscriber::Waypoint(ns, sa) => {
                let mine: Vec<&pb::Workload> = workloads()
                    .filter(|w| &w.namespace == ns && &w.service_account == sa)
                    .collect();
                let services: BTreeSet<&String> =
                    mine.iter().flat_map(|w| w.services.keys()).collect();
                for (k, e) in &self.resources {
                    let keep = match &e.resource.kind {
                        Some(pb::resource::Kind::Workload(w)) => {
                            &w.namespace == ns && &w.service_account == sa
                        }
                        Some(pb::resource::Kind::Service(s)) => {
                            services.contains(&format!("{}/{}", s.namespace, s.name))
                        }
                        Some(pb::resource::Kind::Waypoint(w)) => {
                            &w.namespace == ns && &w.for_service_account == sa
                        }
                        Some(pb::resource::Kind::AuthorizationPolicy(p)) => {
                            mine.iter().any(|w| policy_applies(p, w))
                        }
                        Some(pb::resource::Kind::Namespace(_)) | None => false,
                    };
                    if keep {
                        out.insert(k.as_str(), e);
                    }
                }
            }
        }
        out
    }
}

/// Names whose entries differ between `old` and `new` (a merge walk over both sorted maps).
pub fn changed_names(
    old: &BTreeMap<String, Entry>,
    new: &BTreeMap<String, Entry>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, e) in new {
        if old.get(k).map(|o| &o.version) != Some(&e.version) {
            out.insert(k.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone());
        }
    }
    out
}

impl Snapshot {
    /// The delta from `prev` (which the subscriber was brought to) to `self`, looking only at
    /// the changed names, when that is exact: for a node subscriber whose own workloads and
    /// whose policies did not change (those decide which policies it sees). `None`: the caller
    /// needs a full diff.
    pub fn incremental_delta(
        &self,
        prev: &Snapshot,
        subscriber: &Subscriber,
        have: &mut BTreeMap<String, String>,
    ) -> Option<pb::Delta> {
        let Subscriber::Node(node) = subscriber else {
            return None;
        };
        if self.generation != prev.generation + 1 {
            return None;
        }
        let scoped = |e: Option<&Entry>| match e.and_then(|e| e.resource.kind.as_ref()) {
            Some(pb::resource::Kind::AuthorizationPolicy(_)) => true,
            Some(pb::resource::Kind::Workload(w)) => &w.node == node,
            _ => false,
        };
        if self
            .changed
            .iter()
            .any(|k| scoped(self.resources.get(k)) || scoped(prev.resources.get(k)))
        {
            return None;
        }
        let mut delta = pb::Delta::default();
        for k in self.changed.iter() {
            match self.resources.get(k) {
                Some(e) if have.get(k) != Some(&e.version) => {
                    have.insert(k.clone(), e.version.clone());
                    delta.upserts.push((*e.resource).clone());
                }
                Some(_) => {}
                None => {
                    if have.remove(k).is_some() {
                        delta.removals.push(k.clone());
                    }
                }
            }
        }
        Some(delta)
    }

    /// What to send `subscriber` to move it from `have` (name -> version) to its view; `have`
    /// becomes the view. The view borrows from the snapshot: no resource is copied but those sent.
    pub fn delta_for(
        &self,
        subscriber: &Subscriber,
        have: &mut BTreeMap<String, String>,
    ) -> pb::Delta {
        let view = self.view(subscriber);
        let delta = diff(have, &view);
        for name in &delta.removals {
            have.remove(name);
        }
        for r in &delta.upserts {
            have.insert(r.name.clone(), r.version.clone());
        }
        delta
    }
}

/// What to send to move a client from `have` (name -> version) to `want`.
pub fn diff(have: &BTreeMap<String, String>, want: &BTreeMap<&str, &Entry>) -> pb::Delta {
    let upserts = want
        .iter()
        .filter(|(k, e)| have.get(**k) != Some(&e.version))
        .map(|(_, e)| (*e.resource).clone())
        .collect();
    let removals = have
        .keys()
        .filter(|k| !want.contains_key(k.as_str()))
        .cloned()
        .collect();
    pb::Delta {
        nonce: String::new(),
        upserts,
        removals,
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
