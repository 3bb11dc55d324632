//! Node boot fails closed (issue 15 item 4): a node "reboots" with enrolled pods scheduled to
//! it. None of them runs with network access before the node's tunnel is ready, they come up
//! once it is, and no byte of theirs crosses the node in clear at any point.
//!
//! The reboot, with what the testbed has (docs/reliability.md): the node's kubelet stand-in
//! and every process of its pods (tunnel and capture agent included) are killed, its pod netns
//! and its `/var/run/ambit` and `/var/run/ambit-capture` (tmpfs on a real node) are removed.
//! The kubelet comes back first and re-creates the pods scheduled to the node; the tunnel
//! comes back later: the node loses its
//! `kubernetes.io/os` label (the chart's DaemonSet selector) before the kubelet returns and
//! gets it back once the test has watched the pods wait.
//! `whole_cluster_cold_boot` powers off every node at once: the controller's pods start
//! uncaptured (ambit's namespace is exempt while a tunnel cannot decide), and every node's
//! tunnel is fed by a controller again.
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::{CLIENT, NS, SERVER_PORT, SYSTEM_NS, Samples, Testbed, User, pod_ip, spiffe};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "nodeboot";
const ID: u8 = 88;
/// The node that reboots: `client` and `blocked` run there, `echo` on node 1.
const REBOOTED: u8 = 2;
/// How long the test watches the pods wait for the tunnel, at least.
const TUNNEL_DOWN_FOR: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(120);
/// Where the sample pods listen: `client` and `blocked` run a line echo on this port.
const CLIENT_PORT: u16 = 9090;
const OS_LABEL: &str = "kubernetes.io/os";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_boot_fails_closed() -> Result<()> {
    ambit_e2e::on_testbed("node_boot_fails_closed", NAME, ID, steps).await
}

/// Every node reboots at once (a power cut): no node keeps an enrollment, so every pod waits for
/// its node's tunnel, the controller's included, and a tunnel needs a controller for its first
/// view. Whether the cluster comes back is what this checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_cold_boot() -> Result<()> {
    ambit_e2e::on_testbed("whole_cluster_cold_boot", "coldboot", 89, async |tb| {
        let user = User::new(tb).await?;
        user.install().await?;
        for k in 1..=2 {
            power_off(&user, k).await?;
        }
        for k in 1..=2 {
            start_kubelet(tb, k)?;
        }
        // From outside, not the pods' status (the kubelets post theirs a moment later): every
        // node's new tunnel has its first view from a controller, and a controller process runs.
        let pods: Api<Pod> = Api::namespaced(user.client.clone(), SYSTEM_NS);
        let controller = ListParams::default().labels("app.kubernetes.io/name=ambit-controller");
        let came_back =
            ambit_e2e::eventually("every node's tunnel fed by a controller", WAIT, || async {
                for k in 1..=2 {
                    let metrics =
                        ambit_e2e::http_get(&format!("{}:15020", tb.config.node_ip(k)), "/metrics")
                            .await
                            .ok()?;
                    metrics
                        .contains("ambit_tunnel_config_connected 1")
                        .then_some(())?;
                }
                let list = pods.list(&controller).await.ok()?;
                list.items
                    .iter()
                    .filter_map(|p| tb.pod_netns(p))
                    .any(|netns| !pod_processes(tb, &netns).is_empty())
                    .then_some(())
            })
            .await;
        if came_back.is_err() {
            let logs: Vec<String> = (1..=2)
                .map(|k| {
                    let log = tb
                        .config
                        .log_dir()
                        .join(format!("{}.log", agent_name(tb, k)));
                    std::fs::read_to_string(log)
                        .unwrap_or_default()
                        .lines()
                        .rfind(|l| l.contains("ambit-controller"))
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            bail!("no controller came back within {WAIT:?}; the kubelets say: {logs:#?}");
        }
        Ok(())
    })
    .await
}

async fn steps(tb: &Testbed) -> Result<()> {
    let user = User::new(tb).await?;
    user.install().await?;
    user.deploy_samples().await?;
    user.enroll().await?;
    let node = tb.config.node_name(REBOOTED);
    let echo = user.server_pod().await?;
    let echo_addr = SocketAddr::new(pod_ip(&echo)?.parse()?, SERVER_PORT);
    let old_client = user.pod(NS, CLIENT).await?;
    let old_client_ip = pod_ip(&old_client)?;

    // Everything the rebooted node's pods send or receive, TCP and UDP, from before the reboot
    // until their traffic flows again.
    let sniffer = Sniffer::start(tb, &tb.config.node_netns(REBOOTED))?;
    power_off(&user, REBOOTED).await?;
    // The tunnel stays away until the test says so.
    user.kubectl(&["label", "node", &node, &format!("{OS_LABEL}-")])?;
    let pods: Api<Pod> = Api::namespaced(user.client.clone(), SYSTEM_NS);
    ambit_e2e::eventually(
        "the node's tunnel pod deleted by the DaemonSet",
        WAIT,
        || {
            let on_node = ListParams::default()
                .labels("app.kubernetes.io/name=ambit-node")
                .fields(&format!("spec.nodeName={node}"));
            let pods = pods.clone();
            async move {
                let list = pods.list(&on_node).await.ok()?;
                list.items
                    .iter()
                    .all(|p| p.metadata.deletion_timestamp.is_some())
                    .then_some(())
            }
        },
    )
    .await?;
    start_kubelet(tb, REBOOTED)?;

    let window = tunnel_down_window(&user, echo_addr, &old_client_ip).await?;
    user.say.say(format!(
        "tunnel down {:?}: {} round(s) of attempts, every one failed; the kubelet's sandbox for \
         {NS}/client and {NS}/blocked refused by the CNI plugin {} time(s)",
        window.duration, window.rounds, window.refusals
    ));

    user.say
        .step("The tunnel comes back: the pods start, captured");
    user.kubectl(&["label", "node", &node, &format!("{OS_LABEL}=linux")])?;
    let Samples { server, svc, .. } = user.samples().await?;
    let client = user.running(NS, CLIENT).await?;
    ensure!(
        client.metadata.uid == old_client.metadata.uid,
        "the client pod was replaced rather than restarted on its node"
    );
    let client_addr = SocketAddr::new(pod_ip(&client)?.parse()?, CLIENT_PORT);
    let mut n = 0;
    ambit_e2e::eventually("client -> echo and echo -> client answered", WAIT, || {
        n += 1;
        let out = user.call(&client, svc, &format!("boot-out-{n}"));
        let back = user.call(&server, client_addr, &format!("boot-in-{n}"));
        async move { (out.is_ok() && back.is_ok()).then_some(()) }
    })
    .await?;
    user.running(NS, ambit_e2e::BLOCKED).await?;
    // UDP is never carried: strict mode drops it in the pod, so the sniffer must not see it.
    let netns = tb.pod_netns(&client).context("client netns")?;
    send_from(
        &netns,
        SocketAddr::new(echo_addr.ip(), SERVER_PORT),
        "boot-out-after",
    )
    .context("client -> echo from the pod's netns once the tunnel is back")?;
    let metrics = user.tunnel_metrics(&client).await?;
    let outbound = metrics.lines().any(|l| {
        l.starts_with("ambit_tcp_connections_opened_total{direction=\"outbound\"")
            && l.contains(&format!("source_identity=\"{}\"", spiffe(NS, CLIENT)))
            && !l.ends_with(" 0")
    });
    ensure!(
        outbound,
        "the rebooted node's new tunnel carried no outbound connection of client:\n{metrics}"
    );
    let seen = sniffer.stop()?;
    for marker in ["boot-out-", "boot-in-"] {
        ensure!(
            !seen.contains(marker),
            "{marker}* crossed the rebooted node in clear text:\n{seen}"
        );
    }
    ensure!(
        seen.contains(".15008"),
        "no HBONE (port 15008) traffic on the rebooted node:\n{seen}"
    );
    user.say.say(format!(
        "client and blocked Running again; client <-> echo answered after {n} round(s), carried by \
         the node's new tunnel (outbound series from {}); tcpdump on the node from power-off to \
         here: no payload in clear, HBONE on 15008",
        spiffe(NS, CLIENT)
    ));
    Ok(())
}

/// Kills the node's kubelet stand-in and every process of its pods, and removes what a reboot
/// loses: the pods' netns, the node's `/var/run/ambit` (the tunnel's socket) and
/// `/var/run/ambit-capture` (the capture agent's pod records and last enrollment).
async fn power_off(user: &User<'_>, k: u8) -> Result<()> {
    let tb = user.tb;
    let node = tb.config.node_name(k);
    user.say.step(&format!("Node {node} loses power"));
    let agent = agent_name(tb, k);
    let pid_dir = ambit_testbed::controlplane::pid_dir(&tb.config);
    let (_, pid, _) = ambit_testbed::sys::pid_files(&pid_dir)
        .into_iter()
        .find(|(name, _, _)| *name == agent)
        .context("no pid file for the node's agent")?;
    kill(&pid.to_string())?;
    let on_node = Api::<Pod>::all(user.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    for pod in &on_node.items {
        // Host-network pods (the tunnel's) share the node's netns: their processes go by pid.
        // Each container is its own process group.
        for id in pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter_map(|c| c.container_id.as_deref()?.strip_prefix("ambit-testbed://"))
        {
            kill(&format!("-{id}"))?;
        }
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        if !host_network && let Some(netns) = tb.pod_netns(pod) {
            ambit_testbed::sys::netns_destroy(&netns)
                .with_context(|| format!("removing netns {netns}"))?;
        }
    }
    let run = tb.config.node_root(k).join("var/run");
    for dir in ["ambit", "ambit-capture"] {
        let dir = run.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    user.say.say(format!(
        "killed its kubelet and the processes of its {} pod(s) (tunnel and capture agent among \
         them), removed their netns, {}/ambit and {}/ambit-capture",
        on_node.items.len(),
        run.display(),
        run.display()
    ));
    Ok(())
}

fn agent_name(tb: &Testbed, k: u8) -> String {
    format!("agent-{}", tb.config.node_name(k))
}

fn kill(target: &str) -> Result<()> {
    // A process already gone is what we want.
    Command::new("kill")
        .args(["-KILL", "--", target])
        .stderr(Stdio::null())
        .status()?;
    Ok(())
}

/// Starts the node's kubelet stand-in as `up` does, inside the node's netns.
fn start_kubelet(tb: &Testbed, k: u8) -> Result<()> {
    let program = tb
        .binary("ambit-testbed")
        .context("ambit-testbed is not built")?;
    let args = [
        format!("--net=/run/netns/{}", tb.config.node_netns(k)),
        "--".to_owned(),
        program.display().to_string(),
        "agent".to_owned(),
        "--state-dir".to_owned(),
        tb.config.state_dir.display().to_string(),
        "--node".to_owned(),
        k.to_string(),
    ];
    ambit_testbed::sys::spawn_daemon(
        &agent_name(tb, k),
        std::path::Path::new("nsenter"),
        &args,
        &tb.config.log_dir(),
        &ambit_testbed::controlplane::pid_dir(&tb.config),
    )?;
    Ok(())
}

struct Window {
    duration: Duration,
    rounds: u32,
    refusals: usize,
}

/// While the tunnel is down: the kubelet is back and tries to start `client` and `blocked`;
/// the CNI plugin refuses them. Each round checks, from outside, that neither runs a process
/// with a network, and that traffic to them (TCP from `echo`, an enrolled peer, and TCP and UDP
/// from the node next door, outside the mesh) and from them (TCP and UDP, when anything runs
/// in their netns) gets nowhere. Ends once both pods were refused and at least
/// [`TUNNEL_DOWN_FOR`] passed.
async fn tunnel_down_window(user: &User<'_>, echo: SocketAddr, old_ip: &str) -> Result<Window> {
    let tb = user.tb;
    user.say
        .step("The kubelet comes back first; the tunnel does not");
    let start = Instant::now();
    let log = tb
        .config
        .log_dir()
        .join(format!("{}.log", agent_name(tb, REBOOTED)));
    let server = user.server_pod().await?;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let marker = format!("boot-in-{rounds}");
        let mut targets = vec![old_ip.to_owned()];
        for name in [CLIENT, ambit_e2e::BLOCKED] {
            let pod = user.pod(NS, name).await?;
            let ready = pod
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten());
            let ready = ready
                .filter(|c| c.type_ == "Ready")
                .any(|c| c.status == "True");
            // Stale until the kubelet posts its first status of this boot.
            let netns = tb.pod_netns(&pod).context("pod netns name")?;
            let running = pod_processes(tb, &netns);
            if !running.is_empty() {
                let from_inside = send_from(&netns, echo, &format!("boot-out-{rounds}"));
                bail!(
                    "{NS}/{name} runs processes {running:?} in its netns while the tunnel is down \
                     (ready: {ready}); its own traffic: {from_inside:?}"
                );
            }
            if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                targets.push(ip);
            }
        }
        targets.sort();
        targets.dedup();
        for ip in &targets {
            let to = SocketAddr::new(ip.parse()?, CLIENT_PORT);
            if let Ok(reply) = user.call(&server, to, &marker) {
                bail!("echo reached {to} while the tunnel was down: {reply:?}");
            }
            // A plaintext sender outside the mesh (its own bytes are in clear, hence another
            // marker than the one the sniffer looks for).
            let outsider = tb.config.node_netns(1);
            if let Ok(reply) = send_from(&outsider, to, &format!("outsider-{rounds}")) {
                bail!("node 1 reached {to} in clear while the tunnel was down: {reply:?}");
            }
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let refusals = [CLIENT, ambit_e2e::BLOCKED]
            .map(|name| {
                text.lines()
                    .filter(|l| l.contains(&format!("refusing to start pod {NS}/{name} ")))
                    .count()
            })
            .into_iter()
            .collect::<Vec<_>>();
        if start.elapsed() >= TUNNEL_DOWN_FOR && refusals.iter().all(|&n| n > 0) {
            return Ok(Window {
                duration: start.elapsed(),
                rounds,
                refusals: refusals.iter().sum(),
            });
        }
        ensure!(
            start.elapsed() < WAIT,
            "the kubelet never tried to start both pods (refusals {refusals:?}); see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The processes of a pod's own containers in `netns`, as "pid: command line". The sandbox
/// machinery also enters a pod's netns for a moment, on every attempt the kubelet makes:
/// `ip -n NETNS link set lo up` (containerd's loopback step) and the CNI plugins; those are
/// not the pod running and are left out.
fn pod_processes(tb: &Testbed, netns: &str) -> Vec<String> {
    let cni_bins: Vec<_> = (1..=tb.config.nodes)
        .map(|k| tb.config.node_cni_bin_dir(k))
        .collect();
    let pids = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|pid| {
            // A process that exited since the listing is not running.
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let machinery = exe.file_name().is_some_and(|n| n == "ip")
                || cni_bins.iter().any(|dir| exe.starts_with(dir));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (!machinery).then(|| format!("{pid}: {}", cmdline.trim_end()))
        })
        .collect()
}

/// From inside netns `netns`: one UDP datagram to `to` with `line`, then a TCP line exchange
/// with it (3 s). `Ok(reply)` if TCP got anything back.
fn send_from(netns: &str, to: SocketAddr, line: &str) -> Result<String> {
    let path = format!("/run/netns/{netns}");
    let line = line.to_owned();
    std::thread::spawn(move || -> Result<String> {
        let ns = std::fs::File::open(&path)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let udp = UdpSocket::bind("0.0.0.0:0")?;
        let _ = udp.send_to(format!("{line}\n").as_bytes(), to);
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        (&stream).write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply)?;
        ensure!(!reply.is_empty(), "connection closed");
        Ok(reply)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// tcpdump on every interface of a node's netns (the pods' veths and the bridge among them).
struct Sniffer {
    child: Child,
    out: std::path::PathBuf,
}

impl Sniffer {
    fn start(tb: &Testbed, netns: &str) -> Result<Self> {
        let out = tb
            .config
            .state_dir
            .join(format!("boot-sniff-{}.txt", std::process::id()));
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", "any", "-nn", "-l", "-U", "-A",
            ])
            .args(["tcp", "or", "udp"])
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let mut stderr = BufReader::new(child.stderr.take().context("tcpdump stderr")?);
        let mut said = String::new();
        while !said.contains("listening on") {
            if stderr.read_line(&mut said)? == 0 {
                let _ = child.wait();
                bail!("tcpdump did not start: {said}");
            }
        }
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Ok(Self { child, out })
    }

    /// Stops tcpdump once its output stops growing; what it saw.
    fn stop(mut self) -> Result<String> {
        let mut last = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let len = std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0);
            if len == last || Instant::now() > deadline {
                break;
            }
            last = len;
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let seen = std::fs::read_to_string(&self.out)?;
        std::fs::remove_file(&self.out)?;
        Ok(seen)
    }
}
