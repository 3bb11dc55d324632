//! The mesh index: cluster objects in (the reflectors' stores), versioned config resources out,
//! published as [`Snapshot`]s. A change to a pod, service, EndpointSlice or policy recomputes
//! only the resources derived from it, so one pod event costs the same in a cluster of ten pods
//! and of ten thousand; a relist, a namespace (enrollment) or a Gateway (waypoint) change
//! rebuilds everything, and a change in a namespace's risk refusals recomputes its workloads. A route is recomputed when it changes, when a Service it names changes,
//! and (all of them) when a ReferenceGrant changes. Pure apart from reading the stores: unit
//! tests fill stores by hand.

use crate::crd::{AuthorizationPolicy, Gateway, RequestAuthentication};
use crate::ratelimit::RateLimitPolicy;
use crate::request_authn::KeySources;
use crate::route::{Lookup, RouteKind};
use crate::route_crd::{GRPCRoute, HTTPRoute, ReferenceGrant};
use crate::waypoint::{WAYPOINT_CLASS, is_serving, waypoint_for};
use ambit_proto::config::v1 as pb;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use prost::Message;
use prost::bytes::Bytes;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub use ambit_k8s::names::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE};
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The pod condition that says it serves.
const POD_READY: &str = "Ready";

/// A resource name, `<kind>/...`; shared by every snapshot and session that holds it.
pub type Name = Arc<str>;

/// A namespaced object's `(namespace, name)`.
pub type ObjectKey = (String, String);

/// One resource, its content version and its encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: u64,
    pub resource: Arc<pb::Resource>,
    /// `resource` encoded once, sent as is to every subscriber.
    pub encoded: Bytes,
}

impl Entry {
    fn new(name: &str, kind: pb::resource::Kind) -> Self {
        let mut resource = pb::Resource {
            name: name.to_owned(),
            version: String::new(),
            kind: Some(kind),
        };
        let version = content_hash(&resource.encode_to_vec());
        resource.version = format!("{version:016x}");
        Self {
            version,
            encoded: resource.encode_to_vec().into(),
            resource: Arc::new(resource),
        }
    }

    pub fn kind(&self) -> Option<&pb::resource::Kind> {
        self.resource.kind.as_ref()
    }
}

/// A stable content hash (FNV-1a 64): the same content has the same version across controller
/// restarts, so a resuming client is sent only real changes.
fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Generations whose changed names a snapshot remembers: a session that fell up to this many
/// generations behind catches up from those names instead of comparing whole snapshots.
const CHANGE_HISTORY: usize = 64;

/// Everything the mesh knows, keyed by resource name. Consecutive snapshots share every
/// unchanged entry.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub resources: BTreeMap<Name, Entry>,
    /// Counts snapshots published.
    pub generation: u64,
    /// The names added, changed or removed by each of the last generations, newest last: the
    /// last one is what differs from generation `generation - 1`.
    pub recent_changes: Vec<Arc<BTreeSet<Name>>>,
}

impl Snapshot {
    /// The resources whose names start with `kind/` (names sort by kind).
    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = (&'a Name, &'a Entry)> {
        // '0' sorts right after '/'.
        let (from, to): (Name, Name) = (format!("{kind}/").into(), format!("{kind}0").into());
        self.resources.range(from..to)
    }

    /// Names whose entries differ between `prev` and `self`.
    pub fn changed_since(&self, prev: &Snapshot) -> Cow<'_, BTreeSet<Name>> {
        let behind = self.generation.checked_sub(prev.generation);
        match behind.and_then(|b| usize::try_from(b).ok()) {
            Some(0) => return Cow::Owned(BTreeSet::new()),
            Some(1) if !self.recent_changes.is_empty() => {
                return Cow::Borrowed(&self.recent_changes[self.recent_changes.len() - 1]);
            }
            Some(b) if b <= self.recent_changes.len() => {
                let recent = &self.recent_changes[self.recent_changes.len() - b..];
                return Cow::Owned(recent.iter().flat_map(|c| c.iter().cloned()).collect());
            }
            _ => {}
        }
        let mut out: BTreeSet<Name> = self
            .resources
            .iter()
            .filter(|(k, e)| prev.resources.get(*k).map(|p| p.version) != Some(e.version))
            .map(|(k, _)| k.clone())
            .collect();
        out.extend(
            prev.resources
                .keys()
                .filter(|k| !self.resources.contains_key(*k))
                .cloned(),
        );
        Cow::Owned(out)
    }
}

/// The reflectors' stores the index reads.
#[derive(Debug, Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub gateways: Store<Gateway>,
    pub policies: Store<AuthorizationPolicy>,
    pub http_routes: Store<HTTPRoute>,
    pub grpc_routes: Store<GRPCRoute>,
    pub grants: Store<ReferenceGrant>,
    pub request_authns: Store<RequestAuthentication>,
    pub rate_limits: Store<RateLimitPolicy>,
    /// Where RequestAuthentications' key sets come from (labelled Secrets, fetched URIs).
    pub key_sources: KeySources,
    /// The service accounts enforced risk profiles refuse (crate::risk).
    pub refusals: crate::risk::Refusals,
}

impl Stores {
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            services: &self.services,
            grants: &self.grants,
        }
    }

    /// Route `key` of `kind`, resolved; `None` when there is no such route.
    pub fn resolve_route(
        &self,
        kind: RouteKind,
        key: &ObjectKey,
    ) -> Option<crate::route::Resolution> {
        match kind {
            RouteKind::Http => self
                .http_routes
                .get(&object_ref(key))
                .map(|r| crate::route::resolve_http(&r, self.lookup())),
            RouteKind::Grpc => self
                .grpc_routes
                .get(&object_ref(key))
                .map(|r| crate::route::resolve_grpc(&r, self.lookup())),
        }
    }

    /// Every route's kind and key.
    pub fn route_keys(&self) -> Vec<(RouteKind, ObjectKey)> {
        let http = self
            .http_routes
            .state()
            .into_iter()
            .map(|r| (RouteKind::Http, key(&r.metadata)));
        let grpc = self
            .grpc_routes
            .state()
            .into_iter()
            .map(|r| (RouteKind::Grpc, key(&r.metadata)));
        http.chain(grpc).collect()
    }
}

/// What a task following the mesh reads (the stores, the index's snapshots, whether this
/// replica holds the Lease) and the client it writes with.
#[derive(Clone)]
pub struct ClusterView {
    pub client: kube::Client,
    pub leader: tokio::sync::watch::Receiver<bool>,
    pub snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub stores: Stores,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView").finish_non_exhaustive()
    }
}

/// What changed in the cluster: the object is read from its store, which already holds the
/// change (or no longer holds the object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Anything may have changed: a relist.
    All,
    /// A namespace (its enrollment decides about every resource in it): a rebuild, named for
    /// the risk evaluation, which reads only its own namespace's objects.
    Namespace(String),
    /// A Gateway (a waypoint decides about every workload of its account): a rebuild too.
    Gateway(ObjectKey),
    Pod(ObjectKey),
    Service(ObjectKey),
    EndpointSlice(ObjectKey),
    Policy(ObjectKey),
    Route(RouteKind, ObjectKey),
    /// Which cross-namespace backends resolve: every route may change.
    ReferenceGrant,
    RequestAuthn(ObjectKey),
    /// A JWKS Secret or fetched key set changed: every RequestAuthentication may change.
    KeySets,
    RateLimit(ObjectKey),
    /// The service accounts an enforced risk profile refuses in this namespace changed: its
    /// workloads are labelled anew, and its DENY policy follows.
    Refusals(String),
}

impl Change {
    /// Whether the index rebuilds everything for it.
    fn rebuilds(&self) -> bool {
        matches!(self, Self::All | Self::Namespace(_) | Self::Gateway(_))
    }
}

/// Changes waiting for the index, as a set: many events about one object are one change, and
/// a reflector never waits for the index (one that waited would stop updating its store, which
/// the CA reads too). Also the namespaces they touched since the risk evaluation last took
/// them: it evaluates only those.
#[derive(Debug, Default)]
pub struct ChangeQueue {
    pending: std::sync::Mutex<BTreeSet<Change>>,
    ready: tokio::sync::Notify,
    touched: std::sync::Mutex<crate::risk::Touched>,
}

impl ChangeQueue {
    pub fn push(&self, change: Change) {
        lock(&self.touched).add(&change);
        lock(&self.pending).insert(change);
        self.ready.notify_one();
    }

    /// The namespaces touched since the last call (every one before the first).
    pub fn take_touched(&self) -> crate::risk::Touched {
        std::mem::replace(&mut *lock(&self.touched), crate::risk::Touched::none())
    }

    /// Waits for changes, and takes all that are waiting.
    pub async fn take(&self) -> Vec<Change> {
        loop {
            let batch = std::mem::take(&mut *lock(&self.pending));
            if !batch.is_empty() {
                return batch.into_iter().collect();
            }
            self.ready.notified().await;
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The objects the index reads, and what an event about one means to it.
pub trait Watched {
    fn change(&self) -> Change;

    /// Drops what neither the index nor the CA reads, before the object is stored.
    fn trim(&mut self) {}
}

impl Watched for Namespace {
    fn change(&self) -> Change {
        Change::Namespace(self.metadata.name.clone().unwrap_or_default())
    }
}

impl Watched for Gateway {
    fn change(&self) -> Change {
        Change::Gateway(key(&self.metadata))
    }
}

/// Pods are most of the controller's memory: only what the index, the CA and risk profiles read
/// is kept.
impl Watched for Pod {
    fn change(&self) -> Change {
        Change::Pod(key(&self.metadata))
    }

    fn trim(&mut self) {
        let m = &mut self.metadata;
        m.annotations = None;
        // Of the owners only the controlling one: risk profiles tell a waypoint's pods by it
        // (the ReplicaSet of the waypoint's Deployment).
        if let Some(owners) = &mut m.owner_references {
            owners.retain(|o| o.controller == Some(true));
        }
        m.finalizers = None;
        if let Some(spec) = self.spec.take() {
            self.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: spec.node_name,
                service_account_name: spec.service_account_name,
                host_network: spec.host_network,
                ..Default::default()
            });
        }
        if let Some(status) = self.status.take() {
            // Of the conditions only Ready, and of it only its status: endpoints are picked
            // among ready workloads.
            let ready = status
                .conditions
                .into_iter()
                .flatten()
                .filter(|c| c.type_ == POD_READY)
                .map(|c| k8s_openapi::api::core::v1::PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect::<Vec<_>>();
            self.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status.pod_ips,
                conditions: (!ready.is_empty()).then_some(ready),
                ..Default::default()
            });
        }
    }
}

impl Watched for Service {
    fn change(&self) -> Change {
        Change::Service(key(&self.metadata))
    }
}

impl Watched for EndpointSlice {
    fn change(&self) -> Change {
        Change::EndpointSlice(key(&self.metadata))
    }
}

impl Watched for AuthorizationPolicy {
    fn change(&self) -> Change {
        Change::Policy(key(&self.metadata))
    }
}

impl Watched for HTTPRoute {
    fn change(&self) -> Change {
        Change::Route(RouteKind::Http, key(&self.metadata))
    }
}

impl Watched for GRPCRoute {
    fn change(&self) -> Change {
        Change::Route(RouteKind::Grpc, key(&self.metadata))
    }
}

impl Watched for ReferenceGrant {
    fn change(&self) -> Change {
        Change::ReferenceGrant
    }
}

impl Watched for RequestAuthentication {
    fn change(&self) -> Change {
        Change::RequestAuthn(key(&self.metadata))
    }
}

/// Only Secrets labelled as key sets are watched; of them only the data is kept.
impl Watched for Secret {
    fn change(&self) -> Change {
        Change::KeySets
    }

    fn trim(&mut self) {
        self.metadata.annotations = None;
        self.string_data = None;
    }
}

/// Ranks pods claiming one IP (see [`crate::ip_claims`]).
fn created(pod: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// An object's `(namespace, name)`.
fn key(m: &ObjectMeta) -> ObjectKey {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn object_ref<K>(key: &ObjectKey) -> ObjectRef<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    ObjectRef::new(&key.1).within(&key.0)
}

fn label<'a>(m: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    m.labels.as_ref()?.get(key).map(String::as_str)
}

/// Which pods an EndpointSlice lists, for which service.
#[derive(Debug, Default)]
struct SliceMembers {
    service: Option<ObjectKey>,
    uids: Vec<String>,
}

/// The index: derived resources and the reverse maps that say what to recompute for a change.
#[derive(Debug)]
pub struct Index {
    stores: Stores,
    trust_domain: String,
    resources: BTreeMap<Name, Entry>,
    generation: u64,
    recent_changes: std::collections::VecDeque<Arc<BTreeSet<Name>>>,
    /// `(namespace, service account)` -> its waypoint, `<namespace>/<name>`.
    waypoint_of_sa: BTreeMap<ObjectKey, String>,
    uid_of_pod: HashMap<ObjectKey, String>,
    pod_of_uid: HashMap<String, ObjectKey>,
    /// Which pod holds an IP two pods claim (IP reuse).
    ip_claims: crate::ip_claims::IpClaims,
    slice_members: HashMap<ObjectKey, SliceMembers>,
    slices_of_uid: HashMap<String, BTreeSet<ObjectKey>>,
    slices_of_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The Services each route names, and the routes naming each Service.
    services_of_route: HashMap<(RouteKind, ObjectKey), BTreeSet<ObjectKey>>,
    routes_of_service: HashMap<ObjectKey, BTreeSet<(RouteKind, ObjectKey)>>,
    /// The mesh configuration's, fixed for the controller's life.
    ext_authz_providers: Vec<(String, pb::resource::Kind)>,
}

/// What an update recomputes into: entries replaced only when their version changes.
struct Writer<'a> {
    resources: &'a mut BTreeMap<Name, Entry>,
    changed: BTreeSet<Name>,
}

impl Writer<'_> {
    fn put(&mut self, name: &str, kind: Option<pb::resource::Kind>) {
        match kind {
            Some(kind) => {
                let entry = Entry::new(name, kind);
                if self.resources.get(name).map(|e| e.version) != Some(entry.version) {
                    let name: Name = name.into();
                    self.changed.insert(name.clone());
                    self.resources.insert(name, entry);
                }
            }
            None => {
                if let Some((name, _)) = self.resources.remove_entry(name) {
                    self.changed.insert(name);
                }
            }
        }
    }
}

impl Index {
    pub fn new(stores: Stores, trust_domain: &str) -> Self {
        Self {
            stores,
            trust_domain: trust_domain.to_owned(),
            resources: BTreeMap::new(),
            generation: 0,
            recent_changes: Default::default(),
            waypoint_of_sa: BTreeMap::new(),
            uid_of_pod: HashMap::new(),
            pod_of_uid: HashMap::new(),
            ip_claims: Default::default(),
            slice_members: HashMap::new(),
            slices_of_uid: HashMap::new(),
            slices_of_service: HashMap::new(),
            services_of_route: HashMap::new(),
            routes_of_service: HashMap::new(),
            ext_authz_providers: Vec::new(),
        }
    }

    /// The external authorization providers every snapshot carries (see [`crate::extauthz`]).
    pub fn with_ext_authz_providers(
        mut self,
        providers: &[ambit_policy::ExtAuthzProvider],
    ) -> Self {
        self.ext_authz_providers = crate::extauthz::resources(providers);
        self
    }

    /// Applies `changes`; returns the next snapshot when a resource changed (the first call
    /// always returns one).
    pub fn update(&mut self, changes: impl IntoIterator<Item = Change>) -> Option<Snapshot> {
        let changes: Vec<Change> = changes.into_iter().collect();
        let mut resources = std::mem::take(&mut self.resources);
        let mut out = Writer {
            resources: &mut resources,
            changed: BTreeSet::new(),
        };
        if changes.iter().any(Change::rebuilds) {
            self.rebuild(&mut out);
        } else {
            for change in &changes {
                match change {
                    Change::All | Change::Namespace(_) | Change::Gateway(_) => {}
                    Change::Refusals(ns) => self.update_refusals(ns, &mut out),
                    Change::Pod(k) => self.update_pod(k, &mut out),
                    Change::Service(k) => self.update_service(k, &mut out),
                    Change::EndpointSlice(k) => {
                        for uid in self.reindex_slice(k) {
                            self.update_uid(&uid, &mut out);
                        }
                    }
                    Change::Policy(k) => {
                        let kind = self.stores.policies.get(&object_ref(k)).and_then(|p| {
                            self.policy(&p).map(pb::resource::Kind::AuthorizationPolicy)
                        });
                        out.put(&format!("authorizationpolicy/{}/{}", k.0, k.1), kind);
                    }
                    Change::Route(kind, k) => self.update_route(*kind, k, &mut out),
                    Change::ReferenceGrant => {
                        for (kind, k) in self.stores.route_keys() {
                            self.update_route(kind, &k, &mut out);
                        }
                    }
                    Change::RequestAuthn(k) => {
                        let ra = self.stores.request_authns.get(&object_ref(k));
                        let kind = ra.and_then(|ra| self.request_authn(&ra));
                        out.put(&format!("requestauthentication/{}/{}", k.0, k.1), kind);
                    }
                    Change::RateLimit(k) => self.update_rate_limit(k, &mut out),
                    Change::KeySets => {
                        for ra in self.stores.request_authns.state() {
                            let (ns, name) = key(&ra.metadata);
                            let kind = self.request_authn(&ra);
                            out.put(&format!("requestauthentication/{ns}/{name}"), kind);
                        }
                    }
                }
            }
        }
        let changed = out.changed;
        self.resources = resources;
        if changed.is_empty() && self.generation > 0 {
            return None;
        }
        self.generation += 1;
        if self.recent_changes.len() == CHANGE_HISTORY {
            self.recent_changes.pop_front();
        }
        self.recent_changes.push_back(Arc::new(changed));
        Some(Snapshot {
            resources: self.resources.clone(),
            generation: self.generation,
            recent_changes: self.recent_changes.iter().cloned().collect(),
        })
    }

    /// Recomputes every resource and every reverse map from the stores.
    fn rebuild(&mut self, out: &mut Writer<'_>) {
        self.waypoint_of_sa.clear();
        let gateways = self.stores.gateways.state();
        for gw in &gateways {
            if gw.spec.gateway_class_name != WAYPOINT_CLASS {
                continue;
            }
            // A waypoint binds its account only once it has served (`SERVING_SINCE`).
            if let (Ok(sa), true) = (waypoint_for(gw), is_serving(gw)) {
                let (ns, name) = key(&gw.metadata);
                self.waypoint_of_sa
                    .insert((ns.clone(), sa), format!("{ns}/{name}"));
            }
        }
        self.slice_members.clear();
        self.slices_of_uid.clear();
        self.slices_of_service.clear();
        for slice in self.stores.endpoint_slices.state() {
            self.reindex_slice(&key(&slice.metadata));
        }
        self.uid_of_pod.clear();
        self.pod_of_uid.clear();
        self.ip_claims.clear();

        let mut desired: BTreeMap<String, pb::resource::Kind> = BTreeMap::new();
        for ns in self.stores.namespaces.state() {
            if enrolled(&ns) {
                let name = ns.metadata.name.clone().unwrap_or_default();
                desired.insert(
                    format!("namespace/{name}"),
                    pb::resource::Kind::Namespace(pb::Namespace { name }),
                );
            }
        }
        for gw in &gateways {
            if let Some(wp) = self.waypoint(gw) {
                desired.insert(
                    format!("waypoint/{}/{}", wp.namespace, wp.name),
                    pb::resource::Kind::Waypoint(wp),
                );
            }
        }
        let mut workloads = Vec::new();
        for pod in self.stores.pods.state() {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let k = key(&pod.metadata);
            self.pod_of_uid.insert(uid.clone(), k.clone());
            self.uid_of_pod.insert(k, uid.clone());
            if let Some(w) = self.workload(&pod) {
                self.ip_claims.claim(&uid, created(&pod), &w.ips);
                workloads.push(w);
            }
        }
        for mut w in workloads {
            self.ip_claims.keep_held(&w.uid, &mut w.ips);
            desired.insert(
                format!("workload/{}", w.uid),
                pb::resource::Kind::Workload(w),
            );
        }
        for svc in self.stores.services.state() {
            if let Some(s) = self.service(&svc) {
                desired.insert(
                    format!("service/{}/{}", s.namespace, s.name),
                    pb::resource::Kind::Service(s),
                );
            }
        }
        for p in self.stores.policies.state() {
            if let Some(p) = self.policy(&p) {
                desired.insert(
                    format!("authorizationpolicy/{}/{}", p.namespace, p.name),
                    pb::resource::Kind::AuthorizationPolicy(p),
                );
            }
        }
        desired.extend(self.ext_authz_providers.iter().cloned());
        for ns in self.stores.refusals.namespaces() {
            if let Some(deny) = self.deny_policy(&ns) {
                desired.insert(deny_policy_name(&ns), deny);
            }
        }
        for ra in self.stores.request_authns.state() {
            let (ns, name) = key(&ra.metadata);
            if let Some(kind) = self.request_authn(&ra) {
                desired.insert(format!("requestauthentication/{ns}/{name}"), kind);
            }
        }
        for p in self.stores.rate_limits.state() {
            desired.extend(self.rate_limits(&p));
        }
        self.services_of_route.clear();
        self.routes_of_service.clear();
        for (kind, k) in self.stores.route_keys() {
            if let Some(route) = self.reindex_route(kind, &k) {
                desired.insert(kind.resource_name(&k), pb::resource::Kind::Route(route));
            }
        }
        let gone: Vec<Name> = out
            .resources
            .keys()
            .filter(|k| !desired.contains_key(&***k))
            .cloned()
            .collect();
        for name in gone {
            out.put(&name, None);
        }
        for (name, kind) in desired {
            out.put(&name, Some(kind));
        }
    }

    fn update_pod(&mut self, k: &ObjectKey, out: &mut Writer<'_>) {
        let pod = self.stores.pods.get(&object_ref(k));
        let uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        // Deleted, or replaced by a pod of the same name: its workload goes.
        if let Some(old) = self
            .uid_of_pod
            .get(k)
            .filter(|old| Some(*old) != uid.as_ref())
        {
            let old = old.clone();
            out.put(&format!("workload/{old}"), None);
            self.pod_of_uid.remove(&old);
            self.uid_of_pod.remove(k);
            self.claim_ips(&old, None, &[], out);
        }
        let (Some(pod), Some(uid)) = (pod, uid) else {
            return;
        };
        self.uid_of_pod.insert(k.clone(), uid.clone());
        self.pod_of_uid.insert(uid.clone(), k.clone());
        let mut workload = self.workload(&pod);
        let claimed = workload.as_ref().map(|w| w.ips.clone()).unwrap_or_default();
        self.claim_ips(&uid, created(&pod), &claimed, out);
        if let Some(w) = &mut workload {
            self.ip_claims.keep_held(&uid, &mut w.ips);
        }
        out.put(
            &format!("workload/{uid}"),
            workload.map(pb::resource::Kind::Workload),
        );
    }

    /// Records `uid`'s IP claims, and recomputes the workloads of the pods whose share changed.
    fn claim_ips(
        &mut self,
        uid: &str,
        created: Option<k8s_openapi::jiff::Timestamp>,
        ips: &[String],
        out: &mut Writer<'_>,
    ) {
        for other in self.ip_claims.claim(uid, created, ips) {
            self.update_uid(&other, out);
        }
    }

    /// A pod's service membership changed: recompute its workload, once the pod is known.
    fn update_uid(&mut self, uid: &str, out: &mut Writer<'_>) {
        if let Some(k) = self.pod_of_uid.get(uid).cloned() {
            self.update_pod(&k, out);
        }
    }

    fn update_service(&mut self, k: &ObjectKey, out: &mut Writer<'_>) {
        let kind = self
            .stores
            .services
            .get(&object_ref(k))
            .and_then(|s| self.service(&s).map(pb::resource::Kind::Service));
        out.put(&format!("service/{}/{}", k.0, k.1), kind);
        // A waypoint's addresses are its Service's.
        if let Some(gw) = self.stores.gateways.get(&object_ref(k)) {
            let kind = self.waypoint(&gw).map(pb::resource::Kind::Waypoint);
            out.put(&format!("waypoint/{}/{}", k.0, k.1), kind);
        }
        // Members' port maps come from the Service's ports.
        let uids: BTreeSet<String> = self
            .slices_of_service
            .get(k)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slice_members.get(s))
            .flat_map(|m| m.uids.iter().cloned())
            .collect();
        for uid in uids {
            self.update_uid(&uid, out);
        }
        // Routes resolve their parents and backends against it.
        let routes: Vec<(RouteKind, ObjectKey)> = self
            .routes_of_service
            .get(k)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for (kind, route) in routes {
            self.update_route(kind, &route, out);
        }
    }

    /// Namespace `ns`'s refusals changed: its workloads, and its DENY policy.
    fn update_refusals(&mut self, ns: &str, out: &mut Writer<'_>) {
        let pods: Vec<ObjectKey> = self
            .uid_of_pod
            .keys()
            .filter(|(pod_ns, _)| pod_ns == ns)
            .cloned()
            .collect();
        for k in pods {
            self.update_pod(&k, out);
        }
        out.put(&deny_policy_name(ns), self.deny_policy(ns));
    }

    /// The DENY policy of `ns`'s refused accounts, when it refuses some and is enrolled.
    fn deny_policy(&self, ns: &str) -> Option<pb::resource::Kind> {
        (self.stores.refusals.refuses_any(ns) && self.enrolled(ns))
            .then(|| pb::resource::Kind::AuthorizationPolicy(crate::risk::deny_policy(ns)))
    }

    fn update_rate_limit(&self, k: &ObjectKey, out: &mut Writer<'_>) {
        let desired: BTreeMap<String, pb::resource::Kind> = self
            .stores
            .rate_limits
            .get(&object_ref(k))
            .map(|p| self.rate_limits(&p))
            .unwrap_or_default();
        let prefix = crate::ratelimit::resource_prefix(&k.0, &k.1);
        // Targets dropped from the policy, or the whole policy.
        let gone: Vec<Name> = out
            .resources
            .range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(name, _)| name.clone())
            .take_while(|name| name.starts_with(&prefix))
            .filter(|name| !desired.contains_key(&**name))
            .collect();
        for name in gone {
            out.put(&name, None);
        }
        for (name, kind) in desired {
            out.put(&name, Some(kind));
        }
    }

    fn update_route(&mut self, kind: RouteKind, k: &ObjectKey, out: &mut Writer<'_>) {
        let route = self.reindex_route(kind, k);
        out.put(&kind.resource_name(k), route.map(pb::resource::Kind::Route));
    }

    /// Resolves a route and updates the reverse maps for it; returns what waypoints get.
    fn reindex_route(&mut self, kind: RouteKind, k: &ObjectKey) -> Option<pb::Route> {
        let id = (kind, k.clone());
        if let Some(old) = self.services_of_route.remove(&id) {
            for svc in old {
                remove_from(&mut self.routes_of_service, &svc, &id);
            }
        }
        let resolution = self.stores.resolve_route(kind, k)?;
        for svc in &resolution.services {
            self.routes_of_service
                .entry(svc.clone())
                .or_default()
                .insert(id.clone());
        }
        self.services_of_route.insert(id, resolution.services);
        resolution.route
    }

    /// Updates the reverse maps for one EndpointSlice; returns the pods it listed or lists.
    fn reindex_slice(&mut self, k: &ObjectKey) -> BTreeSet<String> {
        let mut affected = BTreeSet::new();
        if let Some(old) = self.slice_members.remove(k) {
            if let Some(svc) = &old.service {
                remove_from(&mut self.slices_of_service, svc, k);
            }
            for uid in old.uids {
                remove_from(&mut self.slices_of_uid, &uid, k);
                affected.insert(uid);
            }
        }
        let Some(slice) = self.stores.endpoint_slices.get(&object_ref(k)) else {
            return affected;
        };
        let members = SliceMembers {
            service: label(&slice.metadata, SERVICE_NAME_LABEL).map(|s| (k.0.clone(), s.into())),
            uids: slice
                .endpoints
                .iter()
                .filter_map(|ep| {
                    ep.target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.uid.clone())
                })
                .collect(),
        };
        if let Some(svc) = &members.service {
            self.slices_of_service
                .entry(svc.clone())
                .or_default()
                .insert(k.clone());
        }
        for uid in &members.uids {
            self.slices_of_uid
                .entry(uid.clone())
                .or_default()
                .insert(k.clone());
            affected.insert(uid.clone());
        }
        self.slice_members.insert(k.clone(), members);
        affected
    }

    fn enrolled(&self, namespace: &str) -> bool {
        self.stores
            .namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| enrolled(&ns))
    }

    fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    fn workload(&self, pod: &Pod) -> Option<pb::Workload> {
        let m = &pod.metadata;
        let (ns, name) = key(m);
        // Leaves the mesh as soon as deletion starts, not after the grace period.
        if m.deletion_timestamp.is_some() || !self.enrolled(&ns) {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        if spec.host_network == Some(true)
            || matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        {
            return None;
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
        let uid = m.uid.clone()?;
        let node = spec.node_name.clone()?;
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut labels = m.labels.clone().unwrap_or_default();
        // The label is the controller's word alone: the DENY policy of an enforced risk
        // profile selects it.
        labels.remove(crate::risk::REFUSED_LABEL);
        let refused = self.stores.refusals.is_refused(&ns, &sa);
        if refused {
            labels.insert(crate::risk::REFUSED_LABEL.into(), "true".into());
        }
        // An opted-out pod takes plaintext from client tunnels and has no tunnel to apply the
        // DENY: a refused account's pod cannot opt out of its refusal. Listed as enrolled, it
        // is captured and refused by its node tunnel, and clients reach it over HBONE only.
        let opted_out = !refused && label(m, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_NONE);
        Some(pb::Workload {
            services: self.services_of(&uid),
            uid,
            identity: self.identity(&ns, &sa),
            waypoint: self
                .waypoint_of_sa
                .get(&(ns.clone(), sa.clone()))
                .cloned()
                .unwrap_or_default(),
            name,
            namespace: ns,
            service_account: sa,
            node,
            ips,
            labels,
            opted_out,
            // A pod being deleted is not listed at all (above).
            not_ready: !status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == POD_READY && c.status == "True"),
        })
    }

    /// The services whose EndpointSlices list pod `uid`: service -> service port -> target.
    fn services_of(&self, uid: &str) -> BTreeMap<String, pb::PortMap> {
        let mut out: BTreeMap<String, pb::PortMap> = BTreeMap::new();
        for k in self.slices_of_uid.get(uid).into_iter().flatten() {
            let Some(svc_key) = self.slice_members.get(k).and_then(|m| m.service.as_ref()) else {
                continue;
            };
            if !self.enrolled(&k.0) {
                continue;
            }
            let (Some(slice), Some(svc)) = (
                self.stores.endpoint_slices.get(&object_ref(k)),
                self.stores.services.get(&object_ref(svc_key)),
            ) else {
                continue;
            };
            out.entry(format!("{}/{}", svc_key.0, svc_key.1))
                .or_default()
                .ports
                .extend(port_map(&svc, &slice));
        }
        out
    }

    fn service(&self, svc: &Service) -> Option<pb::Service> {
        let (ns, name) = key(&svc.metadata);
        if !self.enrolled(&ns) {
            return None;
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
        Some(pb::Service {
            hostname: format!("{name}.{ns}.svc.cluster.local"),
            vips: cluster_ips(svc),
            name,
            namespace: ns,
            ports,
        })
    }

    fn waypoint(&self, gw: &Gateway) -> Option<pb::Waypoint> {
        if gw.spec.gateway_class_name != WAYPOINT_CLASS {
            return None;
        }
        let for_service_account = waypoint_for(gw).ok()?;
        let k = key(&gw.metadata);
        // Data planes send an account's traffic to the address of its waypoint: it has none
        // until it has served (`SERVING_SINCE`). The resource itself is out at once: the
        // waypoint subscribes as it.
        let vips = self
            .stores
            .services
            .get(&object_ref(&k))
            .filter(|_| is_serving(gw))
            .map(|s| cluster_ips(&s))
            .unwrap_or_default();
        let (namespace, name) = k;
        Some(pb::Waypoint {
            identity: self.identity(&namespace, &name),
            name,
            namespace,
            for_service_account,
            vips,
        })
    }

    fn policy(&self, p: &AuthorizationPolicy) -> Option<pb::AuthorizationPolicy> {
        let (namespace, _) = key(&p.metadata);
        self.enrolled(&namespace).then(|| crate::policy::config(p))
    }

    fn rate_limits(&self, p: &RateLimitPolicy) -> BTreeMap<String, pb::resource::Kind> {
        let (namespace, _) = key(&p.metadata);
        if !self.enrolled(&namespace) {
            return BTreeMap::new();
        }
        crate::ratelimit::resources(p).into_iter().collect()
    }

    fn request_authn(&self, ra: &RequestAuthentication) -> Option<pb::resource::Kind> {
        let (namespace, _) = key(&ra.metadata);
        self.enrolled(&namespace).then(|| {
            pb::resource::Kind::RequestAuthentication(crate::request_authn::config(
                ra,
                &self.stores.key_sources,
            ))
        })
    }
}

fn deny_policy_name(ns: &str) -> String {
    format!("authorizationpolicy/{ns}/{}", crate::risk::DENY_POLICY)
}

/// Removes `k` from the set at `at`, dropping the set when it empties.
fn remove_from<A: Eq + std::hash::Hash, V: Ord>(map: &mut HashMap<A, BTreeSet<V>>, at: &A, k: &V) {
    if let Some(set) = map.get_mut(at) {
        set.remove(k);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

/// Whether `ns` is enrolled: labeled ambient and not being deleted.
pub(crate) fn enrolled(ns: &Namespace) -> bool {
    label(&ns.metadata, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_AMBIENT)
        && ns.metadata.deletion_timestamp.is_none()
}

/// Service port -> the slice's port of the same name.
fn port_map(svc: &Service, slice: &EndpointSlice) -> BTreeMap<u32, u32> {
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
    ports
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

#[cfg(test)]
#[path = "index_testing.rs"]
pub(crate) mod testing;

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
