//! A waypoint's lifecycle against the testbed's real kube-apiserver, kube-controller-manager
//! and node agent: a new waypoint binds its service account only once a pod of it has been
//! Ready, and from then on for good. While its pod cannot become ready the account's workloads
//! stay unbound (their traffic goes direct, with L4 policy) and the Gateway says why; once the
//! pod is ready the account is bound within seconds; scaled to zero it stays bound (tunnels
//! refuse its traffic rather than let it around the waypoint, TR-10). Also: the controller
//! makes the `ambit-waypoint` GatewayClass itself, with exactly the chart's RBAC.
//!
//! The waypoint image is a stand-in whose readiness the test holds: Python's http.server on
//! the readiness port answers `/healthz/ready` with 200 once the test creates that file, 404
//! before. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::config::ENV_WAYPOINT_IMAGE;
use ambit_controller::crd::{Gateway, GatewayClass};
use ambit_controller::waypoint::{GATEWAY_NAME_LABEL, SERVING_SINCE, WAYPOINT_CLASS};
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{
    SYSTEM_NS, View, channel, chart_rbac, condition_reads, controller_config_with,
    create_namespace, create_service_accounts, eventually, install_crds, pod_json, pod_running,
    start_as_controller, subscribe, token, waypoint_gateway,
};

const NAME: &str = "wplife";
const ID: u8 = 77;
const APP_NS: &str = "shop";
const WAYPOINT: &str = "waypoint-back";
const IMAGE: &str = "ghcr.io/ambit/lifecycle-waypoint:test";
const WAIT: Duration = Duration::from_secs(40);
/// How soon a waypoint's first ready pod must bind its account: the readiness probe's period
/// (2 s), the Deployment's status, one reconcile, one view push.
const BIND_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_binds_once_it_has_served_and_then_for_good() -> Result<()> {
    let image = Path::new("/tmp").join(format!("ambit-lifecycle-waypoint-{}", std::process::id()));
    stand_in_image(&image)?;
    let result = support::on_testbed_with_images(
        "a_waypoint_binds_once_it_has_served_and_then_for_good",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        &[(IMAGE, &image)],
        async |tb| checks(tb, &image).await,
    )
    .await;
    std::fs::remove_dir_all(&image)?;
    result
}

/// An image directory (see the testbed's images.rs) whose entrypoint serves `www/` on the
/// waypoint's readiness port. Readable by the waypoint's non-root user.
fn stand_in_image(dir: &Path) -> Result<()> {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("healthz"))?;
    for d in [dir, &www, &www.join("healthz")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let entrypoint = dir.join("entrypoint");
    std::fs::write(
        &entrypoint,
        format!(
            "#!/bin/sh\nexec /usr/bin/python3 -m http.server {} --bind 0.0.0.0 --directory {}\n",
            ambit_controller::waypoint::READINESS_PORT,
            www.display()
        ),
    )?;
    std::fs::set_permissions(&entrypoint, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `shop/back`'s workload as the node's view has it.
fn back(v: &View) -> Option<&pb::Workload> {
    v.resources.values().find_map(|r| match &r.kind {
        Some(pb::resource::Kind::Workload(w)) if w.namespace == APP_NS && w.name == "back" => {
            Some(w)
        }
        _ => None,
    })
}

/// The addresses of the waypoint as the node's view has it.
fn waypoint_vips(v: &View) -> Option<Vec<String>> {
    match &v
        .resources
        .get(&format!("waypoint/{APP_NS}/{WAYPOINT}"))?
        .kind
    {
        Some(pb::resource::Kind::Waypoint(w)) => Some(w.vips.clone()),
        _ => None,
    }
}

/// Whether the node's view lists a pod of the waypoint (with an address).
fn waypoint_pod_listed(v: &View) -> bool {
    v.resources.values().any(|r| {
        matches!(&r.kind, Some(pb::resource::Kind::Workload(w))
            if w.name.starts_with(WAYPOINT) && !w.ips.is_empty())
    })
}

async fn checks(tb: &ambit_testbed::Testbed, image: &Path) -> Result<()> {
    let client = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    install_crds(&client).await?;
    create_namespace(&client, SYSTEM_NS, json!({})).await?;
    create_namespace(
        &client,
        APP_NS,
        json!({"ambit.dev/dataplane-mode": "ambient"}),
    )
    .await?;
    create_service_accounts(
        &client,
        &[(SYSTEM_NS, "ambit-tunnel"), (APP_NS, "back")],
        WAIT,
    )
    .await?;
    let sys_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    sys_pods
        .create(&pp, &pod_json("tunnel-1", "ambit-tunnel", &node))
        .await?;
    let app_pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    app_pods
        .create(&pp, &pod_json("back", "back", &node))
        .await?;
    let tunnel_pod = pod_running(&sys_pods, "tunnel-1").await?;
    pod_running(&app_pods, "back").await?;

    // The controller as its service account, with exactly the chart's RBAC.
    chart_rbac(&client).await?;
    let config = controller_config_with(&[(ENV_WAYPOINT_IMAGE, IMAGE)])?;
    let controller_id = config.controller_identity()?;
    let running = start_as_controller(tb, &config).await?;

    // --- The controller makes the waypoint GatewayClass (no chart hook), and accepts it. ---
    let classes: Api<GatewayClass> = Api::all(client.clone());
    condition_reads(
        &classes,
        WAYPOINT_CLASS,
        "Accepted",
        ("True", "Accepted"),
        WAIT,
    )
    .await?;
    let class = classes.get(WAYPOINT_CLASS).await?;
    assert_eq!(
        class.spec.controller_name,
        ambit_controller::waypoint::CONTROLLER_NAME
    );
    // Owned by the install's anchor, so it goes with `helm uninstall`.
    let owners = class.owner_references();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "CustomResourceDefinition"
                && o.name == "authorizationpolicies.ambit.dev"),
        "{owners:?}"
    );

    let ch = channel(running.grpc_addr, &running.root_pem, &controller_id).await?;
    let tunnel_uid = tunnel_pod.metadata.uid.clone().context("uid")?;
    let tunnel_token = token(
        &client,
        "ambit-tunnel",
        Some(("tunnel-1", &tunnel_uid)),
        "ambit-ca",
    )
    .await?;
    let mut node_sub = subscribe(
        ch,
        &tunnel_token,
        pb::subscribe::Subscriber::Node(node.clone()),
        BTreeMap::new(),
        false,
    )
    .await?;
    node_sub
        .wait("back in the node's view", WAIT, |v| back(v).is_some())
        .await?;

    // --- A new waypoint whose pod cannot become ready: back stays unbound. ---
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), APP_NS);
    gateways
        .create(&pp, &waypoint_gateway(WAYPOINT, "back"))
        .await?;
    let why = condition_reads(
        &gateways,
        WAYPOINT,
        "Programmed",
        ("False", "Pending"),
        WAIT,
    )
    .await?;
    assert!(why.contains("waiting for a ready waypoint pod"), "{why}");
    // The view that lists the waypoint's running pod was built after the Gateway existed:
    // a waypoint that bound at once would show in back's workload there.
    let v = node_sub
        .wait(
            "the waypoint's (unready) pod in the node's view",
            WAIT,
            waypoint_pod_listed,
        )
        .await?;
    // Data planes route to the waypoint's address: it has none before it has served.
    assert_eq!(back(&v).unwrap().waypoint, "", "bound before it served");
    assert_eq!(
        waypoint_vips(&v),
        Some(Vec::new()),
        "data planes were given the address of a waypoint that never served"
    );
    let waypoint_pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    let by_gateway = ListParams::default().labels(&format!("{GATEWAY_NAME_LABEL}={WAYPOINT}"));
    let pods = waypoint_pods.list(&by_gateway).await?.items;
    assert!(
        pods.iter().all(|p| !ready(p)) && !pods.is_empty(),
        "the stand-in's pod is not ready before its file exists"
    );
    let gw = gateways.get(WAYPOINT).await?;
    assert!(!gw.annotations().contains_key(SERVING_SINCE), "{gw:?}");
    assert_eq!(back(&node_sub.view.borrow()).unwrap().waypoint, "");

    // --- Its pod becomes ready: back is bound within seconds, and the Gateway marked. ---
    let t0 = Instant::now();
    std::fs::write(image.join("www/healthz/ready"), "ok")?;
    node_sub
        .wait("back bound to its waypoint", BIND_WITHIN, |v| {
            back(v).is_some_and(|w| w.waypoint == format!("{APP_NS}/{WAYPOINT}"))
                && waypoint_vips(v).is_some_and(|vips| !vips.is_empty())
        })
        .await?;
    eprintln!(
        "bound {:?} after the pod's readiness file appeared",
        t0.elapsed()
    );
    let since = gateways
        .get(WAYPOINT)
        .await?
        .annotations()
        .get(SERVING_SINCE)
        .cloned()
        .context("the serving mark")?;
    assert!(
        since.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "{since}"
    );
    condition_reads(
        &gateways,
        WAYPOINT,
        "Programmed",
        ("True", "Programmed"),
        WAIT,
    )
    .await?;

    // --- Scaled to zero: still bound (refused, never around the waypoint). ---
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NS);
    deployments
        .patch(
            WAYPOINT,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    eventually("the waypoint's pods gone", WAIT, || async {
        waypoint_pods
            .list(&by_gateway)
            .await
            .ok()
            .filter(|l| l.items.is_empty())
    })
    .await?;
    let v = node_sub
        .wait("the waypoint's pod gone from the view", WAIT, |v| {
            !waypoint_pod_listed(v)
        })
        .await?;
    assert_eq!(
        back(&v).unwrap().waypoint,
        format!("{APP_NS}/{WAYPOINT}"),
        "the binding lapsed when the waypoint had no pod"
    );
    assert!(
        waypoint_vips(&v).is_some_and(|vips| !vips.is_empty()),
        "the waypoint's address was taken from data planes when it had no pod"
    );
    let msg = eventually("the Gateway says its account is refused", WAIT, || async {
        let gw = gateways.get(WAYPOINT).await.ok()?;
        let c = gw
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Programmed")?;
        (c.status == "True" && c.message.contains("no ready pod")).then_some(c.message)
    })
    .await?;
    assert!(msg.contains("refused"), "{msg}");
    assert_eq!(
        gateways
            .get(WAYPOINT)
            .await?
            .annotations()
            .get(SERVING_SINCE),
        Some(&since),
        "the mark is written once"
    );

    // --- Deleted and re-created under the same name while the old children are still being
    // deleted: the new Gateway waits for them, never refused as a name conflict. A finalizer
    // holds the old Deployment in deletion for as long as the test needs. ---
    const HOLD: &str = "test.ambit.dev/hold";
    let old_uid = gateways.get(WAYPOINT).await?.uid().context("uid")?;
    deployments
        .patch(
            WAYPOINT,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [HOLD]}})),
        )
        .await?;
    gateways.delete(WAYPOINT, &Default::default()).await?;
    eventually(
        "garbage collection deletes the old waypoint's Deployment",
        Duration::from_secs(90),
        || async {
            deployments
                .get(WAYPOINT)
                .await
                .ok()
                .filter(|d| d.metadata.deletion_timestamp.is_some())
        },
    )
    .await?;
    let gw = gateways
        .create(&pp, &waypoint_gateway(WAYPOINT, "back"))
        .await?;
    assert_ne!(gw.uid(), Some(old_uid));
    let why = condition_reads(
        &gateways,
        WAYPOINT,
        "Programmed",
        ("False", "Pending"),
        WAIT,
    )
    .await?;
    assert!(why.contains("previous waypoint's Deployment"), "{why}");
    let accepted =
        condition_reads(&gateways, WAYPOINT, "Accepted", ("True", "Accepted"), WAIT).await?;
    assert!(accepted.contains("back"), "{accepted}");
    deployments
        .patch(
            WAYPOINT,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    // Its own Deployment (1 replica by default; the readiness file still exists): served,
    // and every child is the new Gateway's.
    condition_reads(
        &gateways,
        WAYPOINT,
        "Programmed",
        ("True", "Programmed"),
        WAIT,
    )
    .await?;
    let new_uid = gw.uid().context("uid")?;
    let owned_by_new = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == new_uid && o.controller == Some(true))
    };
    assert!(owned_by_new(&deployments.get(WAYPOINT).await?.metadata));
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), APP_NS);
    assert!(owned_by_new(&accounts.get(WAYPOINT).await?.metadata));
    drop(running);
    Ok(())
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}
