//! The controller against the testbed's real kube-apiserver: enrollment in a node's view, pod
//! deletion within 1 s, CA node authorization (only captured pods: the NodeCapture record and
//! the admission policy that keeps each node agent to its own) and token checks, the waypoint
//! deployer and Gateway status, NACK accounting, and a restart that resumes without disturbing
//! clients.
//! Needs root (the testbed); skips loudly otherwise. One test function: `up` is shared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::crd::{AuthorizationPolicy, Gateway, GatewayClass};
use ambit_identity::{CertificateRequest, SpiffeId};
use ambit_k8s::node_capture::{NodeCapture, NodeCaptureSpec};
use ambit_proto::ca::v1 as ca;
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{
    SYSTEM_NS, channel, controller_config, create_service_accounts, eventually, install_crds, obj,
    pod_json, pod_running, subscribe, token, with_token,
};

const NAME: &str = "ctltest";
const ID: u8 = 45;
const APP_NS: &str = "shop";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_against_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "controller_against_the_real_apiserver",
        NAME,
        ID,
        2,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

/// With the chart's rights, node 1's agent (the tunnel account's API token bound to the pod on
/// node 1) records `uid` as captured in node 1's NodeCapture; the admission policy refuses it
/// node 2's record, and refuses a token bound to no pod any record.
async fn record_capture(
    tb: &ambit_testbed::Testbed,
    admin: &kube::Client,
    tunnel_uid: &str,
    (node1, node2): (&str, &str),
    uid: &str,
) -> Result<()> {
    support::chart_node_capture_rights(admin).await?;
    let audience = ambit_testbed::config::SERVICE_ACCOUNT_ISSUER;
    let bound = token(
        admin,
        "ambit-tunnel",
        Some(("tunnel-1", tunnel_uid)),
        audience,
    )
    .await?;
    let unbound = token(admin, "ambit-tunnel", None, audience).await?;
    let record = |node: &str| {
        NodeCapture::new(
            node,
            NodeCaptureSpec {
                pods: vec![uid.to_owned()],
            },
        )
    };
    let write = async |token: &str, node: &str| {
        let api: Api<NodeCapture> = Api::all(support::with_bearer(tb, token).await?);
        api.patch(
            node,
            &PatchParams::apply("ambit-capture"),
            &Patch::Apply(record(node)),
        )
        .await
        .map_err(anyhow::Error::from)
    };
    // The policy applies once the apiserver has loaded it; until then the write goes through.
    let refusal = eventually(
        "the admission policy refusing node 1's agent node 2's record",
        Duration::from_secs(30),
        || async {
            match write(&bound, node2).await {
                Err(e) => Some(e.to_string()),
                Ok(_) => None,
            }
        },
    )
    .await?;
    assert!(
        refusal.contains("ambit-node-capture")
            && refusal.contains(&format!("bound to ({node1}), not {node2}")),
        "{refusal}"
    );
    let unbound_refusal = write(&unbound, node1).await.unwrap_err().to_string();
    assert!(
        unbound_refusal.contains("bound to (none)"),
        "{unbound_refusal}"
    );
    // What the policy let through before it was loaded goes; node 1's own record is written.
    let _ = Api::<NodeCapture>::all(admin.clone())
        .delete(node2, &DeleteParams::default())
        .await;
    write(&bound, node1).await?;
    Ok(())
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let pp = PostParams::default();
    let node1 = tb.config.node_name(1);
    let node2 = tb.config.node_name(2);

    // Every CRD the chart ships: the controller serves nothing until each of its caches has
    // synced.
    install_crds(&client).await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [SYSTEM_NS, APP_NS] {
        namespaces
            .create(&pp, &obj(json!({"metadata": {"name": ns}})))
            .await?;
    }
    create_service_accounts(
        &client,
        &[
            (SYSTEM_NS, "ambit-tunnel"),
            (SYSTEM_NS, "intruder"),
            (APP_NS, "front"),
            (APP_NS, "back"),
        ],
        Duration::from_secs(10),
    )
    .await?;
    let sys_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    sys_pods
        .create(&pp, &pod_json("tunnel-1", "ambit-tunnel", &node1))
        .await?;
    let app_pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    app_pods
        .create(&pp, &pod_json("front", "front", &node1))
        .await?;
    app_pods
        .create(&pp, &pod_json("back", "back", &node2))
        .await?;
    let tunnel_pod = pod_running(&sys_pods, "tunnel-1").await?;
    pod_running(&app_pods, "front").await?;
    pod_running(&app_pods, "back").await?;

    // The controller, in process, on loopback ports.
    let config = controller_config()?;
    let controller_id = config.controller_identity()?;
    let started = Instant::now();
    let running = ambit_controller::runtime::start(client.clone(), config.clone()).await?;
    eprintln!("controller synced and serving in {:?}", started.elapsed());
    let ch = channel(running.grpc_addr, &running.root_pem, &controller_id).await?;

    let tunnel_uid = tunnel_pod.metadata.uid.clone().context("uid")?;
    let tunnel_token = token(
        &client,
        "ambit-tunnel",
        Some(("tunnel-1", &tunnel_uid)),
        "ambit-ca",
    )
    .await?;

    // --- Enrollment: labeling the namespace brings its pods into a node's view. ---
    let mut node_sub = subscribe(
        ch.clone(),
        &tunnel_token,
        pb::subscribe::Subscriber::Node(node1.clone()),
        BTreeMap::new(),
        false,
    )
    .await?;
    let v = node_sub
        .wait("the first delta", Duration::from_secs(5), |v| v.deltas >= 1)
        .await?;
    assert!(
        v.workload_names().is_empty(),
        "not enrolled yet: {:?}",
        v.workload_names()
    );
    let label =
        |mode: Option<&str>| json!({"metadata": {"labels": {"ambit.dev/dataplane-mode": mode}}});
    namespaces
        .patch(
            APP_NS,
            &PatchParams::default(),
            &Patch::Merge(label(Some("ambient"))),
        )
        .await?;
    node_sub
        .wait(
            "shop's pods in node 1's view",
            Duration::from_secs(5),
            |v| {
                let w = v.workload_names();
                w.contains(&"shop/front".to_string()) && w.contains(&"shop/back".to_string())
            },
        )
        .await?;
    let v = node_sub.view.borrow().clone();
    let Some(pb::resource::Kind::Workload(front)) = v
        .resources
        .values()
        .find_map(|r| match &r.kind {
            Some(pb::resource::Kind::Workload(w)) if w.name == "front" => Some(r.kind.clone()),
            _ => None,
        })
        .flatten()
    else {
        panic!("front workload")
    };
    assert_eq!(front.identity, "spiffe://cluster.local/ns/shop/sa/front");
    assert_eq!(front.node, node1);

    // --- Policies: node 1 (running `front`) gets the policy selecting `front` only. ---
    let policies: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), APP_NS);
    for (name, app) in [("front-policy", "front"), ("back-policy", "back")] {
        let p: AuthorizationPolicy = obj(json!({
            "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": app}}, "rules": [{"namespaces": ["shop"], "ports": [8080]}]},
        }));
        policies.create(&pp, &p).await?;
    }
    let v = node_sub
        .wait(
            "front's policy in node 1's view",
            Duration::from_secs(5),
            |v| {
                v.resources
                    .contains_key("authorizationpolicy/shop/front-policy")
            },
        )
        .await?;
    assert!(
        !v.resources
            .contains_key("authorizationpolicy/shop/back-policy"),
        "node 1 runs no `back` pod but got its policy"
    );

    // --- CA: node authorization. ---
    let ca_client = ca::certificate_service_client::CertificateServiceClient::new(ch.clone());
    let id = |sa: &str| -> SpiffeId {
        format!("spiffe://cluster.local/ns/shop/sa/{sa}")
            .parse()
            .unwrap()
    };
    let csr_for = |sa: &str| {
        let req = CertificateRequest::new(&id(sa)).unwrap();
        let msg = ca::CreateCertificateRequest {
            identity: id(sa).to_uri(),
            csr_der: req.csr_der().to_vec(),
            lifetime_seconds: 0,
        };
        (req, msg)
    };
    // --- Captured: `front` is enrolled and on node 1, but node 1's capture agent has not
    // recorded it: no certificate, and the reason says what it waits for. ---
    let err = ca_client
        .clone()
        .create_certificate(with_token(csr_for("front").1, &tunnel_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("not captured yet")
            && err.message().contains(&format!("NodeCapture {node1}")),
        "{}",
        err.message()
    );
    let front_uid = pod_running(&app_pods, "front")
        .await?
        .metadata
        .uid
        .context("uid")?;
    record_capture(tb, &client, &tunnel_uid, (&node1, &node2), &front_uid).await?;
    let (req, msg) = csr_for("front");
    let chain = eventually(
        "front's certificate once node 1 recorded it",
        Duration::from_secs(5),
        || async {
            let msg = with_token(msg.clone(), &tunnel_token);
            ca_client.clone().create_certificate(msg).await.ok()
        },
    )
    .await?
    .into_inner()
    .chain_der;
    let cert = req
        .complete(
            chain
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect(),
        )
        .context("the issued chain pairs with our key and identity")?;
    assert_eq!(cert.identity(), &id("front"));
    assert!(
        cert.lifetime() <= Duration::from_secs(3600 + 120),
        "short default lifetime: {:?}",
        cert.lifetime()
    );
    // A certificate of `sa` asked for with `token`, which the CA refuses: its error.
    let refused = async |sa: &str, token: &str| {
        let (_, msg) = csr_for(sa);
        ca_client
            .clone()
            .create_certificate(with_token(msg, token))
            .await
            .unwrap_err()
    };
    // `back` runs on node 2 only: refused, and the message says why.
    let err = refused("back", &tunnel_token).await;
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("no pod with identity") && err.message().contains(&node1),
        "{}",
        err.message()
    );

    // --- Tokens: forged, wrong audience, wrong service account. ---
    let mut forged = tunnel_token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let wrong_audience = token(
        &client,
        "ambit-tunnel",
        Some(("tunnel-1", &tunnel_uid)),
        "someone-else",
    )
    .await?;
    for (what, t) in [
        ("forged", forged.as_str()),
        ("wrong-audience", wrong_audience.as_str()),
        ("empty", ""),
    ] {
        let err = refused("front", t).await;
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{what} token: {err:?}"
        );
        let sub = subscribe(
            ch.clone(),
            t,
            pb::subscribe::Subscriber::Node(node1.clone()),
            BTreeMap::new(),
            false,
        )
        .await;
        assert_eq!(
            sub.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated),
            "{what} token subscribing"
        );
    }
    let intruder = token(&client, "intruder", None, "ambit-ca").await?;
    let denied = subscribe(
        ch.clone(),
        &intruder,
        pb::subscribe::Subscriber::Node(node1.clone()),
        BTreeMap::new(),
        false,
    )
    .await
    .err()
    .context("intruder subscribed as a node")?;
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("only the tunnel service account"),
        "{}",
        denied.message()
    );
    let other_node = subscribe(
        ch.clone(),
        &tunnel_token,
        pb::subscribe::Subscriber::Node(node2.clone()),
        BTreeMap::new(),
        false,
    )
    .await
    .err()
    .context("tunnel of node 1 subscribed as node 2")?;
    assert_eq!(
        other_node.code(),
        tonic::Code::PermissionDenied,
        "{other_node:?}"
    );

    // --- NACK: the controller counts it. ---
    let _nacker = subscribe(
        ch.clone(),
        &tunnel_token,
        pb::subscribe::Subscriber::Node(node1.clone()),
        BTreeMap::new(),
        true,
    )
    .await?;
    eventually("the NACK in metrics", Duration::from_secs(5), || async {
        running
            .metrics
            .render()
            .contains(&format!(
                "ambit_config_nacks_total{{subscriber=\"node/{node1}\"}} 1"
            ))
            .then_some(())
    })
    .await?;

    // --- Deletion: gone from the view within 1 s. ---
    let t0 = Instant::now();
    app_pods.delete("back", &DeleteParams::default()).await?;
    node_sub
        .wait("back removed", Duration::from_secs(1), |v| {
            !v.workload_names().contains(&"shop/back".to_string())
        })
        .await?;
    eprintln!("deleted pod left the view in {:?}", t0.elapsed());

    // --- Waypoints: a good Gateway is deployed and Programmed, a broken one says why. ---
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), APP_NS);
    let gw = |name: &str, port: i32| -> Gateway {
        obj(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "annotations": {"ambit.dev/for-service-account": "front"}},
            "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": port, "protocol": "HBONE"}]},
        }))
    };
    // The controller applies its GatewayClass itself, and accepts it.
    let classes: Api<GatewayClass> = Api::all(client.clone());
    eventually("GatewayClass Accepted", Duration::from_secs(30), || async {
        classes.get("ambit-waypoint").await.ok().filter(|c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
        })
    })
    .await?;
    gateways.create(&pp, &gw("front-waypoint", 15008)).await?;
    gateways.create(&pp, &gw("broken", 80)).await?;
    let cond = |g: &Gateway, t: &str| {
        g.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
    };
    // Its pod cannot become ready here (it cannot reach this in-process controller), so it is
    // applied but not bound: Programmed=False/Pending, with its address.
    // waypoint_lifecycle_e2e.rs follows a waypoint whose pod does become ready.
    let good = eventually(
        "front-waypoint applied, waiting for a ready pod",
        Duration::from_secs(30),
        || async {
            gateways.get("front-waypoint").await.ok().filter(|g| {
                cond(g, "Programmed").is_some_and(|c| {
                    c.status == "False" && c.message.contains("waiting for a ready waypoint pod")
                })
            })
        },
    )
    .await?;
    assert_eq!(
        cond(&good, "Accepted").map(|c| c.reason),
        Some("Accepted".into())
    );
    assert_eq!(
        good.status.as_ref().map(|s| s.addresses.len()),
        Some(1),
        "{:?}",
        good.status
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), APP_NS)
        .get("front-waypoint")
        .await?;
    let owner = &deployment.metadata.owner_references.unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Gateway", "front-waypoint")
    );
    Api::<Service>::namespaced(client.clone(), APP_NS)
        .get("front-waypoint")
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), APP_NS)
        .get("front-waypoint")
        .await?;
    // The root reaches the waypoint's namespace (its pods mount it), and is put back when
    // deleted.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), APP_NS);
    let holds_root = |cm: &ConfigMap| {
        cm.data
            .as_ref()
            .and_then(|d| d.get("root.crt"))
            .is_some_and(|pem| *pem == running.root_pem)
    };
    assert!(holds_root(&config_maps.get("ambit-root-cert").await?));
    config_maps
        .delete("ambit-root-cert", &DeleteParams::default())
        .await?;
    eventually(
        "the root ConfigMap put back",
        Duration::from_secs(10),
        || async {
            config_maps
                .get_opt("ambit-root-cert")
                .await
                .ok()
                .flatten()
                .filter(|cm| holds_root(cm))
        },
    )
    .await?;
    // A node tunnel never gets the waypoint's identity, wherever its pod runs.
    let err = refused("front-waypoint", &tunnel_token).await;
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("waypoint Gateway shop/front-waypoint"),
        "{}",
        err.message()
    );
    let broken = eventually("broken Gateway status", Duration::from_secs(30), || async {
        gateways
            .get("broken")
            .await
            .ok()
            // The CRD's default condition (Unknown, "Waiting for controller") has no generation.
            .filter(|g| cond(g, "Accepted").is_some_and(|c| c.observed_generation.is_some()))
    })
    .await?;
    let accepted = cond(&broken, "Accepted").unwrap();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(
        accepted.message.contains("80/HBONE"),
        "{}",
        accepted.message
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), APP_NS)
            .get_opt("broken")
            .await?
            .is_none()
    );
    // The waypoint's own pod is listed (opted out: it speaks HBONE itself); let it settle
    // (addresses, Service membership) so the resume below compares a still view. No pod of
    // the waypoint has been ready, so data planes are not given its address and front is not bound.
    let v = node_sub
        .wait("the waypoint pod settled in the view", Duration::from_secs(30), |v| {
            v.resources.values().any(|r| matches!(&r.kind, Some(pb::resource::Kind::Workload(w))
                if w.name.starts_with("front-waypoint-") && w.opted_out && !w.ips.is_empty() && !w.services.is_empty()))
        })
        .await?;
    assert!(
        matches!(&v.resources["waypoint/shop/front-waypoint"].kind,
            Some(pb::resource::Kind::Waypoint(w)) if w.vips.is_empty()),
        "data planes were given the address of a waypoint that never served"
    );
    assert!(
        v.resources.values().any(|r| matches!(&r.kind, Some(pb::resource::Kind::Workload(w)) if w.name == "front" && w.waypoint.is_empty())),
        "front bound to a waypoint that never served"
    );

    // --- Restart: a client resuming with what it holds gets no removals, only real changes. ---
    let held = node_sub.view.borrow().known();
    drop(running);
    let running = ambit_controller::runtime::start(client.clone(), config).await?;
    let ch = channel(running.grpc_addr, &running.root_pem, &controller_id).await?;
    let mut resumed = subscribe(
        ch.clone(),
        &tunnel_token,
        pb::subscribe::Subscriber::Node(node1.clone()),
        held.clone(),
        false,
    )
    .await?;
    let v = resumed
        .wait("the resume delta", Duration::from_secs(5), |v| {
            v.deltas >= 1
        })
        .await?;
    let first = v.last_delta.clone().unwrap();
    assert!(
        first.removals.is_empty() && first.upserts.is_empty(),
        "resume after restart changed the view: {first:?}"
    );

    // --- Unlabeling removes the namespace's workloads. ---
    namespaces
        .patch(APP_NS, &PatchParams::default(), &Patch::Merge(label(None)))
        .await?;
    resumed
        .wait("shop's workloads gone", Duration::from_secs(5), |v| {
            v.workload_names().is_empty()
        })
        .await?;
    drop(running);
    Ok(())
}
