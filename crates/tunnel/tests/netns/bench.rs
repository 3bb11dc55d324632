//! `bench_tunnel`: pod -> pod across nodes, direct on the veth path vs through both tunnels,
//! in the same run. Ignored by default; `cargo xtask bench tunnel` writes
//! `target/ambit-bench/tunnel.json`. The two paths alternate within each round
//! (`AMBIT_BENCH_ROUNDS`, default 3); each key is the median over rounds, `<key>_spread` the
//! [min, max].

use super::*;
use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const SERVER_PORT: u16 = 9000;
const THROUGHPUT_BYTES: usize = 256 << 20;
const RTT_ROUNDS: usize = 3000;
const OPEN_LOOP_SECS: u64 = 3;
const OPEN_CONNS: usize = 1000;
/// The bench server in p22, reached on the veth path, and in p21, reached through both tunnels.
const DIRECT: &str = "10.77.2.22:9000";
const MESHED: &str = "10.77.2.21:9000";

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
/// Returns each request's latency in milliseconds, in the order they were scheduled (one per
/// millisecond), so when the slow ones happened can be read from it.
fn open_loop(ns: &str, to: &str) -> Vec<f64> {
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
        samples
    })
}

/// An open loop's p99 in milliseconds. Its distribution goes to stderr with the slow runs
/// (consecutive requests later than 0.5 ms, which a stall of the path queues behind it): how
/// many, and the longest with when it began.
fn open_loop_p99(label: &str, ns: &str, to: &str) -> f64 {
    let samples = open_loop(ns, to);
    let mut slow: Vec<(usize, usize)> = Vec::new();
    for (i, _) in samples.iter().enumerate().filter(|(_, ms)| **ms > 0.5) {
        match slow.last_mut() {
            Some((first, len)) if *first + *len == i => *len += 1,
            _ => slow.push((i, 1)),
        }
    }
    let (longest_at, longest) = slow
        .iter()
        .max_by_key(|(_, len)| *len)
        .copied()
        .unwrap_or_default();
    let mut sorted = samples;
    let mut q = |p| percentile(&mut sorted, p);
    eprintln!(
        "open loop {label}: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; {} slow runs, the longest {longest} requests from {longest_at} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(1.0),
        slow.len(),
    );
    q(0.99)
}

/// Added p99 of the open loop (tunnel − direct), measured with the bench's and both tunnels'
/// threads as the scheduler places them, and again with all of them on one vCPU. On this
/// kind of 2-vCPU guest every hop of a request spread over both vCPUs wakes the other one (an
/// IPI through the hypervisor), so the first figure moves with the placement between runs;
/// the second is the tunnel's own latency, comparable from build to build.
fn added_p99(direct: (&str, &str), meshed: (&str, &str), tunnel_pids: [u32; 2]) -> (f64, f64) {
    let direct_p99 = open_loop_p99("direct", direct.0, direct.1);
    let placed = open_loop_p99("tunnel", meshed.0, meshed.1) - direct_p99;
    let pids = [std::process::id(), tunnel_pids[0], tunnel_pids[1]];
    let all = pin(&pids, None);
    let direct_p99 = open_loop_p99("direct, one vCPU", direct.0, direct.1);
    let one_cpu = open_loop_p99("tunnel, one vCPU", meshed.0, meshed.1) - direct_p99;
    pin(&pids, Some(all));
    (placed, one_cpu)
}

/// Sets every thread of `pids` to `cpus`, or (`None`) to the last CPU this thread may use;
/// returns the set this thread had. Threads started later inherit their creator's set.
fn pin(pids: &[u32], cpus: Option<CpuSet>) -> CpuSet {
    let had = sched_getaffinity(None).unwrap();
    let cpus = cpus.unwrap_or_else(|| {
        let last = (0..CpuSet::MAX_CPU).rev().find(|&c| had.is_set(c)).unwrap();
        let mut one = CpuSet::new();
        one.set(last);
        one
    });
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid: i32 = task.unwrap().file_name().to_string_lossy().parse().unwrap();
            // A thread that ended meanwhile has nothing to pin.
            let _ = sched_setaffinity(Pid::from_raw(tid), &cpus);
        }
    }
    had
}

/// One round's measurements, each key as `tunnel.json` names it.
type Round = Vec<(&'static str, f64)>;

/// Every path once: direct then through both tunnels, for each measurement.
fn round(direct: (&str, &str), meshed: (&str, &str), tunnel_pids: [u32; 2]) -> Round {
    let cpu_s = || tunnel_pids.iter().map(|&p| cpu_ns(p)).sum::<u64>() as f64 / 1e9;
    let direct_tput = throughput(direct.0, direct.1);
    let cpu0 = cpu_s();
    let mesh_tput = throughput(meshed.0, meshed.1);
    let cpu_s_per_gb = (cpu_s() - cpu0) / (THROUGHPUT_BYTES as f64 / 1e9);

    let direct_rtt = rtt_p50(direct.0, direct.1);
    let cpu0 = cpu_s();
    let mesh_rtt = rtt_p50(meshed.0, meshed.1);
    let cpu_us_per_request = (cpu_s() - cpu0) * 1e6 / RTT_ROUNDS as f64;

    let (added_p99, added_p99_one_cpu) = added_p99(direct, meshed, tunnel_pids);
    vec![
        ("throughput_direct_mbps", direct_tput * 8.0 / 1e6),
        ("throughput_tunnel_mbps", mesh_tput * 8.0 / 1e6),
        ("throughput_ratio_vs_direct", mesh_tput / direct_tput),
        ("rtt_p50_direct_us", direct_rtt),
        ("rtt_p50_tunnel_us", mesh_rtt),
        ("rtt_p50_ratio_vs_direct", mesh_rtt / direct_rtt),
        ("added_p99_ms_at_1000rps", added_p99),
        ("added_p99_ms_at_1000rps_one_cpu", added_p99_one_cpu),
        ("cpu_us_per_request", cpu_us_per_request),
        ("cpu_s_per_gb", cpu_s_per_gb),
    ]
}

/// Writes `target/ambit-bench/NAME.json`.
pub(crate) fn write_report(name: &str, report: &serde_json::Value) {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ambit-bench");
    std::fs::create_dir_all(&out).unwrap();
    let text = serde_json::to_string_pretty(report).unwrap();
    std::fs::write(out.join(format!("{name}.json")), text + "\n").unwrap();
    println!("wrote {}", out.join(format!("{name}.json")).display());
}

/// Two nodes with their tunnels; p11 (client) and p21 (server) enrolled, p12 -> p22 the
/// direct baseline, a bench server in p12, p21 and p22.
struct Bench {
    net: Net,
    tunnel_pids: [u32; 2],
}

impl Bench {
    fn start() -> Self {
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
        let tunnel_pids = [t1.0.id(), t2.0.id()];
        net.procs.push(t1);
        net.procs.push(t2);
        for p in ["p11", "p21"] {
            let (ok, err) = enroll(&net, &bins, pod(p));
            assert!(ok, "{err}");
        }
        Self { net, tunnel_pids }
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench tunnel"]
fn bench_tunnel() {
    if !require_root("bench_tunnel") {
        return;
    }
    let rounds = bench_rounds();
    let bench = Bench::start();
    let pids = bench.tunnel_pids;
    let (direct_ns, meshed_ns) = (bench.net.ns("p12"), bench.net.ns("p11"));
    let direct = (direct_ns.as_str(), DIRECT);
    let meshed = (meshed_ns.as_str(), MESHED);
    let rss_idle = rss_bytes(pids[0]);

    let measured: Vec<Round> = (0..rounds)
        .map(|i| {
            eprintln!("round {}/{rounds}", i + 1);
            round(direct, meshed, pids)
        })
        .collect();

    let to = meshed.1.to_owned();
    let held = in_netns(meshed.0, move || {
        (0..OPEN_CONNS)
            .map(|_| connect(&to, b'H'))
            .collect::<Vec<_>>()
    });
    let rss_conns = rss_bytes(pids[0]);
    drop(held);

    // Today's keys hold the medians over rounds; `<key>_spread` the [min, max].
    let mut report = serde_json::Map::new();
    println!(
        "\nnode tunnel benchmark ({rounds} interleaved rounds: direct, tunnel, per measurement)\n"
    );
    println!("{:<32} {:>12}  {:>23}", "", "median", "min–max");
    for (index, (key, _)) in measured[0].iter().enumerate() {
        let samples: Vec<f64> = measured.iter().map(|r| r[index].1).collect();
        let (median, min, max) = spread(&samples);
        println!("{key:<32} {median:>12.3}  {min:>11.3}–{max:<11.3}");
        report.insert((*key).to_owned(), median.into());
        report.insert(format!("{key}_spread"), serde_json::json!([min, max]));
    }
    println!("{:<32} {rss_idle:>12}", "rss_idle_bytes");
    println!("{:<32} {rss_conns:>12}", "rss_1000_conns_bytes");
    report.insert("rss_idle_bytes".into(), rss_idle.into());
    report.insert("rss_1000_conns_bytes".into(), rss_conns.into());
    let rounds_json: Vec<serde_json::Value> = measured
        .iter()
        .map(|r| {
            r.iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect()
        })
        .collect();
    report.insert("rounds".into(), rounds_json.into());
    write_report("tunnel", &report.into());
}

/// Only the open loops, `AMBIT_BENCH_ROUNDS` times: the added p99 both ways in seconds, for
/// A/B runs of the data path (with `AMBIT_TEST_BINS`, of binaries copied aside).
#[test]
#[ignore = "benchmark: cargo test --release -p ambit-tunnel --test netns -- --ignored bench_open_loop"]
fn bench_open_loop() {
    if !require_root("bench_open_loop") {
        return;
    }
    let rounds = bench_rounds();
    let bench = Bench::start();
    let (direct_ns, meshed_ns) = (bench.net.ns("p12"), bench.net.ns("p11"));
    let (placed, one_cpu): (Vec<f64>, Vec<f64>) = (0..rounds)
        .map(|_| {
            added_p99(
                (direct_ns.as_str(), DIRECT),
                (meshed_ns.as_str(), MESHED),
                bench.tunnel_pids,
            )
        })
        .unzip();
    for (key, added) in [("", placed), ("_one_cpu", one_cpu)] {
        let (median, min, max) = spread(&added);
        println!("added_p99_ms_at_1000rps{key} {median:.3} ({min:.3}–{max:.3}): {added:.3?}");
    }
}
