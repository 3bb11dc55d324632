//! RequestAuthentication against the testbed's real kube-apiserver, with the chart's CRD: a rule
//! whose key set is in a labelled Secret reaches the stream of the waypoint of the selected
//! pods' account with the Secret's document, follows the Secret when it changes, is `Ready`;
//! one whose Secret is missing is delivered without keys and says `KeysUnavailable`; the
//! apiserver refuses a rule naming two key sources (CEL); a deleted resource leaves the
//! stream. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_authn::testing::{Algorithm, TestKey, jwks};
use ambit_controller::crd::{Gateway, RequestAuthentication};
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use support::{
    SYSTEM_NS, channel, condition_reads, controller_config, create_namespace,
    create_service_accounts, install_crds, obj, pod_json, pod_running, subscribe_as_waypoint,
    waypoint_gateway, waypoint_token,
};

const NAME: &str = "ctljwt";
const ID: u8 = 74;
const APP_NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_against_the_real_apiserver() -> Result<()> {
    support::on_testbed(
        "request_authentication_against_the_real_apiserver",
        NAME,
        ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

fn delivered(v: &support::View, name: &str) -> Option<pb::RequestAuthentication> {
    match v.resources.get(name)?.kind.as_ref()? {
        pb::resource::Kind::RequestAuthentication(r) => Some(r.clone()),
        _ => None,
    }
}

fn key_secret(document: &str) -> Secret {
    obj(json!({
        "metadata": {"name": "idp-keys", "labels": {"ambit.dev/jwks": "true"}},
        "stringData": {"jwks": document},
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
    pod_running(&pods, "back").await?;
    let gateway = waypoint_gateway("back-waypoint", "back");
    Api::<Gateway>::namespaced(client.clone(), APP_NS)
        .create(&pp, &gateway)
        .await?;

    let first_keys = jwks(&[TestKey::generate(Algorithm::ES256, "k1").jwk()]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), APP_NS);
    secrets.create(&pp, &key_secret(&first_keys)).await?;

    let config = controller_config()?;
    let running = ambit_controller::runtime::start(client.clone(), config.clone()).await?;
    let ch = channel(
        running.grpc_addr,
        &running.root_pem,
        &config.controller_identity()?,
    )
    .await?;
    let token = waypoint_token(&client, APP_NS, "back-waypoint").await?;
    let mut sub = subscribe_as_waypoint(&ch, &token, APP_NS, "back", WAIT).await?;

    let resources: Api<RequestAuthentication> = Api::namespaced(client.clone(), APP_NS);
    let ra = |name: &str, source: serde_json::Value| -> RequestAuthentication {
        let mut rule = json!({"issuer": format!("https://{name}.example"), "audiences": ["shop"]});
        rule.as_object_mut()
            .unwrap()
            .extend(source.as_object().unwrap().clone());
        obj(json!({
            "apiVersion": "ambit.dev/v1alpha1", "kind": "RequestAuthentication",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "back"}}, "jwtRules": [rule]},
        }))
    };
    resources
        .create(
            &pp,
            &ra("idp", json!({"jwksSecretRef": {"name": "idp-keys"}})),
        )
        .await?;
    resources
        .create(
            &pp,
            &ra("missing", json!({"jwksSecretRef": {"name": "nowhere"}})),
        )
        .await?;
    // The apiserver refuses two key sources in one rule.
    let two = ra(
        "two",
        json!({"jwks": first_keys, "jwksUri": "https://two.example/jwks"}),
    );
    let refused = resources.create(&pp, &two).await.unwrap_err();
    assert!(
        refused.to_string().contains("exactly one of jwks"),
        "{refused}"
    );

    // The two were created one after the other: a view may hold the first before the second.
    let v = sub
        .wait(
            "idp's rule with the Secret's key set, and the rule without keys",
            WAIT,
            |v| {
                delivered(v, "requestauthentication/shop/idp")
                    .is_some_and(|r| r.jwt_rules[0].jwks == first_keys)
                    && delivered(v, "requestauthentication/shop/missing").is_some()
            },
        )
        .await?;
    let missing = delivered(&v, "requestauthentication/shop/missing")
        .context("the rule without keys is delivered too")?;
    assert_eq!(missing.jwt_rules[0].jwks, "", "delivered without keys");

    condition_reads(&resources, "idp", "Ready", ("True", "Resolved"), WAIT).await?;
    let message = condition_reads(
        &resources,
        "missing",
        "Ready",
        ("False", "KeysUnavailable"),
        WAIT,
    )
    .await?;
    assert!(message.contains("shop/nowhere"), "{message}");

    // Rotation: the Secret's new key set reaches the waypoint.
    let second_keys = jwks(&[TestKey::generate(Algorithm::EdDSA, "k2").jwk()]);
    secrets
        .patch(
            "idp-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"jwks": second_keys}})),
        )
        .await?;
    sub.wait("idp's rule with the rotated key set", WAIT, |v| {
        delivered(v, "requestauthentication/shop/idp")
            .is_some_and(|r| r.jwt_rules[0].jwks == second_keys)
    })
    .await?;

    resources.delete("idp", &DeleteParams::default()).await?;
    sub.wait("idp gone from the stream", WAIT, |v| {
        !v.resources.contains_key("requestauthentication/shop/idp")
    })
    .await?;
    drop(running);
    Ok(())
}
