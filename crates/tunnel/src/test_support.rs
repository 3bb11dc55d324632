//! Helpers for unit tests: a pod context without a netns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::config::Mode;
use crate::node::Shared;
use crate::pod::{PodContext, PodSpec};
use ambit_hbone::{Dialer, HbonePool, PoolSettings};
use ambit_identity::testing::TestPki;
use ambit_mesh::{Mesh, MeshConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

pub const MESH: &str = r#"
workloads:
  - {uid: srv, name: server, namespace: demo, serviceAccount: server, node: n1, ips: [10.1.0.3], labels: {app: server}}
  - {uid: prot, name: protected, namespace: demo, serviceAccount: guarded, node: n1, ips: [10.1.0.4], labels: {app: guarded}}
waypoints:
  - {name: wp, namespace: demo, forServiceAccount: guarded, serviceAccount: wp, address: "10.1.0.9:15008"}
policies:
  - name: no-bad
    namespace: demo
    action: Deny
    rules: [{principals: ["spiffe://cluster.local/ns/demo/sa/bad"]}]
  - name: audit-8080
    namespace: demo
    action: Audit
    selector: {matchLabels: {app: server}}
    rules: [{ports: [8080]}]
  # Enforced by the waypoint of `guarded`, which sees the client; never by the tunnel.
  - name: only-client
    namespace: demo
    action: Allow
    selector: {matchLabels: {app: guarded}}
    rules: [{principals: ["spiffe://cluster.local/ns/demo/sa/client"], methods: [GET]}]
"#;

/// The mesh as a tunnel builds it from the controller's resources while the waypoint
/// `pending` bound to `guarded` has no address yet (its Service has no cluster IP).
pub fn unaddressed_waypoint_mesh() -> Mesh {
    use ambit_proto::config::v1 as pb;
    let resource = |name: &str, kind| {
        (
            name.to_owned(),
            pb::Resource {
                name: name.into(),
                version: "1".into(),
                kind: Some(kind),
            },
        )
    };
    let resources = [
        resource(
            "namespace/demo",
            pb::resource::Kind::Namespace(pb::Namespace {
                name: "demo".into(),
            }),
        ),
        resource(
            "workload/prot",
            pb::resource::Kind::Workload(pb::Workload {
                uid: "prot".into(),
                name: "protected".into(),
                namespace: "demo".into(),
                service_account: "guarded".into(),
                node: "n1".into(),
                ips: vec!["10.1.0.4".into()],
                identity: "spiffe://cluster.local/ns/demo/sa/guarded".into(),
                waypoint: "demo/pending".into(),
                ..Default::default()
            }),
        ),
        resource(
            "waypoint/demo/pending",
            pb::resource::Kind::Waypoint(pb::Waypoint {
                name: "pending".into(),
                namespace: "demo".into(),
                for_service_account: "guarded".into(),
                identity: "spiffe://cluster.local/ns/demo/sa/pending".into(),
                vips: vec![],
            }),
        ),
    ]
    .into_iter()
    .collect();
    Mesh::new(ambit_controller_client::mesh_config("cluster.local", &resources).config).unwrap()
}

pub fn context(uid: &str, mode: Mode) -> Arc<PodContext> {
    context_in(
        Mesh::new(MeshConfig::from_yaml(MESH).unwrap()).unwrap(),
        uid,
        mode,
    )
}

/// A context for pod `uid` of `mesh`.
pub fn context_in(mesh: Mesh, uid: &str, mode: Mode) -> Arc<PodContext> {
    let pki = TestPki::new("cluster.local");
    let workload = mesh.workload_by_uid(uid).unwrap().clone();
    let identity = mesh.identity(&workload).unwrap().clone();
    let handle = ambit_identity::CertificateHandle::fixed(pki.certificate(&identity));
    let shared = Arc::new(Shared::new("n1".into(), mode, pki.bundle(), mesh, true));
    let pool = HbonePool::new(
        Dialer::new(pki.bundle(), PoolSettings::default()),
        Arc::new(HashMap::from([(identity.clone(), handle.clone())])),
    );
    Arc::new(PodContext {
        spec: PodSpec {
            uid: uid.into(),
            name: workload.name.clone(),
            namespace: workload.namespace.clone(),
            identity,
            ips: workload.ips.clone(),
            certificate: handle,
        },
        shared,
        pool,
        active: Arc::new(AtomicUsize::new(0)),
    })
}
