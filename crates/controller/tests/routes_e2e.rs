//! HTTPRoute and GRPCRoute (GAMMA) against the testbed's real kube-apiserver, with Gateway API's
//! own v1.6.3 CRDs (the chart's): a route on a Service reaches the stream of the waypoint of
//! that Service's account with its rules and backends resolved (a cross-namespace backend
//! invalid until a ReferenceGrant allows it, and then its Service and workloads in the view),
//! its status says so per parent as the spec does (keeping another controller's entry), and a
//! deleted route leaves the stream. The controller runs as its own service account with exactly
//! the chart's RBAC (`manifests/ambit.yaml`), so the chart grants what routes need. Needs root
//! (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::crd::Gateway;
use ambit_controller::route_crd::{GRPCRoute, HTTPRoute, ReferenceGrant, RouteParentStatus};
use ambit_proto::config::v1 as pb;
use anyhow::Result;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{
    SYSTEM_NS, channel, chart_rbac, controller_config, create_namespace, create_service_accounts,
    echo_service, eventually, install_crds, obj, pod_json, pod_running, start_as_controller,
    subscribe_as_waypoint, waypoint_gateway, waypoint_token,
};

const NAME: &str = "ctlroute";
const ID: u8 = 73;
const APP_NS: &str = "shop";
const OTHER_NS: &str = "other";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_against_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "routes_against_the_real_apiserver",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

fn route_of(v: &support::View, name: &str) -> Option<pb::Route> {
    match v.resources.get(name)?.kind.as_ref()? {
        pb::resource::Kind::Route(r) => Some(r.clone()),
        _ => None,
    }
}

/// `(invalid)` of each backend of each rule.
fn invalid_flags(r: &pb::Route) -> Vec<Vec<bool>> {
    r.rules
        .iter()
        .map(|rule| rule.backends.iter().map(|b| b.invalid).collect())
        .collect()
}

/// Our status entries of `parents`: parent name -> [(type, status, reason)].
fn ours(parents: &[RouteParentStatus]) -> BTreeMap<String, Vec<(String, String, String)>> {
    parents
        .iter()
        .filter(|p| p.controller_name == ambit_controller::waypoint::CONTROLLER_NAME)
        .map(|p| {
            (
                p.parent_ref.name.clone(),
                p.conditions
                    .iter()
                    .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                    .collect(),
            )
        })
        .collect()
}

fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    install_crds(&client).await?;

    let enrolled = json!({"ambit.dev/dataplane-mode": "ambient"});
    create_namespace(&client, SYSTEM_NS, json!({})).await?;
    for ns in [APP_NS, OTHER_NS] {
        create_namespace(&client, ns, enrolled.clone()).await?;
    }
    // `back` is the parent's account, with a waypoint; `api` and `remote` are backends.
    create_service_accounts(
        &client,
        &[
            (APP_NS, "back"),
            (APP_NS, "api"),
            (APP_NS, "back-waypoint"),
            (OTHER_NS, "remote"),
        ],
        WAIT,
    )
    .await?;
    for (ns, name) in [(APP_NS, "back"), (APP_NS, "api"), (OTHER_NS, "remote")] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&pp, &pod_json(name, name, &node)).await?;
        let svc = echo_service(name);
        Api::<Service>::namespaced(client.clone(), ns)
            .create(&pp, &svc)
            .await?;
        pod_running(&pods, name).await?;
    }
    chart_rbac(&client).await?;
    // The v1.6.3 Gateway schema still reads as a waypoint.
    let gateway = waypoint_gateway("back-waypoint", "back");
    Api::<Gateway>::namespaced(client.clone(), APP_NS)
        .create(&pp, &gateway)
        .await?;

    let config = controller_config()?;
    let running = start_as_controller(tb, &config).await?;
    let ch = channel(
        running.grpc_addr,
        &running.root_pem,
        &config.controller_identity()?,
    )
    .await?;
    let token = waypoint_token(&client, APP_NS, "back-waypoint").await?;
    let mut sub = subscribe_as_waypoint(&ch, &token, APP_NS, "back", WAIT).await?;
    sub.wait("back's own service and workload", WAIT, |v| {
        v.resources.contains_key("service/shop/back") && v.workload_names() == ["shop/back"]
    })
    .await?;

    // --- A route on `back`: 90% to `api`, 10% to `other/remote` (not granted yet). ---
    let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), APP_NS);
    let route: HTTPRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "back", "sectionName": "http"},
                {"group": "", "kind": "Service", "name": "nope"},
            ],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [
                    {"name": "api", "port": 80, "weight": 90},
                    {"name": "remote", "namespace": OTHER_NS, "port": 80, "weight": 10},
                ],
                "timeouts": {"request": "10s"},
            }],
        },
    }));
    routes.create(&pp, &route).await?;
    let v = sub
        .wait("the route on back's waypoint", WAIT, |v| {
            route_of(v, "httproute/shop/split").is_some()
                && v.workload_names().contains(&"shop/api".to_string())
        })
        .await?;
    let r = route_of(&v, "httproute/shop/split").unwrap();
    assert_eq!(r.kind, "HTTPRoute");
    assert_eq!(
        r.parents,
        [pb::RouteParent {
            namespace: APP_NS.into(),
            name: "back".into(),
            port: 80
        }],
        "only the parent that exists, its port by name"
    );
    assert_eq!(invalid_flags(&r), [[false, true]]);
    let rule = &r.rules[0];
    assert_eq!(
        rule.backends
            .iter()
            .map(|b| (b.namespace.as_str(), b.name.as_str(), b.port, b.weight))
            .collect::<Vec<_>>(),
        [("shop", "api", 80, 90), ("other", "remote", 80, 10)]
    );
    assert_eq!(rule.request_timeout_ms, 10_000);
    assert_eq!(
        rule.matches[0].path,
        Some(pb::StringMatch {
            r#type: "PathPrefix".into(),
            value: "/v2".into()
        })
    );
    assert!(r.created_unix_ms > 0);
    assert!(v.resources.contains_key("service/shop/api"));
    assert!(
        !v.resources.contains_key("service/other/remote"),
        "an ungranted backend is never picked: not sent"
    );

    // Status: per parent, as the spec says.
    let status_of = |name: &'static str| {
        let routes = routes.clone();
        async move {
            routes
                .get(name)
                .await
                .ok()
                .and_then(|r| r.status)
                .map(|s| s.parents)
                .unwrap_or_default()
        }
    };
    let refused = eventually("split's status", WAIT, || async {
        let parents = status_of("split").await;
        (ours(&parents).len() == 2).then_some(parents)
    })
    .await?;
    assert_eq!(
        ours(&refused),
        BTreeMap::from([
            (
                "back".to_string(),
                vec![
                    cond("Accepted", "True", "Accepted"),
                    cond("ResolvedRefs", "False", "RefNotPermitted")
                ]
            ),
            (
                "nope".to_string(),
                vec![
                    cond("Accepted", "False", "NoMatchingParent"),
                    cond("ResolvedRefs", "False", "RefNotPermitted")
                ]
            ),
        ])
    );
    // The parentRef is echoed as written.
    assert_eq!(refused[0].parent_ref.section_name.as_deref(), Some("http"));

    // Another controller's entry (as for a Gateway parent) is kept by our writes.
    let mut with_theirs = refused.clone();
    with_theirs.push(obj(json!({
        "parentRef": {"name": "edge"},
        "controllerName": "example.com/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    })));
    routes
        .patch_status(
            "split",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"parents": with_theirs}})),
        )
        .await?;

    // --- The grant: `remote` resolves, and its Service and workload reach the waypoint. ---
    let grant: ReferenceGrant = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-shop"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": APP_NS}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }));
    Api::<ReferenceGrant>::namespaced(client.clone(), OTHER_NS)
        .create(&pp, &grant)
        .await?;
    sub.wait(
        "remote resolved, with its service and workload",
        WAIT,
        |v| {
            route_of(v, "httproute/shop/split")
                .is_some_and(|r| invalid_flags(&r) == [[false, false]])
                && v.resources.contains_key("service/other/remote")
                && v.workload_names().contains(&"other/remote".to_string())
        },
    )
    .await?;
    let resolved = eventually("ResolvedRefs True", WAIT, || async {
        let parents = status_of("split").await;
        ours(&parents)
            .get("back")
            .is_some_and(|c| c[1] == cond("ResolvedRefs", "True", "ResolvedRefs"))
            .then_some(parents)
    })
    .await?;
    let theirs: Vec<_> = resolved
        .iter()
        .filter(|p| p.controller_name == "example.com/gateway-controller")
        .collect();
    assert_eq!(theirs.len(), 1, "{resolved:?}");
    assert_eq!(theirs[0].parent_ref.name, "edge");
    let accepted_at = |parents: &[RouteParentStatus]| {
        parents
            .iter()
            .find(|p| {
                p.controller_name == ambit_controller::waypoint::CONTROLLER_NAME
                    && p.parent_ref.name == "back"
            })
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Accepted"))
            .map(|c| c.last_transition_time.clone())
    };
    assert_eq!(
        accepted_at(&resolved),
        accepted_at(&refused),
        "Accepted did not change: its transition time stays"
    );

    // --- A GRPCRoute on the same Service. ---
    let grpc: GRPCRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "cart"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "back"}],
            "rules": [{
                "matches": [{"method": {"service": "shop.Cart", "method": "Add"}}],
                "backendRefs": [{"name": "api", "port": 80}],
            }],
        },
    }));
    let grpc_routes: Api<GRPCRoute> = Api::namespaced(client.clone(), APP_NS);
    grpc_routes.create(&pp, &grpc).await?;
    let v = sub
        .wait("the GRPCRoute", WAIT, |v| {
            route_of(v, "grpcroute/shop/cart").is_some()
        })
        .await?;
    let g = route_of(&v, "grpcroute/shop/cart").unwrap();
    assert_eq!(g.kind, "GRPCRoute");
    assert_eq!(
        g.rules[0].matches[0].grpc_method,
        Some(pb::StringMatch {
            r#type: "Exact".into(),
            value: "Add".into()
        })
    );
    eventually("cart's status", WAIT, || async {
        let parents = grpc_routes
            .get("cart")
            .await
            .ok()
            .and_then(|r| r.status)
            .map(|s| s.parents)
            .unwrap_or_default();
        (ours(&parents).get("back")
            == Some(&vec![
                cond("Accepted", "True", "Accepted"),
                cond("ResolvedRefs", "True", "ResolvedRefs"),
            ]))
        .then_some(())
    })
    .await?;

    // --- Deleted routes leave the stream, and with them what only they brought. ---
    routes.delete("split", &DeleteParams::default()).await?;
    grpc_routes.delete("cart", &DeleteParams::default()).await?;
    sub.wait("the routes gone", WAIT, |v| {
        !v.resources.contains_key("httproute/shop/split")
            && !v.resources.contains_key("grpcroute/shop/cart")
            && !v.resources.contains_key("service/other/remote")
            && v.workload_names() == ["shop/back"]
    })
    .await?;
    drop(running);
    Ok(())
}
