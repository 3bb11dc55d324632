//! Scale benchmark (issue 5): 10,000 pods and 2,000 services in the testbed's real apiserver,
//! 100 node subscribers. Measures the time to the first full view of every subscriber after the
//! controller is synced, the p99 push latency of a single pod change to all subscribers, and the
//! controller's RSS; writes `target/ambit-bench/controller.json`.
//!
//! `#[ignore]`d: `cargo test --release -p ambit-controller --test scale_bench -- --ignored --nocapture`
//! (what `cargo xtask bench controller` runs). Needs root. Pods are bound to 100 Node
//! objects that no agent runs, with their status written by the benchmark, so nothing is
//! actually started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_identity::SpiffeId;
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::json;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::{channel, eventually, obj, token, with_token};
use tokio::sync::mpsc;

const NAME: &str = "ctlbench";
const ID: u8 = 46;
const PODS: usize = 10_000;
const SERVICES: usize = 2_000;
const SUBSCRIBERS: usize = 100;
const CHANGES: usize = 20;
const NS: &str = "scale";
const SYSTEM_NS: &str = "ambit-system";

struct Cleanup<'a>(&'a ambit_testbed::Testbed, Option<Child>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = self.0.down() {
            eprintln!("testbed down: {e}");
        }
    }
}

/// `ambit.config.v1.Delta` with only the resource names decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct NamesOnly {
    #[prost(string, tag = "1")]
    nonce: String,
    #[prost(message, repeated, tag = "2")]
    upserts: Vec<NameOnly>,
    #[prost(bool, tag = "4")]
    more: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    /// Bytes: a slice of the received buffer, not a copy.
    #[prost(bytes = "bytes", tag = "1")]
    name: prost::bytes::Bytes,
}

/// How a subscriber reads a delta.
trait DeltaMessage: prost::Message + Default + Send + 'static {
    fn nonce(&self) -> &str;
    fn more(&self) -> bool;
    fn names(&self) -> impl Iterator<Item = &[u8]>;
    /// The delta itself, when decoded in full.
    fn full(self) -> Option<pb::Delta>;
}

impl DeltaMessage for pb::Delta {
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn more(&self) -> bool {
        self.more
    }
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.upserts.iter().map(|r| r.name.as_bytes())
    }
    fn full(self) -> Option<pb::Delta> {
        Some(self)
    }
}

impl DeltaMessage for NamesOnly {
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn more(&self) -> bool {
        self.more
    }
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.upserts.iter().map(|r| &r.name[..])
    }
    fn full(self) -> Option<pb::Delta> {
        None
    }
}

/// A whole delta (all its parts) as one subscriber received it.
struct Received {
    subscriber: usize,
    /// When the first and the last part came in.
    began: Instant,
    at: Instant,
    workloads: usize,
    /// The names of a small delta (a change), to find the changed workload in.
    names: Vec<String>,
    full: Option<pb::Delta>,
}

/// Deltas up to this many upserts are reported by name.
const NAMED: usize = 64;

/// Subscribes as node `bench-<i>`, ACKs every delta and reports it whole.
async fn subscribe<D: DeltaMessage>(
    ch: tonic::transport::Channel,
    i: usize,
    token: String,
    events: mpsc::UnboundedSender<Received>,
) {
    let mut grpc = tonic::client::Grpc::new(ch);
    let (tx, rx) = mpsc::channel(16);
    let sub = pb::Subscribe {
        subscriber: Some(pb::subscribe::Subscriber::Node(format!("bench-{i}"))),
        known: Default::default(),
        accepts_parts: true,
    };
    let _ = tx
        .send(pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Subscribe(sub)),
        })
        .await;
    let path = http::uri::PathAndQuery::from_static("/ambit.config.v1.ConfigService/Stream");
    let request = with_token(tokio_stream::wrappers::ReceiverStream::new(rx), &token);
    let codec = tonic_prost::ProstCodec::<pb::ClientMessage, D>::default();
    let response = match grpc.ready().await {
        Ok(()) => grpc.streaming(request, path, codec).await,
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(e) => {
            eprintln!("subscriber {i}: stream refused: {e}");
            return;
        }
    };
    let mut names = Vec::new();
    let mut workloads = 0;
    let mut full: Option<pb::Delta> = None;
    let mut began = None;
    loop {
        let part = match inbound.message().await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                eprintln!("subscriber {i}: {e}");
                break;
            }
        };
        began.get_or_insert_with(Instant::now);
        for name in part.names() {
            workloads += usize::from(name.starts_with(b"workload/"));
            if names.len() < NAMED {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        let (nonce, more) = (part.nonce().to_owned(), part.more());
        if let Some(part) = part.full() {
            let whole = full.get_or_insert_with(Default::default);
            whole.upserts.extend(part.upserts);
            whole.removals.extend(part.removals);
        }
        if more {
            continue;
        }
        let ack = pb::Ack {
            nonce,
            ..Default::default()
        };
        let _ = tx
            .send(pb::ClientMessage {
                kind: Some(pb::client_message::Kind::Ack(ack)),
            })
            .await;
        let received = Received {
            subscriber: i,
            began: began.take().unwrap_or_else(Instant::now),
            at: Instant::now(),
            workloads: std::mem::take(&mut workloads),
            names: std::mem::take(&mut names),
            full: full.take(),
        };
        if events.send(received).is_err() {
            break;
        }
    }
}

/// Resident memory of process `pid`.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// The controller's `ambit_config_pushes_total{kind="change"}`.
async fn change_pushes(metrics_port: u16) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: controller\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("ambit_config_pushes_total{kind=\"change\"} "))
        .map(|v| v.trim().parse())
        .transpose()?;
    Ok(value.unwrap_or(0))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale benchmark: cargo xtask bench controller"]
async fn controller_scale() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the controller benchmark needs root (testbed)");
    }
    let release = !cfg!(debug_assertions);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Release binaries from a release run: next to this benchmark, where the testbed looks.
    ambit_testbed::build_binaries(&["ambit-testbed", "ambit-controller"])?;
    let tb = ambit_testbed::Testbed::new(ambit_testbed::Config::new(NAME, ID)?.with_nodes(1)?)?;
    let mut cleanup = Cleanup(&tb, None);
    tb.up().await?;
    let client = tb.client().await?;
    let pp = PostParams::default();

    // --- The cluster: 100 nodes, 2,000 services, 10,000 running pods. ---
    let t = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..SUBSCRIBERS {
        nodes
            .create(
                &pp,
                &obj(json!({"metadata": {"name": format!("bench-{i}")}})),
            )
            .await?;
    }
    // Every CRD the chart ships: the controller serves nothing until each of its caches has
    // synced.
    support::install_crds(&client).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &obj(json!({"metadata": {"name": SYSTEM_NS}})))
        .await?;
    namespaces
        .create(&pp, &obj(json!({"metadata": {"name": NS, "labels": {"ambit.dev/dataplane-mode": "ambient"}}})))
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NS);
    sas.create(&pp, &obj(json!({"metadata": {"name": "ambit-tunnel"}})))
        .await?;
    let ns_sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    eventually(
        "the namespace's default service account",
        Duration::from_secs(30),
        || async { ns_sas.get_opt("default").await.ok().flatten() },
    )
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let services = services.clone();
            async move {
                let s: Service = obj(json!({"metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": format!("svc-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
                services.create(&PostParams::default(), &s).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let name = format!("pod-{i}");
                let p: Pod = obj(json!({"metadata": {"name": name, "labels": {"app": format!("svc-{}", i % SERVICES)}},
                    "spec": {"nodeName": format!("bench-{}", i % SUBSCRIBERS), "containers": [{"name": "c", "image": "none"}]}}));
                pods.create(&PostParams::default(), &p).await?;
                let ip = format!("10.{}.{}.{}", 200 + i / 65536, (i / 256) % 256, i % 256);
                let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    // The EndpointSlice controller lags behind the pods: measure a settled cluster, not the
    // slices filling in (each of which is a real change to push).
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    eventually(
        "every pod in its service's EndpointSlice",
        Duration::from_secs(300),
        || async {
            let listed: usize = slices
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .map(|s| s.endpoints.len())
                .sum();
            (listed == PODS).then_some(())
        },
    )
    .await?;
    eprintln!(
        "created {SUBSCRIBERS} nodes, {SERVICES} services, {PODS} running pods, all in their EndpointSlices, in {:?}",
        t.elapsed()
    );

    // --- The controller, as its own process. ---
    let (grpc_port, metrics_port) = (free_port(), free_port());
    let bin = tb
        .binary("ambit-controller")
        .context("ambit-controller is not built")?;
    let child = Command::new(bin)
        .env("KUBECONFIG", tb.config.kubeconfig())
        .env("AMBIT_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("AMBIT_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("AMBIT_LOG", "warn")
        .spawn()?;
    let pid = child.id();
    cleanup.1 = Some(child);
    let started = Instant::now();
    eventually("the controller ready", Duration::from_secs(120), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", grpc_port))
            .await
            .ok()
    })
    .await?;
    eprintln!(
        "controller synced and serving {:?} after start",
        started.elapsed()
    );
    let rss_synced = rss(pid)?;
    let root_pem = Api::<ConfigMap>::namespaced(client.clone(), SYSTEM_NS)
        .get("ambit-root-cert")
        .await?
        .data
        .and_then(|d| d.get("root.crt").cloned())
        .context("root.crt")?;
    // Each subscriber as the tunnel of its node: a token bound to a tunnel pod there (the
    // controller serves a node's view only to such a token).
    let tunnel_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    let tokens: Vec<String> = futures::stream::iter(0..SUBSCRIBERS)
        .map(|i| {
            let (client, tunnel_pods) = (client.clone(), tunnel_pods.clone());
            async move {
                let name = format!("tunnel-{i}");
                let p: Pod = obj(json!({"metadata": {"name": name},
                    "spec": {"nodeName": format!("bench-{i}"), "serviceAccountName": "ambit-tunnel",
                        "containers": [{"name": "c", "image": "none"}]}}));
                let p = tunnel_pods.create(&PostParams::default(), &p).await?;
                let uid = p.metadata.uid.context("pod uid")?;
                token(&client, "ambit-tunnel", Some((&name, &uid)), "ambit-ca").await
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let controller: SpiffeId =
        "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller".parse()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], grpc_port));

    // --- 100 node subscribers: time to every first full view. ---
    // Subscriber 0 decodes every delta in full, as a tunnel does; the others read only the
    // resource names, so that the benchmark's 2 cores measure the controller rather than 99
    // tunnels' decoding (which each tunnel does on its own node). The full decode of one view
    // is timed separately below.
    let (events_tx, mut events) = mpsc::unbounded_channel::<Received>();
    let t0 = Instant::now();
    // All connect at once, as the tunnels of a cluster do when the controller comes up.
    for (i, token) in tokens.into_iter().enumerate() {
        let (root_pem, controller) = (root_pem.clone(), controller.clone());
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            let ch = match channel(addr, &root_pem, &controller).await {
                Ok(ch) => ch,
                Err(e) => return eprintln!("subscriber {i}: connect: {e}"),
            };
            if i == 0 {
                subscribe::<pb::Delta>(ch, i, token, events_tx).await;
            } else {
                subscribe::<NamesOnly>(ch, i, token, events_tx).await;
            }
        });
    }
    let mut firsts = vec![None; SUBSCRIBERS];
    let mut first_parts = vec![Duration::ZERO; SUBSCRIBERS];
    let mut first_view = None;
    while firsts.iter().any(Option::is_none) {
        let r = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await?
            .context("subscribers ended")?;
        if firsts[r.subscriber].is_none() {
            let workloads = r.workloads;
            anyhow::ensure!(
                workloads == PODS,
                "subscriber {}: first view has {workloads} workloads, want {PODS}",
                r.subscriber
            );
            firsts[r.subscriber] = Some(r.at - t0);
            first_parts[r.subscriber] = r.began - t0;
            if r.subscriber == 0 {
                first_view = r.full;
            }
        }
    }
    let first_full_view = firsts.iter().flatten().max().copied().unwrap_or_default();
    let connected = first_parts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "first full view for all {SUBSCRIBERS} subscribers: {first_full_view:?} (the last first part after {connected:?})"
    );
    let rss_first_views = rss(pid)?;
    let first_view = first_view.context("subscriber 0 decodes in full")?;
    let t = Instant::now();
    let decoded = pb::Delta::decode(first_view.encode_to_vec().as_slice())?;
    let decode = t.elapsed();
    eprintln!(
        "a tunnel decodes a first view ({} resources, {} bytes) in {decode:?}",
        decoded.upserts.len(),
        first_view.encoded_len()
    );

    // --- Single-pod changes: latency to each subscriber. ---
    let pushes_before = change_pushes(metrics_port).await?;
    let mut latencies = Vec::new();
    for c in 0..CHANGES {
        let name = format!("pod-{}", c * 37);
        let t = Instant::now();
        let patched = pods
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"bench-rev": c.to_string()}}})),
            )
            .await?;
        let workload = format!("workload/{}", patched.metadata.uid.context("uid")?);
        let mut seen = [false; SUBSCRIBERS];
        while seen.iter().any(|s| !s) {
            let r = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await?
                .context("subscribers ended")?;
            if r.names.contains(&workload) && !seen[r.subscriber] {
                seen[r.subscriber] = true;
                latencies.push(r.at - t);
            }
        }
    }
    // Each change should be one push per subscriber: more means the cluster was still busy.
    let pushes = (change_pushes(metrics_port).await? - pushes_before) as f64 / SUBSCRIBERS as f64;
    eprintln!("{CHANGES} pod changes, {pushes:.1} pushes per subscriber meanwhile");
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let rss = rss(pid)?;
    let report = json!({
        "first_full_view_s": first_full_view.as_secs_f64(),
        "first_part_s": connected.as_secs_f64(),
        "push_p99_ms": p99.as_secs_f64() * 1000.0,
        "push_p50_ms": latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        "rss_bytes": rss,
        "rss_synced_bytes": rss_synced,
        "rss_after_first_views_bytes": rss_first_views,
        "first_view_decode_ms": decode.as_secs_f64() * 1000.0,
        "pushes_per_subscriber_during_changes": pushes,
        "pods": PODS, "services": SERVICES, "subscribers": SUBSCRIBERS,
        "profile": if release { "release" } else { "debug" },
        "targets": {"first_full_view_s": 2.0, "push_p99_ms": 100.0, "rss_bytes": 300u64 << 20},
    });
    let out = root.join("target/ambit-bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("controller.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    drop(cleanup);
    Ok(())
}
