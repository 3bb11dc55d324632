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

pub fn context(uid: &str, mode: Mode) -> Arc<PodContext> {
    let pki = TestPki::new("cluster.local");
    let mesh = Mesh::new(MeshConfig::from_yaml(MESH).unwrap()).unwrap();
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
