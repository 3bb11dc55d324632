//! ambit-testbed: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager,
//! scheduler) with nodes and pods made of network namespaces, on one machine.
//!
//! What is real and what is stood in for is written down in `docs/testbed.md`. In short: the
//! control plane, the CNI plugins and the kernel networking are real; a small node agent
//! ([`node`]) plays kubelet and container runtime, running each container's image as a
//! workspace binary inside the pod's netns.
//!
//! Use from tests: `Testbed::new(Config::new("mytest", 7)?)?.up().await?`, then
//! [`Testbed::client`], [`Testbed::kubectl`], [`Testbed::pod_exec`], and `down()` at the end.

pub mod config;
pub mod controlplane;
pub mod net;
pub mod node;
pub mod pki;
pub mod sys;
pub mod tools;

pub use config::Config;
pub use tools::Tools;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Pki(String),
    #[error("testbed config: {0}")]
    Config(String),
    #[error("`{cmd}` failed: {msg}")]
    Command { cmd: String, msg: String },
    #[error("{0} (run `cargo xtask testbed setup` or crates/testbed/setup.sh first)")]
    Tools(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("timed out after {secs}s waiting for {what}; logs are in {logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}")]
    WaitTimedOut { what: String, timeout: Duration },
    #[error("CNI: {0}")]
    Cni(String),
    #[error("the testbed needs root (network namespaces, bridges, mounts); running as uid {0}")]
    NotRoot(u32),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How long `up` waits for each stage before giving up with a pointer to the logs.
pub const UP_TIMEOUT: Duration = Duration::from_secs(90);

/// One testbed instance.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub config: Config,
    pub tools: Tools,
    /// The `ambit-testbed` binary, which `up` starts as each node's agent.
    pub agent_program: PathBuf,
}

/// What `status` found.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// (process name, pid, alive)
    pub processes: Vec<(String, i32, bool)>,
    pub netns: Vec<String>,
    pub bridge: bool,
    /// (node name, Ready) as the apiserver sees them; empty if it is unreachable.
    pub nodes: Vec<(String, bool)>,
    pub pods: usize,
    pub apiserver_error: Option<String>,
}

impl Status {
    pub fn is_up(&self) -> bool {
        self.bridge
            && !self.processes.is_empty()
            && self.processes.iter().all(|p| p.2)
            && self.nodes.iter().all(|n| n.1)
            && !self.nodes.is_empty()
    }
    pub fn is_down(&self) -> bool {
        !self.bridge && self.netns.is_empty() && self.processes.iter().all(|p| !p.2)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_up() {
            "up"
        } else if self.is_down() {
            "down"
        } else {
            "degraded"
        };
        writeln!(f, "state: {state}")?;
        writeln!(
            f,
            "bridge: {}",
            if self.bridge { "present" } else { "absent" }
        )?;
        for (name, pid, alive) in &self.processes {
            writeln!(
                f,
                "process {name}: pid {pid} {}",
                if *alive { "running" } else { "dead" }
            )?;
        }
        writeln!(
            f,
            "netns: {}",
            if self.netns.is_empty() {
                "none".to_owned()
            } else {
                self.netns.join(" ")
            }
        )?;
        for (node, ready) in &self.nodes {
            writeln!(
                f,
                "node {node}: {}",
                if *ready { "Ready" } else { "NotReady" }
            )?;
        }
        if let Some(e) = &self.apiserver_error {
            writeln!(f, "apiserver: {e}")?;
        } else {
            writeln!(f, "pods: {}", self.pods)?;
        }
        Ok(())
    }
}

/// Takes the testbed down when dropped: held across a test's body so that a panic still
/// cleans up; `std::mem::forget` it to take the testbed down explicitly instead.
#[derive(Debug)]
pub struct DownOnDrop<'a>(pub &'a Testbed);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("testbed down after a failure: {e}");
        }
    }
}

impl Testbed {
    /// Checks the tools are installed and finds the agent binary next to the running one.
    pub fn new(config: Config) -> Result<Self, Error> {
        let tools = Tools::load(&config.env_file)?;
        let agent_program = config
            .bin_dirs
            .iter()
            .map(|d| d.join("ambit-testbed"))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::Config(format!(
                    "no ambit-testbed binary in {:?}: build it first",
                    config.bin_dirs
                ))
            })?;
        Ok(Self {
            config,
            tools,
            agent_program,
        })
    }

    /// The instance `up` left in `state_dir`.
    pub fn attach(state_dir: &Path) -> Result<Self, Error> {
        Self::new(Config::load(state_dir)?)
    }

    /// Starts everything and waits until every node is Ready and the default namespace can
    /// run pods. Whatever an earlier run left behind is removed first.
    pub async fn up(&self) -> Result<(), Error> {
        if !sys::is_root() {
            return Err(Error::NotRoot(rustix::process::geteuid().as_raw()));
        }
        let c = &self.config;
        self.down()?;
        for dir in ["etcd", "pids", "nodes", "pki"] {
            let d = c.state_dir.join(dir);
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
        let logs = c.log_dir();
        if logs.exists() {
            std::fs::remove_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        }
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        c.save()?;
        let nodes: Vec<_> = (1..=c.nodes)
            .map(|k| (c.node_name(k), c.node_ip(k)))
            .collect();
        pki::generate(&c.pki_dir(), &[c.host_ip()], &nodes)?;
        controlplane::write_kubeconfig(c)?;
        net::create(c)?;
        for k in 1..=c.nodes {
            node::cni::write_default_conflist(c, k)?;
        }

        controlplane::start_etcd(c, &self.tools)?;
        let etcd_addr = format!("127.0.0.1:{}", c.etcd_client_port());
        self.wait("etcd to accept connections", || async {
            tokio::net::TcpStream::connect(&etcd_addr).await.is_ok()
        })
        .await?;
        controlplane::start_apiserver(c, &self.tools)?;
        let client = self.client().await?;
        self.wait("kube-apiserver /readyz", || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new());
                match req {
                    Ok(req) => client
                        .request_text(req)
                        .await
                        .is_ok_and(|t| t.trim() == "ok"),
                    Err(_) => false,
                }
            }
        })
        .await?;
        controlplane::start_controller_manager(c, &self.tools)?;
        controlplane::start_scheduler(c, &self.tools)?;
        for k in 1..=c.nodes {
            // The agent lives in its node's netns, as kubelet lives in its host's.
            let args = vec![
                format!("--net=/run/netns/{}", c.node_netns(k)),
                "--".to_owned(),
                self.agent_program.display().to_string(),
                "agent".to_owned(),
                "--state-dir".to_owned(),
                c.state_dir.display().to_string(),
                "--node".to_owned(),
                k.to_string(),
            ];
            let name = format!("agent-{}", c.node_name(k));
            sys::spawn_daemon(
                &name,
                Path::new("nsenter"),
                &args,
                &c.log_dir(),
                &controlplane::pid_dir(c),
            )?;
            controlplane::start_kubelet_streaming(c, &self.tools, k)?;
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let want = usize::from(c.nodes);
        self.wait("every node to be Ready", || {
            let nodes = nodes.clone();
            async move {
                nodes
                    .list(&ListParams::default())
                    .await
                    .is_ok_and(|l| l.items.iter().filter(|n| node_ready(n)).count() == want)
            }
        })
        .await?;
        // Pods need their namespace's `default` ServiceAccount, made by the controller-manager.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait("the default ServiceAccount", || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.is_ok_and(|s| s.is_some()) }
        })
        .await?;
        Ok(())
    }

    /// For tests: brings the testbed up, runs `checks` on it and takes it down again, also
    /// when `up` or `checks` fails or panics, so a failed test leaves no netns or process
    /// behind. The checks' error comes first; a failed `down` after passing checks is an error
    /// too.
    pub async fn up_run_down<T, E: From<Error>>(
        &self,
        checks: impl AsyncFnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        let guard = DownOnDrop(self);
        self.up().await?;
        let result = checks(self).await;
        std::mem::forget(guard);
        let down = self.down();
        let value = result?;
        down?;
        Ok(value)
    }

    /// Stops every process, removes every netns and the bridge. Idempotent; an error lists
    /// what was left behind.
    pub fn down(&self) -> Result<(), Error> {
        let c = &self.config;
        let pid_dir = controlplane::pid_dir(c);
        let pids = sys::pid_files(&pid_dir);
        // Agents first so nothing restarts containers while netns go away.
        let (agents, rest): (Vec<_>, Vec<_>) = pids.iter().partition(|p| p.0.starts_with("agent-"));
        sys::terminate(
            &agents.iter().map(|p| p.1).collect::<Vec<_>>(),
            Duration::from_millis(500),
        );
        let mut left = net::destroy(c);
        // A short grace: the state is thrown away, so a clean etcd or apiserver exit buys nothing.
        sys::terminate(
            &rest.iter().map(|p| p.1).collect::<Vec<_>>(),
            Duration::from_secs(1),
        );
        for (name, pid, path) in &pids {
            if sys::alive(*pid) {
                left.push(format!("process {name} (pid {pid})"));
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        // Container mount namespaces die with their processes; a host mount under the state
        // dir would be a bug, but must not outlive the testbed either.
        for m in node::mounts_under(&c.state_dir) {
            if let Err(e) = sys::run(Command::new("umount").arg("-l").arg(&m)) {
                left.push(format!("mount {m}: {e}"));
            }
        }
        left.extend(
            net::leftover_netns(c)
                .into_iter()
                .map(|n| format!("netns {n}")),
        );
        // Runtime state goes; logs and testbed.json stay for the post-mortem and `status`.
        if left.is_empty() {
            for dir in ["etcd", "nodes", "pki", "pids", "apiserver-certs"] {
                let d = c.state_dir.join(dir);
                if d.exists()
                    && let Err(e) = std::fs::remove_dir_all(&d)
                {
                    left.push(format!("{}: {e}", d.display()));
                }
            }
            let _ = std::fs::remove_file(c.kubeconfig());
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "down left behind: {}",
                left.join(", ")
            )))
        }
    }

    pub async fn status(&self) -> Status {
        let c = &self.config;
        let mut st = Status {
            processes: sys::pid_files(&controlplane::pid_dir(c))
                .into_iter()
                .map(|(n, p, _)| (n, p, sys::alive(p)))
                .collect(),
            netns: net::leftover_netns(c),
            bridge: sys::link_exists(&c.bridge()),
            ..Status::default()
        };
        if !st.bridge {
            st.apiserver_error = Some("not running".into());
            return st;
        }
        let result = async {
            let client = tokio::time::timeout(Duration::from_secs(5), self.client())
                .await
                .map_err(|_| Error::Other("timeout".into()))??;
            let nodes: Api<Node> = Api::all(client.clone());
            let list =
                tokio::time::timeout(Duration::from_secs(5), nodes.list(&ListParams::default()))
                    .await
                    .map_err(|_| Error::Other("timeout".into()))??;
            let pods: Api<Pod> = Api::all(client);
            let n_pods = pods.list(&ListParams::default()).await?.items.len();
            Ok::<_, Error>((
                list.items
                    .iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), node_ready(n)))
                    .collect(),
                n_pods,
            ))
        }
        .await;
        match result {
            Ok((nodes, pods)) => {
                st.nodes = nodes;
                st.pods = pods;
            }
            Err(e) => st.apiserver_error = Some(e.to_string()),
        }
        st
    }

    /// A client with the admin (system:masters) credentials.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from_kubeconfig(&self.config.kubeconfig()).await
    }

    /// `kubectl` with this testbed's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.tools.kubectl);
        cmd.env("KUBECONFIG", self.config.kubeconfig());
        cmd
    }

    /// `helm` with this testbed's kubeconfig.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(&self.tools.helm);
        cmd.env("KUBECONFIG", self.config.kubeconfig());
        cmd
    }

    /// The netns of a pod, for `ip netns exec`, `nsenter`, tcpdump or nft.
    pub fn pod_netns(&self, pod: &Pod) -> Option<String> {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            let node = pod.spec.as_ref()?.node_name.as_deref()?;
            return self
                .config
                .node_number(node)
                .map(|k| self.config.node_netns(k));
        }
        Some(node::pod_netns_name(
            &self.config,
            pod.metadata.uid.as_deref()?,
        ))
    }

    /// A command that runs `program args` inside the pod's netns (as `kubectl exec` would, minus
    /// the container's mounts).
    pub fn pod_exec(&self, pod: &Pod, program: &str, args: &[&str]) -> Option<Command> {
        let ns = self.pod_netns(pod)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program)
            .args(args);
        Some(cmd)
    }

    /// The combined stdout/stderr file of a container (`kubectl logs` has no kubelet to ask).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        node::container_log_path(&self.config, namespace, pod, container)
    }

    /// Finds a workspace binary in the configured bin dirs (for tests that run samples).
    pub fn binary(&self, name: &str) -> Option<PathBuf> {
        self.config
            .bin_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
    }

    async fn wait<F, Fut>(&self, what: &str, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            if check().await {
                return Ok(());
            }
            // A control-plane process that died will not come back: say which, and why.
            for (name, pid, _) in sys::pid_files(&controlplane::pid_dir(&self.config)) {
                if !sys::alive(pid) {
                    let log = self.config.log_dir().join(format!("{name}.log"));
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(Error::Other(format!(
                        "{name} exited while waiting for {what}; {}:\n{}",
                        log.display(),
                        tail.join("\n")
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: UP_TIMEOUT.as_secs(),
                    logs: self.config.log_dir().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `check` every 50 ms until it yields a value, failing once `timeout` has passed: how
/// tests wait for the cluster instead of guessing with sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::WaitTimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For tests that need the testbed: without root, says loudly that `test` is skipped and
/// returns `true`. Written straight to the stderr handle: the harness captures `eprintln!` of
/// passing tests.
pub fn skip_without_root(test: &str) -> bool {
    if sys::is_root() {
        return false;
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPED {test}: needs root (netns, bridges, a local control plane). CI runs it as root. !!!!!\n"
    );
    true
}

/// Builds workspace binaries (`cargo build --bins -p P...`, `--release` from a release build)
/// so the images a test uses map to current builds: `cargo test` builds only the binaries of
/// the package under test. Cheap when they are fresh; `$CARGO` (set by cargo for tests) picks
/// the same toolchain.
pub fn build_binaries(packages: &[&str]) -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--bins"]);
    // Next to the running test's binaries, where `Testbed::new` looks: a release benchmark
    // needs release builds.
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd
        .status()
        .map_err(|e| Error::Other(format!("cargo build: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "cargo build -p {packages:?} failed: {status}"
        )))
    }
}

pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kc =
        kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(cfg)?)
}
