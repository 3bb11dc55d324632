//! No poison pills (issue 14 item 1), against the testbed's real kube-apiserver: one tenant's
//! bad resource never freezes a node's config.
//!
//! - The CRD refuses what a schema can say: an ipBlock that is no address, a principal that is
//!   no SPIFFE id, port 70000.
//! - What it cannot say, the controller catches: a DENY whose ipBlock has the shape of an IPv6
//!   address but is none (`fd00::1::2`) is reported on the policy (Enforced=False, Invalid, and
//!   a Warning Event) and reaches the node in its fail-safe form.
//! - A pod whose status still lists an IP another pod of the node got (IP reuse, its node gone)
//!   does not give the node two workloads with one IP, which the data plane would refuse.
//! - After both, in another namespace, a new pod, a new DENY and a waypoint all reach the
//!   node's model, and a tunnel that (re)starts meanwhile syncs.
//! - A resource a data plane rejects alone (`Ack.rejected`) is told on its object by a Warning
//!   Event, once per generation and error however many data planes reject it.
//!
//! The controller runs in process as its service account with the chart's RBAC; the node's
//! data plane is the tunnel's own config client and mesh model. Needs root; skips loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::crd::{AuthorizationPolicy, Gateway, GatewayClass};
use ambit_controller_client::source::{self, Source};
use ambit_controller_client::{StreamState, Subscriber};
use ambit_mesh::Mesh;
use ambit_policy::{Decision, Source as Peer};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{
    Answer, SYSTEM_NS, channel, chart_rbac, condition_reads, controller_config, create_namespace,
    create_service_accounts, eventually, install_crds, obj, pod_json, pod_running,
    start_as_controller, subscribe_answering, tunnel_source, waypoint_gateway,
};
use tokio::sync::watch;

const NAME: &str = "poison";
const ID: u8 = 79;
/// The tenant with the bad resources.
const TENANT: &str = "tenant-a";
/// Everyone else.
const SHOP: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_bad_resources_never_freeze_a_node() -> Result<()> {
    support::on_testbed(
        "one_tenants_bad_resources_never_freeze_a_node",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

fn policy(name: &str, spec: serde_json::Value) -> AuthorizationPolicy {
    obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
}

/// A node's data plane: the tunnel's config client feeding a mesh model.
struct DataPlane {
    mesh: watch::Receiver<Arc<Mesh>>,
    stream: watch::Receiver<StreamState>,
}

impl DataPlane {
    fn start(source: &Source, node: &str) -> Result<Self> {
        let start = source::start(source, None)?;
        let (mesh_tx, mesh) = watch::channel(Arc::new(start.mesh));
        let stream = source::spawn_feed(
            start.feed,
            Subscriber::Node(node.to_owned()),
            &start.trust,
            move |m| {
                mesh_tx.send_replace(Arc::new(m));
            },
        )
        .context("a controller feed has a stream")?;
        Ok(Self { mesh, stream })
    }

    /// Waits until the model satisfies `check`; says what the stream reported otherwise.
    async fn until(&self, what: &str, check: impl Fn(&Mesh) -> bool) -> Result<()> {
        let found = eventually(what, WAIT, || {
            let ok = check(&self.mesh.borrow());
            async move { ok.then_some(()) }
        })
        .await;
        found.with_context(|| format!("the node's stream: {:?}", self.stream.borrow()))
    }
}

fn denied(mesh: &Mesh, pod: &str, from: &str) -> bool {
    let Some(w) = mesh.config().workloads.iter().find(|w| w.name == pod) else {
        return false;
    };
    let peer = Peer {
        identity: Some(
            format!("spiffe://cluster.local/ns/{SHOP}/sa/{from}")
                .parse()
                .unwrap(),
        ),
        ip: "10.255.0.1".parse().unwrap(),
    };
    matches!(mesh.authorize(w, 8080, &peer), Decision::Deny(_))
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let admin = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    install_crds(&admin).await?;
    create_namespace(&admin, SYSTEM_NS, json!({})).await?;
    for ns in [TENANT, SHOP] {
        create_namespace(&admin, ns, json!({"ambit.dev/dataplane-mode": "ambient"})).await?;
    }
    create_service_accounts(
        &admin,
        &[(SYSTEM_NS, "ambit-tunnel"), (TENANT, "app"), (SHOP, "back")],
        Duration::from_secs(10),
    )
    .await?;
    let tenant_policies: Api<AuthorizationPolicy> = Api::namespaced(admin.clone(), TENANT);

    // --- The CRD refuses what a schema can say. ---
    // Untyped: the Rust type cannot even hold some of these.
    let untyped: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        TENANT,
        &ApiResource::erase::<AuthorizationPolicy>(&()),
    );
    for (field, value, expect) in [
        ("ipBlocks", json!(["office"]), "ipBlocks"),
        ("principals", json!(["frontend"]), "principals"),
        ("ports", json!([70000]), "ports"),
    ] {
        let bad: DynamicObject = obj(json!({
            "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "refused"},
            "spec": {"action": "DENY", "rules": [{field: value}]},
        }));
        let refused = untyped.create(&pp, &bad).await;
        let message = match refused {
            Err(kube::Error::Api(e)) if e.code == 422 => e.message,
            other => anyhow::bail!("{field}: {value} was not refused by the CRD: {other:?}"),
        };
        ensure!(message.contains(expect), "{field}: {message}");
        eprintln!("refused by the CRD: {message}");
    }

    // --- What it cannot say: an IPv6-shaped ipBlock that is none. ---
    tenant_policies
        .create(
            &pp,
            &policy(
                "typo",
                json!({"action": "DENY", "rules": [{"ipBlocks": ["fd00::1::2"]}]}),
            ),
        )
        .await
        .context("an IPv6-shaped ipBlock passes the schema")?;

    // --- IP reuse: a pod of a node that is gone still lists the IP a live pod got. ---
    let sys_pods: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM_NS);
    sys_pods
        .create(&pp, &pod_json("tunnel-1", "ambit-tunnel", &node))
        .await?;
    let tenant_pods: Api<Pod> = Api::namespaced(admin.clone(), TENANT);
    tenant_pods
        .create(&pp, &pod_json("live", "app", &node))
        .await?;
    let live = pod_running(&tenant_pods, "live").await?;
    let ip = live
        .status
        .and_then(|s| s.pod_ip)
        .context("the live pod's IP")?;
    // Its node is listed but runs nothing (a Node missing altogether would have the pod
    // garbage-collected after 40 s).
    Api::<Node>::all(admin.clone())
        .create(&pp, &obj(json!({"metadata": {"name": "gone-node"}})))
        .await?;
    tenant_pods
        .create(&pp, &pod_json("stale", "app", "gone-node"))
        .await?;
    tenant_pods
        .patch_status(
            "stale",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            }})),
        )
        .await?;
    let tunnel_pod = pod_running(&sys_pods, "tunnel-1").await?;

    // --- The controller, as its service account with the chart's RBAC. ---
    chart_rbac(&admin).await?;
    // The waypoint class, as the chart installs it (the controller may apply it too).
    let class = Api::<GatewayClass>::all(admin.clone())
        .create(
            &pp,
            &obj(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "ambit-waypoint"},
                "spec": {"controllerName": ambit_controller::waypoint::CONTROLLER_NAME},
            })),
        )
        .await;
    ensure!(
        match &class {
            Ok(_) => true,
            Err(kube::Error::Api(e)) => e.code == 409,
            Err(_) => false,
        },
        "{class:?}"
    );
    let config = controller_config()?;
    let running = start_as_controller(tb, &config).await?;
    let message = condition_reads(
        &tenant_policies,
        "typo",
        "Enforced",
        ("False", "Invalid"),
        WAIT,
    )
    .await?;
    ensure!(message.contains("ipBlocks"), "{message}");
    let events: Api<Event> = Api::namespaced(admin.clone(), TENANT);
    let event = eventually("the Invalid event on the policy", WAIT, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Invalid")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("typo")
            })
    })
    .await?;
    ensure!(event.type_.as_deref() == Some("Warning"), "{event:?}");
    eprintln!("reported on the policy: {message}");

    let (source, dir) = tunnel_source(
        &admin,
        &tunnel_pod,
        &running.root_pem,
        running.grpc_addr,
        config.controller_identity()?,
        NAME,
    )
    .await?;
    let tunnel = DataPlane::start(&source, &node)?;
    tunnel
        .until(
            "the tenant's pods in the node's model, one holding the IP",
            |m| {
                let names: Vec<&str> = m.config().workloads.iter().map(|w| &*w.name).collect();
                names.contains(&"live")
                    && names.contains(&"stale")
                    && m.workload_by_ip(ip.parse().unwrap()).is_some()
            },
        )
        .await?;
    // The typo's DENY is held fail-safe: its broken field matches anything, so it denies.
    tunnel
        .until("the tenant's DENY, fail-safe", |m| {
            denied(m, "live", "anyone")
        })
        .await?;

    // --- Everyone else's changes still reach the node. ---
    let shop_pods: Api<Pod> = Api::namespaced(admin.clone(), SHOP);
    shop_pods
        .create(&pp, &pod_json("back", "back", &node))
        .await?;
    pod_running(&shop_pods, "back").await?;
    Api::<AuthorizationPolicy>::namespaced(admin.clone(), SHOP)
        .create(
            &pp,
            &policy(
                "deny-front",
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "back"}},
                    "rules": [{"principals": [format!("spiffe://cluster.local/ns/{SHOP}/sa/front")]}]}),
            ),
        )
        .await?;
    // Marked as if its pod had been ready (the controller binds an account to a waypoint only
    // then): no waypoint pod here can reach this in-process controller.
    let mut waypoint = waypoint_gateway("back-waypoint", "back");
    waypoint
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(
            "ambit.dev/serving-since".into(),
            "2026-01-01T00:00:00Z".into(),
        );
    Api::<Gateway>::namespaced(admin.clone(), SHOP)
        .create(&pp, &waypoint)
        .await?;
    tunnel
        .until("a new pod and a new DENY in the node's model", |m| {
            denied(m, "back", "front") && !denied(m, "back", "other")
        })
        .await?;
    let waypoint_service = eventually("the waypoint's Service address", WAIT, || async {
        let svc = Api::<Service>::namespaced(admin.clone(), SHOP)
            .get("back-waypoint")
            .await
            .ok()?;
        svc.spec?.cluster_ip.filter(|ip| ip != "None")
    })
    .await?;
    tunnel
        .until("the waypoint in the node's model", |m| {
            m.config()
                .waypoints
                .iter()
                .any(|w| w.name == "back-waypoint")
        })
        .await
        .with_context(|| format!("its Service has {waypoint_service}"))?;
    let s = tunnel.stream.borrow().clone();
    ensure!(s.rejected == 0, "a delta was NACKed: {s:?}");
    eprintln!("the node kept syncing: {} deltas, none NACKed", s.accepted);

    // --- A tunnel (re)started meanwhile syncs. ---
    let restarted = DataPlane::start(&source, &node)?;
    restarted
        .until("the restarted tunnel's first view", |m| {
            denied(m, "back", "front") && denied(m, "live", "anyone")
        })
        .await?;
    ensure!(restarted.stream.borrow().synced);

    // --- A resource a data plane rejects alone is told on its object, once. ---
    let token = std::fs::read_to_string(dir.join("token"))?;
    let ch = channel(
        running.grpc_addr,
        &running.root_pem,
        &config.controller_identity()?,
    )
    .await?;
    let shop_events: Api<Event> = Api::namespaced(admin.clone(), SHOP);
    let rejected_events = |error: &'static str| {
        let shop_events = shop_events.clone();
        async move {
            let events = shop_events.list(&Default::default()).await.ok()?.items;
            let told: Vec<Event> = events
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(ambit_controller::rejections::REJECTED)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("deny-front")
                        && e.note.as_deref().is_some_and(|n| n.contains(error))
                })
                .collect();
            (!told.is_empty()).then_some(told)
        }
    };
    let reject = |error: &str| {
        Answer::Reject(
            [(
                format!("authorizationpolicy/{SHOP}/deny-front"),
                error.to_owned(),
            )]
            .into(),
        )
    };
    let subscriber = || ambit_proto::config::v1::subscribe::Subscriber::Node(node.clone());
    let first = "test: this data plane cannot use it";
    let _rejecting = subscribe_answering(
        ch.clone(),
        &token,
        subscriber(),
        Default::default(),
        reject(first),
    )
    .await?;
    let told = eventually("the rejection's event on the policy", WAIT, || {
        rejected_events(first)
    })
    .await?;
    let event = &told[0];
    ensure!(event.type_.as_deref() == Some("Warning"), "{event:?}");
    let note = event.note.as_deref().unwrap_or_default();
    ensure!(note.contains(&format!("node/{node}")), "{note}");
    eprintln!("told on the policy: {note}");
    // Another data plane, the same error: not told again. Then another error, which is: the
    // reports are written in order, so once it shows, the repeat has been handled.
    let _again = subscribe_answering(
        ch.clone(),
        &token,
        subscriber(),
        Default::default(),
        reject(first),
    )
    .await?;
    let second = "test: another reason";
    let _other =
        subscribe_answering(ch, &token, subscriber(), Default::default(), reject(second)).await?;
    eventually("the second error's event", WAIT, || rejected_events(second)).await?;
    let told = rejected_events(first).await.context("the first event")?;
    ensure!(
        told.len() == 1 && told[0].series.is_none(),
        "the same rejection told twice: {told:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
