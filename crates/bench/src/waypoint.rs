//! `cargo xtask bench waypoint`: one HTTP request path three ways, side by side in one run.
//!
//! - direct: h2load -> app
//! - nginx: h2load -> nginx A -> nginx B -> nginx C -> app (the same hops and TLS work, see
//!   [`crate::nginx`])
//! - waypoint: h2load -> `role hbone-out` -> `ambit-waypoint` -> `role hbone-in` -> app
//!
//! The app answers every request with 1 KiB. The proxies of both proxied paths are pinned to
//! one CPU ([`PROXY_CPUS`]), h2load and the app to another ([`LOAD_CPUS`]), so each proxied path
//! gets the same core and the load never competes with what it measures. The waypoint runs as
//! it ships (its two worker threads, one JSON access log line per request, to a file here);
//! nginx B logs each request to a file too. Measured per protocol (HTTP/1.1 keep-alive, HTTP/2
//! prior knowledge): latency at a fixed 1,000 requests per second with each proxy's CPU time,
//! context switches and RSS, then saturation throughput, each in interleaved rounds.
//!
//! Then the waypoint with one feature on at a time ([`variants`]): JWT validation and external
//! authorization, against the plain waypoint at the same fixed rate.
//!
//! `ambit-bench waypoint --quick` runs every measurement briefly, to check that it works.

mod variants;

use crate::h2load::{self, Load, Protocol};
use crate::measure::{Percentiles, percentiles};
use crate::nginx::{self, Chain, PemIdentity};
use crate::process::{Process, RoleProcess, SHIPPED_GLIBC_TUNABLES, command};
use crate::report::{against, round, write_json};
use crate::roles::{TRUST_DOMAIN, client_id, server_id};
use ambit_identity::{CertificateAuthority, SpiffeId};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// h2load and the app.
const LOAD_CPUS: &str = "0";
/// Every proxy of the nginx and the waypoint path.
const PROXY_CPUS: &str = "1";

const RATE: u32 = 1_000;

/// How many rounds of each measurement, and how long each runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// Latency rounds: long enough that the connections each run opens are a small part of it.
    rate_rounds: usize,
    rate_round_duration: Duration,
    saturation_rounds: usize,
    saturation_duration: Duration,
    warmup_duration: Duration,
}

const FULL: Plan = Plan {
    quick: false,
    rate_rounds: 2,
    rate_round_duration: Duration::from_secs(4),
    saturation_rounds: 3,
    saturation_duration: Duration::from_secs(4),
    warmup_duration: Duration::from_secs(1),
};

/// Enough to see every part work, too short to mean anything.
const QUICK: Plan = Plan {
    quick: true,
    rate_rounds: 1,
    rate_round_duration: Duration::from_secs(1),
    saturation_rounds: 1,
    saturation_duration: Duration::from_secs(1),
    warmup_duration: Duration::from_millis(500),
};
const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::H2];
const PATHS: [&str; 3] = ["direct", "nginx", "waypoint"];

/// The namespace of everything in the benchmark's mesh; the app runs as `server`
/// ([`server_id`]) and the waypoint as `waypoint`.
const NAMESPACE: &str = "bench";
const WAYPOINT_SA: &str = "waypoint";
/// The Service the client dials (never routed: it is the CONNECT target the waypoint resolves).
const VIP: &str = "10.96.201.1:80";

/// Every listener of the benchmark lives in `127.201.0.0/16`.
fn at(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 201, 0, host)), port)
}

const POD_HOST: u8 = 11;
const APP_PORT: u16 = 8080;
const WAYPOINT_HOST: u8 = 1;

/// The waypoint's mesh: the app's pod behind the Service, on an HTTP port; `extra` adds
/// sections (a variant's features).
fn mesh_yaml(extra: &str) -> String {
    let pod = at(POD_HOST, APP_PORT).ip();
    let (vip, port) = VIP.split_once(':').unwrap_or((VIP, "80"));
    format!(
        "trustDomain: {TRUST_DOMAIN}\n\
         workloads:\n\
         - {{uid: app-1, name: app-1, namespace: {NAMESPACE}, serviceAccount: server, node: n1, ips: [\"{pod}\"], labels: {{app: app}}}}\n\
         services:\n\
         - name: app\n  namespace: {NAMESPACE}\n  vips: [\"{vip}\"]\n\
         \x20 ports: [{{port: {port}, targetPort: {APP_PORT}, name: http}}]\n  endpoints: [app-1]\n\
         {extra}"
    )
}

/// Full speed: enough requests in flight to keep one proxy core busy, no more than the
/// upstream keep-alive pools hold (64) so neither path churns connections.
fn saturation(protocol: Protocol, duration: Duration) -> Load {
    let (connections, streams) = match protocol {
        Protocol::Http1 => (32, 1),
        Protocol::H2 => (8, 8),
    };
    Load {
        protocol,
        connections,
        streams,
        duration,
        rate_per_connection: None,
    }
}

/// A fixed rate on one connection, requests evenly spaced ([`h2load`]'s timing script). The
/// timers of connections opened together fire together: over N connections the load would
/// arrive as bursts of N. HTTP/2 may keep several in flight; HTTP/1.1 sends one that comes
/// due while another is answered as soon as that one is.
fn fixed_rate(protocol: Protocol, rate: u32, duration: Duration) -> Load {
    let (connections, streams) = match protocol {
        Protocol::Http1 => (1, 1),
        Protocol::H2 => (1, 16),
    };
    Load {
        protocol,
        connections,
        streams,
        duration,
        rate_per_connection: Some(rate / connections),
    }
}

/// A path as the load tool sees it: its entry per protocol and the proxy processes on it.
struct PathUnderTest<'a> {
    name: &'static str,
    http1_url: String,
    h2_url: String,
    /// Sent with every request (`name: value`).
    headers: Vec<String>,
    /// (label, process); the first is the one the path is named for (B, the waypoint).
    proxies: Vec<(&'static str, &'a Process)>,
}

impl PathUnderTest<'_> {
    fn url(&self, protocol: Protocol) -> &str {
        match protocol {
            Protocol::Http1 => &self.http1_url,
            Protocol::H2 => &self.h2_url,
        }
    }
}

/// h2load runs against a path, with what its proxies spent.
struct Measured {
    /// Requests per second of each run.
    rps: Vec<f64>,
    /// Requests completed (all 2xx).
    ok: u64,
    latencies: Vec<Duration>,
    /// CPU seconds per proxy, in `proxies` order.
    cpu_s: Vec<f64>,
    /// Context switches per proxy.
    switches: Vec<u64>,
    /// Highest RSS sampled per proxy while the load ran.
    rss_max: Vec<u64>,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.rps.iter().sum::<f64>() / self.rps.len().max(1) as f64
    }

    fn latency(&self) -> Percentiles {
        percentiles(&mut self.latencies.clone())
    }

    fn cpu_us_per_request(&self, proxy: usize) -> f64 {
        self.cpu_s.get(proxy).copied().unwrap_or(0.0) * 1e6 / self.ok as f64
    }

    fn path_cpu_us_per_request(&self) -> f64 {
        self.cpu_s.iter().sum::<f64>() * 1e6 / self.ok as f64
    }

    fn switches_per_request(&self, proxy: usize) -> f64 {
        self.switches.get(proxy).copied().unwrap_or(0) as f64 / self.ok as f64
    }

    /// Adds another run of the same load on the same path.
    fn absorb(&mut self, other: Measured) {
        self.rps.extend(other.rps);
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
        for (mine, theirs) in self.cpu_s.iter_mut().zip(other.cpu_s) {
            *mine += theirs;
        }
        for (mine, theirs) in self.switches.iter_mut().zip(other.switches) {
            *mine += theirs;
        }
        for (mine, theirs) in self.rss_max.iter_mut().zip(other.rss_max) {
            *mine = (*mine).max(theirs);
        }
    }
}

fn measure(path: &PathUnderTest, load: &Load, log: &Path) -> Result<Measured> {
    let counters = |p: &PathUnderTest| -> Result<Vec<(f64, u64)>> {
        p.proxies
            .iter()
            .map(|(_, p)| Ok((p.cpu_seconds()?, p.context_switches()?)))
            .collect()
    };
    let before = counters(path)?;
    let mut rss_max = vec![0u64; path.proxies.len()];
    let outcome = h2load::run(
        path.url(load.protocol),
        &path.headers,
        load,
        LOAD_CPUS,
        log,
        || {
            for ((_, process), max) in path.proxies.iter().zip(rss_max.iter_mut()) {
                *max = (*max).max(process.rss_bytes()?);
            }
            Ok(())
        },
    )
    .with_context(|| format!("{} path, {}", path.name, load.protocol.name()))?;
    let (cpu_s, switches) = counters(path)?
        .into_iter()
        .zip(before)
        .map(|((cpu, switches), (cpu_before, switches_before))| {
            (cpu - cpu_before, switches.saturating_sub(switches_before))
        })
        .unzip();
    Ok(Measured {
        rps: vec![outcome.rps],
        ok: outcome.ok,
        latencies: outcome.latencies,
        cpu_s,
        switches,
        rss_max,
    })
}

/// Runs by protocol (in [`PROTOCOLS`] order), path, round.
type Runs = Vec<Vec<Vec<Measured>>>;

/// Runs `load(protocol)` against every path `rounds` times. Each round goes through every
/// protocol and path, so a busy moment of the machine lands on each alike; `after_round` runs
/// after each.
fn interleaved(
    paths: &[PathUnderTest],
    rounds: usize,
    load: impl Fn(Protocol) -> Load,
    log: &Path,
    mut after_round: impl FnMut() -> Result<()>,
) -> Result<Runs> {
    let mut runs: Runs = PROTOCOLS
        .iter()
        .map(|_| paths.iter().map(|_| Vec::new()).collect())
        .collect();
    for _ in 0..rounds {
        for (protocol, by_path) in PROTOCOLS.into_iter().zip(runs.iter_mut()) {
            for (path, rounds) in paths.iter().zip(by_path.iter_mut()) {
                rounds.push(measure(path, &load(protocol), log)?);
            }
        }
        after_round()?;
    }
    Ok(runs)
}

/// All rounds of a path as one measurement.
fn merged(rounds: Vec<Measured>) -> Option<Measured> {
    let mut rounds = rounds.into_iter();
    let mut all = rounds.next()?;
    rounds.for_each(|r| all.absorb(r));
    Some(all)
}

/// A path's least disturbed round, with every round's rate.
fn best(rounds: Vec<Measured>) -> Option<(Measured, Vec<f64>)> {
    let samples = rounds.iter().map(Measured::rps).collect();
    let best = rounds
        .into_iter()
        .max_by(|a, b| a.rps().total_cmp(&b.rps()))?;
    Some((best, samples))
}

/// Everything measured for one protocol, paths in [`PATHS`] order.
struct ProtocolResult {
    protocol: Protocol,
    at_rate: Vec<Measured>,
    saturation: Vec<Measured>,
    /// Requests per second of every saturation round, per path.
    saturation_samples: Vec<Vec<f64>>,
}

impl ProtocolResult {
    fn rps(&self, path: usize) -> f64 {
        self.saturation.get(path).map_or(0.0, Measured::rps)
    }

    fn p99_ms(&self, path: usize) -> f64 {
        self.at_rate
            .get(path)
            .map_or(0.0, |m| m.latency().p99_us / 1e3)
    }

    fn ratios(&self) -> Ratios {
        Ratios {
            rps_waypoint_vs_nginx: self.rps(2) / self.rps(1),
            rps_waypoint_vs_direct: self.rps(2) / self.rps(0),
            p99_waypoint_vs_nginx: self.p99_ms(2) / self.p99_ms(1),
        }
    }

    /// CPU µs per request at 1,000 rps of the waypoint process itself.
    fn waypoint_cpu_us(&self) -> f64 {
        self.at_rate.get(2).map_or(0.0, |m| m.cpu_us_per_request(0))
    }

    fn json(&self) -> Value {
        let per_path = |f: &dyn Fn(usize) -> Value| -> Value {
            PATHS
                .iter()
                .enumerate()
                .map(|(i, name)| (name.to_string(), f(i)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let cpu = |runs: &[Measured]| -> Value {
            match runs {
                [_, nginx, waypoint] => json!({
                    "waypoint": round(waypoint.cpu_us_per_request(0), 1),
                    "waypoint_path": round(waypoint.path_cpu_us_per_request(), 1),
                    "nginx_b": round(nginx.cpu_us_per_request(0), 1),
                    "nginx_path": round(nginx.path_cpu_us_per_request(), 1),
                }),
                _ => Value::Null,
            }
        };
        let switches = |runs: &[Measured]| -> Value {
            match runs {
                [_, nginx, waypoint] => json!({
                    "waypoint": round(waypoint.switches_per_request(0), 2),
                    "nginx_b": round(nginx.switches_per_request(0), 2),
                }),
                _ => Value::Null,
            }
        };
        let ratios = self.ratios();
        json!({
            "rps": per_path(&|i| round(self.rps(i), 0).into()),
            "rps_samples": per_path(&|i| self.saturation_samples[i].iter().map(|r| round(*r, 0)).collect()),
            "p50_ms_at_1000rps": per_path(&|i| round(self.at_rate[i].latency().p50_us / 1e3, 3).into()),
            "p99_ms_at_1000rps": per_path(&|i| round(self.p99_ms(i), 3).into()),
            "achieved_rps_at_1000rps": per_path(&|i| round(self.at_rate[i].rps(), 0).into()),
            "cpu_us_per_request_at_1000rps": cpu(&self.at_rate),
            "cpu_us_per_request_at_saturation": cpu(&self.saturation),
            "context_switches_per_request_at_1000rps": switches(&self.at_rate),
            "ratios": ratios.json(),
        })
    }
}

struct Ratios {
    rps_waypoint_vs_nginx: f64,
    rps_waypoint_vs_direct: f64,
    p99_waypoint_vs_nginx: f64,
}

impl Ratios {
    fn json(&self) -> Value {
        json!({
            "rps_waypoint_vs_nginx": round(self.rps_waypoint_vs_nginx, 3),
            "rps_waypoint_vs_direct": round(self.rps_waypoint_vs_direct, 3),
            "p99_waypoint_vs_nginx": round(self.p99_waypoint_vs_nginx, 3),
        })
    }
}

/// A scratch directory for configs, certificates and logs, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn waypoint_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("ambit-waypoint");
    ensure!(
        binary.exists(),
        "{} is missing: build it next to this benchmark (cargo build --release -p ambit-waypoint; `cargo xtask bench waypoint` does)",
        binary.display()
    );
    Ok(binary)
}

fn check_machine() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(
        cpus >= 2,
        "this benchmark pins the load and the proxies to different CPUs and needs 2, found {cpus}"
    );
    for tool in ["h2load", "taskset"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(
            found,
            "{tool} is needed (apt-get install nghttp2-client util-linux)"
        );
    }
    nginx::check_installed()
}

pub fn run(quick: bool) -> Result<()> {
    let plan = if quick { QUICK } else { FULL };
    check_machine()?;
    let waypoint_exe = waypoint_binary()?;
    let extauthz_exe = variants::extauthz_binary()?;
    let scratch =
        Scratch(std::env::temp_dir().join(format!("ambit-bench-waypoint-{}", std::process::id())));
    let dir = scratch.0.as_path();
    std::fs::create_dir_all(dir)?;

    let ca = CertificateAuthority::generate(TRUST_DOMAIN.parse()?, Duration::from_secs(86_400))?;
    let material = ca.to_material();
    let ca_pem = format!("{}{}", material.certificate_pem, material.key_pem);
    let ca_cert = dir.join("ca.crt");
    std::fs::write(&ca_cert, &material.certificate_pem)?;
    let ca_key = dir.join("ca.key");
    std::fs::write(&ca_key, &material.key_pem)?;
    let waypoint_id = SpiffeId::new(TRUST_DOMAIN.parse()?, NAMESPACE, WAYPOINT_SA)?;

    let app_addr = at(POD_HOST, APP_PORT);
    let app = RoleProcess::start("http-app", &[app_addr.to_string()], "", Some(LOAD_CPUS))?;

    // The waypoint path, from the far end.
    let tunnel_in = RoleProcess::start(
        "hbone-in",
        &[at(POD_HOST, ambit_hbone::HBONE_PORT).to_string()],
        &ca_pem,
        Some(PROXY_CPUS),
    )?;
    let setup = WaypointSetup {
        exe: &waypoint_exe,
        dir,
        ca_cert: &ca_cert,
        ca_key: &ca_key,
        ca_pem: &ca_pem,
        id: &waypoint_id,
    };
    let main = setup.start("waypoint", WAYPOINT_HOST, "")?;

    // The nginx path, each with the identity of the part it stands for.
    let identity = |id: &SpiffeId, stem: &str| PemIdentity::write(&ca, id, dir, stem);
    let chain = Chain {
        dir,
        ca_cert: &ca_cert,
        a_http1: at(2, 10001),
        a_h2: at(2, 10002),
        a_identity: &identity(&client_id()?, "client")?,
        b_http1: at(3, 10443),
        b_h2: at(3, 10444),
        b_identity: &identity(&waypoint_id, "waypoint")?,
        c: at(4, 10443),
        c_identity: &identity(&server_id()?, "server")?,
        app: app_addr,
    };
    let [nginx_c, nginx_b, nginx_a] = chain.start(PROXY_CPUS)?;

    let paths = [
        PathUnderTest {
            name: "direct",
            http1_url: format!("http://{app_addr}/"),
            h2_url: format!("http://{app_addr}/"),
            headers: Vec::new(),
            proxies: vec![],
        },
        PathUnderTest {
            name: "nginx",
            http1_url: format!("http://{}/", chain.a_http1),
            h2_url: format!("http://{}/", chain.a_h2),
            headers: Vec::new(),
            proxies: vec![
                ("nginx B", &nginx_b),
                ("nginx A", &nginx_a),
                ("nginx C", &nginx_c),
            ],
        },
        main.path("waypoint", Vec::new(), &tunnel_in),
    ];
    let log = dir.join("h2load.log");
    let rss_idle = main.waypoint.rss_bytes()?;

    eprintln!(
        "warm-up: {:?} at 100 rps per path and protocol",
        plan.warmup_duration
    );
    interleaved(
        &paths,
        1,
        |p| fixed_rate(p, 100, plan.warmup_duration),
        &log,
        || Ok(()),
    )?;
    eprintln!(
        "latency: {} rounds of {:?} at {RATE} rps per path and protocol, interleaved",
        plan.rate_rounds, plan.rate_round_duration
    );
    let at_rate = interleaved(
        &paths,
        plan.rate_rounds,
        |p| fixed_rate(p, RATE, plan.rate_round_duration),
        &log,
        || Ok(()),
    )?;
    eprintln!(
        "saturation: {} rounds of {:?} per path and protocol, interleaved",
        plan.saturation_rounds, plan.saturation_duration
    );
    let saturated = interleaved(
        &paths,
        plan.saturation_rounds,
        |p| saturation(p, plan.saturation_duration),
        &log,
        || Ok(()),
    )?;
    let rss_after = main.waypoint.rss_bytes()?;
    let rss_peak = main.waypoint.peak_rss_bytes()?;

    let results: Vec<ProtocolResult> = PROTOCOLS
        .into_iter()
        .zip(at_rate.into_iter().zip(saturated))
        .map(|(protocol, (at_rate, saturated))| {
            let (saturation, saturation_samples) = saturated.into_iter().filter_map(best).unzip();
            ProtocolResult {
                protocol,
                at_rate: at_rate.into_iter().filter_map(merged).collect(),
                saturation,
                saturation_samples,
            }
        })
        .collect();
    let rss = Rss {
        idle: rss_idle,
        at_rate: results
            .iter()
            .filter_map(|r| r.at_rate.get(2).map(|m| m.rss_max[0]))
            .max()
            .unwrap_or(0),
        nginx_b_at_rate: results
            .iter()
            .filter_map(|r| r.at_rate.get(1).map(|m| m.rss_max[0]))
            .max()
            .unwrap_or(0),
        idle_after_load: rss_after,
        peak: rss_peak,
    };

    let variants = variants::Variants::start(&setup, &extauthz_exe)?;
    let variant_results = variants.measure(&plan, &main, &tunnel_in, &log)?;

    print_table(&results, &paths, &rss);
    variant_results.print_table();
    let mut json = report(&results, &rss, &plan);
    variant_results.add_to_report(&mut json);
    let path = write_json("waypoint", &json)?;
    println!("\nwrote {}", path.display());
    drop((app, tunnel_in, main, variants));
    drop((nginx_a, nginx_b, nginx_c));
    Ok(())
}

/// What every waypoint of the run starts with.
struct WaypointSetup<'a> {
    exe: &'a Path,
    dir: &'a Path,
    ca_cert: &'a Path,
    ca_key: &'a Path,
    /// The CA's certificate and key, as roles read them on stdin.
    ca_pem: &'a str,
    id: &'a SpiffeId,
}

/// A waypoint and the client tunnel that leads to it.
struct WaypointPath {
    waypoint: Process,
    tunnel_out: RoleProcess,
    /// Where it serves `/metrics`.
    metrics: SocketAddr,
}

impl WaypointSetup<'_> {
    /// Starts waypoint `name` on `127.201.0.host`, with `extra` in its mesh, and a client
    /// tunnel in front of it.
    fn start(&self, name: &str, host: u8, extra: &str) -> Result<WaypointPath> {
        let listen = at(host, ambit_hbone::HBONE_PORT);
        let mesh = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&mesh, mesh_yaml(extra))?;
        // Its JSON log, one access line per request, goes to a file as a container's would.
        let log = File::create(self.dir.join(format!("{name}.log")))?;
        let admin = |port: u16| at(host, port).to_string();
        let mut waypoint = Process::spawn(
            name,
            command(self.exe, Some(PROXY_CPUS))
                .env(SHIPPED_GLIBC_TUNABLES.0, SHIPPED_GLIBC_TUNABLES.1)
                .args(["--namespace", NAMESPACE])
                .args(["--for-service-account", "server"])
                .args(["--service-account", WAYPOINT_SA])
                .arg("--mesh")
                .arg(&mesh)
                .arg("--ca-cert")
                .arg(self.ca_cert)
                .arg("--ca-key")
                .arg(self.ca_key)
                .args(["--listen", &listen.to_string()])
                .args(["--admin", &admin(15000)])
                .args(["--metrics", &admin(15020)])
                .args(["--readiness", &admin(15021)])
                .args(["--drain-secs", "1"])
                .env("AMBIT_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let tunnel_out = RoleProcess::start(
            "hbone-out",
            &[listen.to_string(), VIP.to_string(), self.id.to_string()],
            self.ca_pem,
            Some(PROXY_CPUS),
        )?;
        waypoint.wait_listening(listen)?;
        Ok(WaypointPath {
            waypoint,
            tunnel_out,
            metrics: at(host, 15020),
        })
    }
}

impl WaypointPath {
    /// The path through this waypoint to the app behind `tunnel_in`, requests sent with
    /// `headers`.
    fn path<'a>(
        &'a self,
        name: &'static str,
        headers: Vec<String>,
        tunnel_in: &'a RoleProcess,
    ) -> PathUnderTest<'a> {
        let url = format!("http://{}/", self.tunnel_out.addr);
        PathUnderTest {
            name,
            http1_url: url.clone(),
            h2_url: url,
            headers,
            proxies: vec![
                ("waypoint", &self.waypoint),
                ("hbone-out", &self.tunnel_out.process),
                ("hbone-in", &tunnel_in.process),
            ],
        }
    }
}

/// The waypoint's resident memory.
struct Rss {
    /// Started, certified, configured, before any request.
    idle: u64,
    /// Highest sample while serving 1,000 rps.
    at_rate: u64,
    /// nginx B's highest sample at 1,000 rps, for comparison.
    nginx_b_at_rate: u64,
    /// After the saturation runs, with no traffic.
    idle_after_load: u64,
    /// The high-water mark over the whole run (saturation included).
    peak: u64,
}

const MIB: f64 = 1024.0 * 1024.0;
const RSS_TARGET_MIB: f64 = 30.0;
const CPU_TARGET_US: f64 = 100.0;

fn report(results: &[ProtocolResult], rss: &Rss, plan: &Plan) -> Value {
    // The headline keys are HTTP/1.1 keep-alive's; `by_protocol` has both.
    let headline = results.first().map(ProtocolResult::json);
    let pick = |key: &str| headline.as_ref().map_or(Value::Null, |h| h[key].clone());
    let by_protocol: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| (r.protocol.name().to_string(), r.json()))
        .collect();
    let cpu = pick("cpu_us_per_request_at_1000rps");
    json!({
        "quick": plan.quick,
        "headline_protocol": "http1",
        "rps": pick("rps"),
        "ratios": pick("ratios"),
        "p99_ms_at_1000rps": pick("p99_ms_at_1000rps"),
        "cpu_us_per_request": cpu,
        "rss_bytes": {
            "idle": rss.idle,
            "at_1000rps": rss.at_rate,
            "idle_after_saturation": rss.idle_after_load,
            "peak": rss.peak,
            "nginx_b_at_1000rps": rss.nginx_b_at_rate,
        },
        "by_protocol": by_protocol,
        "targets": {
            "rps_waypoint_vs_nginx_min": 1.0,
            "cpu_us_per_request_max": CPU_TARGET_US,
            "p99_waypoint_vs_nginx_max": 1.0,
            "rss_mib_at_1000rps_max": RSS_TARGET_MIB,
        },
        "setup": {
            "load_cpus": LOAD_CPUS,
            "proxy_cpus": PROXY_CPUS,
            "body_bytes": crate::roles::HTTP_BODY_SIZE,
            "rate_rps": RATE,
            "rate_rounds": plan.rate_rounds,
            "rate_round_duration_s": plan.rate_round_duration.as_secs_f64(),
            "saturation_rounds": plan.saturation_rounds,
            "saturation_duration_s": plan.saturation_duration.as_secs_f64(),
            "saturation_in_flight": {
                "http1": in_flight(&saturation(Protocol::Http1, plan.saturation_duration)),
                "h2": in_flight(&saturation(Protocol::H2, plan.saturation_duration)),
            },
        },
        "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()) },
    })
}

fn in_flight(load: &Load) -> String {
    format!("{} connections x {}", load.connections, load.streams)
}

fn print_table(results: &[ProtocolResult], paths: &[PathUnderTest], rss: &Rss) {
    println!(
        "\nWaypoint benchmark: 1 KiB responses on loopback, one run; proxies on CPU {PROXY_CPUS}, h2load and the app on CPU {LOAD_CPUS}\n"
    );
    println!(
        "{:<9} {:<9} {:>10} {:>10} {:>10}   CPU µs/req @1k: all proxies (the L7 one)",
        "protocol", "path", "sat. rps", "p50 @1k", "p99 @1k"
    );
    for r in results {
        for (i, path) in paths.iter().enumerate() {
            let latency = r.at_rate[i].latency();
            let cpu = match path.proxies.first() {
                Some((name, _)) => format!(
                    "{:.0} ({name} {:.0})",
                    r.at_rate[i].path_cpu_us_per_request(),
                    r.at_rate[i].cpu_us_per_request(0)
                ),
                None => "-".to_string(),
            };
            println!(
                "{:<9} {:<9} {:>10.0} {:>7.3} ms {:>7.3} ms   {}",
                r.protocol.name(),
                path.name,
                r.rps(i),
                latency.p50_us / 1e3,
                latency.p99_us / 1e3,
                cpu
            );
        }
    }
    println!();
    for r in results {
        let ratios = r.ratios();
        let name = r.protocol.name();
        println!(
            "{name:<6} saturation rps waypoint/nginx   {}",
            against(ratios.rps_waypoint_vs_nginx, 1.0, true)
        );
        println!(
            "{name:<6} saturation rps waypoint/direct  {:.2}",
            ratios.rps_waypoint_vs_direct
        );
        println!(
            "{name:<6} p99 at 1,000 rps waypoint/nginx {}",
            against(ratios.p99_waypoint_vs_nginx, 1.0, false)
        );
        println!(
            "{name:<6} waypoint CPU µs/req at 1,000 rps {}",
            against(r.waypoint_cpu_us(), CPU_TARGET_US, false)
        );
    }
    println!(
        "waypoint RSS MiB at 1,000 rps    {}; idle {:.1}, after saturation {:.1}, peak {:.1} (nginx B at 1,000 rps {:.1})",
        against(rss.at_rate as f64 / MIB, RSS_TARGET_MIB, false),
        rss.idle as f64 / MIB,
        rss.idle_after_load as f64 / MIB,
        rss.peak as f64 / MIB,
        rss.nginx_b_at_rate as f64 / MIB,
    );
}
