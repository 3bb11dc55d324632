//! `bench_tunnel`: pod -> pod across nodes, direct on the veth path vs through both tunnels,
//! in the same run. Ignored by default; `cargo test --release -p ambit-tunnel --test netns --
//! --ignored --nocapture bench_tunnel` writes `target/ambit-bench/tunnel.json`.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const SERVER_PORT: u16 = 9000;
const THROUGHPUT_BYTES: usize = 256 << 20;
const RTT_ROUNDS: usize = 3000;
const OPEN_LOOP_SECS: u64 = 3;
const OPEN_CONNS: usize = 1000;

/// A blocking bench server: `T` = read to EOF then answer the byte count; `E` = echo 1 KiB
/// messages; `H` = hold the connection open until the peer closes.
fn bench_server(ns: &str) {
    spawn_in_netns(ns, || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                match mode[0] {
                    b'T' => {
                        let mut total = 0u64;
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        let _ = s.write_all(&total.to_be_bytes());
                    }
                    b'E' => {
                        let mut msg = [0u8; 1024];
                        while s.read_exact(&mut msg).is_ok() {
                            if s.write_all(&msg).is_err() {
                                break;
                            }
                        }
                    }
                    _ => {
                        let _ = s.read(&mut buf);
                    }
                }
            });
        }
    });
}

fn connect(to: &str, mode: u8) -> TcpStream {
    let mut s = poll("bench connect", WAIT, || {
        let mut s = TcpStream::connect(to).ok()?;
        s.write_all(&[mode]).ok()?;
        Some(s)
    });
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = &mut s;
    s
}

/// Bytes per second for one stream.
fn throughput(ns: &str, to: &str) -> f64 {
    let to = to.to_owned();
    in_netns(ns, move || {
        let mut s = connect(&to, b'T');
        let chunk = vec![7u8; 256 * 1024];
        let start = Instant::now();
        let mut sent = 0;
        while sent < THROUGHPUT_BYTES {
            s.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut total = [0u8; 8];
        s.read_exact(&mut total).unwrap();
        assert_eq!(u64::from_be_bytes(total) as usize, sent);
        sent as f64 / start.elapsed().as_secs_f64()
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Closed-loop 1 KiB round trips: p50 in microseconds.
fn rtt_p50(ns: &str, to: &str) -> f64 {
    let to = to.to_owned();
    in_netns(ns, move || {
        let mut s = connect(&to, b'E');
        let mut msg = [1u8; 1024];
        let mut samples = Vec::with_capacity(RTT_ROUNDS);
        for _ in 0..RTT_ROUNDS {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut msg).unwrap();
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        percentile(&mut samples, 0.5)
    })
}

/// Open loop at 1,000 req/s on one connection; latency from the scheduled send time.
/// Returns (p50, p99) in milliseconds.
fn open_loop(ns: &str, to: &str) -> (f64, f64) {
    let to = to.to_owned();
    in_netns(ns, move || {
        let mut s = connect(&to, b'E');
        let mut msg = [2u8; 1024];
        let n = (OPEN_LOOP_SECS * 1000) as usize;
        let start = Instant::now();
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let scheduled = start + Duration::from_millis(i as u64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                // The bench's own pacing, not synchronization.
                std::thread::sleep(wait);
            }
            s.write_all(&msg).unwrap();
            s.read_exact(&mut msg).unwrap();
            samples.push(scheduled.elapsed().as_secs_f64() * 1e3);
        }
        let p50 = percentile(&mut samples, 0.5);
        (p50, percentile(&mut samples, 0.99))
    })
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
#[ignore = "benchmark: cargo test --release -p ambit-tunnel --test netns -- --ignored bench_tunnel"]
fn bench_tunnel() {
    if !require_root("bench_tunnel") {
        return;
    }
    let bins = Bins {
        dir: build_binaries(&["ambit-tunnel", "ambit-capture"]),
    };
    let mut net = Net::new("b");
    write_files(&net);
    for p in ["p12", "p21", "p22"] {
        bench_server(&net.ns(p));
    }
    let t1 = start_tunnel(&net, &bins, "n1", "strict");
    let t2 = start_tunnel(&net, &bins, "n2", "strict");
    let pids = [t1.0.id(), t2.0.id()];
    net.procs.push(t1);
    net.procs.push(t2);
    // Only p11 (client) and p21 (server) are enrolled; p12 -> p22 is the direct baseline.
    for p in ["p11", "p21"] {
        let (ok, err) = enroll(&net, &bins, pod(p));
        assert!(ok, "{err}");
    }
    let (direct_ns, meshed_ns) = (net.ns("p12"), net.ns("p11"));
    let direct = (direct_ns.as_str(), "10.77.2.22:9000");
    let meshed = (meshed_ns.as_str(), "10.77.2.21:9000");
    let cpu = || pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let rss_idle = rss_bytes(pids[0]);

    let direct_tput = throughput(direct.0, direct.1);
    let cpu0 = cpu();
    let mesh_tput = throughput(meshed.0, meshed.1);
    let cpu_s_per_gb = (cpu() - cpu0) / (THROUGHPUT_BYTES as f64 / 1e9);

    let direct_rtt = rtt_p50(direct.0, direct.1);
    let cpu0 = cpu();
    let mesh_rtt = rtt_p50(meshed.0, meshed.1);
    let cpu_us_per_request = (cpu() - cpu0) * 1e6 / RTT_ROUNDS as f64;

    let (_, direct_p99) = open_loop(direct.0, direct.1);
    let (_, mesh_p99) = open_loop(meshed.0, meshed.1);

    let to = meshed.1.to_owned();
    let held = in_netns(meshed.0, move || {
        (0..OPEN_CONNS)
            .map(|_| connect(&to, b'H'))
            .collect::<Vec<_>>()
    });
    let rss_conns = rss_bytes(pids[0]);
    drop(held);

    let report = serde_json::json!({
        "throughput_direct_mbps": direct_tput * 8.0 / 1e6,
        "throughput_tunnel_mbps": mesh_tput * 8.0 / 1e6,
        "throughput_ratio_vs_direct": mesh_tput / direct_tput,
        "rtt_p50_direct_us": direct_rtt,
        "rtt_p50_tunnel_us": mesh_rtt,
        "rtt_p50_ratio_vs_direct": mesh_rtt / direct_rtt,
        "added_p99_ms_at_1000rps": mesh_p99 - direct_p99,
        "cpu_us_per_request": cpu_us_per_request,
        "cpu_s_per_gb": cpu_s_per_gb,
        "rss_idle_bytes": rss_idle,
        "rss_1000_conns_bytes": rss_conns,
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ambit-bench");
    std::fs::create_dir_all(&out).unwrap();
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(out.join("tunnel.json"), &text).unwrap();
    println!("{text}");
}
