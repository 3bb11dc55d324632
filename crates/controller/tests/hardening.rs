//! Issue 14's hardening against the testbed's real kube-apiserver, on one testbed:
//!
//! - A controller restart never opens a DENY (item 8). The controller binary runs as its own
//!   service account (impersonated); a node's data plane is the tunnel's own config client and
//!   mesh model, asked whether a denied client may reach a pod of its node. The controller is
//!   killed and started again while it may not list AuthorizationPolicies (RBAC withheld, the
//!   way a missing grant or CRD looks): it must not serve until it may, the data plane keeps
//!   its last good config meanwhile, and the denied client stays denied throughout: before,
//!   during and after.
//! - A waypoint Gateway whose children's names are taken (here by the app's own
//!   ServiceAccount) is refused with a status and takes nothing over (item 4).
//!
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::crd::{AuthorizationPolicy, Gateway};
use ambit_controller::waypoint::NAME_CONFLICT;
use ambit_controller_client::source;
use ambit_controller_client::{StreamState, Subscriber};
use ambit_identity::SpiffeId;
use ambit_mesh::Mesh;
use ambit_policy::Decision;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;
use support::{
    CONTROLLER_GROUPS, CONTROLLER_USER, SYSTEM_NS, as_controller, create_namespace,
    create_service_accounts, eventually, free_port, install_crds, obj, pod_json, pod_running,
    tunnel_source, waypoint_gateway,
};
use tokio::sync::watch;
use tokio::time::Instant;

const NAME: &str = "l4hard";
const ID: u8 = 71;
const APP_NS: &str = "shop";
const CONTROLLER_SA: &str = "ambit-controller";
/// The binding that lets the controller read policies; withheld during the restart.
const POLICY_GRANT: &str = "rstpol-policies";
/// How long the restarted controller may not list policies. Longer than the 10 s the
/// controller used to wait for them before serving without them, plus the data plane's
/// reconnect backoff (0.2 s doubling: a retry at 12.6 s).
const WITHHELD: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_on_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "hardening_on_the_real_apiserver",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples", "ambit-controller"],
        checks,
    )
    .await
}

fn spiffe(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{APP_NS}/sa/{sa}")
        .parse()
        .unwrap()
}

/// Whether `client` may reach pod `back` on its port 8080, as the node's tunnel decides it;
/// `None` while the model does not hold `back`.
fn allowed(mesh: &Mesh, client: &str) -> Option<bool> {
    let back = mesh
        .config()
        .workloads
        .iter()
        .find(|w| w.namespace == APP_NS && w.name == "back")?;
    let source = ambit_policy::Source {
        identity: Some(spiffe(client)),
        ip: "10.255.0.1".parse().unwrap(),
    };
    Some(matches!(
        mesh.authorize_connection(back, 8080, &source).decision,
        Decision::Allow
    ))
}

/// The data plane's verdicts hold: `front` is denied by the DENY policy, `other` allowed.
fn deny_holds(mesh: &Mesh) -> Result<()> {
    ensure!(
        allowed(mesh, "front") == Some(false),
        "the denied client is not denied: {:?} (policies held: {:?})",
        allowed(mesh, "front"),
        mesh.config()
            .policies
            .iter()
            .map(|p| &p.name)
            .collect::<Vec<_>>()
    );
    ensure!(
        allowed(mesh, "other") == Some(true),
        "the other client is not allowed"
    );
    Ok(())
}

/// RBAC of the controller's service account: everything it reads and writes, with the
/// policies in a binding of their own.
async fn grant_controller(client: &kube::Client) -> Result<()> {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let everything_else = json!({
        "metadata": {"name": "rstpol-controller"},
        "rules": [{
            "apiGroups": ["", "apps", "discovery.k8s.io", "gateway.networking.k8s.io",
                "coordination.k8s.io", "authentication.k8s.io", "apiextensions.k8s.io", "events.k8s.io"],
            "resources": ["*"],
            "verbs": ["*"],
        }],
    });
    let policies = json!({
        "metadata": {"name": POLICY_GRANT},
        "rules": [{"apiGroups": ["ambit.dev"], "resources": ["*"], "verbs": ["*"]}],
    });
    for role in [everything_else, policies] {
        roles.create(&PostParams::default(), &obj(role)).await?;
    }
    bind(client, "rstpol-controller").await?;
    bind(client, POLICY_GRANT).await
}

async fn bind(client: &kube::Client, role: &str) -> Result<()> {
    let binding: ClusterRoleBinding = obj(json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": SYSTEM_NS}],
    }));
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// The controller binary as its own service account; killed when dropped, as a crash or an
/// evicted pod would end it.
struct Controller(Child);

impl Controller {
    fn spawn(tb: &ambit_testbed::Testbed, grpc: SocketAddr) -> Result<Self> {
        let bin = tb
            .binary("ambit-controller")
            .context("ambit-controller is not built")?;
        let child = Command::new(bin)
            .env("KUBECONFIG", tb.config.kubeconfig())
            // kube-rs reads these when it infers its config from the kubeconfig.
            .env("KUBE_RS_DEBUG_IMPERSONATE_USER", CONTROLLER_USER)
            .env("KUBE_RS_DEBUG_IMPERSONATE_GROUP", CONTROLLER_GROUPS)
            .env("AMBIT_NAMESPACE", SYSTEM_NS)
            .env("AMBIT_GRPC_ADDR", grpc.to_string())
            .env("AMBIT_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("AMBIT_LOG", "warn")
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a controller serves on `grpc` (it binds only once ready to serve).
async fn serving(grpc: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(grpc).await.is_ok()
}

/// Whether the controller's account may list policies right now.
async fn may_list_policies(controller: &kube::Client) -> bool {
    Api::<AuthorizationPolicy>::all(controller.clone())
        .list(&Default::default())
        .await
        .is_ok()
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let admin = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    install_crds(&admin).await?;

    create_namespace(&admin, SYSTEM_NS, json!({})).await?;
    create_namespace(
        &admin,
        APP_NS,
        json!({"ambit.dev/dataplane-mode": "ambient"}),
    )
    .await?;
    create_service_accounts(
        &admin,
        &[
            (SYSTEM_NS, "ambit-tunnel"),
            (SYSTEM_NS, CONTROLLER_SA),
            (APP_NS, "back"),
        ],
        Duration::from_secs(10),
    )
    .await?;
    grant_controller(&admin).await?;
    let sys_pods: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM_NS);
    sys_pods
        .create(&pp, &pod_json("tunnel-1", "ambit-tunnel", &node))
        .await?;
    let app_pods: Api<Pod> = Api::namespaced(admin.clone(), APP_NS);
    app_pods
        .create(&pp, &pod_json("back", "back", &node))
        .await?;
    let tunnel_pod = pod_running(&sys_pods, "tunnel-1").await?;
    pod_running(&app_pods, "back").await?;
    let deny: AuthorizationPolicy = obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-front"},
        "spec": {
            "action": "DENY",
            "selector": {"matchLabels": {"app": "back"}},
            "rules": [{"principals": [spiffe("front").to_uri()]}],
        },
    }));
    Api::<AuthorizationPolicy>::namespaced(admin.clone(), APP_NS)
        .create(&pp, &deny)
        .await?;

    // The controller, as its own service account, on loopback.
    let controller = as_controller(tb).await?;
    eventually(
        "RBAC for the controller",
        Duration::from_secs(10),
        || async { may_list_policies(&controller).await.then_some(()) },
    )
    .await?;
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let first = Controller::spawn(tb, grpc)?;
    eventually(
        "the controller serving",
        Duration::from_secs(120),
        || async { serving(grpc).await.then_some(()) },
    )
    .await?;
    let root_pem = Api::<ConfigMap>::namespaced(admin.clone(), SYSTEM_NS)
        .get("ambit-root-cert")
        .await?
        .data
        .and_then(|d| d.get("root.crt").cloned())
        .context("root.crt in ambit-root-cert")?;

    // The node's data plane: the tunnel's config client feeding its mesh model.
    let (source, dir) = tunnel_source(
        &admin,
        &tunnel_pod,
        &root_pem,
        grpc,
        format!("spiffe://cluster.local/ns/{SYSTEM_NS}/sa/{CONTROLLER_SA}").parse()?,
        NAME,
    )
    .await?;
    let start = source::start(&source, None)?;
    let (mesh_tx, mut mesh) = watch::channel(Arc::new(start.mesh));
    let stream: watch::Receiver<StreamState> = source::spawn_feed(
        start.feed,
        Subscriber::Node(node.clone()),
        &start.trust,
        move |m| {
            mesh_tx.send_replace(Arc::new(m));
        },
    )
    .context("a controller feed has a stream")?;
    eventually(
        "the DENY in the node's model",
        Duration::from_secs(30),
        || {
            let ok = deny_holds(&mesh.borrow_and_update()).is_ok();
            async move { ok.then_some(()) }
        },
    )
    .await?;
    eprintln!("data plane synced: front denied, other allowed");

    // --- Restart, while the controller may not list policies. ---
    Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(POLICY_GRANT, &DeleteParams::default())
        .await?;
    eventually("policies withheld", Duration::from_secs(10), || async {
        (!may_list_policies(&controller).await).then_some(())
    })
    .await?;
    let accepted_before = stream.borrow().accepted;
    drop(first);
    let second = Controller::spawn(tb, grpc)?;
    let restarted = Instant::now();
    let mut saw_disconnect = false;
    let mut served_after = None;
    while restarted.elapsed() < WITHHELD {
        deny_holds(&mesh.borrow_and_update()).with_context(|| {
            format!(
                "{:?} into the restart (controller serving since {served_after:?})",
                restarted.elapsed()
            )
        })?;
        saw_disconnect |= !stream.borrow().connected;
        if served_after.is_none() && serving(grpc).await {
            served_after = Some(restarted.elapsed());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), mesh.changed()).await;
    }
    if let Some(after) = served_after {
        bail!("the controller started serving {after:?} into the restart, unable to list policies");
    }
    ensure!(saw_disconnect, "the data plane never noticed the restart");
    eprintln!("{WITHHELD:?} without policies: not serving, front still denied");

    // --- The grant comes back: the controller syncs, serves, and the data plane resumes. ---
    bind(&admin, POLICY_GRANT).await?;
    eventually(
        "the controller serving once it may list policies",
        Duration::from_secs(60),
        || async { serving(grpc).await.then_some(()) },
    )
    .await?;
    let resumed_by = Instant::now() + Duration::from_secs(30);
    loop {
        deny_holds(&mesh.borrow_and_update()).context("while the data plane resumed")?;
        let s = stream.borrow().clone();
        if s.connected && s.accepted > accepted_before {
            break;
        }
        ensure!(
            Instant::now() < resumed_by,
            "the data plane did not resume its stream: {s:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), mesh.changed()).await;
    }
    deny_holds(&mesh.borrow()).context("after the restart")?;
    eprintln!("controller back: the data plane resumed with front still denied");

    // --- A waypoint Gateway named like the app's ServiceAccount: refused, nothing taken. ---
    let gateways: Api<Gateway> = Api::namespaced(admin.clone(), APP_NS);
    let colliding = waypoint_gateway("back", "back");
    gateways.create(&pp, &colliding).await?;
    let accepted = eventually(
        "the colliding Gateway's status",
        Duration::from_secs(60),
        || async {
            gateways
                .get("back")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                // The CRD's default (Unknown, "Waiting for controller") has no generation.
                .find(|c| c.type_ == "Accepted" && c.observed_generation.is_some())
        },
    )
    .await?;
    ensure!(
        accepted.status == "False" && accepted.reason == NAME_CONFLICT,
        "a Gateway named like an existing ServiceAccount was not refused: {accepted:?}"
    );
    ensure!(
        accepted.message.contains("ServiceAccount shop/back"),
        "{}",
        accepted.message
    );
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), APP_NS)
        .get("back")
        .await?;
    ensure!(
        sa.metadata.owner_references.is_none() && sa.metadata.labels.is_none(),
        "the app's ServiceAccount was taken over: {:?}",
        sa.metadata
    );
    ensure!(
        Api::<Deployment>::namespaced(admin.clone(), APP_NS)
            .get_opt("back")
            .await?
            .is_none(),
        "a waypoint Deployment was made for the refused Gateway"
    );
    eprintln!("colliding Gateway refused: {}", accepted.message);
    drop(second);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
