//! Automatic waypoints against the testbed's real kube-apiserver: in a namespace labelled
//! `ambit.dev/waypoint=auto`, an HTTPRoute on a Service makes the controller create the
//! waypoint Gateway of that Service's account (the shape `kubectl ambit waypoint apply`
//! writes, marked automatic), which the waypoint deployer then programs; deleting the route
//! deletes it. An explicit Gateway for another account that a route also asks for is never
//! touched, and no automatic one is made beside it. The controller runs with exactly the
//! chart's RBAC. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::auto_waypoint::AUTO_GATEWAY_LABEL;
use ambit_controller::crd::Gateway;
use ambit_controller::route_crd::HTTPRoute;
use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::time::Duration;
use support::{
    SYSTEM_NS, chart_rbac, controller_config, create_namespace, create_service_accounts,
    echo_service, eventually, install_crds, obj, pod_json, pod_running, start_as_controller,
    waypoint_gateway,
};

const NAME: &str = "ctlauto";
const ID: u8 = 76;
const APP_NS: &str = "shop";
/// Passes run on each new snapshot and at least every 10 s.
const WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_waypoints_against_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "automatic_waypoints_against_the_real_apiserver",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

fn route(name: &str, service: &str) -> HTTPRoute {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": service}],
            "rules": [{"backendRefs": [{"name": service, "port": 80}]}],
        },
    }))
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    install_crds(&client).await?;
    create_namespace(&client, SYSTEM_NS, json!({})).await?;
    let labels = json!({"ambit.dev/dataplane-mode": "ambient", "ambit.dev/waypoint": "auto"});
    create_namespace(&client, APP_NS, labels).await?;
    create_service_accounts(&client, &[(APP_NS, "back"), (APP_NS, "api")], WAIT).await?;
    for sa in ["back", "api"] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
        pods.create(&pp, &pod_json(sa, sa, &node)).await?;
        let svc = echo_service(sa);
        Api::<Service>::namespaced(client.clone(), APP_NS)
            .create(&pp, &svc)
            .await?;
        pod_running(&pods, sa).await?;
    }
    // `api` has an explicit waypoint, as `kubectl ambit waypoint apply --name api-wp` writes.
    let gateways: Api<Gateway> = Api::namespaced(client.clone(), APP_NS);
    let explicit = waypoint_gateway("api-wp", "api");
    let explicit = gateways.create(&pp, &explicit).await?;

    // The controller runs as its service account with exactly the chart's RBAC.
    chart_rbac(&client).await?;
    let config = controller_config()?;
    let running = start_as_controller(tb, &config).await?;

    let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), APP_NS);
    // A route on `api` first: its account has a waypoint already, so nothing is made.
    routes.create(&pp, &route("to-api", "api")).await?;
    routes.create(&pp, &route("to-back", "back")).await?;
    let auto = eventually("the automatic waypoint of back", WAIT, || async {
        gateways.get_opt("waypoint-back").await.ok().flatten()
    })
    .await?;
    assert_eq!(
        auto.labels().get(AUTO_GATEWAY_LABEL).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        auto.annotations()
            .get("ambit.dev/for-service-account")
            .map(String::as_str),
        Some("back")
    );
    assert_eq!(
        serde_json::to_value(&auto.spec)?,
        json!({"gatewayClassName": "ambit-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]})
    );
    // The deployer takes it from there as from any waypoint Gateway.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NS);
    eventually("back's waypoint Deployment", WAIT, || async {
        deployments.get_opt("waypoint-back").await.ok().flatten()
    })
    .await?;

    routes.delete("to-back", &DeleteParams::default()).await?;
    eventually("back's automatic waypoint deleted", WAIT, || async {
        matches!(gateways.get_opt("waypoint-back").await, Ok(None)).then_some(())
    })
    .await?;

    // Passes since the route on `api` came made nothing for it and left its Gateway as it was.
    assert!(gateways.get_opt("waypoint-api").await?.is_none());
    let now = gateways.get("api-wp").await?;
    assert_eq!(now.metadata.uid, explicit.metadata.uid);
    assert_eq!(now.metadata.generation, explicit.metadata.generation);
    assert_eq!(now.metadata.labels, explicit.metadata.labels);
    assert_eq!(now.metadata.annotations, explicit.metadata.annotations);
    drop(running);
    Ok(())
}
