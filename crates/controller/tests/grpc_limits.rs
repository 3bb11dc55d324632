//! The controller's gRPC server against the testbed's real kube-apiserver: a node's config
//! stream needs a token bound to a pod on that node, and a token is reviewed once however often
//! it is shown within the review cache's lifetime (issue 14 items 2 and 3).
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/metrics_doc.rs"]
mod metrics_doc;
mod support;

use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{
    SYSTEM_NS, channel, controller_config, create_service_accounts, install_crds, obj, pod_json,
    subscribe, token,
};

const NAME: &str = "ctlgrpc";
const ID: u8 = 86;
/// Subscriptions made with one token, well within the review cache's lifetime.
const REPEATS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_subscriptions_need_a_token_bound_to_the_node_and_tokens_are_reviewed_once()
-> Result<()> {
    support::on_testbed(
        "node_subscriptions_need_a_token_bound_to_the_node_and_tokens_are_reviewed_once",
        NAME,
        ID,
        2,
        &["ambit-testbed", "ambit-samples"],
        checks,
    )
    .await
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let (node1, node2) = (tb.config.node_name(1), tb.config.node_name(2));
    install_crds(&client).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": SYSTEM_NS}})),
        )
        .await?;
    create_service_accounts(
        &client,
        &[(SYSTEM_NS, "ambit-tunnel")],
        Duration::from_secs(10),
    )
    .await?;
    // A token can be bound to a pod once the pod exists; it need not run.
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    let tunnel_pod = pods
        .create(
            &PostParams::default(),
            &pod_json("tunnel-1", "ambit-tunnel", &node1),
        )
        .await?;
    let uid = tunnel_pod.metadata.uid.context("pod uid")?;
    let audience = ambit_proto::TOKEN_AUDIENCE;
    let bound = token(&client, "ambit-tunnel", Some(("tunnel-1", &uid)), audience).await?;
    let unbound = token(&client, "ambit-tunnel", None, audience).await?;

    let config = controller_config()?;
    let controller_id = config.controller_identity()?;
    let running = ambit_controller::runtime::start(client.clone(), config).await?;
    let ch = channel(running.grpc_addr, &running.root_pem, &controller_id).await?;
    let as_node = |token: String, node: String| {
        let ch = ch.clone();
        async move {
            subscribe(
                ch,
                &token,
                pb::subscribe::Subscriber::Node(node),
                BTreeMap::new(),
                false,
            )
            .await
        }
    };

    // The tunnel's own token, as its own node: served, and reviewed once for all its calls.
    let mut held = Vec::new();
    for _ in 0..REPEATS {
        held.push(
            as_node(bound.clone(), node1.clone())
                .await
                .context("the tunnel of node 1 subscribing as node 1")?,
        );
    }
    let metrics = running.metrics.render();
    eprintln!(
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("token_reviews"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("ambit_token_reviews_total{result=\"authenticated\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ambit_token_reviews_total{{result=\"cached\"}} {}\n",
            REPEATS - 1
        )),
        "{metrics}"
    );

    // The same token as another node: refused.
    let other_node = as_node(bound.clone(), node2.clone())
        .await
        .err()
        .context("the tunnel of node 1 subscribed as node 2")?;
    assert_eq!(
        other_node.code(),
        tonic::Code::PermissionDenied,
        "{other_node:?}"
    );
    assert!(
        other_node.message().contains("may not subscribe as node"),
        "{}",
        other_node.message()
    );

    // The tunnel's account with a token bound to no pod: as no node at all.
    for node in [&node1, &node2] {
        let unbound_denied = as_node(unbound.clone(), node.clone())
            .await
            .err()
            .with_context(|| format!("a token bound to no pod subscribed as {node}"))?;
        assert_eq!(
            unbound_denied.code(),
            tonic::Code::PermissionDenied,
            "{unbound_denied:?}"
        );
        assert!(
            unbound_denied
                .message()
                .contains("not bound to a pod on a node"),
            "{}",
            unbound_denied.message()
        );
    }

    // The real /metrics after this traffic, against docs/metrics.md.
    let scrape = get_metrics(running.metrics_addr).await?;
    // Nothing NACKed or rejected here (testbed_e2e does).
    let not_produced = [
        "ambit_config_nacks_total",
        "ambit_config_rejected_resources_total",
    ];
    let sampled = metrics_doc::check("controller", &scrape, &not_produced)
        .map_err(|problems| anyhow::anyhow!("{problems}\n{scrape}"))?;
    for series in [
        "ambit_token_reviews_total",
        "ambit_config_subscribers",
        "ambit_leader",
    ] {
        assert!(sampled.contains(series), "{series} not sampled:\n{scrape}");
    }
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.1: the body of a 200.
async fn get_metrics(addr: std::net::SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: controller\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP head")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(body.to_owned())
}
