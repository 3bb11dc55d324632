//! `cargo xtask bench hbone`: three paths side by side on loopback, in one run.
//!
//! (a) direct: client -> server
//! (b) tcp_proxy: client -> plain TCP proxy -> plain TCP proxy -> server (same copy engine)
//! (c) hbone: client -> HBONE client tunnel -> HBONE server tunnel -> server

use crate::measure::{
    EchoConnection, Percentiles, open_files_limit, open_idle_connections, percentiles,
    throughput_gbps,
};
use crate::process::RoleProcess;
use crate::report::{against, median, round, write_json};
use crate::roles::{MODE_ECHO, TRUST_DOMAIN, bundle, client_id, mint, server_id};
use ambit_hbone::{Dialer, PoolSettings, TunnelHeaders};
use ambit_identity::CertificateAuthority;
use anyhow::{Result, ensure};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const THROUGHPUT_ROUNDS: usize = 3;
const THROUGHPUT_DURATION: Duration = Duration::from_secs(2);
const RTT_WARMUP: usize = 2_000;
/// Round trips are measured in rounds that alternate between paths, so a noisy moment of the
/// machine lands on every path alike.
const RTT_ROUNDS: usize = 10;
const RTT_SAMPLES_PER_ROUND: usize = 2_000;
const HANDSHAKE_DURATION: Duration = Duration::from_secs(3);
const HANDSHAKE_CONCURRENCY: usize = 8;
const IDLE_CONNECTIONS: usize = 10_000;

const PATHS: [&str; 3] = ["direct", "tcp_proxy", "hbone"];

struct PathResult {
    throughput_gbps: f64,
    rtt: Percentiles,
}

pub fn run() -> Result<()> {
    // The driver is one thread: the load it generates is sequential, and the processes under
    // test get the rest of the machine.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async())
}

async fn run_async() -> Result<()> {
    let limit = open_files_limit()?;
    ensure!(
        limit as usize > IDLE_CONNECTIONS + 1_000,
        "the open-files limit is {limit}; this benchmark holds {IDLE_CONNECTIONS} connections per process: raise it with `ulimit -n 20000`"
    );
    let ca = CertificateAuthority::generate(TRUST_DOMAIN.parse()?, Duration::from_secs(86_400))?;
    let material = ca.to_material();
    let ca_pem = format!("{}{}", material.certificate_pem, material.key_pem);

    let server = RoleProcess::start("server", &[], "", None)?;
    let proxy_far = RoleProcess::start("tcp-proxy", &[server.addr.to_string()], "", None)?;
    let proxy_near = RoleProcess::start("tcp-proxy", &[proxy_far.addr.to_string()], "", None)?;
    let (tunnel_in, tunnel_out) = start_tunnels(&ca_pem, server.addr)?;
    let entries = [server.addr, proxy_near.addr, tunnel_out.addr];

    eprintln!(
        "throughput: {THROUGHPUT_ROUNDS} rounds of {THROUGHPUT_DURATION:?} per path, interleaved"
    );
    let mut rounds: [Vec<f64>; 3] = Default::default();
    for _ in 0..THROUGHPUT_ROUNDS {
        for (samples, entry) in rounds.iter_mut().zip(entries) {
            samples.push(throughput_gbps(entry, THROUGHPUT_DURATION).await?);
        }
    }
    eprintln!(
        "round trips: {RTT_ROUNDS} rounds of {RTT_SAMPLES_PER_ROUND} x 1 KiB echo per path, interleaved, after {RTT_WARMUP} warm-up"
    );
    let mut connections = Vec::new();
    for entry in entries {
        connections.push(EchoConnection::open(entry, RTT_WARMUP).await?);
    }
    let mut rtts: [Vec<Duration>; 3] = Default::default();
    for _ in 0..RTT_ROUNDS {
        for (connection, samples) in connections.iter_mut().zip(rtts.iter_mut()) {
            connection.sample(RTT_SAMPLES_PER_ROUND, samples).await?;
        }
    }
    drop(connections);
    let mut results = Vec::new();
    for (samples, rtt_samples) in rounds.iter_mut().zip(rtts.iter_mut()) {
        results.push(PathResult {
            throughput_gbps: median(samples),
            rtt: percentiles(rtt_samples),
        });
    }
    eprintln!("new tunnels: {HANDSHAKE_CONCURRENCY} concurrent loops for {HANDSHAKE_DURATION:?}");
    let new_tunnels_per_s = new_tunnels_per_second(&ca, tunnel_in.addr, server.addr).await?;
    drop((tunnel_in, tunnel_out));

    eprintln!("idle memory: {IDLE_CONNECTIONS} tunneled connections on fresh tunnel processes");
    let (fresh_in, fresh_out) = start_tunnels(&ca_pem, server.addr)?;
    let idle = idle_rss(&fresh_in, &fresh_out).await?;

    let [direct, proxy, hbone] = [&results[0], &results[1], &results[2]];
    let ratios = (
        hbone.throughput_gbps / direct.throughput_gbps,
        hbone.throughput_gbps / proxy.throughput_gbps,
        hbone.rtt.p50_us / direct.rtt.p50_us,
    );
    print_table(&results, ratios, new_tunnels_per_s, &idle);

    let path_json = |r: &PathResult| {
        json!({
            "throughput_gbps": round(r.throughput_gbps, 3),
            "rtt_p50_us": round(r.rtt.p50_us, 1),
            "rtt_p99_us": round(r.rtt.p99_us, 1),
        })
    };
    let report = json!({
        "paths": {
            "direct": path_json(direct),
            "tcp_proxy": path_json(proxy),
            "hbone": path_json(hbone),
        },
        "ratios": {
            "throughput_hbone_vs_direct": round(ratios.0, 3),
            "throughput_hbone_vs_tcp_proxy": round(ratios.1, 3),
            "rtt_p50_hbone_vs_direct": round(ratios.2, 3),
        },
        "new_tunnels_per_s": round(new_tunnels_per_s, 0),
        "rss_bytes_per_idle_conn": idle.per_connection.round(),
        "rss_detail": {
            "connections": IDLE_CONNECTIONS,
            "client_tunnel_delta_bytes": idle.out_delta,
            "server_tunnel_delta_bytes": idle.in_delta,
        },
        "throughput_samples_gbps": {
            "direct": rounds[0], "tcp_proxy": rounds[1], "hbone": rounds[2],
        },
        "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()) },
    });
    let path = write_json("hbone", &report)?;
    println!("\nwrote {}", path.display());
    Ok(())
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

/// Each tunnel is a new TCP connection, a full mutual-TLS handshake, HTTP/2 setup, CONNECT,
/// and one byte echoed through it.
async fn new_tunnels_per_second(
    ca: &CertificateAuthority,
    hbone_server: SocketAddr,
    target: SocketAddr,
) -> Result<f64> {
    let dialer = Arc::new(Dialer::new(bundle(ca)?, PoolSettings::default()));
    let certificate = mint(ca, &client_id()?)?;
    let expected = server_id()?;
    let completed = Arc::new(AtomicU64::new(0));
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
            while start.elapsed() < HANDSHAKE_DURATION {
                let mut tunnel = dialer
                    .connect_unpooled(
                        certificate.clone(),
                        hbone_server,
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
    Ok(completed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

struct IdleRss {
    out_delta: u64,
    in_delta: u64,
    per_connection: f64,
}

/// RSS growth of both tunnel processes for each idle tunneled connection.
async fn idle_rss(tunnel_in: &RoleProcess, tunnel_out: &RoleProcess) -> Result<IdleRss> {
    // One connection first, so the baseline includes connection-independent state.
    let warm = open_idle_connections(tunnel_out.addr, 1).await?;
    let (out_before, in_before) = (tunnel_out.rss_bytes()?, tunnel_in.rss_bytes()?);
    let idle = open_idle_connections(tunnel_out.addr, IDLE_CONNECTIONS).await?;
    let (out_after, in_after) = (tunnel_out.rss_bytes()?, tunnel_in.rss_bytes()?);
    drop((idle, warm));
    let out_delta = out_after.saturating_sub(out_before);
    let in_delta = in_after.saturating_sub(in_before);
    Ok(IdleRss {
        out_delta,
        in_delta,
        per_connection: (out_delta + in_delta) as f64 / IDLE_CONNECTIONS as f64,
    })
}

fn print_table(
    results: &[PathResult],
    ratios: (f64, f64, f64),
    tunnels_per_s: f64,
    idle: &IdleRss,
) {
    println!("\nHBONE transport benchmark (loopback, one run)\n");
    println!(
        "{:<10} {:>16} {:>14} {:>14}",
        "path", "throughput", "1KiB rtt p50", "1KiB rtt p99"
    );
    for (name, r) in PATHS.iter().zip(results) {
        println!(
            "{:<10} {:>10.2} Gbit/s {:>11.1} µs {:>11.1} µs",
            name, r.throughput_gbps, r.rtt.p50_us, r.rtt.p99_us
        );
    }
    println!();
    println!(
        "throughput hbone/direct     {}",
        against(ratios.0, 0.45, true)
    );
    println!(
        "throughput hbone/tcp_proxy  {}",
        against(ratios.1, 0.75, true)
    );
    println!(
        "rtt p50 hbone/direct        {}",
        against(ratios.2, 2.1, false)
    );
    println!(
        "new tunnels per second      {}",
        against(tunnels_per_s, 1500.0, true)
    );
    println!(
        "RSS per idle tunneled conn  {} bytes (client tunnel +{} B, server tunnel +{} B over {IDLE_CONNECTIONS}; target <= 4096, {})",
        idle.per_connection.round(),
        idle.out_delta,
        idle.in_delta,
        if idle.per_connection <= 4096.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
