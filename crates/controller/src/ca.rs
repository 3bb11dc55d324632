//! The mesh CA: root material in a Secret, node authorization, and the `ambit.ca.v1` service.

use crate::auth::{Authenticator, Caller};
use crate::index::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE, Stores};
use crate::metrics::Metrics;
use crate::waypoint::{GATEWAY_NAME_LABEL, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL};
use ambit_identity::{CertificateAuthority, SpiffeId, TrustDomain};
use ambit_k8s::node_capture::NodeCapture;
use ambit_proto::ca::v1::{
    CreateCertificateRequest, CreateCertificateResponse,
    certificate_service_server::CertificateService,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Secret holding the root (keys `ca.crt`, `ca.key`); supply your own before the first start.
pub const ROOT_SECRET: &str = "ambit-ca";
/// ConfigMap publishing the root certificate (key `root.crt`) for tunnels and waypoints.
pub use ambit_k8s::names::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY};
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const FIELD_MANAGER: &str = "ambit-controller";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("Secret {namespace}/{ROOT_SECRET}: {source}")]
    Kube {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{ROOT_SECRET} lacks key {key}: supply ca.crt and ca.key (PEM) or delete it to have one generated"
    )]
    MissingKey {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{ROOT_SECRET} holds an unusable CA: {source}")]
    Invalid {
        namespace: String,
        source: ambit_identity::CaError,
    },
}

/// The install's anchor: ambit's own CRD, which the chart creates and `helm uninstall`
/// deletes. What the controller generates (the root Secret, the root ConfigMap) is owned by
/// it, so the garbage collector removes them with the install and nothing is left behind. A
/// root the user supplied is never given an owner. `None` when the CRD cannot be read (the
/// objects then outlive the install; logged).
pub async fn install_owner(client: &kube::Client) -> Option<OwnerReference> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "authorizationpolicies.ambit.dev";
    match api.get(name).await {
        Ok(crd) => Some(OwnerReference {
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            name: name.into(),
            uid: crd.metadata.uid?,
            ..Default::default()
        }),
        Err(error) => {
            tracing::warn!(%error, crd = name, "cannot read the install's CRD: the generated root Secret and ConfigMap will outlive an uninstall");
            None
        }
    }
}

/// Loads the root from the Secret, or generates one and stores it (owned by `owner`). Two
/// replicas starting at once race on create; the loser loads the winner's root.
pub async fn load_or_create_root(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &TrustDomain,
    owner: Option<&OwnerReference>,
) -> Result<CertificateAuthority, RootError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| RootError::Kube {
        namespace: namespace.to_string(),
        source,
    };
    if let Some(secret) = api.get_opt(ROOT_SECRET).await.map_err(kube_err)? {
        return from_secret(&secret, namespace, trust_domain);
    }
    let ca =
        CertificateAuthority::generate(trust_domain.clone(), ROOT_VALIDITY).map_err(|source| {
            RootError::Invalid {
                namespace: namespace.to_string(),
                source,
            }
        })?;
    let material = ca.to_material();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(ROOT_SECRET.into()),
            namespace: Some(namespace.into()),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "ca.crt".to_string(),
                ByteString(material.certificate_pem.into_bytes()),
            ),
            (
                "ca.key".to_string(),
                ByteString(material.key_pem.into_bytes()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                secret = ROOT_SECRET,
                "generated a new mesh root CA"
            );
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(ROOT_SECRET).await.map_err(kube_err)?;
            from_secret(&secret, namespace, trust_domain)
        }
        Err(e) => Err(kube_err(e)),
    }
}

pub(crate) fn from_secret(
    secret: &Secret,
    namespace: &str,
    trust_domain: &TrustDomain,
) -> Result<CertificateAuthority, RootError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| RootError::MissingKey {
                namespace: namespace.to_string(),
                key,
            })
    };
    CertificateAuthority::from_pem(trust_domain.clone(), &get("ca.crt")?, &get("ca.key")?).map_err(
        |source| RootError::Invalid {
            namespace: namespace.to_string(),
            source,
        },
    )
}

/// Publishes the root certificate in ConfigMap `ambit-root-cert` of `namespace` (server-side
/// apply, idempotent): the controller's namespace for tunnels, and every namespace with a
/// waypoint.
pub async fn publish_root(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
    owner: Option<&OwnerReference>,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
        "data": {ROOT_CONFIGMAP_KEY: root_pem},
    });
    api.patch(
        ROOT_CONFIGMAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(cm),
    )
    .await?;
    Ok(())
}

/// Why a CSR was refused. Messages name the rule that refused it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("{caller} may only ask for its own identity {own}, not {asked}")]
    NotOwnIdentity {
        caller: String,
        own: String,
        asked: String,
    },
    #[error(
        "the tunnel token is not bound to a pod on a node: use a projected service-account token"
    )]
    NoNode,
    #[error(
        "no pod with identity {identity} runs on node {node}: a tunnel gets only the identities of its node's pods"
    )]
    NotOnNode { identity: String, node: String },
    #[error(
        "{identity} is in ambit's own namespace {namespace}: a tunnel never gets the identity of ambit's components"
    )]
    MeshComponent { identity: String, namespace: String },
    #[error(
        "{identity} is the identity of waypoint Gateway {namespace}/{gateway}: only the waypoint itself gets it, with its own token"
    )]
    WaypointIdentity {
        identity: String,
        namespace: String,
        gateway: String,
    },
    #[error(
        "namespace {namespace} is not enrolled ({DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}): a tunnel gets only the identities of enrolled pods, not {identity}"
    )]
    NotEnrolled { identity: String, namespace: String },
    #[error(
        "pod {pod} on node {node} is a waypoint ({WAYPOINT_FOR_LABEL} or {GATEWAY_NAME_LABEL} label): a tunnel never gets a waypoint's identity {identity}"
    )]
    WaypointPod {
        identity: String,
        node: String,
        pod: String,
    },
    #[error(
        "pod {pod} on node {node} opted out ({DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_NONE}): its tunnel does not carry its traffic, so gets no identity {identity} for it"
    )]
    OptedOut {
        identity: String,
        node: String,
        pod: String,
    },
    #[error(
        "pod {pod} on node {node} uses the host network: it is not in the mesh, so its tunnel gets no identity {identity} for it"
    )]
    HostNetwork {
        identity: String,
        node: String,
        pod: String,
    },
    #[error(
        "pod {pod} on node {node} is being deleted: a tunnel gets no new certificate {identity} for it"
    )]
    Terminating {
        identity: String,
        node: String,
        pod: String,
    },
    #[error(
        "pod {pod} on node {node} is not captured yet (not in NodeCapture {node}): its tunnel gets {identity} once the node's capture agent records the pod; retry"
    )]
    NotCaptured {
        identity: String,
        node: String,
        pod: String,
    },
}

/// Why a pod of the asked identity on the tunnel's node does not count; when no pod counts, the
/// greatest reason is the one reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ineligible {
    /// The least: the only one that passes by itself, once the capture agent records the pod.
    NotCaptured,
    Terminating,
    HostNetwork,
    OptedOut,
    Waypoint,
}

/// Why `pod` does not entitle its node's tunnel to its identity, or `None` when it does: it
/// must be running or about to (not finished, not being deleted), in the mesh (not host
/// network, not opted out) and not a waypoint. Enrollment of its namespace and the pod's phase
/// are checked by the caller.
fn ineligible(pod: &Pod) -> Option<Ineligible> {
    let labels = pod.metadata.labels.as_ref();
    let has = |k: &str| labels.is_some_and(|l| l.contains_key(k));
    // A waypoint's pod runs as the waypoint's service account: a tunnel holding that identity
    // could pose as the waypoint and skip its L7 policy.
    if has(WAYPOINT_FOR_LABEL) || has(GATEWAY_NAME_LABEL) {
        return Some(Ineligible::Waypoint);
    }
    if labels
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .map(String::as_str)
        == Some(DATAPLANE_MODE_NONE)
    {
        return Some(Ineligible::OptedOut);
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Some(Ineligible::HostNetwork);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Ineligible::Terminating);
    }
    None
}

/// Whether node `node`'s capture agent recorded pod `uid` as captured.
fn captured(captures: &Store<NodeCapture>, node: &str, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| {
        captures
            .get(&ObjectRef::new(node))
            .is_some_and(|c| c.spec.pods.iter().any(|p| p == uid))
    })
}

/// Istio-style node authorization: any caller may get its own identity (that is how a
/// waypoint gets its certificate); the tunnel service account may get the identity of a pod
/// on its own node, if that pod is a workload of the mesh: an enrolled namespace, not ambit's
/// own, not opted out, not host network, not being deleted, never a waypoint's identity, and
/// captured: listed in the node's `NodeCapture`, so a tunnel holds only identities whose
/// traffic it carries.
pub fn authorize(
    caller: &Caller,
    identity: &SpiffeId,
    tunnel: &(String, String),
    stores: &Stores,
    captures: &Store<NodeCapture>,
) -> Result<(), Denied> {
    let own = caller.namespace == identity.namespace()
        && caller.service_account == identity.service_account();
    if own {
        return Ok(());
    }
    if (caller.namespace.as_str(), caller.service_account.as_str())
        != (tunnel.0.as_str(), tunnel.1.as_str())
    {
        return Err(Denied::NotOwnIdentity {
            caller: format!("{}/{}", caller.namespace, caller.service_account),
            own: format!("ns/{}/sa/{}", caller.namespace, caller.service_account),
            asked: identity.to_uri(),
        });
    }
    let node = caller
        .node
        .clone()
        .or_else(|| {
            let pod = caller.pod.as_deref()?;
            let pod = stores
                .pods
                .get(&ObjectRef::new(pod).within(&caller.namespace))?;
            pod.spec.as_ref()?.node_name.clone()
        })
        .ok_or(Denied::NoNode)?;
    let (ns, sa) = (identity.namespace(), identity.service_account());
    // The controller and the tunnels live there; their identities open the config stream and
    // every tunnel's trust.
    if ns == tunnel.0 {
        return Err(Denied::MeshComponent {
            identity: identity.to_uri(),
            namespace: ns.to_owned(),
        });
    }
    // The deployer names a waypoint's service account after its Gateway. Any Gateway of the
    // class counts, valid or not: refusing too much here costs nothing.
    if let Some(gw) = stores.gateways.get(&ObjectRef::new(sa).within(ns))
        && gw.spec.gateway_class_name == WAYPOINT_CLASS
    {
        return Err(Denied::WaypointIdentity {
            identity: identity.to_uri(),
            namespace: ns.to_owned(),
            gateway: sa.to_owned(),
        });
    }
    if !stores
        .namespaces
        .get(&ObjectRef::new(ns))
        .is_some_and(|n| crate::index::enrolled(&n))
    {
        return Err(Denied::NotEnrolled {
            identity: identity.to_uri(),
            namespace: ns.to_owned(),
        });
    }
    let mut refused: Option<(Ineligible, String)> = None;
    for p in stores.pods.state() {
        let spec = p.spec.as_ref();
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let candidate = p.metadata.namespace.as_deref() == Some(ns)
            && spec.and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
            && spec
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default")
                == sa
            && !matches!(phase, Some("Succeeded" | "Failed"));
        if !candidate {
            continue;
        }
        let why = ineligible(&p).or_else(|| {
            (!captured(captures, &node, p.metadata.uid.as_deref()))
                .then_some(Ineligible::NotCaptured)
        });
        match why {
            None => return Ok(()),
            Some(why) if refused.as_ref().is_none_or(|(r, _)| why > *r) => {
                refused = Some((why, p.metadata.name.clone().unwrap_or_default()));
            }
            Some(_) => {}
        }
    }
    let identity = identity.to_uri();
    Err(match refused {
        None => Denied::NotOnNode { identity, node },
        Some((why, pod)) => match why {
            Ineligible::Waypoint => Denied::WaypointPod {
                identity,
                node,
                pod,
            },
            Ineligible::OptedOut => Denied::OptedOut {
                identity,
                node,
                pod,
            },
            Ineligible::HostNetwork => Denied::HostNetwork {
                identity,
                node,
                pod,
            },
            Ineligible::Terminating => Denied::Terminating {
                identity,
                node,
                pod,
            },
            Ineligible::NotCaptured => Denied::NotCaptured {
                identity,
                node,
                pod,
            },
        },
    })
}

/// The lifetime a leaf gets: what the caller asked (0: the configured default), never more
/// than the default. A compromised tunnel cannot stretch a stolen identity's life past what the
/// operator chose (SP 800-233 TR-1).
pub fn granted_lifetime(requested_secs: u64, default: Duration) -> Duration {
    match requested_secs {
        0 => default,
        s => Duration::from_secs(s).min(default),
    }
}

/// The `ambit.ca.v1.CertificateService`.
#[derive(Clone)]
pub struct CaService {
    /// The signing root now (it changes in a root rotation).
    pub ca: crate::root::MeshRoots,
    pub auth: Authenticator,
    /// Pods, namespaces and Gateways: what node authorization reads.
    pub stores: Stores,
    /// The nodes' captured pods, as their capture agents published them.
    pub captures: Store<NodeCapture>,
    pub tunnel: (String, String),
    /// What a leaf lives at most (`controller.certLifetimeSeconds`).
    pub default_lifetime: Duration,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let result = self.handle(request).await;
        let label = match &result {
            Ok(_) => "signed",
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "denied",
                tonic::Code::InvalidArgument => "invalid",
                _ => "error",
            },
        };
        self.metrics.ca_request(label);
        result
    }
}

impl CaService {
    async fn handle(
        &self,
        request: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let caller = self.auth.authenticate(&request).await.map_err(|e| {
            tracing::warn!(error = %e, "CA: caller not authenticated");
            e.status()
        })?;
        let req = request.into_inner();
        let identity: SpiffeId = req.identity.parse().map_err(|e| {
            tonic::Status::invalid_argument(format!("identity {:?}: {e}", req.identity))
        })?;
        if identity.trust_domain() != self.ca.trust_domain() {
            return Err(tonic::Status::invalid_argument(format!(
                "identity {identity} is not in trust domain {}",
                self.ca.trust_domain().as_str()
            )));
        }
        authorize(
            &caller,
            &identity,
            &self.tunnel,
            &self.stores,
            &self.captures,
        )
        .map_err(|e| {
            tracing::warn!(caller = ?caller, %identity, reason = %e, "CA: refused");
            tonic::Status::permission_denied(e.to_string())
        })?;
        let lifetime = granted_lifetime(req.lifetime_seconds, self.default_lifetime);
        let leaf = self
            .ca
            .sign(&req.csr_der, &identity, lifetime)
            .map_err(|e| tonic::Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        tracing::info!(%identity, node = ?caller.node, lifetime_s = lifetime.as_secs(), "CA: signed");
        Ok(tonic::Response::new(CreateCertificateResponse {
            chain_der: vec![leaf.to_vec(), self.ca.root_certificate().to_vec()],
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::index::testing::{Cluster, ns, pod, waypoint};

    const TUNNEL: (&str, &str) = ("ambit-system", "ambit-tunnel");

    fn id(ns: &str, sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn tunnel_on(node: Option<&str>) -> Caller {
        Caller {
            namespace: "ambit-system".into(),
            service_account: "ambit-tunnel".into(),
            node: node.map(Into::into),
            pod: Some("tunnel-x".into()),
        }
    }

    fn caller(ns: &str, sa: &str, node: &str) -> Caller {
        Caller {
            namespace: ns.into(),
            service_account: sa.into(),
            node: Some(node.into()),
            pod: None,
        }
    }

    fn labeled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
        let l = p.metadata.labels.get_or_insert_default();
        for (k, v) in labels {
            l.insert((*k).into(), (*v).into());
        }
        p
    }

    /// The capture agents' records: each `(node, pod uids)`.
    fn records(nodes: &[(&str, &[&str])]) -> Store<NodeCapture> {
        let (reader, mut writer) = kube::runtime::reflector::store();
        for (node, uids) in nodes {
            let mut record = NodeCapture::new(
                node,
                ambit_k8s::node_capture::NodeCaptureSpec {
                    pods: uids.iter().map(|u| (*u).to_owned()).collect(),
                },
            );
            record.metadata.uid = Some(format!("uid-{node}"));
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(record));
        }
        reader
    }

    /// As the CA decides with every pod of `stores` recorded captured on its node.
    fn ask(stores: &Stores, who: &Caller, ns: &str, sa: &str) -> Result<(), Denied> {
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in stores.pods.state() {
            if let (Some(node), Some(uid)) = (
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.metadata.uid.clone(),
            ) {
                by_node.entry(node).or_default().push(uid);
            }
        }
        let uids: Vec<(&str, Vec<&str>)> = by_node
            .iter()
            .map(|(n, u)| (n.as_str(), u.iter().map(String::as_str).collect()))
            .collect();
        let nodes: Vec<(&str, &[&str])> = uids.iter().map(|(n, u)| (*n, u.as_slice())).collect();
        ask_recorded(stores, &records(&nodes), who, ns, sa)
    }

    fn ask_recorded(
        stores: &Stores,
        captures: &Store<NodeCapture>,
        who: &Caller,
        ns: &str,
        sa: &str,
    ) -> Result<(), Denied> {
        let tunnel = (TUNNEL.0.to_string(), TUNNEL.1.to_string());
        authorize(who, &id(ns, sa), &tunnel, stores, captures)
    }

    /// Namespace `shop` enrolled, `other` not; the waypoint `waypoint-back` of service account
    /// `back` runs on n1 as the controller deploys it.
    fn cluster() -> Cluster {
        let mut c = Cluster::new();
        c.apply(ns("shop", true));
        c.apply(ns("other", false));
        c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
        c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
        c.apply(pod("other", "o", "front", "n1", "10.0.0.3"));
        c.apply(pod(
            "ambit-system",
            "tunnel-x",
            "ambit-tunnel",
            "n1",
            "192.168.0.1",
        ));
        c.apply(waypoint("shop", "waypoint-back", "back"));
        c.apply(labeled(
            pod("shop", "wp", "waypoint-back", "n1", "10.0.0.9"),
            &[
                ("gateway.networking.k8s.io/gateway-name", "waypoint-back"),
                ("ambit.dev/waypoint-for", "back"),
                ("ambit.dev/dataplane-mode", "none"),
            ],
        ));
        c
    }

    #[test]
    fn lifetimes_asked_above_the_default_are_capped_to_it() {
        let hour = Duration::from_secs(3600);
        assert_eq!(granted_lifetime(0, hour), hour);
        assert_eq!(granted_lifetime(600, hour), Duration::from_secs(600));
        assert_eq!(granted_lifetime(24 * 3600, hour), hour);
        assert_eq!(granted_lifetime(u64::MAX, hour), hour);
    }

    #[test]
    fn node_authorization() {
        let c = cluster();
        let s = c.stores();
        assert_eq!(ask(&s, &tunnel_on(Some("n1")), "shop", "front"), Ok(()));
        // Node from the bound pod when the token has no node-name.
        assert_eq!(ask(&s, &tunnel_on(None), "shop", "front"), Ok(()));
        let e = ask(&s, &tunnel_on(Some("n1")), "shop", "back").unwrap_err();
        assert!(matches!(e, Denied::NotOnNode { .. }), "{e}");
        assert!(e.to_string().contains("node n1"), "{e}");
        // An app may only get its own identity.
        let app = caller("shop", "front", "n1");
        assert_eq!(ask(&s, &app, "shop", "front"), Ok(()));
        assert!(matches!(
            ask(&s, &app, "shop", "back"),
            Err(Denied::NotOwnIdentity { .. })
        ));
        // A tunnel token bound to no known pod and without node-name.
        let mut lost = tunnel_on(None);
        lost.pod = None;
        assert_eq!(ask(&s, &lost, "shop", "front"), Err(Denied::NoNode));
    }

    #[test]
    fn a_tunnel_never_gets_a_waypoints_identity() {
        let mut c = cluster();
        let n1 = tunnel_on(Some("n1"));
        // The waypoint's pod runs on n1, yet n1's tunnel may not pose as the waypoint.
        let e = ask(&c.stores(), &n1, "shop", "waypoint-back").unwrap_err();
        assert!(matches!(e, Denied::WaypointIdentity { .. }), "{e}");
        assert!(e.to_string().contains("shop/waypoint-back"), "{e}");
        // The waypoint gets its own identity with its own token ...
        let wp = caller("shop", "waypoint-back", "n1");
        assert_eq!(ask(&c.stores(), &wp, "shop", "waypoint-back"), Ok(()));
        // ... and not the identity of the account it serves.
        assert!(matches!(
            ask(&c.stores(), &wp, "shop", "back"),
            Err(Denied::NotOwnIdentity { .. })
        ));
        // A pod without the waypoint's labels running as its account changes nothing.
        c.apply(pod("shop", "rogue", "waypoint-back", "n1", "10.0.0.10"));
        assert!(matches!(
            ask(&c.stores(), &n1, "shop", "waypoint-back"),
            Err(Denied::WaypointIdentity { .. })
        ));
        // Without the Gateway (its cache not synced yet), the waypoint pod's labels refuse.
        let mut c = cluster();
        c.delete(waypoint("shop", "waypoint-back", "back"));
        let e = ask(&c.stores(), &n1, "shop", "waypoint-back").unwrap_err();
        assert!(matches!(e, Denied::WaypointPod { .. }), "{e}");
        // Another implementation's gateway pod (only the gateway-name label) counts as one too.
        c.apply(labeled(
            pod("shop", "gw", "edge", "n1", "10.0.0.11"),
            &[("gateway.networking.k8s.io/gateway-name", "edge")],
        ));
        assert!(matches!(
            ask(&c.stores(), &n1, "shop", "edge"),
            Err(Denied::WaypointPod { .. })
        ));
    }

    #[test]
    fn only_enrolled_running_mesh_pods_count() {
        let mut c = cluster();
        let n1 = tunnel_on(Some("n1"));
        // A pod of a namespace not enrolled.
        let e = ask(&c.stores(), &n1, "other", "front").unwrap_err();
        assert!(matches!(e, Denied::NotEnrolled { .. }), "{e}");
        assert!(
            e.to_string().contains("ambit.dev/dataplane-mode=ambient"),
            "{e}"
        );
        // Opted out.
        c.apply(labeled(
            pod("shop", "l", "legacy", "n1", "10.0.0.4"),
            &[("ambit.dev/dataplane-mode", "none")],
        ));
        let e = ask(&c.stores(), &n1, "shop", "legacy").unwrap_err();
        assert!(matches!(e, Denied::OptedOut { .. }), "{e}");
        // Host network.
        let mut host = pod("shop", "h", "hostnet", "n1", "192.168.0.1");
        host.spec.as_mut().unwrap().host_network = Some(true);
        c.apply(host);
        assert!(matches!(
            ask(&c.stores(), &n1, "shop", "hostnet"),
            Err(Denied::HostNetwork { .. })
        ));
        // Being deleted; another pod of the identity that runs on the node still counts.
        let mut going = pod("shop", "g", "batch", "n1", "10.0.0.5");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        c.apply(going);
        assert!(matches!(
            ask(&c.stores(), &n1, "shop", "batch"),
            Err(Denied::Terminating { .. })
        ));
        c.apply(pod("shop", "g2", "batch", "n1", "10.0.0.6"));
        assert_eq!(ask(&c.stores(), &n1, "shop", "batch"), Ok(()));
        // Finished pods are not there at all.
        let mut done = pod("shop", "d", "job", "n1", "10.0.0.7");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        c.apply(done);
        assert!(matches!(
            ask(&c.stores(), &n1, "shop", "job"),
            Err(Denied::NotOnNode { .. })
        ));
    }

    #[test]
    fn a_tunnel_gets_only_identities_of_pods_its_node_captured() {
        let c = cluster();
        let s = c.stores();
        let n1 = tunnel_on(Some("n1"));
        // Not recorded yet: refused, retriable, and the message says what it waits for.
        let e = ask_recorded(&s, &records(&[]), &n1, "shop", "front").unwrap_err();
        assert!(matches!(e, Denied::NotCaptured { .. }), "{e}");
        assert!(e.to_string().contains("NodeCapture n1"), "{e}");
        assert!(e.to_string().contains("retry"), "{e}");
        // Recorded on another node (which n1's tunnel cannot write): still refused.
        let e = ask_recorded(&s, &records(&[("n2", &["uid-a"])]), &n1, "shop", "front");
        assert!(matches!(e, Err(Denied::NotCaptured { .. })), "{e:?}");
        // Another pod of n1 recorded: refused.
        let e = ask_recorded(&s, &records(&[("n1", &["uid-o"])]), &n1, "shop", "front");
        assert!(matches!(e, Err(Denied::NotCaptured { .. })), "{e:?}");
        // Recorded on its node: signed.
        let captured = records(&[("n1", &["uid-a"])]);
        assert_eq!(ask_recorded(&s, &captured, &n1, "shop", "front"), Ok(()));
        // A pod recorded captured yet opted out (a stale record) still gives nothing.
        let e = ask_recorded(
            &s,
            &records(&[("n1", &["uid-wp"])]),
            &n1,
            "shop",
            "waypoint-back",
        );
        assert!(matches!(e, Err(Denied::WaypointIdentity { .. })), "{e:?}");
        // The app's own identity needs no record.
        let app = caller("shop", "front", "n1");
        assert_eq!(
            ask_recorded(&s, &records(&[]), &app, "shop", "front"),
            Ok(())
        );
    }

    #[test]
    fn a_tunnel_never_gets_ambits_own_identities() {
        let mut c = cluster();
        // Even with its namespace enrolled by mistake and the controller on the tunnel's node.
        c.apply(ns("ambit-system", true));
        c.apply(pod(
            "ambit-system",
            "ctl",
            "ambit-controller",
            "n1",
            "10.0.0.8",
        ));
        let e = ask(
            &c.stores(),
            &tunnel_on(Some("n1")),
            "ambit-system",
            "ambit-controller",
        )
        .unwrap_err();
        assert!(matches!(e, Denied::MeshComponent { .. }), "{e}");
        // Its own identity, as anyone's, it gets.
        assert_eq!(
            ask(
                &c.stores(),
                &tunnel_on(Some("n1")),
                "ambit-system",
                "ambit-tunnel"
            ),
            Ok(())
        );
    }
}
