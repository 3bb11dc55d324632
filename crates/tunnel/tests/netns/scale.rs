//! `bench_tunnel_scale`: what each enrolled pod costs the node tunnel. One node, 200 pod
//! namespaces on its bridge; for 1, 50 and 200 pods a fresh tunnel is measured idle with no
//! pods, then the pods are handed over one after another as the capture agent does
//! (`ambit-capture enroll`: capture rules, then the netns over the handoff socket), then it is
//! measured idle again. Per pod = (with pods - without) / pods. Ignored by default;
//! `cargo xtask bench tunnel-scale` writes `target/ambit-bench/tunnel-scale.json`.

use super::bench::write_report;
use super::*;
use std::time::Instant;

const COUNTS: [usize; 3] = [1, 50, 200];
/// How long idle CPU is sampled; `AMBIT_BENCH_IDLE_SECS` shortens it for a quick check.
const IDLE_WINDOW_SECS: u64 = 5;
const RSS_TARGET_BYTES: f64 = 64.0 * 1024.0;
const IDLE_CPU_TARGET_US_PER_S: f64 = 5.0;
const ENROLL_ALL_TARGET_S: f64 = 10.0;

fn scale_pod(i: usize) -> String {
    format!("q{i}")
}

/// Every pod a workload of node n1, each with a service account of its own (so a certificate
/// of its own: the costly case).
fn scale_mesh_yaml(pods: usize) -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    for i in 0..pods {
        y += &format!(
            "  - {{uid: uid-{n}, name: {n}, namespace: {NS}, serviceAccount: sa-{i}, node: n1, ips: [10.77.1.{ip}], hbone: true, labels: {{app: {n}}}}}\n",
            n = scale_pod(i),
            ip = 10 + i
        );
    }
    y
}

/// The tunnel process at rest.
#[derive(Debug, Clone, Copy)]
struct Idle {
    rss_bytes: u64,
    rss_anon_bytes: u64,
    cpu_us_per_s: f64,
    threads: u64,
    fds: u64,
}

fn idle(pid: u32, window: Duration) -> Idle {
    let (cpu0, start) = (cpu_ns(pid), Instant::now());
    // The measurement window itself, not synchronization.
    std::thread::sleep(window);
    let cpu_us_per_s = (cpu_ns(pid) - cpu0) as f64 / 1e3 / start.elapsed().as_secs_f64();
    Idle {
        rss_bytes: rss_bytes(pid),
        rss_anon_bytes: rss_anon_bytes(pid),
        cpu_us_per_s,
        threads: threads(pid),
        fds: open_fds(pid),
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench tunnel-scale"]
fn bench_tunnel_scale() {
    if !require_root("bench_tunnel_scale") {
        return;
    }
    let window = Duration::from_secs(
        std::env::var("AMBIT_BENCH_IDLE_SECS")
            .map(|s| s.parse().expect("AMBIT_BENCH_IDLE_SECS: whole seconds"))
            .unwrap_or(IDLE_WINDOW_SECS),
    );
    let most = COUNTS[COUNTS.len() - 1];
    let bins = Bins {
        dir: build_binaries(&["ambit-tunnel", "ambit-capture"]),
    };
    let mut net = Net::bare("s");
    write_ca(&net);
    std::fs::write(net.dir().join("mesh.yaml"), scale_mesh_yaml(most)).unwrap();
    net.add_node("n1", 1);
    let made = Instant::now();
    for i in 0..most {
        net.add_pod(&scale_pod(i), "n1", "1", &format!("10.77.1.{}", 10 + i));
    }
    eprintln!(
        "{most} pod namespaces in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for pods in COUNTS {
        let mut tunnel = start_tunnel(&net, &bins, "n1", "strict");
        let pid = tunnel.0.id();
        let before = idle(pid, window);
        let start = Instant::now();
        for i in 0..pods {
            let (ok, err) = enroll_named(&net, &bins, &scale_pod(i), "n1");
            assert!(ok, "enrolling {}: {err}", scale_pod(i));
        }
        let enroll_s = start.elapsed().as_secs_f64();
        let after = idle(pid, window);
        let status = tunnel.terminate();
        assert!(
            status.success(),
            "the tunnel did not drain cleanly: {status}"
        );
        rows.push((pods, enroll_s, before, after));
    }

    let per_pod = |pods: usize, before: f64, after: f64| (after - before) / pods as f64;
    println!(
        "\nnode tunnel cost per enrolled pod (fresh tunnel per count; per pod = (with - without) / pods)\n"
    );
    println!(
        "{:>5} {:>10} {:>10} {:>12} {:>13} {:>12} {:>14} {:>8} {:>8}",
        "pods",
        "enroll s",
        "RSS MiB",
        "RSS/pod KiB",
        "anon/pod KiB",
        "idle µs/s",
        "idle/pod µs/s",
        "thr/pod",
        "fds/pod"
    );
    let mut table = Vec::new();
    for &(pods, enroll_s, before, after) in &rows {
        let rss = per_pod(pods, before.rss_bytes as f64, after.rss_bytes as f64);
        let anon = per_pod(
            pods,
            before.rss_anon_bytes as f64,
            after.rss_anon_bytes as f64,
        );
        let cpu = per_pod(pods, before.cpu_us_per_s, after.cpu_us_per_s);
        let threads = per_pod(pods, before.threads as f64, after.threads as f64);
        let fds = per_pod(pods, before.fds as f64, after.fds as f64);
        println!(
            "{pods:>5} {enroll_s:>10.2} {:>10.1} {:>12.1} {:>13.1} {:>12.1} {cpu:>14.2} {threads:>8.2} {fds:>8.2}",
            after.rss_bytes as f64 / (1 << 20) as f64,
            rss / 1024.0,
            anon / 1024.0,
            after.cpu_us_per_s,
        );
        table.push(serde_json::json!({
            "pods": pods,
            "enroll_s": enroll_s,
            "rss_bytes": after.rss_bytes,
            "rss_bytes_no_pods": before.rss_bytes,
            "rss_per_pod_bytes": rss,
            "rss_anon_bytes": after.rss_anon_bytes,
            "rss_anon_per_pod_bytes": anon,
            "idle_cpu_us_per_s": after.cpu_us_per_s,
            "idle_cpu_us_per_s_no_pods": before.cpu_us_per_s,
            "idle_cpu_per_pod_us_per_s": cpu,
            "threads": after.threads,
            "threads_per_pod": threads,
            "fds": after.fds,
            "fds_per_pod": fds,
        }));
    }
    let &(pods, enroll_all_s, before, after) = rows.last().unwrap();
    let rss_per_pod = per_pod(pods, before.rss_bytes as f64, after.rss_bytes as f64);
    let anon_per_pod = per_pod(
        pods,
        before.rss_anon_bytes as f64,
        after.rss_anon_bytes as f64,
    );
    let cpu_per_pod = per_pod(pods, before.cpu_us_per_s, after.cpu_us_per_s);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "\nwith {pods} pods: {:.1} KiB RSS per pod (target <= 64, {}; {:.1} KiB of it anonymous), {cpu_per_pod:.2} µs/s idle CPU per pod (target <= 5, {}), all enrolled in {enroll_all_s:.2} s (target <= 10, {})\n",
        rss_per_pod / 1024.0,
        verdict(rss_per_pod <= RSS_TARGET_BYTES),
        anon_per_pod / 1024.0,
        verdict(cpu_per_pod <= IDLE_CPU_TARGET_US_PER_S),
        verdict(enroll_all_s <= ENROLL_ALL_TARGET_S),
    );
    write_report(
        "tunnel-scale",
        &serde_json::json!({
            "rss_per_pod_bytes": rss_per_pod.round(),
            "rss_anon_per_pod_bytes": anon_per_pod.round(),
            "idle_cpu_per_pod_us_per_s": cpu_per_pod,
            "enroll_all_s": enroll_all_s,
            "pods": pods,
            "idle_window_s": window.as_secs(),
            "counts": table,
        }),
    );
}
