//! `bench_soak` (issue 15 item 6): a node tunnel under a bounded soak. One node namespace with
//! four client pods, a server, a denied client and churning pods, all enrolled through the
//! capture binary as on a node, and a pod outside the mesh. For `AMBIT_SOAK_SECS` (default 180)
//! the clients hold `AMBIT_SOAK_CONNECTIONS` (default 10,000) connections through the tunnel
//! (HBONE to the server up to the HBONE server's bounds, see [`MESH_PER_CLIENT`], plain to the
//! outside pod past them), exchanging a line on each now and then, and open new ones every
//! second; meanwhile, every second, the mesh changes: a pod is created and handed to the tunnel,
//! an older one released and deleted, and the policies are rewritten. The mesh comes from the
//! tunnel's standalone mesh file (reloaded when it changes), not from a controller: the same
//! model the controller streams, without an apiserver. The tunnel's RSS and open fds are sampled
//! every second; after the load, both must come back within 5 % of the baseline taken before
//! it, no request the policies allowed may fail, and none they deny may pass. Ignored by
//! default; `cargo xtask bench soak` writes `target/ambit-bench/soak.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

const NS: &str = "soak";
const NODE_CIDR: &str = "10.79.1";
/// Client pods at 10.79.1.(20 + k), one service account.
const CLIENTS: usize = 4;
const SERVER_IP: &str = "10.79.1.12";
const BLOCKED_IP: &str = "10.79.1.13";
/// A pod outside the mesh: the tunnel carries connections to it as plain TCP (passthrough).
const OUTSIDE_IP: &str = "10.79.1.14";
/// Held HBONE connections per client pod. The HBONE server bounds tunnels per client (a pod's
/// address and identity) at 320 and per node at 1,280 (`ambit_hbone::ServerSettings`); 4 x 250
/// leaves room for the new connections of each second. Held connections past these go to
/// `outside`, through the same tunnel's outbound path.
const MESH_PER_CLIENT: usize = 250;
const SERVER_PORT: u16 = 9000;
/// Churn pods live at 10.79.1.(100 + slot); at most this many at once.
const CHURN_SLOTS: usize = 8;
const NEW_CONNECTIONS_PER_SECOND: usize = 10;
/// How often each held connection exchanges a line, at most (spread over the period).
const HELD_EXCHANGE_PERIOD: Duration = Duration::from_secs(20);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the tunnel gets to come back to rest after the load: its HBONE pool closes a
/// connection after 60 s idle, so past that.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const GROWTH_TARGET: f64 = 1.05;
const WAIT: Duration = Duration::from_secs(20);

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("{name}={text:?}: expected a whole number >= 1")),
    }
}

/// The node and its pods; its tunnel is stopped, then its namespaces deleted, on drop.
struct Node {
    bins: PathBuf,
    tunnel: Option<Proc>,
    net: Namespaces,
}

impl Node {
    fn new(bins: PathBuf) -> Self {
        let mut node = Self {
            bins,
            tunnel: None,
            net: Namespaces::new("soak"),
        };
        let n = node.net.add("node");
        sh(&format!(
            "ip -n {n} link add cbr0 type bridge && ip -n {n} addr add {NODE_CIDR}.1/24 dev cbr0 \
             && ip -n {n} link set cbr0 up"
        ));
        node
    }

    fn ns(&self, short: &str) -> String {
        self.net.ns(short)
    }

    /// A pod netns on the node's bridge.
    fn add_pod(&mut self, name: &str, ip: &str) {
        let p = self.net.add(name);
        let n = self.ns("node");
        sh(&format!(
            "ip -n {p} link add eth0 type veth peer name v{name} netns {n} \
             && ip -n {n} link set v{name} master cbr0 up \
             && ip -n {p} addr add {ip}/24 dev eth0 && ip -n {p} link set eth0 up \
             && ip -n {p} route add default via {NODE_CIDR}.1"
        ));
    }

    fn remove_pod(&mut self, name: &str) {
        // The veth first: with the netns alone, the kernel deletes the pair later, and the
        // next pod of the slot would find its name taken.
        sh(&format!("ip -n {} link del v{name}", self.ns("node")));
        self.net.delete(name);
    }

    fn path(&self, file: &str) -> PathBuf {
        self.net.dir.join(file)
    }

    fn start_tunnel(&mut self) -> u32 {
        let pki = ambit_identity::testing::TestPki::new("cluster.local");
        let material = pki.ca.to_material();
        std::fs::write(self.path("ca.pem"), &material.certificate_pem).unwrap();
        std::fs::write(self.path("ca.key"), &material.key_pem).unwrap();
        let socket = self.path("tunnel.sock");
        let proc = spawn_node_tunnel(
            &self.ns("node"),
            &self.bins.join("ambit-tunnel"),
            "node",
            &self.net.dir,
            &socket,
            "strict",
            &[("RUST_LOG", "warn")],
            "tunnel.log",
        );
        poll("tunnel socket", WAIT, || {
            std::os::unix::net::UnixStream::connect(&socket).ok()
        });
        let pid = proc.0.id();
        self.tunnel = Some(proc);
        pid
    }

    /// `ambit-capture enroll|release` for pod `name`, as the capture agent does on a node.
    fn capture(&self, command: &str, name: &str) -> Result<(), String> {
        let (ok, _, err) = sh_status(&format!(
            "{} {command} --netns /run/netns/{} --uid uid-{name} {} --socket {} --state {}",
            self.bins.join("ambit-capture").display(),
            self.ns(name),
            if command == "enroll" {
                format!("--name {name} --namespace {NS}")
            } else {
                String::new()
            },
            self.path("tunnel.sock").display(),
            self.path("pods").display(),
        ));
        if ok && !err.contains("not enrolled") {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Writes the mesh file whole (rename), so the tunnel never reads half of it.
    fn write_mesh(&self, churn: &[usize], generation: u64) {
        let tmp = self.path("mesh.yaml.tmp");
        std::fs::write(&tmp, mesh_yaml(churn, generation)).unwrap();
        std::fs::rename(&tmp, self.path("mesh.yaml")).unwrap();
    }
}

fn client_pod(k: usize) -> String {
    format!("client-{k}")
}

fn client_ip(k: usize) -> String {
    format!("{NODE_CIDR}.{}", 20 + k)
}

fn churn_pod(slot: usize) -> String {
    format!("c{slot}")
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

/// The mesh at `generation`: the steady pods (clients, server, blocked, outside), the live churn
/// pods, and policies that differ every generation. `blocked` is always denied; a second policy,
/// renamed and rewritten each time, denies alternately a principal nobody holds on the server
/// and `client` on a label no pod carries: the policy tables change every second, who may pass
/// never does.
fn mesh_yaml(churn: &[usize], generation: u64) -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    let mut workload = |name: &str, sa: &str, ip: &str| {
        y += &format!(
            "  - {{uid: uid-{name}, name: {name}, namespace: {NS}, serviceAccount: {sa}, node: node, ips: [{ip}], hbone: true, labels: {{app: {name}}}}}\n"
        );
    };
    for k in 0..CLIENTS {
        workload(&client_pod(k), "client", &client_ip(k));
    }
    workload("server", "server", SERVER_IP);
    workload("blocked", "blocked", BLOCKED_IP);
    for &slot in churn {
        workload(
            &churn_pod(slot),
            &format!("churn-{slot}"),
            &format!("{NODE_CIDR}.{}", 100 + slot),
        );
    }
    y += &format!(
        "  - {{uid: uid-outside, name: outside, namespace: {NS}, serviceAccount: default, node: node, ips: [{OUTSIDE_IP}], hbone: false, labels: {{app: outside}}}}\n"
    );
    y += &format!(
        "policies:\n  - name: no-blocked\n    namespace: {NS}\n    action: Deny\n    selector: {{matchLabels: {{app: server}}}}\n    rules: [{{principals: [\"{}\"]}}]\n",
        spiffe("blocked")
    );
    let (selector, principal) = if generation.is_multiple_of(2) {
        ("server", format!("nobody-{generation}"))
    } else {
        ("nothing", "client".to_owned())
    };
    y += &format!(
        "  - name: churn-{generation}\n    namespace: {NS}\n    action: Deny\n    selector: {{matchLabels: {{app: {selector}}}}}\n    rules: [{{principals: [\"{}\"]}}]\n",
        spiffe(&principal)
    );
    y
}

/// Raises this process's open-file limit (the tunnel, our child, inherits it): each held
/// connection costs the harness two fds (client and server side) and the tunnel two (the
/// app's connection and its upstream; HBONE streams share pooled connections). Past the hard
/// limit only with CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one, and too
/// many connections for that is a clear error, not a run that fails half-way.
fn raise_fd_limit(connections: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = connections * 2 + 2_000;
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= want) {
        return now.current.unwrap_or(u64::MAX);
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let raised = want.min(nr_open);
    let set = |soft: u64, hard: Option<u64>| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft),
                maximum: hard,
            },
        )
    };
    let limit = match set(raised, Some(raised.max(now.maximum.unwrap_or(0)))) {
        Ok(()) => raised,
        Err(_) => {
            let hard = now.maximum.unwrap_or(raised).min(raised);
            set(hard, now.maximum)
                .unwrap_or_else(|e| panic!("raising RLIMIT_NOFILE to {hard}: {e}"));
            hard
        }
    };
    assert!(
        limit >= want,
        "{connections} connections need RLIMIT_NOFILE >= {want}; the hard limit is {limit} and \
         raising it needs CAP_SYS_RESOURCE: run as root with it (`ulimit -Hn {want}` first) or \
         with fewer AMBIT_SOAK_CONNECTIONS"
    );
    limit
}

#[derive(Default)]
struct Counts {
    /// Held connections past their first exchange and not closed yet.
    open_now: AtomicU64,
    allowed_ok: AtomicU64,
    allowed_failed: AtomicU64,
    denied_refused: AtomicU64,
    denied_passed: AtomicU64,
}

impl Counts {
    fn record(&self, outcome: Result<(), String>, what: &str) {
        match outcome {
            Ok(()) => self.allowed_ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let n = self.allowed_failed.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    eprintln!("allowed request failed ({what}): {e}");
                }
                n
            }
        };
    }
}

/// Sockets made inside `ns` (a thread there makes them), handed to tokio.
fn connect_from(ns: &str, to: SocketAddr, count: usize) -> Vec<Result<TcpStream, String>> {
    let streams = in_netns(ns, move || {
        (0..count)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&to, EXCHANGE_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            })
            .collect::<Vec<_>>()
    });
    streams
        .into_iter()
        .map(|s| s.and_then(|s| TcpStream::from_std(s).map_err(|e| e.to_string())))
        .collect()
}

/// A line echo server in `ns`.
fn serve_echo(ns: &str) {
    let listener = in_netns(ns, || {
        let l = std::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
}

/// One line out, the same line back.
async fn exchange(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &str,
) -> Result<(), String> {
    let round = async {
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        match lines.next_line().await {
            Ok(Some(back)) if back == line => Ok(()),
            Ok(other) => Err(format!("answered {other:?} to {line:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, round)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// A connection held until `stop`: a line at open, one every [`HELD_EXCHANGE_PERIOD`]
/// (phase-shifted by `id`), one before closing.
async fn hold(stream: TcpStream, id: usize, mut stop: watch::Receiver<bool>, counts: Arc<Counts>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let outcome = exchange(&mut lines, &mut write, &format!("open-{id}")).await;
    let failed = outcome.is_err();
    counts.record(outcome, "held connection, first line");
    if failed {
        return;
    }
    counts.open_now.fetch_add(1, Ordering::Relaxed);
    let period = HELD_EXCHANGE_PERIOD.as_millis() as u64;
    let phase = Duration::from_millis((id as u64 * 7919) % period);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, HELD_EXCHANGE_PERIOD);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let outcome = exchange(&mut lines, &mut write, &format!("held-{id}-{n}")).await;
                counts.record(outcome, "held connection");
            }
            _ = stop.changed() => break,
        }
    }
    let outcome = exchange(&mut lines, &mut write, &format!("close-{id}")).await;
    counts.record(outcome, "held connection, last line");
    counts.open_now.fetch_sub(1, Ordering::Relaxed);
}

/// A new connection from `ns` to `to` with one exchange.
async fn one_request(ns: String, to: SocketAddr, id: u64) -> Result<(), String> {
    let stream = tokio::task::spawn_blocking(move || connect_from(&ns, to, 1))
        .await
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no socket")??;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    exchange(&mut lines, &mut write, &format!("new-{id}")).await
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: u64,
    fds: u64,
}

fn sample(pid: u32) -> Sample {
    Sample {
        rss: rss_bytes(pid),
        fds: open_fds(pid),
    }
}

/// Waits until the fd count holds still for two seconds; the sample then.
fn quiet(pid: u32) -> Sample {
    let mut last = sample(pid);
    let mut since = Instant::now();
    poll("the tunnel at rest", SETTLE_TIMEOUT, || {
        let now = sample(pid);
        if now.fds != last.fds {
            since = Instant::now();
        }
        last = now;
        (since.elapsed() >= Duration::from_secs(2)).then_some(now)
    })
}

/// One second of pod churn: the next slot's pod (released and deleted first if it still lives)
/// joins the mesh, its netns is made and handed to the tunnel.
fn churn_step(node: &mut Node, live: &mut Vec<usize>, generation: &mut u64) {
    *generation += 1;
    let slot = (*generation as usize) % CHURN_SLOTS;
    let name = churn_pod(slot);
    if live.contains(&slot) {
        release_churn_pod(node, slot);
        live.retain(|&s| s != slot);
    }
    live.push(slot);
    node.write_mesh(live, *generation);
    node.add_pod(&name, &format!("{NODE_CIDR}.{}", 100 + slot));
    // The tunnel reloads the mesh file within half a second.
    poll("the tunnel to know the new pod", WAIT, || {
        node.capture("enroll", &name).ok()
    });
}

fn release_churn_pod(node: &mut Node, slot: usize) {
    let name = churn_pod(slot);
    node.capture("release", &name).unwrap();
    node.remove_pod(&name);
}

/// A new connection from `blocked`, which every generation's policies deny.
fn policy_holds(rt: &tokio::runtime::Runtime, blocked: &str, counts: &Counts) {
    let server = SocketAddr::new(SERVER_IP.parse().unwrap(), SERVER_PORT);
    if rt
        .block_on(one_request(blocked.to_owned(), server, 0))
        .is_ok()
    {
        counts.denied_passed.fetch_add(1, Ordering::Relaxed);
    } else {
        counts.denied_refused.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench soak"]
fn bench_soak() {
    if !require_root("bench_soak") {
        return;
    }
    let connections = knob("AMBIT_SOAK_CONNECTIONS", 10_000) as usize;
    let secs = knob("AMBIT_SOAK_SECS", 180);
    let fd_limit = raise_fd_limit(connections as u64);
    let bins = build_binaries(&["ambit-tunnel", "ambit-capture"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut node = Node::new(bins);
    let clients: Vec<String> = (0..CLIENTS).map(client_pod).collect();
    for (k, name) in clients.iter().enumerate() {
        node.add_pod(name, &client_ip(k));
    }
    for (name, ip) in [
        ("server", SERVER_IP),
        ("blocked", BLOCKED_IP),
        ("outside", OUTSIDE_IP),
    ] {
        node.add_pod(name, ip);
    }
    node.write_mesh(&[], 0);
    let pid = node.start_tunnel();
    for name in clients
        .iter()
        .map(String::as_str)
        .chain(["server", "blocked"])
    {
        node.capture("enroll", name).unwrap();
    }
    serve_echo(&node.ns("server"));
    serve_echo(&node.ns("outside"));
    let counts = Arc::new(Counts::default());
    let blocked = node.ns("blocked");
    let clients: Vec<String> = clients.iter().map(|c| node.ns(c)).collect();
    let mesh = SocketAddr::new(SERVER_IP.parse().unwrap(), SERVER_PORT);
    let outside = SocketAddr::new(OUTSIDE_IP.parse().unwrap(), SERVER_PORT);
    // Held connections per (client, destination): HBONE up to the server's bounds, the rest
    // plain to `outside`.
    let per_client = connections.div_ceil(CLIENTS);
    let plan: Vec<(usize, SocketAddr, usize)> = (0..CLIENTS)
        .flat_map(|k| {
            let n = per_client.min(connections.saturating_sub(k * per_client));
            let hbone = n.min(MESH_PER_CLIENT);
            [(k, mesh, hbone), (k, outside, n - hbone)]
        })
        .filter(|&(_, _, n)| n > 0)
        .collect();
    let hbone_held: usize = plan.iter().filter(|p| p.1 == mesh).map(|p| p.2).sum();

    let fresh = quiet(pid);
    // Warm-up: every path the load takes, at full size, once, so the baseline holds what the
    // tunnel keeps for good (certificates, pools, and the allocator's high-water mark: freed
    // memory stays in the process) and any growth is what the soak leaves behind on top.
    let mut churn_live: Vec<usize> = Vec::new();
    let mut generation = 0;
    for _ in 0..CHURN_SLOTS + 1 {
        churn_step(&mut node, &mut churn_live, &mut generation);
    }
    for slot in std::mem::take(&mut churn_live) {
        release_churn_pod(&mut node, slot);
    }
    node.write_mesh(&[], 0);
    let open = |plan: &[(usize, SocketAddr, usize)], stop: &watch::Receiver<bool>| {
        let mut tasks = Vec::new();
        for &(k, to, n) in plan {
            for s in connect_from(&clients[k], to, n) {
                match s {
                    Ok(s) => {
                        tasks.push(rt.spawn(hold(s, tasks.len(), stop.clone(), counts.clone())))
                    }
                    Err(e) => counts.record(Err(e), "opening a held connection"),
                }
            }
        }
        tasks
    };
    let close = |stop: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>| {
        stop.send(true).unwrap();
        for t in tasks {
            rt.block_on(t).unwrap();
        }
    };
    {
        let (stop_tx, stop) = watch::channel(false);
        let warm = open(&plan, &stop);
        close(stop_tx, warm);
    }
    policy_holds(&rt, &blocked, &counts);
    let baseline = quiet(pid);
    println!(
        "fresh: rss {} KiB, fds {}; baseline after a full-size warm-up: rss {} KiB, fds {} \
         (RLIMIT_NOFILE {fd_limit})",
        fresh.rss / 1024,
        fresh.fds,
        baseline.rss / 1024,
        baseline.fds
    );

    // The load.
    let started = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    let held = open(&plan, &stop);
    let mut connections_held = 0;
    println!(
        "{} connections open ({hbone_held} over HBONE) after {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    let mut peak = baseline;
    let mut samples = Vec::new();
    let mut second = 0u64;
    let mut new_requests = 0u64;
    let load_end = started + Duration::from_secs(secs);
    while Instant::now() < load_end {
        let tick = Instant::now();
        second += 1;
        churn_step(&mut node, &mut churn_live, &mut generation);
        let batch: Vec<_> = (0..NEW_CONNECTIONS_PER_SECOND)
            .map(|i| {
                let to = if i % 2 == 0 { mesh } else { outside };
                let from = clients[i % CLIENTS].clone();
                rt.spawn(one_request(from, to, second * 1000 + i as u64))
            })
            .collect();
        for t in batch {
            counts.record(rt.block_on(t).unwrap(), "new connection");
            new_requests += 1;
        }
        policy_holds(&rt, &blocked, &counts);
        connections_held = connections_held.max(counts.open_now.load(Ordering::Relaxed));
        let s = sample(pid);
        peak.rss = peak.rss.max(s.rss);
        peak.fds = peak.fds.max(s.fds);
        samples.push(json!({"t": started.elapsed().as_secs(), "rss_bytes": s.rss, "fds": s.fds}));
        if second.is_multiple_of(10) {
            println!(
                "t={:>4}s rss {} KiB fds {} ok {} failed {}",
                started.elapsed().as_secs(),
                s.rss / 1024,
                s.fds,
                counts.allowed_ok.load(Ordering::Relaxed),
                counts.allowed_failed.load(Ordering::Relaxed)
            );
        }
        // Pace: one churn step per second, not synchronization.
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    // The load ends: connections close, churn pods go, the mesh is back to the baseline's.
    close(stop_tx, held);
    for slot in std::mem::take(&mut churn_live) {
        release_churn_pod(&mut node, slot);
    }
    node.write_mesh(&[], 0);
    let settle_start = Instant::now();
    let within = |s: Sample| {
        s.rss as f64 <= baseline.rss as f64 * GROWTH_TARGET
            && s.fds as f64 <= baseline.fds as f64 * GROWTH_TARGET
    };
    let mut after = sample(pid);
    while !within(after) && settle_start.elapsed() < SETTLE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(500));
        after = sample(pid);
    }
    let after = if within(after) { after } else { quiet(pid) };
    let report = json!({
        "rss_growth_ratio": after.rss as f64 / baseline.rss as f64,
        "fd_growth_ratio": after.fds as f64 / baseline.fds as f64,
        "failed_allowed_requests": counts.allowed_failed.load(Ordering::Relaxed),
        "connections_held": connections_held,
        "connections_target": connections,
        "connections_hbone": hbone_held,
        "client_pods": CLIENTS,
        "allowed_requests_ok": counts.allowed_ok.load(Ordering::Relaxed),
        "new_connection_requests": new_requests,
        "denied_requests_refused": counts.denied_refused.load(Ordering::Relaxed),
        "denied_requests_passed": counts.denied_passed.load(Ordering::Relaxed),
        "mesh_generations": generation,
        "load_seconds": secs,
        "settle_seconds": settle_start.elapsed().as_secs_f64(),
        "fresh": {"rss_bytes": fresh.rss, "fds": fresh.fds},
        "baseline": {"rss_bytes": baseline.rss, "fds": baseline.fds},
        "peak": {"rss_bytes": peak.rss, "fds": peak.fds},
        "after": {"rss_bytes": after.rss, "fds": after.fds},
        "rlimit_nofile": fd_limit,
        "mesh_source": "mesh file (--mesh, reloaded on change), rewritten every second",
        "samples": samples,
    });
    write_report(&report);
    let failed = counts.allowed_failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "allowed requests failed");
    assert_eq!(
        counts.denied_passed.load(Ordering::Relaxed),
        0,
        "a denied request passed"
    );
    assert_eq!(
        connections_held, connections as u64,
        "not every connection opened"
    );
    assert!(
        within(after),
        "the tunnel did not come back within 5 % of its baseline: {baseline:?} -> {after:?} \
         (peak {peak:?})"
    );
}

fn write_report(report: &serde_json::Value) {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ambit-bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(report).unwrap() + "\n").unwrap();
    println!("wrote {}", path.display());
}
