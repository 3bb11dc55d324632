//! End-to-end in network namespaces: two nodes on a bridge, pods on each, a tunnel per node,
//! capture by the capture agent. Needs root; skips loudly otherwise (CI runs it as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/metrics_doc.rs"]
mod metrics_doc;
mod support;

use ambit_identity::testing::TestPki;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const NS: &str = "demo";
const VIP: &str = "10.96.0.10";
const WAIT: Duration = Duration::from_secs(20);

struct Pod {
    name: &'static str,
    node: &'static str,
    ip: &'static str,
    sa: &'static str,
    enrolled: bool,
}

const PODS: [Pod; 5] = [
    Pod {
        name: "p11",
        node: "n1",
        ip: "10.77.1.11",
        sa: "client",
        enrolled: true,
    },
    Pod {
        name: "p12",
        node: "n1",
        ip: "10.77.1.12",
        sa: "server",
        enrolled: true,
    },
    Pod {
        name: "p21",
        node: "n2",
        ip: "10.77.2.21",
        sa: "server",
        enrolled: true,
    },
    Pod {
        name: "p22",
        node: "n2",
        ip: "10.77.2.22",
        sa: "blocked",
        enrolled: true,
    },
    // Not in the mesh: a plain host on node 2.
    Pod {
        name: "p23",
        node: "n2",
        ip: "10.77.2.23",
        sa: "default",
        enrolled: false,
    },
];

fn write_files(net: &Net) -> TestPki {
    let pki = write_ca(net);
    std::fs::write(net.dir().join("mesh.yaml"), mesh_yaml()).unwrap();
    pki
}

/// The mesh CA the tunnels issue from, written to the topology's directory.
fn write_ca(net: &Net) -> TestPki {
    let pki = TestPki::new("cluster.local");
    let material = pki.ca.to_material();
    std::fs::write(net.dir().join("ca.pem"), &material.certificate_pem).unwrap();
    std::fs::write(net.dir().join("ca.key"), &material.key_pem).unwrap();
    pki
}

/// The topology; everything it made is removed on drop.
struct Net {
    procs: Vec<Proc>,
    namespaces: Namespaces,
}

impl Net {
    fn ns(&self, short: &str) -> String {
        self.namespaces.ns(short)
    }

    /// The topology's directory: mesh, CA, sockets and logs.
    fn dir(&self) -> &Path {
        &self.namespaces.dir
    }

    /// A topology with no namespaces yet: its directory, and the cleanup.
    fn bare(tag: &str) -> Self {
        Self {
            procs: Vec::new(),
            namespaces: Namespaces::new(&format!("a{tag}")),
        }
    }

    /// Adds the namespace `short` with its loopback up; returns its full name.
    fn add_ns(&mut self, short: &str) -> String {
        self.namespaces.add(short)
    }

    /// A node namespace: a bridge `cbr0` at 10.77.`k`.1/24 for its pods, forwarding on.
    fn add_node(&mut self, node: &str, k: usize) -> String {
        let n = self.add_ns(node);
        sh(&format!(
            "ip -n {n} link add cbr0 type bridge && ip -n {n} addr add 10.77.{k}.1/24 dev cbr0 \
             && ip -n {n} link set cbr0 up \
             && ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"
        ));
        n
    }

    /// A pod namespace on `node`'s bridge (node `k`) with address `ip`.
    fn add_pod(&mut self, name: &str, node: &str, k: &str, ip: &str) {
        let p = self.add_ns(name);
        let n = self.ns(node);
        sh(&format!(
            "ip -n {p} link add eth0 type veth peer name v{name} netns {n} \
             && ip -n {n} link set v{name} master cbr0 up \
             && ip -n {p} addr add {ip}/24 dev eth0 && ip -n {p} link set eth0 up \
             && ip -n {p} route add default via 10.77.{k}.1"
        ));
    }

    fn new(tag: &str) -> Self {
        let mut net = Self::bare(tag);
        let fab = net.add_ns("fab");
        sh(&format!(
            "ip -n {fab} link add br0 type bridge && ip -n {fab} link set br0 up"
        ));
        for (i, node) in ["n1", "n2"].iter().enumerate() {
            let k = i + 1;
            let n = net.add_node(node, k);
            sh(&format!(
                "ip -n {n} link add up0 type veth peer name {node} netns {fab} \
                 && ip -n {fab} link set {node} master br0 up \
                 && ip -n {n} addr add 10.77.0.{k}/24 dev up0 && ip -n {n} link set up0 up"
            ));
            let other = 3 - k;
            sh(&format!(
                "ip -n {n} route add 10.77.{other}.0/24 via 10.77.0.{other}"
            ));
        }
        for pod in &PODS {
            net.add_pod(pod.name, pod.node, &pod.node[1..], pod.ip);
        }
        net
    }
}

fn mesh_yaml() -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    for p in &PODS {
        y += &format!(
            "  - {{uid: uid-{n}, name: {n}, namespace: {NS}, serviceAccount: {sa}, node: {node}, ips: [{ip}], hbone: {e}, labels: {{app: {n}}}}}\n",
            n = p.name,
            sa = p.sa,
            node = p.node,
            ip = p.ip,
            e = p.enrolled
        );
    }
    y += &format!(
        "services:\n  - {{name: echo, namespace: {NS}, vips: [{VIP}], ports: [{{port: 80, targetPort: 8080}}], endpoints: [uid-p12, uid-p21]}}\n"
    );
    y += &format!(
        "policies:\n  - name: no-blocked\n    namespace: {NS}\n    action: Deny\n    selector: {{matchLabels: {{app: p21}}}}\n    rules: [{{principals: [\"spiffe://cluster.local/ns/{NS}/sa/blocked\"]}}]\n"
    );
    y
}

struct Bins {
    dir: PathBuf,
}

impl Bins {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn start_tunnel(net: &Net, bins: &Bins, node: &str, mode: &str) -> Proc {
    let socket = net.dir().join(format!("{node}.sock"));
    let _ = std::fs::remove_file(&socket);
    let proc = spawn_tunnel(net, bins, node, mode, &format!("tunnel-{node}.log"));
    poll("tunnel socket", WAIT, || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    proc
}

/// `node`'s tunnel on the node's socket, logging to `log` in the topology's directory.
fn spawn_tunnel(net: &Net, bins: &Bins, node: &str, mode: &str, log: &str) -> Proc {
    spawn_node_tunnel(
        &net.ns(node),
        &bins.path("ambit-tunnel"),
        node,
        net.dir(),
        &net.dir().join(format!("{node}.sock")),
        mode,
        // The glibc tunable the chart ships the tunnel with (docs/tunnel.md, "Memory
        // allocator"), so the benchmarks measure it as it runs.
        &[
            ("RUST_LOG", "info"),
            ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
        ],
        log,
    )
}

fn enroll(net: &Net, bins: &Bins, pod: &Pod) -> (bool, String) {
    enroll_named(net, bins, pod.name, pod.node)
}

/// Hands pod `name` (uid `uid-NAME`) to `node`'s tunnel as the capture agent does.
fn enroll_named(net: &Net, bins: &Bins, name: &str, node: &str) -> (bool, String) {
    let (ok, _, err) = sh_status(&format!(
        "{} enroll --netns /run/netns/{} --uid uid-{name} --name {name} --namespace {NS} --socket {} --state {}",
        bins.path("ambit-capture").display(),
        net.ns(name),
        net.dir().join(format!("{node}.sock")).display(),
        net.dir().join(format!("{node}-pods")).display(),
    ));
    (ok, err)
}

/// Runs the capture binary as a chained CNI plugin for `pod`.
fn cni(net: &Net, bins: &Bins, command: &str, pod: &Pod) -> (bool, String) {
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambit-capture","tunnelSocket":"{}","stateDir":"{}","prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"{}/24"}}]}}}}"#,
        net.dir().join(format!("{}.sock", pod.node)).display(),
        net.dir().join(format!("{}-pods", pod.node)).display(),
        pod.ip
    );
    let (ok, out, _) = sh_status(&format!(
        "echo '{config}' | CNI_COMMAND={command} CNI_NETNS=/run/netns/{} CNI_CONTAINERID=c-{n} CNI_IFNAME=eth0 CNI_PATH=/nonexistent \
         CNI_ARGS='K8S_POD_NAMESPACE={NS};K8S_POD_NAME={n};K8S_POD_UID=uid-{n}' {}",
        net.ns(pod.name),
        bins.path("ambit-capture").display(),
        n = pod.name
    ));
    (ok, out)
}

fn pod(name: &str) -> &'static Pod {
    PODS.iter().find(|p| p.name == name).unwrap()
}

/// Runs the echo client in `from` against `to`; Ok(reply) or Err(stderr).
fn echo(net: &Net, bins: &Bins, from: &str, to: &str, message: &str) -> Result<String, String> {
    let (ok, out, err) = sh_status(&format!(
        "ip netns exec {} {} {to} {message} --timeout 5",
        net.ns(from),
        bins.path("ambit-echo-client").display()
    ));
    if ok { Ok(out) } else { Err(err) }
}

fn metrics(net: &Net, node: &str) -> String {
    http_get(&net.ns(node), "127.0.0.1:15020", "/metrics").unwrap()
}

fn counter(metrics: &str, name: &str, direction: &str, source: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && l.contains(&format!("direction=\"{direction}\""))
                && l.contains(&format!("source_identity=\"{source}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The pod's app: an echo server on 8080 in its netns.
fn echo_server(net: &Net, bins: &Bins, pod: &str) -> Proc {
    Proc::spawn(
        &net.ns(pod),
        &bins.path("ambit-echo-server"),
        &["8080"],
        &[("POD_NAME", pod)],
        &net.dir().join(format!("echo-{pod}.log")),
    )
}

#[test]
fn node_tunnels_in_network_namespaces() {
    if !require_root("node_tunnels_in_network_namespaces") {
        return;
    }
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2}s] {what}", started.elapsed().as_secs_f64());
    let bins = Bins {
        dir: build_binaries(&["ambit-tunnel", "ambit-capture", "ambit-samples"]),
    };
    let mut net = Net::new("t");
    let pki = write_files(&net);

    // Apps: an echo server in every pod.
    for p in &PODS {
        net.procs.push(echo_server(&net, &bins, p.name));
        poll("echo server", WAIT, || {
            in_netns(&net.ns(p.name), || {
                std::net::TcpStream::connect("127.0.0.1:8080").ok()
            })
        });
    }
    // The CNI plugin fails closed while the node's tunnel is not up.
    let (ok, out) = cni(&net, &bins, "ADD", pod("p12"));
    assert!(!ok && out.contains("\"code\":11"), "{out}");
    let rules = sh(&format!("ip netns exec {} nft list ruleset", net.ns("p12")));
    assert!(!rules.contains("redirect"), "{rules}");

    let mut tunnel1 = start_tunnel(&net, &bins, "n1", "strict");
    let ready = http_get(&net.ns("n1"), "127.0.0.1:15021", "/healthz/ready").unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let tunnel2 = start_tunnel(&net, &bins, "n2", "permissive");
    net.procs.push(tunnel2);
    for p in PODS.iter().filter(|p| p.enrolled && p.name != "p12") {
        let (ok, err) = enroll(&net, &bins, p);
        assert!(ok, "enrolling {}: {err}", p.name);
    }
    // p12 comes in through the CNI plugin, as a new pod would.
    let (ok, out) = cni(&net, &bins, "ADD", pod("p12"));
    assert!(ok && out.contains("10.77.1.12/24"), "CNI ADD: {out}");
    assert!(cni(&net, &bins, "CHECK", pod("p12")).0);
    // Idempotent: enrolling again replaces, never duplicates.
    assert!(enroll(&net, &bins, pod("p11")).0);
    let rules = sh(&format!("ip netns exec {} nft list ruleset", net.ns("p11")));
    assert_eq!(rules.matches("redirect to :15001").count(), 1, "{rules}");

    // Handing over the same pod again (an agent restart replays everything) keeps its open
    // connections.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    spawn_in_netns(&net.ns("p11"), move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("10.77.2.21:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        s.write_all(b"first\n").unwrap();
        let mut got = String::new();
        while !got.ends_with("first\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got += std::str::from_utf8(&buf[..n]).unwrap();
        }
        rx.recv().unwrap();
        s.write_all(b"second\n").unwrap();
        let n = s.read(&mut buf).unwrap_or(0);
        done_tx
            .send(String::from_utf8_lossy(&buf[..n]).into_owned())
            .unwrap();
    });
    assert!(enroll(&net, &bins, pod("p11")).0);
    tx.send(()).unwrap();
    let second = done_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        second, "second\n",
        "an open connection broke on re-enrollment"
    );

    // The tunnel never takes (or gets a certificate for) a pod of another node.
    let other = Pod {
        node: "n1",
        ..*pod("p21")
    };
    let (ok, err) = enroll(&net, &bins, &other);
    assert!(!ok && err.contains("runs on node n2"), "{err}");
    let dump = http_get(&net.ns("n1"), "127.0.0.1:15000", "/config_dump").unwrap();
    let body = dump.split("\r\n\r\n").nth(1).unwrap();
    let dump: serde_json::Value = serde_json::from_str(body).unwrap();
    let ids: Vec<&str> = dump["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "spiffe://cluster.local/ns/demo/sa/client",
            "spiffe://cluster.local/ns/demo/sa/server"
        ]
    );
    assert!(
        !body.contains("PRIVATE KEY"),
        "the config dump leaks key material"
    );
    assert_eq!(dump["pods"].as_array().unwrap().len(), 2);
    // On the wire too: p11's listener presents p11's identity, and nobody on node 1 can pass
    // for node 2's `blocked` account. The client is a plain host (p23) with a mesh certificate.
    let client_cert = pki.handle(NS, "default");
    let (as_blocked, as_client) = in_netns(&net.ns("p23"), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let dialer = ambit_hbone::Dialer::new(pki.bundle(), Default::default());
            let peer = "10.77.1.11:15008".parse().unwrap();
            let target = "10.77.1.11:8080".parse().unwrap();
            let id = |sa: &str| pki.id(NS, sa);
            let headers = ambit_hbone::TunnelHeaders::default();
            let blocked = dialer
                .connect_unpooled(
                    client_cert.clone(),
                    peer,
                    vec![id("blocked")],
                    target,
                    &headers,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let client = dialer
                .connect_unpooled(client_cert, peer, vec![id("client")], target, &headers)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (blocked, client)
        })
    });
    let refused = as_blocked.unwrap_err();
    eprintln!("dial expecting node 2's identity: {refused}");
    assert!(
        refused.contains("peer is spiffe://cluster.local/ns/demo/sa/client, expected one of [spiffe://cluster.local/ns/demo/sa/blocked]"),
        "{refused}"
    );
    as_client.unwrap();

    step("// Encrypted on the wire");
    // Encrypted on the wire, cross-node and same-node.
    let capture1 = Capture::start(&net.ns("n1"), &net.dir().join("n1.pcap"));
    let capture2 = Capture::start(&net.ns("n2"), &net.dir().join("n2.pcap"));
    let marker = "AMBIT-SECRET-MARKER";
    let cross = echo(&net, &bins, "p11", "10.77.2.21:8080", marker).unwrap();
    assert!(
        cross.contains("hello from p21") && cross.contains(marker),
        "{cross}"
    );
    let same = echo(&net, &bins, "p11", "10.77.1.12:8080", marker).unwrap();
    assert!(
        same.contains("hello from p12") && same.contains(marker),
        "{same}"
    );
    let (packets1, ascii1) = capture1.finish();
    let (packets2, ascii2) = capture2.finish();
    for (packets, ascii) in [(&packets1, &ascii1), (&packets2, &ascii2)] {
        assert!(
            !ascii.contains(marker),
            "payload in clear on the wire:\n{ascii}"
        );
        assert!(
            packets.contains(".15008"),
            "no HBONE traffic captured:\n{packets}"
        );
        for line in packets.lines() {
            assert!(
                line.contains(".15008"),
                "non-HBONE packet on the wire: {line}"
            );
        }
    }
    let m1 = metrics(&net, "n1");
    assert!(
        counter(
            &m1,
            "ambit_tcp_connections_opened_total",
            "outbound",
            "spiffe://cluster.local/ns/demo/sa/client"
        ) >= 2,
        "{m1}"
    );

    step("// L4 deny by principal");
    // L4 deny by principal: the client is reset; others still get through.
    let denied = echo(&net, &bins, "p22", "10.77.2.21:8080", "hi").unwrap_err();
    assert!(denied.to_lowercase().contains("reset"), "{denied}");
    let m2 = metrics(&net, "n2");
    assert!(
        counter(
            &m2,
            "ambit_tcp_denied_total",
            "inbound",
            "spiffe://cluster.local/ns/demo/sa/blocked"
        ) >= 1,
        "{m2}"
    );
    assert!(echo(&net, &bins, "p22", "10.77.1.12:8080", "hi").is_ok());
    // The mesh file is watched: dropping the policy lets the principal in, without a restart.
    let without_policy = mesh_yaml();
    let without_policy = &without_policy[..without_policy.find("policies:").unwrap()];
    std::fs::write(net.dir().join("mesh.yaml.tmp"), without_policy).unwrap();
    std::fs::rename(net.dir().join("mesh.yaml.tmp"), net.dir().join("mesh.yaml")).unwrap();
    poll("the policy change to apply", WAIT, || {
        echo(&net, &bins, "p22", "10.77.2.21:8080", "now").ok()
    });

    step("// Strict refuses");
    // Strict refuses plaintext from a non-mesh host; permissive lets it in.
    let strict = echo(&net, &bins, "p23", "10.77.1.12:8080", "hi").unwrap_err();
    assert!(strict.to_lowercase().contains("reset"), "{strict}");
    let permissive = echo(&net, &bins, "p23", "10.77.2.21:8080", "hi").unwrap();
    assert!(permissive.contains("hello from p21"), "{permissive}");

    step("// Metrics as docs/metrics.md lists them");
    // Node 2 has seen every kind of connection by now: opened, closed, denied, plaintext.
    let l4 = [
        "ambit_tcp_connections_opened_total",
        "ambit_tcp_connections_closed_total",
        "ambit_tcp_sent_bytes_total",
        "ambit_tcp_received_bytes_total",
        "ambit_tcp_denied_total",
    ];
    poll("every L4 series of node 2 sampled", WAIT, || {
        let scrape = metrics(&net, "n2");
        let sampled = metrics_doc::check("tunnel", &scrape, &[])
            .unwrap_or_else(|problems| panic!("{problems}\n{scrape}"));
        l4.iter().all(|s| sampled.contains(*s)).then_some(())
    });

    step("// A Service VIP");
    // A Service VIP spreads over its endpoints (one per node).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let reply = echo(&net, &bins, "p11", &format!("{VIP}:80"), "vip").unwrap();
        seen.insert(reply.lines().next().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    step("// Opt-out:");
    // Opt-out: rules removed, the tunnel lets go, traffic bypasses it.
    let before = counter(
        &metrics(&net, "n2"),
        "ambit_tcp_connections_opened_total",
        "outbound",
        "spiffe://cluster.local/ns/demo/sa/blocked",
    );
    sh(&format!(
        "{} release --netns /run/netns/{} --uid uid-p22 --socket {} --state {}",
        bins.path("ambit-capture").display(),
        net.ns("p22"),
        net.dir().join("n2.sock").display(),
        net.dir().join("n2-pods").display()
    ));
    let (still, _, _) = sh_status(&format!(
        "{} check --netns /run/netns/{}",
        bins.path("ambit-capture").display(),
        net.ns("p22")
    ));
    assert!(!still, "rules still present after release");
    let direct = echo(&net, &bins, "p22", "10.77.2.23:8080", "bypass").unwrap();
    assert!(direct.contains("hello from p23"), "{direct}");
    let after = counter(
        &metrics(&net, "n2"),
        "ambit_tcp_connections_opened_total",
        "outbound",
        "spiffe://cluster.local/ns/demo/sa/blocked",
    );
    assert_eq!(
        before, after,
        "an opted-out pod's traffic went through the tunnel"
    );

    step("// A restarted tunnel");
    // A restarted tunnel serves new connections: the node agent sees the new instance and
    // hands it every remembered pod again.
    let agent = Proc::spawn(
        &net.ns("n1"),
        &bins.path("ambit-capture"),
        &[
            "agent",
            "--socket",
            net.dir().join("n1.sock").to_str().unwrap(),
            "--state",
            net.dir().join("n1-pods").to_str().unwrap(),
        ],
        &[],
        &net.dir().join("agent-n1.log"),
    );
    net.procs.push(agent);
    // SIGTERM drains: an open connection keeps working until it closes, then the tunnel exits.
    let held = in_netns(&net.ns("p11"), || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("10.77.2.21:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"before\n").unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 256];
        while !got.ends_with("before\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got += std::str::from_utf8(&buf[..n]).unwrap();
        }
        s
    });
    tunnel1.signal_term();
    poll("the tunnel to start draining", WAIT, || {
        std::fs::metadata(net.dir().join("n1.sock"))
            .is_err()
            .then_some(())
    });
    let during = {
        use std::io::{Read, Write};
        let mut s = &held;
        s.write_all(b"draining\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(
        during, "draining\n",
        "an open connection was cut by the drain"
    );
    assert!(
        tunnel1.0.try_wait().unwrap().is_none(),
        "the tunnel exited with a connection open"
    );
    drop(held);
    let status = tunnel1.wait();
    assert!(status.success(), "tunnel did not drain cleanly: {status}");
    assert!(
        echo(&net, &bins, "p11", "10.77.2.21:8080", "down").is_err(),
        "traffic left uncaptured while the tunnel was down"
    );
    step("let tunnel1 = start_tunnel(&net, &bins, ");
    let tunnel1 = start_tunnel(&net, &bins, "n1", "strict");
    net.procs.push(tunnel1);
    let again = poll("restarted tunnel serving p11", WAIT, || {
        echo(&net, &bins, "p11", "10.77.2.21:8080", "again").ok()
    });
    assert!(again.contains("hello from p21"), "{again}");
    poll("p12 handed over again", WAIT, || {
        echo(&net, &bins, "p21", "10.77.1.12:8080", "back").ok()
    });

    step("// CNI DEL:");
    // CNI DEL: the tunnel lets the pod go and the rules are removed.
    assert!(cni(&net, &bins, "DEL", pod("p12")).0);
    assert!(!cni(&net, &bins, "CHECK", pod("p12")).0);
    let dump = http_get(&net.ns("n1"), "127.0.0.1:15000", "/config_dump").unwrap();
    let dump: serde_json::Value =
        serde_json::from_str(dump.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uid"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["uid-p11"]);
    // The last pod of an identity gone, its certificate is forgotten.
    assert_eq!(
        dump["identities"],
        serde_json::json!(["spiffe://cluster.local/ns/demo/sa/client"])
    );

    let log = std::fs::read_to_string(net.dir().join("tunnel-n2.log")).unwrap();
    let access = log
        .lines()
        .find(|l| l.contains("connection complete"))
        .unwrap();
    let access: serde_json::Value = serde_json::from_str(access).unwrap();
    assert!(access["fields"]["src_identity"].is_string(), "{access}");
}

#[path = "netns/bench.rs"]
mod bench;
#[path = "netns/scale.rs"]
mod scale;
#[path = "netns/upgrade.rs"]
mod upgrade;
