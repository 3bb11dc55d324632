//! RateLimitPolicy against the testbed's real kube-apiserver, with the chart's CRD: a policy on
//! a Service reaches the stream of the waypoint of that Service's account as a RateLimit with
//! the policy's numbers and is `Accepted`; one naming a Service that does not exist says
//! `TargetNotFound`; the apiserver refuses a Service ref in Gateway API's group (CEL) and a zero
//! quota; a deleted policy leaves the stream. The controller runs with exactly the chart's
//! RBAC. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_controller::config::Config;
use ambit_controller::crd::Gateway;
use ambit_controller::ratelimit::RateLimitPolicy;
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{
    SYSTEM_NS, as_controller, channel, chart_rbac, eventually, install_crds, obj, pod_json,
    pod_running, subscribe,
};

const NAME: &str = "ctlrl";
const ID: u8 = 75;
const APP_NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);
const LIMIT: &str = "ratelimit/shop/back-limit/Service/back";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_policy_against_the_real_apiserver() -> Result<()> {
    if ambit_testbed::skip_without_root("rate_limit_policy_against_the_real_apiserver") {
        return Ok(());
    }
    ambit_testbed::build_binaries(&["ambit-testbed", "ambit-samples"])?;
    let tb = ambit_testbed::Testbed::new(ambit_testbed::Config::new(NAME, ID)?.with_nodes(1)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(checks).await
}

/// A token of `ns/sa` for the controller's audience (the waypoint's).
async fn token_of(client: &kube::Client, ns: &str, sa: &str) -> Result<String> {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [ambit_proto::TOKEN_AUDIENCE], "expirationSeconds": 3600}});
    let tr: serde_json::Value = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &body)
        .await?;
    Ok(tr["status"]["token"]
        .as_str()
        .context("token in TokenRequest status")?
        .to_string())
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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &obj(json!({"metadata": {"name": SYSTEM_NS}})))
        .await?;
    namespaces
        .create(
            &pp,
            &obj(json!({"metadata": {"name": APP_NS,
                "labels": {"ambit.dev/dataplane-mode": "ambient"}}})),
        )
        .await?;
    for sa in ["back", "back-waypoint"] {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), APP_NS);
        eventually("a service account", WAIT, || async {
            api.create(&pp, &obj(json!({"metadata": {"name": sa}})))
                .await
                .ok()
        })
        .await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    pods.create(&pp, &pod_json("back", "back", &node)).await?;
    let svc: Service = obj(json!({
        "metadata": {"name": "back"},
        "spec": {"selector": {"app": "back"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }));
    Api::<Service>::namespaced(client.clone(), APP_NS)
        .create(&pp, &svc)
        .await?;
    pod_running(&pods, "back").await?;
    let gateway: Gateway = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "back-waypoint", "annotations": {"ambit.dev/for-service-account": "back"}},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }));
    Api::<Gateway>::namespaced(client.clone(), APP_NS)
        .create(&pp, &gateway)
        .await?;

    // The controller runs as its service account with exactly the chart's RBAC.
    chart_rbac(&client).await?;
    let config = Config::from_lookup(|k| match k {
        "AMBIT_GRPC_ADDR" | "AMBIT_METRICS_ADDR" => Some("127.0.0.1:0".into()),
        "AMBIT_NAMESPACE" => Some(SYSTEM_NS.into()),
        _ => None,
    })?;
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        ambit_controller::runtime::start(as_controller(tb).await?, config.clone()),
    )
    .await
    .context(
        "the controller did not start within 60 s: is a CRD it watches missing, or RBAC to list it?",
    )??;
    let ch = channel(
        running.grpc_addr,
        &running.root_pem,
        &config.controller_identity()?,
    )
    .await?;
    let waypoint_token = token_of(&client, APP_NS, "back-waypoint").await?;
    let mut sub = eventually("subscribed as back's waypoint", WAIT, || {
        let (ch, token) = (ch.clone(), waypoint_token.clone());
        async move {
            subscribe(
                ch,
                &token,
                pb::subscribe::Subscriber::Waypoint(pb::ServiceAccountRef {
                    namespace: APP_NS.into(),
                    name: "back".into(),
                }),
                BTreeMap::new(),
                false,
            )
            .await
            .ok()
        }
    })
    .await?;
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

    let condition = |name: &'static str| {
        let policies = policies.clone();
        async move {
            let p = policies.get(name).await.ok()?;
            let c = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Accepted")?;
            Some((c.status, c.reason, c.message))
        }
    };
    eventually("back-limit Accepted", WAIT, || async {
        condition("back-limit")
            .await
            .filter(|(s, r, _)| s == "True" && r == "Accepted")
    })
    .await?;
    let (_, _, message) = eventually("nowhere not Accepted", WAIT, || async {
        condition("nowhere")
            .await
            .filter(|(s, r, _)| s == "False" && r == "TargetNotFound")
    })
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
