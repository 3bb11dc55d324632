//! The node agent: what kubelet and a container runtime do for one node, done with network
//! namespaces, CNI plugins and processes. It runs inside the node's netns (so probes and
//! host-network pods see the node's network), registers the Node, keeps it Ready through its
//! Lease and status, and runs the pods bound to it.

pub mod api;
pub mod cni;
pub mod dns;
pub mod images;
pub mod logs;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod security;
pub mod volumes;

use crate::Error;
use crate::config::Config;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the Lease is renewed and the Ready condition re-posted (kubelet: 10 s).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const LEASE_SECONDS: i32 = 40;

pub struct NodeCtx {
    pub config: Config,
    pub k: u8,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub client: kube::Client,
    pub cni: cni::Cni,
    pub kubernetes_version: String,
    /// The pods this agent runs, for the kubelet endpoint.
    pub pods: pod::Registry,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("node", &self.node_name)
            .finish_non_exhaustive()
    }
}

pub fn pod_netns_name(config: &Config, uid: &str) -> String {
    format!("{}{uid}", config.pod_netns_prefix())
}

pub fn container_log_path(config: &Config, namespace: &str, pod: &str, container: &str) -> PathBuf {
    config
        .log_dir()
        .join("pods")
        .join(format!("{namespace}_{pod}_{container}.log"))
}

/// Host mounts whose mount point is under `dir` (there should be none: container mounts live in
/// their own mount namespaces).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// The agent's main loop; returns only on a fatal error.
pub async fn run_agent(state_dir: &Path, k: u8) -> Result<(), Error> {
    let config = Config::load(state_dir)?;
    let tools = crate::Tools::load(&config.env_file)?;
    let client = crate::client_from_kubeconfig(&config.kubeconfig()).await?;
    let ctx = Arc::new(NodeCtx {
        node_name: config.node_name(k),
        node_ip: config.node_ip(k),
        cni: cni::Cni {
            node_netns: config.node_netns(k),
            conf_dir: config.node_cni_conf_dir(k),
            bin_dirs: vec![config.node_cni_bin_dir(k), tools.cni_bin_dir.clone()],
        },
        kubernetes_version: tools.kubernetes_version.clone(),
        pods: pod::Registry::default(),
        client,
        config,
        k,
    });
    register(&ctx).await?;
    tokio::spawn(heartbeat(ctx.clone()));
    tokio::spawn(proxy::run(ctx.clone()));
    let dns_ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = dns::serve(dns_ctx).await {
            tracing::warn!("cluster DNS: {e}");
        }
    });
    let api_ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = api::serve(api_ctx).await {
            tracing::warn!("agent API (exec, port-forward and logs go through it): {e}");
        }
    });
    run_pods(ctx).await
}

async fn register(ctx: &NodeCtx) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let cidr = ctx.config.pod_cidr(ctx.k);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": ctx.node_name,
            "labels": {
                "kubernetes.io/hostname": ctx.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "ambit.dev/testbed": ctx.config.name,
            },
        },
        "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
    }))
    .map_err(|e| Error::Other(e.to_string()))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    post_status(ctx).await
}

async fn post_status(ctx: &NodeCtx) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let now = Timestamp::now().to_string();
    let cond = |t: &str, status: &str, reason: &str, msg: &str| json!({"type": t, "status": status, "reason": reason, "message": msg, "lastHeartbeatTime": now, "lastTransitionTime": now});
    let resources =
        json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let status = json!({"status": {
        "conditions": [
            cond("Ready", "True", "KubeletReady", "ambit-testbed node agent is posting ready status"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", ""),
            cond("NetworkUnavailable", "False", "RouteCreated", "static routes between node netns"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": ctx.node_ip.to_string()},
            {"type": "Hostname", "address": ctx.node_name},
        ],
        "capacity": resources,
        "allocatable": resources,
        "nodeInfo": {
            "machineID": ctx.node_name, "systemUUID": ctx.node_name, "bootID": ctx.node_name,
            "kernelVersion": kernel, "osImage": "ambit-testbed netns node",
            "containerRuntimeVersion": concat!("ambit-testbed://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": ctx.kubernetes_version, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": api::KUBELET_PORT}},
    }});
    nodes
        .patch_status(
            &ctx.node_name,
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    Ok(())
}

async fn renew_lease(ctx: &NodeCtx) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    // MicroTime: the apiserver wants exactly six fractional digits; k8s-openapi writes them.
    let now = MicroTime(Timestamp::now());
    let patch = json!({"spec": {"holderIdentity": ctx.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}});
    match leases
        .patch(
            &ctx.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": ctx.node_name, "namespace": "kube-node-lease"},
                "spec": patch["spec"],
            }))
            .map_err(|e| Error::Other(e.to_string()))?;
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn heartbeat(ctx: Arc<NodeCtx>) {
    loop {
        if let Err(e) = renew_lease(&ctx).await {
            tracing::warn!("lease: {e}");
        }
        if let Err(e) = post_status(&ctx).await {
            tracing::warn!("node status: {e}");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

struct Running {
    stop: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn run_pods(ctx: Arc<NodeCtx>) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher::watcher(pods.clone(), cfg)
        .default_backoff()
        .boxed();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen_in_init: HashSet<String> = HashSet::new();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                continue;
            }
        };
        match ev {
            Event::Init => seen_in_init.clear(),
            Event::InitApply(pod) => {
                seen_in_init.insert(pod.metadata.uid.clone().unwrap_or_default());
                apply(&ctx, &pods, &mut running, pod);
            }
            Event::InitDone => {
                let gone: Vec<String> = running
                    .keys()
                    .filter(|u| !seen_in_init.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(r) = running.remove(&uid) {
                        let _ = r.stop.try_send(());
                    }
                }
            }
            Event::Apply(pod) => apply(&ctx, &pods, &mut running, pod),
            Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(r) = running.remove(&uid) {
                    let _ = r.stop.try_send(());
                }
            }
        }
    }
    Err(Error::Other("pod watch ended".into()))
}

fn apply(ctx: &Arc<NodeCtx>, pods: &Api<Pod>, running: &mut HashMap<String, Running>, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        // Graceful delete: stop the containers, tear down, then finish the delete (grace 0)
        // as kubelet does.
        let task = running.remove(&uid).map(|r| {
            let _ = r.stop.try_send(());
            r.task
        });
        let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &ns);
        tokio::spawn(async move {
            if let Some(t) = task {
                let _ = t.await;
            }
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &dp).await {
                tracing::debug!(pod = %format!("{ns}/{name}"), "final delete: {e}");
            }
        });
        return;
    }
    if running.contains_key(&uid) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    tracing::info!(pod = %format!("{ns}/{name}"), %uid, "starting pod");
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(pod::run(ctx.clone(), pod, rx));
    running.insert(uid, Running { stop: tx, task });
}
