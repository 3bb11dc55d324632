//! `new_connections_to_an_app_port_reuse_time_wait`: the destination tunnel connects to the app
//! from the pod's own address and closes first, so the app's netns keeps a TIME_WAIT per
//! connection; capture sets the pod's `net.ipv4.tcp_tw_reuse` to 1 so they are reused
//! (docs/capture.md, "TIME_WAIT reuse"). One node, a tunnel, three pods captured by the real
//! capture binary (CNI ADD and `enroll`); the app's port range is cut to 1,000 so that, with
//! the kernel's default (2, loopback only), the 1,001st connection would fail. Needs root;
//! skips loudly otherwise (CI runs it as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_identity::testing::TestPki;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// The app's ephemeral ports, and the connections made to it: three times as many.
const PORTS: (u32, u32) = (40_000, 40_999);
const CONNECTIONS: u32 = 3_000;
/// The kernel reuses a TIME_WAIT only once it is more than a second old (by the second), so
/// 1,000 ports carry 500 new connections a second at most: the client keeps to half of that.
const PACE: Duration = Duration::from_millis(4);
const APP: &str = "10.77.1.12";

/// The pods: the client, the app, and a pod whose owner set `tcp_tw_reuse` to 0.
const PODS: [(&str, &str); 3] = [("c", "10.77.1.11"), ("a", APP), ("z", "10.77.1.13")];

/// The topology; its processes are killed, then its namespaces deleted, on drop.
struct Topology {
    procs: Vec<Proc>,
    net: Namespaces,
}

impl Topology {
    fn ns(&self, short: &str) -> String {
        self.net.ns(short)
    }

    /// Node `n1` with bridge `cbr0` at 10.77.1.1/24, and the pods on it.
    fn new() -> Self {
        let mut t = Self {
            procs: Vec::new(),
            net: Namespaces::new("tw"),
        };
        let n = t.net.add("n1");
        sh(&format!(
            "ip -n {n} link add cbr0 type bridge && ip -n {n} addr add 10.77.1.1/24 dev cbr0 \
             && ip -n {n} link set cbr0 up"
        ));
        for (pod, ip) in PODS {
            let p = t.net.add(pod);
            sh(&format!(
                "ip -n {p} link add eth0 type veth peer name v{pod} netns {n} \
                 && ip -n {n} link set v{pod} master cbr0 up \
                 && ip -n {p} addr add {ip}/24 dev eth0 && ip -n {p} link set eth0 up"
            ));
        }
        t
    }

    fn sysctl(&self, pod: &str, key: &str) -> String {
        sh(&format!("ip netns exec {} sysctl -n {key}", self.ns(pod)))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn tw_reuse(&self, pod: &str) -> String {
        self.sysctl(pod, "net.ipv4.tcp_tw_reuse")
    }
}

fn mesh_yaml() -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    for (pod, ip) in PODS {
        y += &format!(
            "  - {{uid: uid-{pod}, name: {pod}, namespace: demo, serviceAccount: sa-{pod}, node: n1, ips: [{ip}], hbone: true}}\n"
        );
    }
    y
}

/// The capture binary with `args`, as the agent or an operator runs it; Ok(stderr) on success.
fn capture(bins: &Path, args: &str) -> Result<String, String> {
    let (ok, _, err) = sh_status(&format!("{} {args}", bins.join("ambit-capture").display()));
    if ok { Ok(err) } else { Err(err) }
}

/// The app: echoes what it reads, and closes once the tunnel has closed its side.
fn app(t: &Topology) {
    let listener = in_netns(&t.ns("a"), || {
        std::net::TcpListener::bind(format!("{APP}:8080")).unwrap()
    });
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
}

/// One connection through the mesh: a line, its echo, then the client closes first.
fn exchange() -> std::io::Result<()> {
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{APP}:8080").parse().unwrap(), WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(b"hi\n")?;
    let mut got = [0u8; 3];
    s.read_exact(&mut got)?;
    Ok(())
}

#[test]
fn new_connections_to_an_app_port_reuse_time_wait() {
    if !require_root("new_connections_to_an_app_port_reuse_time_wait") {
        return;
    }
    let bins = build_binaries(&["ambit-tunnel", "ambit-capture"]);
    let mut t = Topology::new();
    let pki = TestPki::new("cluster.local");
    let material = pki.ca.to_material();
    std::fs::write(t.net.dir.join("ca.pem"), &material.certificate_pem).unwrap();
    std::fs::write(t.net.dir.join("ca.key"), &material.key_pem).unwrap();
    std::fs::write(t.net.dir.join("mesh.yaml"), mesh_yaml()).unwrap();
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_local_port_range='{} {}' \
         && ip netns exec {} sysctl -qw net.ipv4.tcp_tw_reuse=0",
        t.ns("a"),
        PORTS.0,
        PORTS.1,
        t.ns("z")
    ));
    assert_eq!(t.tw_reuse("a"), "2", "a new netns's default");
    app(&t);

    let socket = t.net.dir.join("n1.sock");
    let state = t.net.dir.join("pods");
    let dir = t.net.dir.clone();
    t.procs.push(spawn_node_tunnel(
        &t.ns("n1"),
        &bins.join("ambit-tunnel"),
        "n1",
        &dir,
        &socket,
        "strict",
        &[("RUST_LOG", "warn")],
        "tunnel.log",
    ));
    poll("the tunnel's socket", WAIT, || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });

    // The app comes in through the CNI plugin (an entry from before the switch existed: on),
    // the others through `enroll`, as the agent captures running pods.
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambit-capture","tunnelSocket":"{}","stateDir":"{}","prevResult":{{"cniVersion":"1.0.0"}}}}"#,
        socket.display(),
        state.display()
    );
    let (ok, out, err) = sh_status(&format!(
        "echo '{config}' | CNI_COMMAND=ADD CNI_NETNS={} CNI_CONTAINERID=c-a CNI_IFNAME=eth0 \
         CNI_PATH=/nonexistent CNI_ARGS='K8S_POD_NAMESPACE=demo;K8S_POD_NAME=a;K8S_POD_UID=uid-a' {}",
        t.net.path("a"),
        bins.join("ambit-capture").display()
    ));
    assert!(ok, "CNI ADD: {out} {err}");
    let pod_args = |pod: &str| {
        format!(
            "--netns {} --uid uid-{pod} --socket {} --state {}",
            t.net.path(pod),
            socket.display(),
            state.display()
        )
    };
    for pod in ["c", "z"] {
        let said = capture(
            &bins,
            &format!("enroll {} --name {pod} --namespace demo", pod_args(pod)),
        )
        .unwrap_or_else(|e| panic!("enroll {pod}: {e}"));
        if pod == "z" {
            assert!(said.contains("keeps net.ipv4.tcp_tw_reuse=0"), "{said}");
        }
    }
    assert_eq!(t.tw_reuse("a"), "1");
    assert_eq!(t.tw_reuse("c"), "1");
    assert_eq!(t.tw_reuse("z"), "0", "the owner's value is left alone");
    assert_eq!(
        t.sysctl("a", "net.ipv4.ip_local_port_range"),
        format!("{} {}", PORTS.0, PORTS.1)
    );
    // A second enroll (an agent replay) keeps the record that capture set the value.
    capture(
        &bins,
        &format!("enroll {} --name a --namespace demo", pod_args("a")),
    )
    .unwrap();

    let failed = in_netns(&t.ns("c"), || {
        let start = Instant::now();
        let mut failed = Vec::new();
        for i in 0..CONNECTIONS {
            // A cap on the rate, not a wait for anything: see PACE.
            if let Some(early) = (PACE * i).checked_sub(start.elapsed()) {
                std::thread::sleep(early);
            }
            if let Err(e) = exchange() {
                failed.push(format!("connection {i}: {e}"));
            }
        }
        failed
    });
    assert!(
        failed.is_empty(),
        "{} of {CONNECTIONS} failed, first: {}",
        failed.len(),
        failed[0]
    );

    // Un-capture puts the kernel's default back, and only where capture set it.
    for pod in ["a", "z"] {
        capture(&bins, &format!("release {}", pod_args(pod)))
            .unwrap_or_else(|e| panic!("release {pod}: {e}"));
    }
    assert_eq!(t.tw_reuse("a"), "2");
    assert_eq!(t.tw_reuse("z"), "0");
}
