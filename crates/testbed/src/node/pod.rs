//! One pod's life on a node: sandbox (netns + CNI), volumes, init containers, containers as
//! supervised processes, readiness probes, status reports, and teardown.

use super::{NodeCtx, cni, images, probe, security, volumes};
use crate::Error;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// Longest wait between restarts of a crashing container (kubelet: 5 min; tests can't wait).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest grace on delete: `down` and tests must stay fast.
const MAX_GRACE: Duration = Duration::from_secs(5);
/// How often configMap volumes are rewritten from their ConfigMaps: kubelet syncs about every
/// minute; shorter here so tests that edit a mounted ConfigMap (a root rotation) stay short.
const CONFIG_MAP_SYNC: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    reason: String,
    started: Timestamp,
    finished: Timestamp,
}

#[derive(Debug, Clone)]
struct CState {
    name: String,
    image: String,
    ready: bool,
    running_since: Option<Timestamp>,
    /// Running and past its startup probe (if any): liveness and readiness probes run.
    started: bool,
    terminated: Option<Terminated>,
    last_terminated: Option<Terminated>,
    restart_count: i32,
    waiting: Option<(String, String)>,
    pid: Option<u32>,
}

impl CState {
    fn new(c: &Container) -> Self {
        Self {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ready: false,
            running_since: None,
            started: false,
            terminated: None,
            last_terminated: None,
            restart_count: 0,
            waiting: Some(("ContainerCreating".into(), String::new())),
            pid: None,
        }
    }

    fn json(&self) -> Value {
        let term = |t: &Terminated| json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started.to_string(), "finishedAt": t.finished.to_string()}});
        let state = if let Some(since) = self.running_since {
            json!({"running": {"startedAt": since.to_string()}})
        } else if let Some((reason, message)) = &self.waiting {
            json!({"waiting": {"reason": reason, "message": message}})
        } else if let Some(t) = &self.terminated {
            term(t)
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("ambit-testbed://{}", self.image),
            "containerID": self.pid.map(|p| format!("ambit-testbed://{p}")),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_terminated.as_ref().map(term).unwrap_or_else(|| json!({})),
        })
    }
}

#[derive(Debug)]
struct PodState {
    ip: Option<String>,
    start_time: Timestamp,
    sandbox_ready: bool,
    initialized: bool,
    init_failed: bool,
    init: Vec<CState>,
    containers: Vec<CState>,
    message: Option<String>,
}

impl PodState {
    fn phase(&self) -> &'static str {
        if self.init_failed {
            return "Failed";
        }
        if !self.sandbox_ready || !self.initialized {
            return "Pending";
        }
        let all_done = self
            .containers
            .iter()
            .all(|c| c.running_since.is_none() && c.terminated.is_some() && c.waiting.is_none());
        if all_done && !self.containers.is_empty() {
            if self
                .containers
                .iter()
                .all(|c| c.terminated.as_ref().is_some_and(|t| t.exit_code == 0))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self
            .containers
            .iter()
            .any(|c| c.running_since.is_some() || c.terminated.is_some())
        {
            "Running"
        } else {
            "Pending"
        }
    }

    fn status_json(&self, host_ip: &str) -> Value {
        let phase = self.phase();
        let ready = phase == "Running" && self.containers.iter().all(|c| c.ready);
        let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": self.start_time.to_string()});
        json!({"status": {
            "phase": phase,
            "message": self.message,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": self.ip,
            "podIPs": self.ip.as_ref().map(|ip| vec![json!({"ip": ip})]).unwrap_or_default(),
            "startTime": self.start_time.to_string(),
            "conditions": [
                cond("PodScheduled", true),
                cond("PodReadyToStartContainers", self.sandbox_ready),
                cond("Initialized", self.initialized),
                cond("ContainersReady", ready),
                cond("Ready", ready),
            ],
            "initContainerStatuses": self.init.iter().map(CState::json).collect::<Vec<_>>(),
            "containerStatuses": self.containers.iter().map(CState::json).collect::<Vec<_>>(),
        }})
    }
}

type Shared = Arc<Mutex<PodState>>;

fn lock<T>(s: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a pod runs, for the node's kubelet endpoint ([`super::api`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodInfo {
    pub uid: String,
    /// The pod's netns path; empty for a host-network pod (it lives in the node's netns).
    pub netns: String,
    /// Running containers: name → pid of the container's process (which is the container's
    /// program: `nsenter`, `unshare`, `sh` and `setpriv` each exec the next).
    pub containers: BTreeMap<String, u32>,
}

#[derive(Debug)]
struct Registered {
    uid: String,
    netns: String,
    state: Shared,
}

/// The pods this agent runs, by namespace and name.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<(String, String), Registered>>);

impl Registry {
    fn insert(&self, ns: &str, name: &str, entry: Registered) {
        lock(&self.0).insert((ns.to_owned(), name.to_owned()), entry);
    }

    /// Forgets the pod, unless a newer pod of the same name (another uid) took its place.
    fn remove(&self, ns: &str, name: &str, uid: &str) {
        let mut pods = lock(&self.0);
        let key = (ns.to_owned(), name.to_owned());
        if pods.get(&key).is_some_and(|r| r.uid == uid) {
            pods.remove(&key);
        }
    }

    pub fn lookup(&self, ns: &str, name: &str) -> Option<PodInfo> {
        let pods = lock(&self.0);
        let r = pods.get(&(ns.to_owned(), name.to_owned()))?;
        let containers = lock(&r.state)
            .containers
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.pid?)))
            .collect();
        Some(PodInfo {
            uid: r.uid.clone(),
            netns: r.netns.clone(),
            containers,
        })
    }
}

/// What `run` needs to tear the sandbox down.
struct Sandbox {
    netns: Option<String>,
    cni_conflist: Option<Value>,
    cni_result: Option<Value>,
}

/// Runs the pod until `stop` fires (or its sender is dropped), then tears it down.
pub async fn run(ctx: Arc<NodeCtx>, pod: Pod, mut stop: mpsc::Receiver<()>) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let dir = ctx.config.node_dir(ctx.k).join("pods").join(&uid);
    let state: Shared = Arc::new(Mutex::new(PodState {
        ip: host_network.then(|| ctx.node_ip.to_string()),
        start_time: Timestamp::now(),
        sandbox_ready: false,
        initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
        init_failed: false,
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(CState::new)
            .collect(),
        containers: spec.containers.iter().map(CState::new).collect(),
        message: None,
    }));
    ctx.pods.insert(
        &ns,
        &name,
        Registered {
            uid: uid.clone(),
            netns: if host_network {
                String::new()
            } else {
                format!("/run/netns/{}", super::pod_netns_name(&ctx.config, &uid))
            },
            state: state.clone(),
        },
    );
    let notify = Arc::new(Notify::new());
    let patcher = tokio::spawn(patch_status(
        ctx.clone(),
        ns.clone(),
        name.clone(),
        state.clone(),
        notify.clone(),
    ));
    notify.notify_one();
    let mut sandbox = Sandbox {
        netns: None,
        cni_conflist: None,
        cni_result: None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    'life: {
        // Sandbox and volumes, retried like kubelet retries sandbox creation.
        let mut backoff = Duration::from_millis(500);
        let vols = loop {
            let attempt = async {
                setup_sandbox(&ctx, &pod, host_network, &mut sandbox).await?;
                volumes::materialize(&ctx, &pod, &dir.join("volumes")).await
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.recv() => break 'life,
            };
            match result {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "sandbox: {e}");
                    lock(&state).message = Some(e.to_string());
                    notify.notify_one();
                    teardown_sandbox(&ctx, &pod, &mut sandbox).await;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        _ = stop.recv() => break 'life,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        {
            let mut s = lock(&state);
            s.sandbox_ready = true;
            s.message = None;
            if !host_network {
                s.ip = sandbox
                    .cni_result
                    .as_ref()
                    .and_then(cni::result_ipv4)
                    .map(|ip| ip.to_string());
            }
        }
        notify.notify_one();
        let service_env = if spec.enable_service_links.unwrap_or(true) {
            service_env(&ctx, &ns).await
        } else {
            Vec::new()
        };
        let rt = Arc::new(Runtime {
            dir: dir.clone(),
            service_env,
            ctx: ctx.clone(),
            pod: pod.clone(),
            netns: sandbox.netns.clone(),
            volumes: vols,
            state: state.clone(),
            notify: notify.clone(),
        });

        if !rt.volumes.tokens.is_empty() {
            let mut sd = shutdown_rx.clone();
            let rt = rt.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = refresh_tokens(rt) => {},
                    _ = sd.changed() => {},
                }
            }));
        }

        {
            let mut sd = shutdown_rx.clone();
            let rt = rt.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = refresh_config_maps(rt) => {},
                    _ = sd.changed() => {},
                }
            }));
        }

        // Init containers, one after the other, each to success.
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            loop {
                let mut sd = shutdown_rx.clone();
                let code = tokio::select! {
                    code = rt.run_once(c, i, true, &mut sd) => code,
                    _ = stop.recv() => { let _ = shutdown_tx.send(true); break 'life; }
                };
                if code == Some(0) {
                    break;
                }
                if spec.restart_policy.as_deref() == Some("Never") {
                    lock(&state).init_failed = true;
                    notify.notify_one();
                    let _ = stop.recv().await;
                    break 'life;
                }
                lock(&state).init[i].restart_count += 1;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = stop.recv() => break 'life,
                }
            }
        }
        lock(&state).initialized = true;
        notify.notify_one();

        for (i, c) in spec.containers.iter().enumerate() {
            let policy = spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into());
            tasks.push(tokio::spawn(rt.clone().supervise(
                c.clone(),
                i,
                policy,
                shutdown_rx.clone(),
            )));
            let probes = [
                (ProbeKind::Startup, &c.startup_probe),
                (ProbeKind::Liveness, &c.liveness_probe),
                (ProbeKind::Readiness, &c.readiness_probe),
            ];
            for (kind, p) in probes {
                if let Some(p) = p {
                    tasks.push(tokio::spawn(rt.clone().probe(
                        kind,
                        c.clone(),
                        i,
                        p.clone(),
                        shutdown_rx.clone(),
                    )));
                }
            }
        }
        let _ = stop.recv().await;
    }

    // Teardown: containers (TERM, grace, KILL: see `supervise`), then network, then files.
    ctx.pods.remove(&ns, &name, &uid);
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    teardown_sandbox(&ctx, &pod, &mut sandbox).await;
    patcher.abort();
    let _ = tokio::fs::remove_dir_all(&dir).await;
}

async fn setup_sandbox(
    ctx: &NodeCtx,
    pod: &Pod,
    host_network: bool,
    sb: &mut Sandbox,
) -> Result<(), Error> {
    if host_network {
        return Ok(());
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let netns = super::pod_netns_name(&ctx.config, uid);
    if sb.netns.is_none() {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "ip netns add {netns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        sb.netns = Some(netns.clone());
        // What containerd's loopback step does: a pod talks to itself over lo.
        let out = tokio::process::Command::new("ip")
            .args(["-n", &netns, "link", "set", "lo", "up"])
            .output()
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "lo up in {netns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let path = PathBuf::from(format!("/run/netns/{netns}"));
    let inv = invocation(pod, &path);
    let (result, conflist) = ctx.cni.add(&inv).await?;
    sb.cni_result = Some(result);
    sb.cni_conflist = Some(conflist);
    Ok(())
}

fn invocation<'a>(pod: &'a Pod, netns_path: &'a Path) -> cni::Invocation<'a> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    cni::Invocation {
        container_id: uid,
        netns_path,
        ifname: "eth0",
        namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod_name: pod.metadata.name.as_deref().unwrap_or_default(),
        pod_uid: uid,
    }
}

async fn teardown_sandbox(ctx: &NodeCtx, pod: &Pod, sb: &mut Sandbox) {
    let Some(netns) = sb.netns.take() else { return };
    let path = PathBuf::from(format!("/run/netns/{netns}"));
    // DEL with the conflist ADD used; if ADD never got that far, with the current one so
    // host-local releases any address it handed out.
    let conflist = match sb.cni_conflist.take() {
        Some(c) => Some(c),
        None => ctx.cni.load_conflist().ok(),
    };
    if let Some(conflist) = conflist
        && let Err(e) = ctx
            .cni
            .del(
                &conflist,
                sb.cni_result.take().as_ref(),
                &invocation(pod, &path),
            )
            .await
    {
        tracing::warn!(%netns, "CNI DEL: {e}");
    }
    let name = netns.clone();
    let _ = tokio::task::spawn_blocking(move || crate::sys::netns_destroy(&name)).await;
}

struct Runtime {
    /// The pod's state dir (volumes, resolv.conf).
    dir: PathBuf,
    /// `<SVC>_SERVICE_HOST`/`_PORT` of the namespace's Services at pod start, as kubelet sets.
    service_env: Vec<(String, String)>,
    ctx: Arc<NodeCtx>,
    pod: Pod,
    netns: Option<String>,
    volumes: volumes::Volumes,
    state: Shared,
    notify: Arc<Notify>,
}

impl Runtime {
    fn cstate<'a>(&self, s: &'a mut PodState, i: usize, init: bool) -> Option<&'a mut CState> {
        if init {
            s.init.get_mut(i)
        } else {
            s.containers.get_mut(i)
        }
    }

    fn update(&self, i: usize, init: bool, f: impl FnOnce(&mut CState)) {
        let mut s = lock(&self.state);
        if let Some(c) = self.cstate(&mut s, i, init) {
            f(c);
        }
        drop(s);
        self.notify.notify_one();
    }

    fn pod_ip(&self) -> Option<String> {
        lock(&self.state).ip.clone()
    }

    /// The container's process: program from the image map, env, and a private mount + UTS
    /// namespace (inside the pod's netns) with the volume mounts and the pod's hostname.
    fn command(&self, c: &Container) -> Result<tokio::process::Command, String> {
        let ctx = &self.ctx;
        let image = c.image.as_deref().unwrap_or_default();
        let image = images::resolve(image, &ctx.config.images, &ctx.config.bin_dirs);
        let (program, args) = images::program_and_args(c, image.as_ref())?;
        let mut env = self.env(c)?;
        // The image's binaries come first on its PATH, unless the container sets its own.
        if let Some(bin) = image.as_ref().and_then(|i| i.bin_dir.as_ref())
            && let Some(path) = env
                .iter_mut()
                .find(|(k, v)| k == "PATH" && v == crate::sys::PATH)
        {
            path.1 = format!("{}:{}", bin.display(), path.1);
        }
        let expand = |s: &str| expand_vars(s, &env);
        let args: Vec<String> = args.iter().map(|a| expand(a)).collect();

        let mut mounts: Vec<String> = Vec::new();
        for (file, at) in image.iter().flat_map(|i| &i.files) {
            mounts.extend([file.display().to_string(), at.clone(), "ro".to_owned()]);
        }
        for m in c.volume_mounts.iter().flatten() {
            let src = self
                .volumes
                .sources
                .get(&m.name)
                .ok_or_else(|| format!("volumeMount {} names no volume", m.name))?;
            let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sp) => src.join(sp),
                None => src.clone(),
            };
            mounts.push(src.display().to_string());
            mounts.push(m.mount_path.clone());
            mounts.push(if m.read_only.unwrap_or(false) {
                "ro".into()
            } else {
                "rw".into()
            });
        }
        // Cluster DNS for pods that ask for it (the default), as kubelet writes resolv.conf.
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.dns_policy.clone())
            .unwrap_or_else(|| "ClusterFirst".into());
        let cluster_dns = match policy.as_str() {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => self.netns.is_some(),
            _ => false,
        };
        if cluster_dns {
            let ns = self.pod.metadata.namespace.as_deref().unwrap_or("default");
            let path = self.dir.join("resolv.conf");
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            std::fs::write(&path, super::dns::resolv_conf(ns, ctx.node_ip))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            mounts.extend([
                path.display().to_string(),
                "/etc/resolv.conf".to_owned(),
                "ro".to_owned(),
            ]);
        }
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let hostname = if self.netns.is_none() {
            ctx.node_name.clone()
        } else {
            pod_name
        };

        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = tokio::process::Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg("unshare");
                cmd
            }
            None => tokio::process::Command::new("unshare"),
        };
        // Slave: mounts the host makes later (a new pod's netns under /run/netns) reach the
        // container, as `mountPropagation: HostToContainer` asks; nothing flows back.
        cmd.args([
            "--mount",
            "--uts",
            "--propagation",
            "slave",
            "--",
            "/bin/sh",
            "-c",
            MOUNT_SCRIPT,
            "sh",
        ])
        .arg(hostname)
        .arg((mounts.len() / 3).to_string())
        .args(&mounts)
        .args(security::setpriv_args(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref()),
            c,
        ))
        .arg(&program)
        .args(&args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
        if let Some(dir) = c.working_dir.as_deref().filter(|d| Path::new(d).is_dir()) {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }

    fn env(&self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let ctx = &self.ctx;
        let host = ctx.config.host_ip().to_string();
        let port = crate::config::APISERVER_PORT.to_string();
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        // No kube-proxy: in-cluster clients are pointed at the apiserver's address itself.
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), crate::sys::PATH.into()),
            (
                "HOSTNAME".into(),
                if self.netns.is_none() {
                    ctx.node_name.clone()
                } else {
                    pod_name
                },
            ),
            ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
            ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
        ];
        env.extend(self.service_env.iter().cloned());
        let ip = self.pod_ip();
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                expand_vars(v, &env)
            } else if let Some(f) = e.value_from.as_ref().and_then(|vf| vf.field_ref.as_ref()) {
                match f.field_path.as_str() {
                    "status.hostIP" | "status.hostIPs" => ctx.node_ip.to_string(),
                    p => volumes::field_value(&self.pod, p, ip.as_deref()).unwrap_or_default(),
                }
            } else if e
                .value_from
                .as_ref()
                .and_then(|vf| vf.resource_field_ref.as_ref())
                .is_some()
            {
                "0".into()
            } else {
                // configMapKeyRef/secretKeyRef: not supported; an empty value, as if optional.
                String::new()
            };
            env.retain(|(k, _)| k != &e.name);
            env.push((e.name.clone(), value));
        }
        Ok(env)
    }

    /// Starts the container once and waits for it; returns its exit code, `None` if it could
    /// not start or was stopped.
    async fn run_once(
        &self,
        c: &Container,
        i: usize,
        init: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<i32> {
        let log = self.log_file(c)?;
        let mut cmd = match self.command(c) {
            Ok(cmd) => cmd,
            Err(msg) => {
                self.update(i, init, |s| {
                    s.waiting = Some(("CreateContainerConfigError".into(), msg))
                });
                return None;
            }
        };
        let out = log.try_clone().ok()?;
        cmd.stdout(out).stderr(log);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.update(i, init, |s| {
                    s.waiting = Some(("StartError".into(), e.to_string()))
                });
                return None;
            }
        };
        let started = Timestamp::now();
        let pid = child.id();
        // Without a startup probe a container is started when it runs; without a readiness
        // probe it is ready once started.
        let has_startup = c.startup_probe.is_some();
        let has_readiness = c.readiness_probe.is_some();
        self.update(i, init, |s| {
            s.pid = pid;
            s.running_since = Some(started);
            s.started = !has_startup;
            s.waiting = None;
            s.ready = !init && !has_startup && !has_readiness;
        });
        let status = tokio::select! {
            st = child.wait() => st.ok(),
            _ = shutdown.changed() => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let grace = self.grace();
                    crate::sys::signal_group(pid, rustix::process::Signal::TERM);
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        crate::sys::signal_group(pid, rustix::process::Signal::KILL);
                    }
                    // Anything the container forked is in its group.
                    crate::sys::signal_group(pid, rustix::process::Signal::KILL);
                }
                child.wait().await.ok()
            }
        };
        let code = status.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        });
        let finished = Timestamp::now();
        self.update(i, init, |s| {
            s.running_since = None;
            s.started = false;
            s.ready = false;
            s.pid = None;
            let t = Terminated {
                exit_code: code.unwrap_or(-1),
                reason: if code == Some(0) {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                started,
                finished,
            };
            s.last_terminated = s.terminated.replace(t);
        });
        let stopped = *shutdown.borrow();
        if stopped { None } else { code }
    }

    fn log_file(&self, c: &Container) -> Option<std::fs::File> {
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = self.pod.metadata.name.as_deref().unwrap_or_default();
        let path = super::container_log_path(&self.ctx.config, ns, name, &c.name);
        std::fs::create_dir_all(path.parent()?).ok()?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok()
    }

    async fn supervise(
        self: Arc<Self>,
        c: Container,
        i: usize,
        policy: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let code = self.run_once(&c, i, false, &mut shutdown).await;
            let stopped = *shutdown.borrow();
            if stopped {
                return;
            }
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != Some(0),
                _ => true,
            };
            if !restart && code.is_some() {
                return;
            }
            self.update(i, false, |s| {
                s.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!("back-off {backoff:?} restarting failed container"),
                ));
            });
            tokio::select! {
                () = tokio::time::sleep(backoff) => {},
                _ = shutdown.changed() => return,
            }
            self.update(i, false, |s| s.restart_count += 1);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One probe of one container, as kubelet's probe workers run it: from the node's netns,
    /// every period after the initial delay of each (re)start. Startup gates the other two
    /// and, like liveness, restarts the container after `failureThreshold` failures in a row;
    /// readiness flips `ready`.
    async fn probe(
        self: Arc<Self>,
        kind: ProbeKind,
        c: Container,
        i: usize,
        p: k8s_openapi::api::core::v1::Probe,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        // Kubernetes requires 1 for liveness and startup probes.
        let success_threshold = match kind {
            ProbeKind::Readiness => p.success_threshold.unwrap_or(1).max(1),
            ProbeKind::Startup | ProbeKind::Liveness => 1,
        };
        let mut started_at: Option<Timestamp> = None;
        let (mut ok_run, mut fail_run) = (0, 0);
        loop {
            let (running, started, ready) = lock(&self.state)
                .containers
                .get(i)
                .map_or((None, false, false), |s| {
                    (s.running_since, s.started, s.ready)
                });
            // Whether this probe has nothing left to find out for the current run.
            let idle = match kind {
                ProbeKind::Startup => started,
                ProbeKind::Liveness | ProbeKind::Readiness => !started,
            };
            let mut next = period;
            if running.is_none() {
                (ok_run, fail_run) = (0, 0);
                next = Duration::from_millis(200);
            } else if started_at != running {
                // A (re)started container: wait its initial delay, probe soon after.
                started_at = running;
                (ok_run, fail_run) = (0, 0);
                next = secs(p.initial_delay_seconds, 0);
            } else if idle {
                next = Duration::from_millis(200);
            } else if let Some(ip) = self.pod_ip() {
                let ok = probe::check(&c, &p, &ip, self.netns.as_deref()).await;
                if ok {
                    ok_run += 1;
                    fail_run = 0;
                } else {
                    fail_run += 1;
                    ok_run = 0;
                }
                let passed = ok_run >= success_threshold;
                let failed = fail_run >= failure_threshold;
                match kind {
                    ProbeKind::Readiness if !ready && passed => {
                        self.update(i, false, |s| s.ready = s.started);
                    }
                    ProbeKind::Readiness if ready && failed => {
                        self.update(i, false, |s| s.ready = false);
                    }
                    ProbeKind::Startup if passed => {
                        let no_readiness = c.readiness_probe.is_none();
                        self.update(i, false, |s| {
                            s.started = s.running_since.is_some();
                            s.ready = s.started && no_readiness;
                        });
                    }
                    ProbeKind::Startup | ProbeKind::Liveness if failed => {
                        tracing::info!(container = %c.name, ?kind, "probe failed {fail_run} times: restarting the container");
                        (ok_run, fail_run) = (0, 0);
                        self.kill(i).await;
                    }
                    _ => {}
                }
                // Until a verdict, probe every second (kubelet waits a whole period; tests
                // and `up` would otherwise wait 10 s per pod for nothing).
                if kind == ProbeKind::Readiness && !ready && !ok
                    || kind == ProbeKind::Startup && !ok
                {
                    next = next.min(Duration::from_secs(1));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(next) => {},
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Stops a running container as kubelet does for a failed probe: SIGTERM, SIGKILL after
    /// the grace period; `supervise` restarts it by the pod's restart policy.
    async fn kill(&self, i: usize) {
        let Some(pid) = lock(&self.state)
            .containers
            .get(i)
            .and_then(|s| s.pid)
            .and_then(|p| i32::try_from(p).ok())
        else {
            return;
        };
        crate::sys::signal_group(pid, rustix::process::Signal::TERM);
        let deadline = tokio::time::Instant::now() + self.grace();
        while tokio::time::Instant::now() < deadline {
            let same = lock(&self.state)
                .containers
                .get(i)
                .and_then(|s| s.pid)
                .and_then(|p| i32::try_from(p).ok())
                == Some(pid);
            if !same {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        crate::sys::signal_group(pid, rustix::process::Signal::KILL);
    }

    /// The pod's termination grace period, capped for tests.
    fn grace(&self) -> Duration {
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(grace).unwrap_or(0)).min(MAX_GRACE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

/// Runs in the container's fresh mount + UTS namespaces: sets the hostname, bind-mounts the
/// volumes (`src dst ro|rw` triples), then execs the container's program.
const MOUNT_SCRIPT: &str = r#"set -e
hostname "$1"; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || touch "$2"; fi
  mount --bind "$1" "$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi
  shift 3; n=$((n-1))
done
exec "$@""#;

/// `$(VAR)` expansion as Kubernetes does it for env values, command and args; `$$` escapes.
fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn service_env(ctx: &NodeCtx, ns: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(ctx.client.clone(), ns);
    let Ok(list) = api.list(&kube::api::ListParams::default()).await else {
        return Vec::new();
    };
    let mut env = Vec::new();
    for svc in list.items {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        if ns == "default" && name == "kubernetes" {
            continue; // KUBERNETES_* point at the apiserver itself: there is no kube-proxy on the host.
        }
        let Some(spec) = svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
            continue;
        };
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
    }
    env
}

/// Rewrites projected tokens at 80% of their lifetime, as kubelet does.
async fn refresh_tokens(rt: Arc<Runtime>) {
    let shortest = rt
        .volumes
        .tokens
        .iter()
        .map(|t| t.expiration_seconds)
        .min()
        .unwrap_or(3600);
    let every = Duration::from_secs(u64::try_from(shortest * 8 / 10).unwrap_or(60).max(10));
    loop {
        tokio::time::sleep(every).await;
        for t in &rt.volumes.tokens {
            if let Err(e) = volumes::write_token(&rt.ctx, &rt.pod, t).await {
                tracing::warn!(path = %t.path.display(), "token refresh: {e}");
            }
        }
    }
}

/// Rewrites configMap volumes from their ConfigMaps every [`CONFIG_MAP_SYNC`], as kubelet's
/// periodic sync does (about a minute there).
async fn refresh_config_maps(rt: Arc<Runtime>) {
    let dir = rt.dir.join("volumes");
    loop {
        tokio::time::sleep(CONFIG_MAP_SYNC).await;
        if let Err(e) = volumes::refresh_config_maps(&rt.ctx, &rt.pod, &dir).await {
            tracing::warn!(pod = ?rt.pod.metadata.name, "configMap volume refresh: {e}");
        }
    }
}

async fn patch_status(
    ctx: Arc<NodeCtx>,
    ns: String,
    name: String,
    state: Shared,
    notify: Arc<Notify>,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let host_ip = ctx.node_ip.to_string();
    let mut last = Value::Null;
    loop {
        notify.notified().await;
        // Coalesce bursts (a container start changes several fields in a row).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = lock(&state).status_json(&host_ip);
        if body == last {
            continue;
        }
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => last = body,
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), "status patch: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_kubernetes_style_vars() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x y".to_owned()),
        ];
        assert_eq!(expand_vars("$(A)-$(B)", &env), "1-x y");
        assert_eq!(expand_vars("$$(A) $(C) $", &env), "$(A) $(C) $");
    }

    #[test]
    fn phase_follows_containers() {
        let c = CState::new(&Container {
            name: "c".into(),
            ..Container::default()
        });
        let mut s = PodState {
            ip: None,
            start_time: Timestamp::now(),
            sandbox_ready: true,
            initialized: true,
            init_failed: false,
            init: vec![],
            containers: vec![c],
            message: None,
        };
        assert_eq!(s.phase(), "Pending");
        s.containers[0].waiting = None;
        s.containers[0].running_since = Some(Timestamp::now());
        assert_eq!(s.phase(), "Running");
        s.containers[0].running_since = None;
        let t = Terminated {
            exit_code: 0,
            reason: "Completed".into(),
            started: Timestamp::now(),
            finished: Timestamp::now(),
        };
        s.containers[0].terminated = Some(t.clone());
        assert_eq!(s.phase(), "Succeeded");
        s.containers[0].terminated = Some(Terminated { exit_code: 1, ..t });
        assert_eq!(s.phase(), "Failed");
        s.containers[0].waiting = Some(("CrashLoopBackOff".into(), String::new()));
        assert_eq!(s.phase(), "Running");
    }
}
