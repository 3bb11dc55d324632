//! RateLimitPolicy against the testbed's real kube-apiserver, with the chart's CRD: a policy on
//! a Service reaches the stream of the waypoint of that Service's account as a RateLimit with
//! the policy's numbers and is `Accepted`; one naming a Service that does not exist says
//! `TargetNotFound`; the apiserver refuses a Service ref in Gateway API's group (CEL) and a zero
//! quota; a deleted policy leaves the stream. The controller runs with exactly the chart's
//! RBAC. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::crd::Gateway;
use ambit_controller::ratelimit::RateLimitPolicy;
use ambit_proto::config::v1 as pb;
use anyhow::Result;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::time::Duration;
use support::{
    SYSTEM_NS, channel, chart_rbac, condition_reads, controller_config, create_namespace,
    create_service_accounts, echo_service, install_crds, obj, pod_json, pod_running,
    start_as_controller, subscribe_as_waypoint, waypoint_gateway, waypoint_token,
};

const NAME: &str = "ctlrl";
const ID: u8 = 75;
const APP_NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);
const LIMIT: &str = "ratelimit/shop/back-limit/Service/back";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_policy_against_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "rate_limit_policy_against_the_real_apiserver",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

fn delivered(v: &support::View, name: &str) -> Option<pb::RateLimit> {
    match v.resources.get(name)?.kind.as_ref()? {
        pb::resource::Kind::RateLimit(r) => Some(r.clone()),
        _ => None,
    }
}

fn policy(name: &str, targets: serde_json::Value, local: serde_json::Value) -> RateLimitPolicy {
    obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": name},
        "spec": {"targetRefs": targets, "local": local},
    }))
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
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
        &[(APP_NS, "back"), (APP_NS, "back-waypoint")],
        WAIT,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    pods.create(&pp, &pod_json("back", "back", &node)).await?;
    let svc = echo_service("back");
    Api::<Service>::namespaced(client.clone(), APP_NS)
        .create(&pp, &svc)
        .await?;
    pod_running(&pods, "back").await?;
    let gateway = waypoint_gateway("back-waypoint", "back");
    Api::<Gateway>::namespaced(client.clone(), APP_NS)
        .create(&pp, &gateway)
        .await?;

    // The controller runs as its service account with exactly the chart's RBAC.
    chart_rbac(&client).await?;
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
    sub.wait("back's Service in the waypoint's view", WAIT, |v| {
        v.resources.contains_key("service/shop/back")
    })
    .await?;

    let policies: Api<RateLimitPolicy> = Api::namespaced(client.clone(), APP_NS);
    // The apiserver refuses what the schema can tell is wrong.
    let service_in_gateway_group = policy(
        "wrong-group",
        json!([{"group": "gateway.networking.k8s.io", "kind": "Service", "name": "back"}]),
        json!({"requests": 1, "unit": "Second"}),
    );
    let refused = policies
        .create(&pp, &service_in_gateway_group)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("a Service is in group"),
        "{refused}"
    );
    let zero = policy(
        "zero",
        json!([{"group": "", "kind": "Service", "name": "back"}]),
        json!({"requests": 0, "unit": "Second"}),
    );
    let refused = policies.create(&pp, &zero).await.unwrap_err();
    assert!(refused.to_string().contains("requests"), "{refused}");

    policies
        .create(
            &pp,
            &policy(
                "back-limit",
                json!([{"group": "", "kind": "Service", "name": "back"}]),
                json!({"requests": 100, "unit": "Minute", "burst": 20}),
            ),
        )
        .await?;
    policies
        .create(
            &pp,
            &policy(
                "nowhere",
                json!([{"group": "", "kind": "Service", "name": "nowhere"}]),
                json!({"requests": 1, "unit": "Hour"}),
            ),
        )
        .await?;
    let v = sub
        .wait("back's rate limit in the waypoint's view", WAIT, |v| {
            delivered(v, LIMIT).is_some()
        })
        .await?;
    let limit = delivered(&v, LIMIT).unwrap();
    assert_eq!(
        (
            limit.namespace.as_str(),
            limit.target_kind.as_str(),
            limit.target_name.as_str()
        ),
        ("shop", "Service", "back")
    );
    assert_eq!(
        (limit.requests, limit.interval_ms, limit.burst),
        (100, 60_000, 20)
    );
    assert!(
        !v.resources.keys().any(|k| k.contains("/nowhere/")),
        "a limit on another Service is not this waypoint's: {:?}",
        v.resources.keys().collect::<Vec<_>>()
    );

    let accepted = ("True", "Accepted");
    condition_reads(&policies, "back-limit", "Accepted", accepted, WAIT).await?;
    let message = condition_reads(
        &policies,
        "nowhere",
        "Accepted",
        ("False", "TargetNotFound"),
        WAIT,
    )
    .await?;
    assert!(message.contains("Service shop/nowhere"), "{message}");

    policies
        .delete("back-limit", &DeleteParams::default())
        .await?;
    sub.wait("back's rate limit gone from the stream", WAIT, |v| {
        !v.resources.contains_key(LIMIT)
    })
    .await?;
    drop(running);
    Ok(())
}
