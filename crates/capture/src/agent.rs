//! `ambit-capture agent`: the node agent.
//!
//! At start it installs the CNI plugin (see [`crate::install`]). Then, every tick (~500 ms,
//! bounded work per tick) on its own thread:
//! 1. the conflist entry and the plugin binary are checked (the primary CNI may have rewritten
//!    its config);
//! 2. the tunnel is asked for its [`Enrollment`]; a synced one is saved for CNI ADDs while the
//!    tunnel is unreachable;
//! 3. if enrolled pods have no record (they started before ambit), the node's netns are scanned
//!    for their addresses ([`crate::netns`]);
//! 4. [`reconcile::plan`] decides, and each action is carried out and logged (stderr, one line
//!    per capture/release). A new tunnel instance (a new socket file) has lost every fd: the
//!    pods it was not handed yet are replayed.
//! 5. the set of captured pods, when it changed (before and after the actions: a CNI ADD's
//!    capture and the agent's own), goes to [`crate::publish`], which writes it to the node's
//!    `NodeCapture` for the CA; the first tick publishes the whole set.
//!
//! On SIGTERM the loop stops and [`crate::uninstall`] tells an upgrade (keep everything) from
//! an uninstall (remove every rule, the conflist entry and the binary).

use crate::install::CniInstall;
use crate::netns::{self, Scanner};
use crate::pod;
use crate::publish;
use crate::reconcile::{self, Action, Facts, View, Why};
use crate::state::{self, PodRecord};
use crate::uninstall::{Apiserver, DaemonSetRef, Ending, Observation};
use ambit_handoff::{self as handoff, Enrollment, Reply, Request};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The namespace the chart installs into (downward API); with it, the DaemonSet defaults to
/// `$AMBIT_NAMESPACE/ambit-node`.
pub const ENV_NAMESPACE: &str = "AMBIT_NAMESPACE";
pub const DEFAULT_DAEMONSET_NAME: &str = "ambit-node";
const DEFAULT_TICK_MS: u64 = 500;
/// Per tick: pods handed over or released, and netns read afresh by the scan.
const ACTIONS_PER_TICK: usize = 16;
const NETNS_PER_TICK: usize = 64;
/// Between start-time GETs of the DaemonSet until one works.
const PROBE_RETRY: Duration = Duration::from_secs(30);
/// Longer than any handoff can last (the handoff's read and write timeouts, 10 s each): a
/// `.handing` mark older than this was left by a CNI plugin killed half way, and its pod is not
/// published for it.
const HANDOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub socket: PathBuf,
    pub state: PathBuf,
    pub netns_dir: PathBuf,
    /// Both CNI dirs given: install the plugin.
    pub cni: Option<CniInstall>,
    /// Set: tell uninstall from upgrade at SIGTERM; unset: always keep the rules.
    pub daemonset: Option<DaemonSetRef>,
    pub tick: Duration,
    /// Keep the node's probe rules in place (and remove them at uninstall).
    pub probe_rules: bool,
    /// Publish the captured pods as this node's `NodeCapture`; unset: publish nothing.
    pub node: Option<String>,
    /// Captured pods' `net.ipv4.tcp_tw_reuse` (see [`pod::time_wait_reuse`]).
    pub sysctls: pod::Sysctls,
}

/// `ambit-capture agent`'s flags, each with an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The tunnel's handoff socket.
    #[arg(long, env = "AMBIT_SOCKET", default_value = ambit_handoff::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the pods' records are kept.
    #[arg(long, env = "AMBIT_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
    /// The node's named network namespaces.
    #[arg(long, env = "AMBIT_NETNS_DIR", default_value = netns::DEFAULT_NETNS_DIR)]
    pub netns_dir: PathBuf,
    /// Install the CNI plugin binary here (with --cni-conf-dir).
    #[arg(long, env = "AMBIT_CNI_BIN_DIR", requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
    /// Chain the plugin into the conflist here (with --cni-bin-dir).
    #[arg(long, env = "AMBIT_CNI_CONF_DIR", requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The handoff socket as the plugin, on the host, sees it (default: --socket).
    #[arg(long, env = "AMBIT_CNI_TUNNEL_SOCKET")]
    pub cni_tunnel_socket: Option<PathBuf>,
    /// The state directory as the plugin, on the host, sees it (default: --state).
    #[arg(long, env = "AMBIT_CNI_STATE_DIR")]
    pub cni_state_dir: Option<PathBuf>,
    /// The agent's DaemonSet, read at SIGTERM to tell an uninstall from an upgrade (default:
    /// NAMESPACE/ambit-node with --namespace; neither: every rule is kept).
    #[arg(long, env = "AMBIT_DAEMONSET", value_name = "NAMESPACE/NAME")]
    pub daemonset: Option<DaemonSetRef>,
    /// The namespace ambit runs in (the chart sets it from the downward API).
    #[arg(long, env = ENV_NAMESPACE)]
    pub namespace: Option<String>,
    /// Besides ambit's own namespace, the namespaces whose new pods may start uncaptured while
    /// the node tunnel cannot decide (it has no config yet): what the mesh needs to come up,
    /// e.g. the cluster DNS the tunnel resolves the controller with. Comma-separated.
    #[arg(
        long,
        env = "AMBIT_CNI_BOOT_EXEMPT_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub cni_boot_exempt_namespaces: Vec<String>,
    /// Between reconciliations.
    #[arg(
        long,
        env = "AMBIT_TICK_MS",
        default_value_t = DEFAULT_TICK_MS,
        value_parser = clap::value_parser!(u64).range(10..=60_000)
    )]
    pub tick_ms: u64,
    /// on: keep the node's probe rules in the agent's own netns, which must be the node's (the
    /// chart runs the agent with hostNetwork); off: leave the host alone (tests, tools).
    #[arg(long, env = "AMBIT_PROBE_RULES", value_enum, default_value_t = Switch::Off)]
    pub probe_rules: Switch,
    /// The node the agent runs on (the chart sets it from the downward API): its captured pods
    /// are published as NodeCapture NODE, which the CA requires before it signs a pod's
    /// identity for the node's tunnel. Unset: nothing is published.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// on: a captured pod whose net.ipv4.tcp_tw_reuse is the kernel's default (2: loopback
    /// only) gets 1, put back at release, so the TIME_WAITs of the tunnel's connections to
    /// the app do not cap its new connections a second; off: pods' sysctls are left alone.
    #[arg(long, env = "AMBIT_TIME_WAIT_REUSE", value_enum, default_value_t = Switch::On)]
    pub time_wait_reuse: Switch,
    /// A writable procfs, for pods' sysctls: in a container, whose own /proc/sys is read-only,
    /// the node's /proc/sys/net mounted under DIR/sys/net (the chart does).
    #[arg(long, env = "AMBIT_PROC_DIR", value_name = "DIR", default_value = netns::DEFAULT_PROC)]
    pub proc_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl From<AgentArgs> for AgentConfig {
    fn from(args: AgentArgs) -> Self {
        // clap makes the two CNI directories come together.
        let cni = match (args.cni_bin_dir, args.cni_conf_dir) {
            (Some(bin_dir), Some(conf_dir)) => Some(CniInstall {
                bin_dir,
                conf_dir,
                tunnel_socket: args
                    .cni_tunnel_socket
                    .unwrap_or_else(|| args.socket.clone()),
                state_dir: args.cni_state_dir.unwrap_or_else(|| args.state.clone()),
                // A whole cluster powered on at once: every tunnel waits for the controller
                // for its first config, so the controller's pods (and what the tunnel needs to
                // reach it) must start without one, or nothing ever starts.
                boot_exempt_namespaces: args
                    .namespace
                    .iter()
                    .chain(&args.cni_boot_exempt_namespaces)
                    .filter(|ns| !ns.is_empty())
                    .cloned()
                    .collect(),
                time_wait_reuse: args.time_wait_reuse == Switch::On,
            }),
            _ => None,
        };
        let daemonset = args.daemonset.or_else(|| {
            args.namespace
                .filter(|ns| !ns.is_empty())
                .map(|namespace| DaemonSetRef {
                    namespace,
                    name: DEFAULT_DAEMONSET_NAME.into(),
                })
        });
        Self {
            socket: args.socket,
            state: args.state,
            netns_dir: args.netns_dir,
            cni,
            daemonset,
            tick: Duration::from_millis(args.tick_ms),
            probe_rules: args.probe_rules == Switch::On,
            node: args.node_name.filter(|n| !n.is_empty()),
            sysctls: pod::Sysctls {
                time_wait_reuse: args.time_wait_reuse == Switch::On,
                proc: args.proc_dir,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install the CNI plugin: {0}")]
    Install(#[from] crate::install::InstallError),
    #[error("cannot find the agent's own binary: {0}")]
    Exe(std::io::Error),
}

pub(crate) fn log(line: impl std::fmt::Display) {
    eprintln!("ambit-capture agent: {line}");
}

/// Runs the agent until SIGTERM.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    if let Some(cni) = &config.cni {
        let exe = std::env::current_exe().map_err(AgentError::Exe)?;
        cni.install_binary(&exe)?;
        log(format_args!(
            "installed the CNI plugin as {}",
            cni.binary().display()
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(lifecycle(config))
}

async fn lifecycle(config: AgentConfig) -> Result<(), AgentError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Runtime)?;
    let client = match (&config.daemonset, &config.node) {
        (None, None) => None,
        _ => Some(crate::uninstall::client().await),
    };
    let apiserver = match (&config.daemonset, &client) {
        (Some(ds), Some(client)) => Some(Apiserver::connect(client.clone(), ds.clone())),
        _ => {
            log("no --daemonset and no AMBIT_NAMESPACE: on SIGTERM every rule is kept");
            None
        }
    };
    let (sets, published) = watch::channel(None);
    match (&config.node, &client) {
        (Some(node), Some(Ok(client))) => {
            tokio::spawn(publish::run(
                kube::Api::all(client.clone()),
                node.clone(),
                published,
            ));
        }
        (Some(node), Some(Err(e))) => log(format_args!(
            "no apiserver client ({e}): NodeCapture {node} is not published, so the CA signs no pod identity for this node's tunnel"
        )),
        _ => log("no --node-name: the captured pods are not published"),
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let worker = {
        let config = config.clone();
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || Reconciler::new(config, sets).run(&stopped))
            .map_err(AgentError::Runtime)?
    };
    let worked = match &apiserver {
        Some(api) => probe_until_term(api, &mut term).await,
        None => {
            term.recv().await;
            false
        }
    };
    log("SIGTERM: stopping");
    let _ = stop.send(());
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let ending = match &apiserver {
        Some(api) => crate::uninstall::ending(&api.observe().await, worked),
        None => Ending::Keep {
            why: "no DaemonSet to check".into(),
        },
    };
    match ending {
        Ending::Keep { why } => log(format_args!(
            "keeping capture rules, CNI entry and plugin: {why}"
        )),
        Ending::Uninstall { why } => {
            log(format_args!("uninstalling: {why}"));
            uninstall(&config);
        }
    }
    Ok(())
}

/// The start-time GET, repeated until it works, then the wait for SIGTERM. Returns whether
/// the GET ever worked: 401/403 at SIGTERM mean "revoked" only then.
async fn probe_until_term(api: &Apiserver, term: &mut tokio::signal::unix::Signal) -> bool {
    loop {
        let probe = tokio::select! {
            _ = term.recv() => return false,
            probe = api.observe() => probe,
        };
        if let Observation::Present { .. } = probe {
            log(format_args!(
                "DaemonSet {} found: uninstall detection ready",
                api.daemonset()
            ));
            term.recv().await;
            return true;
        }
        log(format_args!(
            "cannot read DaemonSet {} ({probe:?}): until it works, SIGTERM keeps every rule",
            api.daemonset()
        ));
        tokio::select! {
            _ = term.recv() => return false,
            _ = tokio::time::sleep(PROBE_RETRY) => {}
        }
    }
}

/// Removes the CNI entry and binary first (no new pod gets rules), then every pod's rules,
/// then the records.
fn uninstall(config: &AgentConfig) {
    if let Some(cni) = &config.cni {
        match cni.uninstall() {
            Ok(changed) => {
                for path in changed {
                    if path == cni.binary() {
                        log(format_args!("removed the CNI plugin {}", path.display()));
                    } else {
                        log(format_args!(
                            "removed ambit-capture from {}",
                            path.display()
                        ));
                    }
                }
            }
            Err(e) => log(format_args!("CNI uninstall: {e}")),
        }
    }
    if config.probe_rules {
        match crate::rules::remove_node() {
            Ok(()) => log("removed the node's probe rules"),
            Err(e) => log(format_args!("node probe rules: {e}")),
        }
    }
    let records = match state::records(&config.state) {
        Ok((records, _)) => records,
        Err(e) => {
            log(e);
            return;
        }
    };
    for r in &records {
        if !r.netns.exists() {
            continue;
        }
        match pod::strip(r, &config.sysctls.proc) {
            Ok(()) if r.captured => log(format_args!("released pod {} (uninstall)", r.label())),
            Ok(()) => {}
            Err(e) => log(format_args!("pod {}: {e}", r.label())),
        }
    }
    if let Err(e) = state::clear(&config.state) {
        log(e);
    }
}

/// Identifies one tunnel instance: each start binds a new socket file.
fn tunnel_instance(socket: &Path) -> Option<(u64, i64, i64)> {
    let meta = std::fs::metadata(socket).ok()?;
    handoff::tunnel_ready(socket).then(|| (meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

/// Whether a recorded netns is gone for good (its directory is visible and it is not in it).
fn netns_gone(path: &Path) -> bool {
    !path.exists() && (path.parent().is_some_and(Path::exists) || path.starts_with("/proc"))
}

/// The reconcile loop's memory between ticks.
struct Reconciler {
    config: AgentConfig,
    instance: Option<(u64, i64, i64)>,
    /// Uids the current tunnel instance answered `capture` for.
    handed: HashSet<String>,
    scanner: Scanner,
    saved: Option<Enrollment>,
    /// Last line logged per subject, so a condition lasting many ticks is logged once.
    last: HashMap<String, String>,
    /// The probe targets last set in the node's rules (`None`: to be set).
    probe_targets: Option<BTreeSet<Ipv4Addr>>,
    /// The captured pods, for [`publish::run`].
    captured: watch::Sender<Option<BTreeSet<String>>>,
}

impl Reconciler {
    fn new(config: AgentConfig, captured: watch::Sender<Option<BTreeSet<String>>>) -> Self {
        Self {
            config,
            instance: None,
            handed: HashSet::new(),
            scanner: Scanner::default(),
            saved: None,
            last: HashMap::new(),
            probe_targets: None,
            captured,
        }
    }

    fn run(mut self, stop: &mpsc::Receiver<()>) {
        loop {
            self.tick();
            match stop.recv_timeout(self.config.tick) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// Logs `line` unless it is what was last logged about `subject`.
    fn once(&mut self, subject: &str, line: String) {
        if self.last.get(subject) != Some(&line) {
            log(&line);
            self.last.insert(subject.to_owned(), line);
        }
    }

    fn tick(&mut self) {
        self.check_install();
        self.check_probe_rules();
        let view = self.view();
        let (records, bad) = match state::records(&self.config.state) {
            Ok(found) => found,
            Err(e) => {
                self.once("state", e.to_string());
                return;
            }
        };
        for e in bad {
            self.once("bad-record", e.to_string());
        }
        let gone: HashSet<String> = records
            .iter()
            .filter(|r| netns_gone(&r.netns))
            .map(|r| r.uid.clone())
            .collect();
        let netns_by_ip = match &view {
            View::Synced(e) if !reconcile::unrecorded(&records, e).is_empty() => {
                let (found, errors) = self.scanner.scan(&self.config.netns_dir, NETNS_PER_TICK);
                for e in errors {
                    self.once("scan", e.to_string());
                }
                found
            }
            _ => HashMap::new(),
        };
        if let View::Synced(e) = &view {
            self.update_probe_targets(reconcile::probe_targets(&records, e));
        }
        let facts = Facts {
            records,
            gone,
            handed: self.handed.clone(),
            netns_by_ip,
        };
        let actions = reconcile::plan(&view, &facts, ACTIONS_PER_TICK);
        // The pods about to be handed over count as captured from now: the tunnel waits for
        // their certificates before it answers.
        let handing: Vec<&PodRecord> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Capture(r, _) => Some(r),
                _ => None,
            })
            .collect();
        self.publish(&facts.records, &handing);
        if actions.is_empty() {
            return;
        }
        for action in actions {
            self.act(action);
        }
        // Those the tunnel declined are not captured after all.
        if let Ok((records, _)) = state::records(&self.config.state) {
            self.publish(&records, &[]);
        }
    }

    /// Hands the captured set ([`publish::captured`]) to the publisher when it changed (a
    /// no-op without one).
    fn publish(&mut self, records: &[PodRecord], handing: &[&PodRecord]) {
        let since = SystemTime::now().checked_sub(HANDOFF_MAX);
        let marked = match state::handing(&self.config.state, since) {
            Ok((marked, _)) => marked,
            Err(e) => {
                self.once("handing", e.to_string());
                Vec::new()
            }
        };
        let set = Some(publish::captured(records, handing, &marked, netns_gone));
        self.captured.send_if_modified(|current| {
            let changed = *current != set;
            if changed {
                *current = set;
            }
            changed
        });
    }

    fn check_install(&mut self) {
        let Some(cni) = self.config.cni.clone() else {
            return;
        };
        match cni.ensure_entry() {
            Ok(Some(path)) => {
                log(format_args!("added ambit-capture to {}", path.display()));
                self.last.remove("install");
            }
            Ok(None) => {}
            Err(e) => self.once("install", e.to_string()),
        }
        if !cni.binary().exists() {
            let result = std::env::current_exe()
                .map_err(|e| e.to_string())
                .and_then(|exe| cni.install_binary(&exe).map_err(|e| e.to_string()));
            match result {
                Ok(()) => log(format_args!(
                    "reinstalled the CNI plugin as {}",
                    cni.binary().display()
                )),
                Err(e) => self.once("binary", e),
            }
        }
    }

    /// The node's probe rules are in place (a firewall reload may have flushed them).
    fn check_probe_rules(&mut self) {
        if !self.config.probe_rules {
            return;
        }
        match crate::rules::node_installed().and_then(|installed| {
            if !installed {
                crate::rules::install_node()?;
            }
            Ok(!installed)
        }) {
            Ok(true) => {
                log("installed the node's probe rules");
                self.last.remove("probe-rules");
                self.probe_targets = None;
            }
            Ok(false) => {}
            Err(e) => self.once("probe-rules", format!("node probe rules: {e}")),
        }
    }

    /// Keeps the node's probe targets to the captured pods' addresses (a tick behind a
    /// capture: until then the pod's probes are refused, and the kubelet retries).
    fn update_probe_targets(&mut self, targets: BTreeSet<Ipv4Addr>) {
        if !self.config.probe_rules || self.probe_targets.as_ref() == Some(&targets) {
            return;
        }
        match crate::rules::set_probe_targets(&targets) {
            Ok(()) => {
                self.last.remove("probe-targets");
                self.probe_targets = Some(targets);
            }
            Err(e) => self.once("probe-targets", format!("node probe targets: {e}")),
        }
    }

    /// The tunnel's enrollment; a new tunnel instance resets what was handed over.
    fn view(&mut self) -> View {
        let instance = tunnel_instance(&self.config.socket);
        if instance != self.instance {
            if instance.is_some() {
                log("a new tunnel instance is up");
            } else if self.instance.is_some() {
                log("the tunnel is gone; pods keep their rules and fail closed");
            }
            self.instance = instance;
            self.handed.clear();
        }
        if instance.is_none() {
            return View::NoTunnel;
        }
        match handoff::send(&self.config.socket, &Request::Enrollment, None) {
            Ok(Reply {
                enrollment: Some(e),
                ..
            }) if e.synced => {
                self.last.remove("view");
                if self.saved.as_ref() != Some(&e) {
                    match state::save_enrollment(&self.config.state, &e) {
                        Ok(()) => self.saved = Some(e.clone()),
                        Err(err) => self.once("save", err.to_string()),
                    }
                }
                View::Synced(e)
            }
            Ok(Reply {
                enrollment: Some(_),
                ..
            }) => {
                self.once(
                    "view",
                    "the tunnel has no enrollment view yet: deciding nothing".into(),
                );
                View::NotSynced
            }
            Ok(_) => {
                self.once(
                    "view",
                    "the tunnel sent no enrollment: only replaying captured pods".into(),
                );
                View::Unavailable
            }
            Err(e) => {
                self.once(
                    "view",
                    format!("no enrollment from the tunnel ({e}): only replaying captured pods"),
                );
                View::Unavailable
            }
        }
    }

    fn act(&mut self, action: Action) {
        let state_dir = self.config.state.clone();
        let socket = self.config.socket.clone();
        match action {
            Action::Forget(r) => {
                if r.captured {
                    let _ = pod::tell_removed(&socket, &r.uid);
                }
                self.handed.remove(&r.uid);
                self.last.remove(&r.uid);
                match state::forget(&state_dir, &r.uid) {
                    Ok(()) => log(format_args!("forgot pod {}: its netns is gone", r.label())),
                    Err(e) => self.once(&r.uid, e.to_string()),
                }
            }
            Action::Capture(r, why) => self.capture(&r, why),
            Action::Release(r) => {
                // A CNI DEL may have forgotten the pod since the records were read.
                if !state::is_recorded(&state_dir, &r.uid) {
                    return;
                }
                self.handed.remove(&r.uid);
                match pod::release(&state_dir, &socket, &r, &self.config.sysctls.proc) {
                    Ok(()) => log(format_args!("released pod {}: not enrolled", r.label())),
                    Err(e) => self.once(&r.uid, format!("releasing pod {}: {e}", r.label())),
                }
            }
        }
    }

    fn capture(&mut self, r: &PodRecord, why: Why) {
        let state_dir = &self.config.state;
        let fresh = match why {
            Why::Found => state::remember_new(state_dir, r),
            _ => Ok(state::is_recorded(state_dir, &r.uid)),
        };
        match fresh {
            Ok(true) => {}
            // Recorded meanwhile by a CNI ADD (Found), or forgotten by a CNI DEL.
            Ok(false) => return,
            Err(e) => return self.once(&r.uid, e.to_string()),
        }
        let result = pod::hand_over(state_dir, &self.config.socket, r).and_then(|decision| {
            if let Some(mode) = decision {
                pod::install(state_dir, r, mode, &self.config.sysctls)?;
            }
            Ok(decision.is_some())
        });
        let how = match why {
            Why::Replay => "replayed to the current tunnel".to_owned(),
            Why::Enrolled => "enrolled".to_owned(),
            Why::Found => format!("found by address in {}", r.netns.display()),
        };
        match result {
            Ok(true) => {
                self.handed.insert(r.uid.clone());
                self.last.remove(&r.uid);
                log(format_args!("captured pod {}: {how}", r.label()));
            }
            // The tunnel's view moved since the enrollment was read; rules stay as they are
            // (fail closed) until a synced enrollment says release.
            Ok(false) => self.once(
                &r.uid,
                format!(
                    "the tunnel declined pod {} ({how}); its rules stay as they are",
                    r.label()
                ),
            ),
            Err(e) => self.once(&r.uid, format!("capturing pod {} ({how}): {e}", r.label())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    /// The agent's config from flags alone (the process environment left out).
    fn parse(line: &str) -> Result<AgentConfig, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let argv = std::iter::once("agent").chain(line.split_whitespace());
        let matches = Cli::command()
            .mut_args(|a| a.env(None))
            .try_get_matches_from(argv)?;
        Ok(Cli::from_arg_matches(&matches)?.agent.into())
    }

    #[test]
    fn the_declaration_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from(ambit_handoff::DEFAULT_SOCKET));
        assert_eq!(c.state, PathBuf::from(state::DEFAULT_STATE_DIR));
        assert_eq!(c.netns_dir, PathBuf::from("/var/run/netns"));
        assert_eq!(c.cni, None);
        assert_eq!(c.daemonset, None, "no namespace: no uninstall detection");
        assert_eq!(c.tick, Duration::from_millis(500));
        assert!(
            !c.probe_rules,
            "the host's netns is left alone unless asked"
        );
        assert!(parse("--probe-rules on").unwrap().probe_rules);
        assert_eq!(c.sysctls, pod::Sysctls::on_node(true));
        let c = parse("--time-wait-reuse off --proc-dir /host/proc").unwrap();
        assert!(!c.sysctls.time_wait_reuse);
        assert_eq!(c.sysctls.proc, PathBuf::from("/host/proc"));
        let c = parse("--namespace ambit-system").unwrap();
        assert_eq!(c.daemonset.unwrap().to_string(), "ambit-system/ambit-node");
        // In the chart, the namespace comes as the variable.
        let namespace_env = {
            use clap::CommandFactory;
            Cli::command()
                .get_arguments()
                .find(|a| a.get_long() == Some("namespace"))
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(namespace_env.as_deref(), Some(ENV_NAMESPACE));
    }

    #[test]
    fn cni_paths_default_to_the_agents_own() {
        let c = parse(
            "--cni-bin-dir /host/opt/cni/bin --cni-conf-dir /host/etc/cni/net.d --state /s \
             --daemonset ns/ds --tick-ms 100 --namespace ignored",
        )
        .unwrap();
        let cni = c.cni.unwrap();
        assert_eq!(cni.bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert_eq!(cni.state_dir, PathBuf::from("/s"));
        assert_eq!(
            cni.tunnel_socket,
            PathBuf::from(ambit_handoff::DEFAULT_SOCKET)
        );
        assert_eq!(c.daemonset.unwrap().to_string(), "ns/ds");
        assert_eq!(c.tick, Duration::from_millis(100));
        let c = parse(
            "--cni-bin-dir /b --cni-conf-dir /c --cni-tunnel-socket /host/t.sock \
             --cni-state-dir /host/pods",
        )
        .unwrap();
        let cni = c.cni.unwrap();
        assert_eq!(cni.tunnel_socket, PathBuf::from("/host/t.sock"));
        assert_eq!(cni.state_dir, PathBuf::from("/host/pods"));
    }

    #[test]
    fn bad_values_are_named() {
        for (line, named) in [
            ("--cni-bin-dir /b", "--cni-conf-dir"),
            ("--daemonset nope", "--daemonset"),
            ("--tick-ms fast", "--tick-ms"),
            ("--tick-ms 0", "--tick-ms"),
            ("--probe-rules yes", "--probe-rules"),
            ("--time-wait-reuse true", "--time-wait-reuse"),
            ("--sockt /x", "--sockt"),
        ] {
            let err = parse(line).unwrap_err().to_string();
            assert!(err.contains(named), "{line}: {err}");
        }
    }

    #[test]
    fn a_netns_is_gone_only_where_its_directory_is_visible() {
        assert!(netns_gone(Path::new("/tmp/no-such-netns-ambit")));
        assert!(!netns_gone(Path::new("/no-such-dir-ambit/x")));
        assert!(netns_gone(Path::new("/proc/999999999/ns/net")));
        assert!(!netns_gone(Path::new("/proc/self/ns/net")));
    }
}
