//! The controller's gRPC server against the testbed's real kube-apiserver: a node's config
//! stream needs a token bound to a pod on that node, and a token is reviewed once however often
//! it is shown within the review cache's lifetime; stalled handshakes from one address do not
//! starve another, the oldest stalls are cut for new clients, a connection holding no stream
//! is closed after the idle timeout (one holding a stream is not), and a burst of distinct
//! tokens past the review rate limit is turned away (issue 14 items 2 and 3).
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/metrics_doc.rs"]
mod metrics_doc;
mod support;

use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{
    SYSTEM_NS, channel, channel_from, controller_config, controller_config_with, controller_tls,
    create_namespace, create_service_accounts, install_crds, pod_json, subscribe, tcp_from,
    tls_connect, token,
};

const NAME: &str = "ctlgrpc";
const ID: u8 = 86;
const LIMITS_NAME: &str = "ctllimit";
const LIMITS_ID: u8 = 93;
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

/// The system namespace with the tunnel's account and its pod `tunnel-1` on `node`, and a token
/// bound to that pod (a token can be bound once the pod exists; it need not run).
async fn tunnel_pod_token(client: &kube::Client, node: &str) -> Result<String> {
    create_namespace(client, SYSTEM_NS, json!({})).await?;
    create_service_accounts(
        client,
        &[(SYSTEM_NS, "ambit-tunnel")],
        Duration::from_secs(10),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    let tunnel_pod = pods
        .create(
            &PostParams::default(),
            &pod_json("tunnel-1", "ambit-tunnel", node),
        )
        .await?;
    let uid = tunnel_pod.metadata.uid.context("pod uid")?;
    token(
        client,
        "ambit-tunnel",
        Some(("tunnel-1", &uid)),
        ambit_proto::TOKEN_AUDIENCE,
    )
    .await
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let (node1, node2) = (tb.config.node_name(1), tb.config.node_name(2));
    install_crds(&client).await?;
    let bound = tunnel_pod_token(&client, &node1).await?;
    let unbound = token(&client, "ambit-tunnel", None, ambit_proto::TOKEN_AUDIENCE).await?;

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
    // Nothing NACKed or rejected here (testbed_e2e does), and no namespace has a risk profile
    // (risk_e2e in crates/e2e).
    let not_produced = [
        "ambit_config_nacks_total",
        "ambit_config_rejected_resources_total",
        "ambit_risk_requirement_unmet",
        "ambit_risk_refused_service_accounts",
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

/// The idle timeout and review rate the limits test runs the controller with.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const REVIEWS_PER_SECOND: u32 = 1;
const REVIEW_BURST: u32 = 5;
/// Distinct tokens shown at once: well past the burst and what the rate adds while a call
/// waits for its turn (5 s).
const FLOOD_TOKENS: usize = 24;
/// The server's handshake budget (`grpc.rs`).
const MAX_HANDSHAKES: usize = ambit_controller::grpc::MAX_HANDSHAKES;
const PER_ADDRESS: usize = ambit_controller::grpc::MAX_HANDSHAKES_PER_ADDRESS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_idle_connections_and_token_floods_are_bounded() -> Result<()> {
    support::on_testbed(
        "stalled_handshakes_idle_connections_and_token_floods_are_bounded",
        LIMITS_NAME,
        LIMITS_ID,
        1,
        &["ambit-testbed", "ambit-samples"],
        limits,
    )
    .await
}

fn loopback(last: u8) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, 0, last).into()
}

/// Whether the server closed `tcp` within `within` (EOF or an error on read).
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn limits(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let node = tb.config.node_name(1);
    install_crds(&client).await?;
    let bound = tunnel_pod_token(&client, &node).await?;

    let config = controller_config_with(&[
        (
            "AMBIT_GRPC_IDLE_TIMEOUT_SECS",
            &IDLE_TIMEOUT.as_secs().to_string(),
        ),
        (
            "AMBIT_TOKEN_REVIEWS_PER_SECOND",
            &REVIEWS_PER_SECOND.to_string(),
        ),
        ("AMBIT_TOKEN_REVIEW_BURST", &REVIEW_BURST.to_string()),
    ])?;
    let controller_id = config.controller_identity()?;
    let running = ambit_controller::runtime::start(client.clone(), config).await?;
    let addr = running.grpc_addr;
    let root = running.root_pem.clone();
    let as_node_from = |source: u8| {
        let (root, controller_id, bound, node) = (
            root.clone(),
            controller_id.clone(),
            bound.clone(),
            node.clone(),
        );
        async move {
            let ch = channel_from(Some(loopback(source)), addr, &root, &controller_id).await?;
            subscribe(
                ch,
                &bound,
                pb::subscribe::Subscriber::Node(node),
                BTreeMap::new(),
                false,
            )
            .await
            .map_err(anyhow::Error::from)
        }
    };

    // --- Stalled handshakes from one address do not starve another. ---
    // As many stalls as the whole budget, from one address: past its share they are closed.
    let mut stalls = Vec::new();
    for _ in 0..MAX_HANDSHAKES {
        stalls.push(tcp_from(Some(loopback(1)), addr).await?);
    }
    let started = tokio::time::Instant::now();
    let mut held = as_node_from(2)
        .await
        .context("a client at 127.0.0.2 while 127.0.0.1 stalls handshakes")?;
    ensure_before_handshake_timeout(started)?;
    let mut closed = 0;
    for tcp in &mut stalls {
        closed += usize::from(closed_within(tcp, Duration::from_millis(200)).await);
    }
    assert_eq!(
        closed,
        MAX_HANDSHAKES - PER_ADDRESS,
        "one address keeps {PER_ADDRESS} handshakes in progress, the rest are closed at once"
    );
    drop(stalls);

    // --- Past the budget, the oldest stall is cut for the newest connection. ---
    let addresses: Vec<u8> = (10..).take(MAX_HANDSHAKES / PER_ADDRESS + 2).collect();
    let mut by_address = Vec::new();
    for &a in &addresses {
        let mut conns = Vec::new();
        for _ in 0..PER_ADDRESS {
            conns.push(tcp_from(Some(loopback(a)), addr).await?);
        }
        by_address.push(conns);
    }
    let started = tokio::time::Instant::now();
    let _also_held = as_node_from(3)
        .await
        .context("a client at 127.0.0.3 while the handshake budget is full of stalls")?;
    ensure_before_handshake_timeout(started)?;
    for tcp in &mut by_address[0] {
        assert!(
            closed_within(tcp, Duration::from_secs(1)).await,
            "the oldest stalls are cut"
        );
    }
    for tcp in by_address.last_mut().context("addresses")? {
        assert!(
            !closed_within(tcp, Duration::from_millis(100)).await,
            "the newest stalls are kept"
        );
    }
    drop(by_address);

    // --- A connection that holds no stream is closed after the idle timeout. ---
    let tls = controller_tls(&root, &controller_id)?;
    let mut idle = tls_connect(None, addr, tls).await?;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An HTTP/2 client's preface and empty SETTINGS: a connection, no stream.
        idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await?;
        let opened = tokio::time::Instant::now();
        let mut buf = [0u8; 1024];
        let deadline = opened + IDLE_TIMEOUT + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, idle.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => anyhow::bail!(
                    "an idle connection was still open after {:?}",
                    opened.elapsed()
                ),
            }
        }
        let lived = opened.elapsed();
        assert!(
            lived >= IDLE_TIMEOUT - Duration::from_millis(100),
            "closed after {lived:?}, before the idle timeout {IDLE_TIMEOUT:?}"
        );
    }
    // The subscriptions above hold a stream each, well past the idle timeout, and stay served.
    tokio::time::sleep(IDLE_TIMEOUT * 2).await;
    create_namespace(
        &client,
        "shop",
        json!({"ambit.dev/dataplane-mode": "ambient"}),
    )
    .await?;
    held.wait(
        "namespace shop on a connection older than the idle timeout",
        Duration::from_secs(30),
        |v| v.resources.contains_key("namespace/shop"),
    )
    .await?;

    // --- More distinct tokens than the burst, at once: past the rate, turned away. ---
    let limited_before = counter(&running, "ambit_token_reviews_total{result=\"limited\"}");
    let mut tokens = Vec::new();
    for _ in 0..FLOOD_TOKENS {
        tokens.push(token(&client, "ambit-tunnel", None, ambit_proto::TOKEN_AUDIENCE).await?);
    }
    // A connection each: calls sent on a new connection before its SETTINGS arrive may exceed
    // its stream limit and be refused by HTTP/2 itself.
    let mut channels = Vec::new();
    for _ in 0..FLOOD_TOKENS {
        channels.push(channel(addr, &root, &controller_id).await?);
    }
    let started = tokio::time::Instant::now();
    let calls = tokens.into_iter().zip(channels).map(|(t, ch)| {
        let node = node.clone();
        async move {
            subscribe(
                ch,
                &t,
                pb::subscribe::Subscriber::Node(node),
                BTreeMap::new(),
                false,
            )
            .await
            .err()
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let mut reviewed = 0;
    let mut limited = 0;
    for status in outcomes {
        let status = status.context("a token bound to no pod subscribed as a node")?;
        match status.code() {
            // Reviewed, and refused as bound to no node.
            tonic::Code::PermissionDenied => reviewed += 1,
            tonic::Code::Unavailable => {
                assert!(
                    status.message().contains("too many token reviews"),
                    "{status:?}"
                );
                limited += 1;
            }
            _ => anyhow::bail!("unexpected {status:?}"),
        }
    }
    eprintln!(
        "{FLOOD_TOKENS} distinct tokens at once: {reviewed} reviewed, {limited} turned away in {elapsed:?}"
    );
    let allowed =
        REVIEW_BURST as usize + (REVIEWS_PER_SECOND as f64 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        reviewed <= allowed,
        "{reviewed} reviews in {elapsed:?}: more than the limit's {allowed}"
    );
    assert!(limited > 0, "none turned away");
    assert_eq!(reviewed + limited, FLOOD_TOKENS);
    let limited_after = counter(&running, "ambit_token_reviews_total{result=\"limited\"}");
    assert_eq!(
        limited_after - limited_before,
        limited as u64,
        "each turned away is counted"
    );
    Ok(())
}

/// The clients above are served while the stalls still hold their slots (5 s each): not
/// merely once those timed out.
fn ensure_before_handshake_timeout(started: tokio::time::Instant) -> Result<()> {
    anyhow::ensure!(
        started.elapsed() < Duration::from_secs(4),
        "served only after {:?}, when stalled handshakes may have timed out",
        started.elapsed()
    );
    Ok(())
}

/// The value of the `series` line (name and labels) in the controller's metrics.
fn counter(running: &ambit_controller::runtime::Running, series: &str) -> u64 {
    let text = running.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}
