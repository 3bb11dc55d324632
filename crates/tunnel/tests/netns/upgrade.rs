//! A new tunnel takes a node over from the running one (a rolling upgrade): it gets every
//! pod's netns and listening sockets over the handoff socket, so no new connection is refused
//! between the two, and the old one finishes its open connections before it exits.

use super::*;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A bound on each load loop, besides the stop flag.
const MAX_CONNECTIONS: u64 = 20_000;

/// One line there and back on `s`.
fn round_trip(s: &mut std::net::TcpStream, line: &str) -> Result<(), String> {
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut got = String::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(line) {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {got:?}")),
            Ok(n) => got += &String::from_utf8_lossy(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn open(target: &str) -> Result<std::net::TcpStream, String> {
    let mut s = std::net::TcpStream::connect(target).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    round_trip(&mut s, "open\n")?;
    Ok(s)
}

/// New connections from `from` to `target`, one after another, until `stop`.
struct Load {
    ok: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(net: &Net, from: &str, target: &'static str, stop: &Arc<AtomicBool>) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let (counted, stop) = (ok.clone(), stop.clone());
        let thread = spawn_in_netns(&net.ns(from), move || {
            let mut failures = Vec::new();
            for i in 0..MAX_CONNECTIONS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match open(target).and_then(|mut s| round_trip(&mut s, &format!("n{i}\n"))) {
                    Ok(()) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("connection {i} to {target}: {e}")),
                }
            }
            failures
        });
        Self { ok, thread }
    }

    /// Waits until `more` further connections succeeded.
    fn progress(&self, more: u64) {
        let goal = self.ok.load(Ordering::Relaxed) + more;
        poll("connections to go on", WAIT, || {
            (self.ok.load(Ordering::Relaxed) >= goal).then_some(())
        });
    }
}

fn ready(net: &Net) -> String {
    http_get(&net.ns("n1"), "127.0.0.1:15021", "/healthz/ready").unwrap_or_default()
}

/// Starts a new tunnel on n1 beside `old` and has it take over. `early`: terminate the old
/// one as soon as the new one announced itself (its pod marked ready on the old one's answer,
/// or the old pod deleted first), else once the new one answers ready.
fn upgrade(net: &Net, bins: &Bins, old: &mut Proc, log: &str, early: bool) -> Proc {
    let new = spawn_tunnel(net, bins, "n1", "strict", log);
    let log = net.dir().join(log);
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
            .then_some(())
    };
    if early {
        poll("the new tunnel to find the old one", WAIT, || {
            logged("taking its pods over")
        });
        old.signal_term();
    }
    poll("the new tunnel to take over", WAIT, || {
        logged("took every pod over")
    });
    poll("the new tunnel to answer ready", WAIT, || {
        ready(net).starts_with("HTTP/1.1 200").then_some(())
    });
    if !early {
        old.signal_term();
    }
    new
}

#[test]
fn a_new_tunnel_takes_over_without_refusing_a_connection() {
    if !require_root("a_new_tunnel_takes_over_without_refusing_a_connection") {
        return;
    }
    let bins = Bins {
        dir: build_binaries(&["ambit-tunnel", "ambit-capture", "ambit-samples"]),
    };
    let mut net = Net::new("u");
    let _pki = write_files(&net);
    for p in &PODS {
        net.procs.push(echo_server(&net, &bins, p.name));
    }
    let mut tunnel = start_tunnel(&net, &bins, "n1", "strict");
    net.procs.push(start_tunnel(&net, &bins, "n2", "strict"));
    for p in PODS.iter().filter(|p| p.enrolled) {
        let (ok, err) = enroll(&net, &bins, p);
        assert!(ok, "enrolling {}: {err}", p.name);
    }
    poll("traffic through both tunnels", WAIT, || {
        echo(&net, &bins, "p11", "10.77.2.21:8080", "up").ok()
    });

    // Node 1's tunnel carries p11's connections out (15001) and p21's in to p12 (15008).
    let targets = [("p11", "10.77.2.21:8080"), ("p21", "10.77.1.12:8080")];
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<Load> = targets
        .iter()
        .map(|(from, to)| Load::start(&net, from, to, &stop))
        .collect();
    for round in 0..2 {
        let early = round == 1;
        // Long-lived connections, opened before the upgrade: younger than the drain window.
        let held: Vec<std::net::TcpStream> = targets
            .iter()
            .map(|&(from, to)| in_netns(&net.ns(from), move || open(to).unwrap()))
            .collect();
        loads.iter().for_each(|l| l.progress(20));
        let mut new = upgrade(
            &net,
            &bins,
            &mut tunnel,
            &format!("tunnel-n1-{round}.log"),
            early,
        );
        loads.iter().for_each(|l| l.progress(20));
        for (mut s, (_, to)) in held.into_iter().zip(targets) {
            round_trip(&mut s, "after the upgrade\n")
                .unwrap_or_else(|e| panic!("a connection to {to} held through the upgrade: {e}"));
        }
        // Its connections closed, the old tunnel exits well before its drain deadline.
        let status = tunnel.wait();
        assert!(status.success(), "the old tunnel ended badly: {status}");
        std::mem::swap(&mut tunnel, &mut new);
        drop(new);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (load, (_, to)) in loads.into_iter().zip(targets) {
        let failures = load.thread.join().unwrap();
        let ok = load.ok.load(Ordering::Relaxed);
        eprintln!("{to}: {ok} new connections, {} failed", failures.len());
        assert!(failures.is_empty(), "{failures:#?}");
        total += ok;
    }
    assert!(total >= 80, "{total}");
    // The last tunnel serves the pods it took over, and takes pods handed to it again (the
    // capture agent replays them to a new socket) as the same pods.
    assert!(enroll(&net, &bins, pod("p11")).0);
    let out = echo(&net, &bins, "p11", "10.77.2.21:8080", "last").unwrap();
    assert!(out.contains("hello from p21"), "{out}");
    let m = metrics(&net, "n1");
    assert!(
        counter(
            &m,
            "ambit_tcp_connections_opened_total",
            "outbound",
            "spiffe://cluster.local/ns/demo/sa/client"
        ) > 0,
        "{m}"
    );
    net.procs.push(tunnel);
}
