//! `cargo xtask bench hbone`: three paths side by side on loopback, in one run.
//!
//! (a) direct: client -> server
//! (b) tcp_proxy: client -> plain TCP proxy -> plain TCP proxy -> server (same copy engine)
//! (c) hbone: client -> HBONE client tunnel -> HBONE server tunnel -> server
//!
//! The paths are interleaved in rounds (`AMBIT_BENCH_ROUNDS`, default 3): each round measures
//! every path's throughput, then every path's round trips, so a noisy moment of the machine
//! lands on one round of every path. Ratios are taken within a round, then reported as the
//! median and the min–max over rounds.

use crate::measure::{
    EchoConnection, Percentiles, open_files_limit, open_idle_connections, percentiles, throughput,
};
use crate::process::RoleProcess;
use crate::report::{Spread, against, against_rounds, round, rounds, write_json};
use crate::roles::{MODE_ECHO, TRUST_DOMAIN, bundle, client_id, mint, server_id};
use ambit_hbone::{Dialer, PoolSettings, TunnelHeaders};
use ambit_identity::CertificateAuthority;
use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one run measures, and for how long.
struct Settings {
    rounds: usize,
    throughput_duration: Duration,
    rtt_warmup: usize,
    rtt_samples_per_round: usize,
    handshake_duration: Duration,
    idle_connections: usize,
}

impl Settings {
    fn new(quick: bool, rounds: usize) -> Self {
        if quick {
            Self {
                rounds,
                throughput_duration: Duration::from_millis(300),
                rtt_warmup: 200,
                rtt_samples_per_round: 500,
                handshake_duration: Duration::from_millis(500),
                idle_connections: 500,
            }
        } else {
            Self {
                rounds,
                throughput_duration: Duration::from_secs(2),
                rtt_warmup: 2_000,
                rtt_samples_per_round: 5_000,
                handshake_duration: Duration::from_secs(3),
                idle_connections: 10_000,
            }
        }
    }
}

const HANDSHAKE_CONCURRENCY: usize = 8;

const PATHS: [&str; 3] = ["direct", "tcp_proxy", "hbone"];
/// The HBONE path's index in [`PATHS`].
const HBONE: usize = 2;

/// One round: every path measured once, in the order of [`PATHS`].
struct Round {
    throughput_gbps: [f64; 3],
    rtt: [Percentiles; 3],
    /// CPU of both HBONE tunnel processes per GB of the throughput run, in seconds.
    hbone_cpu_s_per_gb: f64,
    /// CPU of both HBONE tunnel processes per 1 KiB round trip, in microseconds.
    hbone_cpu_us_per_round_trip: f64,
}

impl Round {
    fn throughput_hbone_vs_direct(&self) -> f64 {
        self.throughput_gbps[2] / self.throughput_gbps[0]
    }
    fn throughput_hbone_vs_tcp_proxy(&self) -> f64 {
        self.throughput_gbps[2] / self.throughput_gbps[1]
    }
    fn rtt_p50_hbone_vs_direct(&self) -> f64 {
        self.rtt[2].p50_us / self.rtt[0].p50_us
    }
}

/// A quantity of a round as the report names it, and how to take it from the round.
type Ratio = (&'static str, fn(&Round) -> f64);

const RATIOS: [Ratio; 3] = [
    (
        "throughput_hbone_vs_direct",
        Round::throughput_hbone_vs_direct,
    ),
    (
        "throughput_hbone_vs_tcp_proxy",
        Round::throughput_hbone_vs_tcp_proxy,
    ),
    ("rtt_p50_hbone_vs_direct", Round::rtt_p50_hbone_vs_direct),
];

/// The tunnels' CPU, as the report names it: per byte carried and per round trip. Less noisy
/// than the rates on a busy machine, since time spent waiting for a core is not counted.
const CPU: [Ratio; 2] = [
    ("hbone_cpu_s_per_gb", |r| r.hbone_cpu_s_per_gb),
    ("hbone_cpu_us_per_round_trip", |r| {
        r.hbone_cpu_us_per_round_trip
    }),
];

/// Which parts run: `AMBIT_BENCH_PART=new-tunnels` or `idle-memory` runs that part alone, to
/// compare builds on what a change touches; it prints its line and writes no JSON (hbone.json's
/// keys need every part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    All,
    NewTunnels,
    IdleMemory,
}

impl Part {
    fn from_env() -> Result<Self> {
        match std::env::var("AMBIT_BENCH_PART") {
            Err(std::env::VarError::NotPresent) => Ok(Self::All),
            Err(e) => Err(e).context("AMBIT_BENCH_PART"),
            Ok(text) => match text.as_str() {
                "new-tunnels" => Ok(Self::NewTunnels),
                "idle-memory" => Ok(Self::IdleMemory),
                _ => bail!("AMBIT_BENCH_PART={text:?}: expected new-tunnels or idle-memory"),
            },
        }
    }

    fn runs(self, part: Self) -> bool {
        self == Self::All || self == part
    }
}

pub fn run(quick: bool) -> Result<()> {
    let settings = Settings::new(quick, rounds()?);
    let part = Part::from_env()?;
    // The driver is one thread: the load it generates is sequential, and the processes under
    // test get the rest of the machine.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(&settings, part))
}

async fn run_async(settings: &Settings, part: Part) -> Result<()> {
    let limit = open_files_limit()?;
    let idle_connections = settings.idle_connections;
    ensure!(
        !part.runs(Part::IdleMemory) || limit as usize > idle_connections + 1_000,
        "the open-files limit is {limit}; this benchmark holds {idle_connections} connections per process: raise it with `ulimit -n 20000`"
    );
    let ca = CertificateAuthority::generate(TRUST_DOMAIN.parse()?, Duration::from_secs(86_400))?;
    let material = ca.to_material();
    let ca_pem = format!("{}{}", material.certificate_pem, material.key_pem);

    let server = RoleProcess::start("server", &[], "", None)?;
    let mut rounds = Vec::new();
    let mut new_tunnels_measured = None;
    if part != Part::IdleMemory {
        let proxies = if part == Part::All {
            let far = RoleProcess::start("tcp-proxy", &[server.addr.to_string()], "", None)?;
            let near = RoleProcess::start("tcp-proxy", &[far.addr.to_string()], "", None)?;
            Some((far, near))
        } else {
            None
        };
        let (tunnel_in, tunnel_out) = start_tunnels(&ca_pem, server.addr)?;
        if let Some((_, near)) = &proxies {
            let entries = [server.addr, near.addr, tunnel_out.addr];
            rounds = measure_rounds(settings, entries, [&tunnel_in, &tunnel_out]).await?;
        }
        eprintln!(
            "new tunnels: {HANDSHAKE_CONCURRENCY} concurrent loops for {:?}",
            settings.handshake_duration
        );
        let measured =
            new_tunnels(&ca, &tunnel_in, server.addr, settings.handshake_duration).await?;
        if part == Part::NewTunnels {
            println!("{}", new_tunnels_line(&measured));
            return Ok(());
        }
        new_tunnels_measured = Some(measured);
    }

    eprintln!("idle memory: {idle_connections} tunneled connections on fresh tunnel processes");
    let (fresh_in, fresh_out) = start_tunnels(&ca_pem, server.addr)?;
    let idle = idle_rss(&fresh_in, &fresh_out, idle_connections).await?;
    let Some(new_tunnels) = new_tunnels_measured else {
        println!("{}", idle_line(&idle));
        return Ok(());
    };

    print_table(&rounds, &new_tunnels, &idle);
    let per_path = |path: usize, of: fn(&Round, usize) -> f64| {
        Spread::of(&rounds.iter().map(|r| of(r, path)).collect::<Vec<_>>())
    };
    let throughput = |r: &Round, path: usize| r.throughput_gbps[path];
    let p50 = |r: &Round, path: usize| r.rtt[path].p50_us;
    let p99 = |r: &Round, path: usize| r.rtt[path].p99_us;
    let mut paths = serde_json::Map::new();
    for (index, name) in PATHS.iter().enumerate() {
        let (t, p50, p99) = (
            per_path(index, throughput),
            per_path(index, p50),
            per_path(index, p99),
        );
        paths.insert(
            (*name).to_owned(),
            json!({
                "throughput_gbps": round(t.median, 3),
                "throughput_gbps_spread": t.range_json(3),
                "rtt_p50_us": round(p50.median, 1),
                "rtt_p50_us_spread": p50.range_json(1),
                "rtt_p99_us": round(p99.median, 1),
                "rtt_p99_us_spread": p99.range_json(1),
            }),
        );
    }
    let mut ratios = serde_json::Map::new();
    for (name, of) in RATIOS {
        let spread = Spread::of(&rounds.iter().map(of).collect::<Vec<_>>());
        ratios.insert(name.to_owned(), json!(round(spread.median, 3)));
        ratios.insert(format!("{name}_spread"), spread.range_json(3));
    }
    let mut cpu = serde_json::Map::new();
    for (name, of) in CPU {
        let spread = Spread::of(&rounds.iter().map(of).collect::<Vec<_>>());
        cpu.insert(name.to_owned(), json!(round(spread.median, 2)));
        cpu.insert(format!("{name}_spread"), spread.range_json(2));
    }
    let by_path = |values: [f64; 3], digits: i32| {
        json!({
            "direct": round(values[0], digits),
            "tcp_proxy": round(values[1], digits),
            "hbone": round(values[2], digits),
        })
    };
    let rounds_json: Vec<_> = rounds
        .iter()
        .map(|r| {
            json!({
                "throughput_gbps": by_path(r.throughput_gbps, 3),
                "rtt_p50_us": by_path(r.rtt.map(|p| p.p50_us), 1),
                "rtt_p99_us": by_path(r.rtt.map(|p| p.p99_us), 1),
                "hbone_cpu_s_per_gb": round(r.hbone_cpu_s_per_gb, 2),
                "hbone_cpu_us_per_round_trip": round(r.hbone_cpu_us_per_round_trip, 2),
            })
        })
        .collect();
    let report = json!({
        "paths": paths,
        "ratios": ratios,
        "cpu": cpu,
        "new_tunnels_per_s": round(new_tunnels.per_s, 0),
        "new_tunnel_cpu_us": {
            "server_tunnel": round(new_tunnels.server_cpu_us, 1),
            "client": round(new_tunnels.client_cpu_us, 1),
        },
        "rss_bytes_per_idle_conn": idle.per_connection.round(),
        "rss_detail": {
            "connections": idle_connections,
            "client_tunnel_delta_bytes": idle.out_delta,
            "server_tunnel_delta_bytes": idle.in_delta,
        },
        "throughput_samples_gbps": {
            "direct": rounds.iter().map(|r| r.throughput_gbps[0]).collect::<Vec<_>>(),
            "tcp_proxy": rounds.iter().map(|r| r.throughput_gbps[1]).collect::<Vec<_>>(),
            "hbone": rounds.iter().map(|r| r.throughput_gbps[2]).collect::<Vec<_>>(),
        },
        "rounds": rounds_json,
        "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()) },
    });
    let path = write_json("hbone", &report)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Rounds that each measure every path: throughput of each, then round trips on each (on
/// connections warmed once, kept across rounds), and the CPU the HBONE path's `tunnels` spent
/// on its share.
async fn measure_rounds(
    settings: &Settings,
    entries: [SocketAddr; 3],
    tunnels: [&RoleProcess; 2],
) -> Result<Vec<Round>> {
    let tunnels_cpu_ns =
        || -> Result<u64> { Ok(tunnels[0].process.cpu_ns()? + tunnels[1].process.cpu_ns()?) };
    eprintln!(
        "{} rounds, each: {:?} of throughput, then {} x 1 KiB echo, per path ({} warm-up first)",
        settings.rounds,
        settings.throughput_duration,
        settings.rtt_samples_per_round,
        settings.rtt_warmup
    );
    let mut connections = Vec::new();
    for entry in entries {
        connections.push(EchoConnection::open(entry, settings.rtt_warmup).await?);
    }
    let mut rounds = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds {
        let mut throughput_gbps = [0.0; 3];
        let mut hbone_cpu_s_per_gb = 0.0;
        for (path, (sample, entry)) in throughput_gbps.iter_mut().zip(entries).enumerate() {
            let cpu_before = tunnels_cpu_ns()?;
            let carried = throughput(entry, settings.throughput_duration).await?;
            if path == HBONE {
                hbone_cpu_s_per_gb = (tunnels_cpu_ns()? - cpu_before) as f64 / carried.bytes as f64;
            }
            *sample = carried.gbps;
        }
        let mut rtt = [Percentiles {
            p50_us: 0.0,
            p99_us: 0.0,
        }; 3];
        let mut hbone_cpu_us_per_round_trip = 0.0;
        for (path, (result, connection)) in rtt.iter_mut().zip(connections.iter_mut()).enumerate() {
            let mut samples = Vec::with_capacity(settings.rtt_samples_per_round);
            let cpu_before = tunnels_cpu_ns()?;
            connection
                .sample(settings.rtt_samples_per_round, &mut samples)
                .await?;
            if path == HBONE {
                hbone_cpu_us_per_round_trip = (tunnels_cpu_ns()? - cpu_before) as f64
                    / 1e3
                    / settings.rtt_samples_per_round as f64;
            }
            *result = percentiles(&mut samples);
        }
        rounds.push(Round {
            throughput_gbps,
            rtt,
            hbone_cpu_s_per_gb,
            hbone_cpu_us_per_round_trip,
        });
    }
    Ok(rounds)
}

fn start_tunnels(ca_pem: &str, target: SocketAddr) -> Result<(RoleProcess, RoleProcess)> {
    let tunnel_in = RoleProcess::start("hbone-in", &[], ca_pem, None)?;
    let tunnel_out = RoleProcess::start(
        "hbone-out",
        &[tunnel_in.addr.to_string(), target.to_string()],
        ca_pem,
        None,
    )?;
    Ok((tunnel_in, tunnel_out))
}

/// What the new-tunnel loops measured: tunnels completed per second, and the CPU each took in
/// the server tunnel and in the client (this process, whose one runtime thread runs the loops).
struct NewTunnels {
    per_s: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
}

/// Each tunnel is a new TCP connection, a full mutual-TLS handshake, HTTP/2 setup, CONNECT,
/// and one byte echoed through it.
async fn new_tunnels(
    ca: &CertificateAuthority,
    hbone_server: &RoleProcess,
    target: SocketAddr,
    duration: Duration,
) -> Result<NewTunnels> {
    let dialer = Arc::new(Dialer::new(bundle(ca)?, PoolSettings::default()));
    let certificate = mint(ca, &client_id()?)?;
    let expected = server_id()?;
    let completed = Arc::new(AtomicU64::new(0));
    let server_addr = hbone_server.addr;
    let (server_cpu_before, client_cpu_before) =
        (hbone_server.process.cpu_ns()?, own_thread_cpu_ns()?);
    let start = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..HANDSHAKE_CONCURRENCY {
        let (dialer, certificate, expected, completed) = (
            dialer.clone(),
            certificate.clone(),
            expected.clone(),
            completed.clone(),
        );
        loops.spawn(async move {
            while start.elapsed() < duration {
                let mut tunnel = dialer
                    .connect_unpooled(
                        certificate.clone(),
                        server_addr,
                        vec![expected.clone()],
                        target,
                        &TunnelHeaders::default(),
                    )
                    .await?;
                tunnel.write_all(&[MODE_ECHO, 7]).await?;
                let mut reply = [0u8; 1];
                tunnel.read_exact(&mut reply).await?;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = loops.join_next().await {
        result??;
    }
    let elapsed = start.elapsed();
    let completed = completed.load(Ordering::Relaxed) as f64;
    let per_tunnel_us = |ns: u64| ns as f64 / 1e3 / completed;
    Ok(NewTunnels {
        per_s: completed / elapsed.as_secs_f64(),
        server_cpu_us: per_tunnel_us(hbone_server.process.cpu_ns()? - server_cpu_before),
        client_cpu_us: per_tunnel_us(own_thread_cpu_ns()? - client_cpu_before),
    })
}

/// CPU time of the calling thread so far, from the scheduler's accounting.
fn own_thread_cpu_ns() -> Result<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")?
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .context("run time in /proc/thread-self/schedstat")
}

fn new_tunnels_line(new: &NewTunnels) -> String {
    format!(
        "new tunnels per second       {}  (CPU per tunnel: server tunnel {:.0} µs, client {:.0} µs)",
        against(new.per_s, 1500.0, true),
        new.server_cpu_us,
        new.client_cpu_us
    )
}

struct IdleRss {
    out_delta: u64,
    in_delta: u64,
    per_connection: f64,
    connections: usize,
}

/// RSS growth of both tunnel processes for each idle tunneled connection.
async fn idle_rss(
    tunnel_in: &RoleProcess,
    tunnel_out: &RoleProcess,
    connections: usize,
) -> Result<IdleRss> {
    // One connection first, so the baseline includes connection-independent state.
    let warm = open_idle_connections(tunnel_out.addr, 1).await?;
    let (out_before, in_before) = (tunnel_out.rss_bytes()?, tunnel_in.rss_bytes()?);
    let idle = open_idle_connections(tunnel_out.addr, connections).await?;
    let (out_after, in_after) = (tunnel_out.rss_bytes()?, tunnel_in.rss_bytes()?);
    drop((idle, warm));
    let out_delta = out_after.saturating_sub(out_before);
    let in_delta = in_after.saturating_sub(in_before);
    Ok(IdleRss {
        out_delta,
        in_delta,
        per_connection: (out_delta + in_delta) as f64 / connections as f64,
        connections,
    })
}

fn print_table(rounds: &[Round], new_tunnels: &NewTunnels, idle: &IdleRss) {
    println!(
        "\nHBONE transport benchmark (loopback, {} interleaved rounds; median and min–max over rounds)\n",
        rounds.len()
    );
    println!(
        "{:<10} {:>26} {:>24} {:>24}",
        "path", "throughput Gbit/s", "1KiB rtt p50 µs", "1KiB rtt p99 µs"
    );
    for (index, name) in PATHS.iter().enumerate() {
        let cell = |of: fn(&Round) -> [f64; 3]| {
            let s = Spread::of(&rounds.iter().map(|r| of(r)[index]).collect::<Vec<_>>());
            format!("{:>8.2}  {:>6.2}–{:<6.2}", s.median, s.min, s.max)
        };
        println!(
            "{:<10} {:>26} {:>24} {:>24}",
            name,
            cell(|r| r.throughput_gbps),
            cell(|r| r.rtt.map(|p| p.p50_us)),
            cell(|r| r.rtt.map(|p| p.p99_us)),
        );
    }
    println!("\n{:<30} {:>7}  {:<11}", "ratio", "median", "min–max");
    let targets = [(0.45, true), (0.75, true), (2.1, false)];
    for ((name, of), (target, higher)) in RATIOS.into_iter().zip(targets) {
        let samples: Vec<f64> = rounds.iter().map(of).collect();
        println!("{name:<30} {}", against_rounds(&samples, target, higher));
    }
    println!();
    for (name, of) in CPU {
        let s = Spread::of(&rounds.iter().map(of).collect::<Vec<_>>());
        println!(
            "{name:<30} {:>7.2}  {:.2}–{:.2}  (both tunnels)",
            s.median, s.min, s.max
        );
    }
    println!();
    println!("{}", new_tunnels_line(new_tunnels));
    println!("{}", idle_line(idle));
}

fn idle_line(idle: &IdleRss) -> String {
    format!(
        "RSS per idle tunneled conn   {} bytes (client tunnel +{} B, server tunnel +{} B over {}; target <= 4096, {})",
        idle.per_connection.round(),
        idle.out_delta,
        idle.in_delta,
        idle.connections,
        if idle.per_connection <= 4096.0 {
            "met"
        } else {
            "NOT met"
        }
    )
}
