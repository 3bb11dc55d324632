//! The capture rules in real network namespaces: a node netns with a bridge, the node's probe
//! rules in it, and pods on the bridge, one with the pod rules. The node's probes (TCP from
//! the node's own sockets) reach the app in both modes, a dead app fails them; a plaintext
//! connection from another pod is refused, and one spoofing the probe source is dropped at the
//! node; in strict mode UDP (but DNS) and ICMP are dropped both ways, but for ICMP errors
//! about an allowed connection (path MTU); IPv6 is refused in both modes. No tunnel listens here: a connection redirected to the tunnel's ports is refused by
//! the kernel, as a strict tunnel refuses it. Needs root; skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_capture::rules;
use ambit_handoff::{Mode, PROBE_SOURCE};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Agent, FakeApiserver, poll, require_root, sh};

const APP_PORT: u16 = 8080;
const DEAD_PORT: u16 = 8081;
/// Long enough for a packet across a bridge on a loaded machine; what must not arrive is
/// waited for this long.
const SILENCE: Duration = Duration::from_millis(1500);

/// Runs `f` on a thread inside netns `name`: every socket it makes lives there.
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A node netns with bridge `br0` at `.1`, pods on it by veth, and the node's probe rules.
struct Node {
    name: String,
    subnet: String,
    pods: Vec<String>,
}

impl Node {
    fn new(tag: &str) -> Self {
        let subnet = format!("10.79.{}", std::process::id() % 250);
        let node = Self {
            name: format!("{tag}-node"),
            subnet,
            pods: Vec::new(),
        };
        let (n, s) = (&node.name, &node.subnet);
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status();
        sh(&format!(
            "ip netns add {n} && ip -n {n} link set lo up \
             && ip -n {n} link add br0 type bridge && ip -n {n} addr add {s}.1/24 dev br0 \
             && ip -n {n} addr add fd79::1/64 dev br0 nodad && ip -n {n} link set br0 up \
             && ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"
        ));
        // The agent's own functions, run from a thread in the node's netns (nft inherits it).
        in_netns(n, rules::install_node).unwrap();
        node
    }

    /// A pod `{tag}-{x}` at `.{host}` (and `fd79::{host}`), default route via the node.
    fn pod(&mut self, x: &str, host: u8) -> (String, IpAddr) {
        let (n, s) = (&self.name, &self.subnet);
        let pod = format!("{n}-{x}");
        let _ = Command::new("ip")
            .args(["netns", "del", &pod])
            .stderr(Stdio::null())
            .status();
        self.pods.push(pod.clone());
        sh(&format!(
            "ip netns add {pod} && ip -n {pod} link set lo up \
             && ip -n {n} link add v{x} type veth peer name eth0 netns {pod} \
             && ip -n {n} link set v{x} master br0 up \
             && ip -n {pod} addr add {s}.{host}/24 dev eth0 \
             && ip -n {pod} addr add fd79::{host}/64 dev eth0 nodad \
             && ip -n {pod} link set eth0 up && ip -n {pod} route add default via {s}.1"
        ));
        (pod, format!("{s}.{host}").parse().unwrap())
    }
}

impl Node {
    /// The node's captured pods, as the agent sets them.
    fn probe_targets(&self, ips: &[IpAddr]) {
        let targets = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        in_netns(&self.name, move || rules::set_probe_targets(&targets)).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain([&self.name]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn nft_in(netns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP app in `pod` on `[::]:APP_PORT` (IPv4 and IPv6) answering 200 to every connection.
fn serve_app(pod: &str) {
    let listener = in_netns(pod, || {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(([0u16; 8], APP_PORT)).into())?;
        socket.listen(16)?;
        Ok::<TcpListener, std::io::Error>(socket.into())
    })
    .unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
}

/// What a probe (or a client) from `netns` gets from `ip:port`: the answer's first line, or
/// the error. `source` binds the client to that address first (a spoofer).
fn get(netns: &str, target: SocketAddr, source: Option<IpAddr>) -> Result<String, String> {
    in_netns(netns, move || {
        let domain = socket2::Domain::for_address(target);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
        if let Some(source) = source {
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .map_err(|e| e.to_string())?;
        }
        socket
            .connect_timeout(&target.into(), SILENCE)
            .map_err(|e| e.to_string())?;
        let mut tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(SILENCE)).unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: app\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 64];
        let n = tcp.read(&mut answer).map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        match answer.lines().next() {
            Some(line) if !line.is_empty() => Ok(line.to_owned()),
            _ => Err("connection closed without an answer".into()),
        }
    })
}

/// Whether a UDP datagram from `from` reaches `to:port` (and, for a DNS-like exchange, whether
/// the answer gets back).
fn udp_exchange(from: &str, to: &str, to_ip: IpAddr, port: u16) -> (bool, bool) {
    let server = in_netns(to, move || {
        UdpSocket::bind((IpAddr::from([0u8; 4]), port)).unwrap()
    });
    let client = in_netns(from, || UdpSocket::bind("0.0.0.0:0").unwrap());
    for s in [&server, &client] {
        s.set_read_timeout(Some(SILENCE)).unwrap();
    }
    // A send the sender's own rules drop fails at once (EPERM): nothing arrives.
    let _ = client.send_to(b"query", (to_ip, port));
    let mut buf = [0u8; 16];
    let Ok((_, peer)) = server.recv_from(&mut buf) else {
        return (false, false);
    };
    let _ = server.send_to(b"answer", peer);
    (true, client.recv_from(&mut buf).is_ok())
}

/// Whether an ICMP echo from `from` to `to_ip` is answered.
fn ping(from: &str, to_ip: IpAddr) -> bool {
    // A fresh id each time: an echo with an earlier one would belong to that one's conntrack
    // entry (established), which the strict rules let through.
    static ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0x4200);
    let id = ID
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_be_bytes();
    in_netns(from, move || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .unwrap();
        socket.set_read_timeout(Some(SILENCE)).unwrap();
        // Echo request, seq 1.
        let mut echo = [8u8, 0, 0, 0, id[0], id[1], 0, 1];
        let sum = checksum(&echo);
        echo[2..4].copy_from_slice(&sum);
        if socket
            .send_to(&echo, &SocketAddr::new(to_ip, 0).into())
            .is_err()
        {
            return false; // dropped by the sender's own rules (EPERM)
        }
        // std reads a raw socket's datagrams as any other (recv(2)), without unsafe buffers.
        let socket: UdpSocket = socket.into();
        let mut buf = [0u8; 128];
        // A raw socket sees every ICMP packet of the netns: wait for an echo reply (type 0).
        while let Ok(n) = socket.recv(&mut buf) {
            let header = usize::from(buf[0] & 0x0f) * 4;
            if n > header && buf[header] == 0 {
                return true;
            }
        }
        false
    })
}

/// The Internet checksum of `bytes` (even length).
fn checksum(bytes: &[u8]) -> [u8; 2] {
    let sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    (!((folded & 0xffff) + (folded >> 16)) as u16).to_be_bytes()
}

/// An ICMP "fragmentation needed" (next-hop MTU 1200), as a router on the path sends it about
/// a TCP segment that went from `segment.0` to `segment.1`: the segment's IP header and the
/// first 8 bytes of its TCP header follow the ICMP header.
fn frag_needed(segment: (SocketAddrV4, SocketAddrV4)) -> Vec<u8> {
    let (from, to) = segment;
    // IPv4, 1500 bytes, don't fragment, TTL 64, TCP.
    let mut inner = vec![0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 6, 0, 0];
    inner.extend(from.ip().octets());
    inner.extend(to.ip().octets());
    let sum = checksum(&inner);
    inner[10..12].copy_from_slice(&sum);
    inner.extend(from.port().to_be_bytes());
    inner.extend(to.port().to_be_bytes());
    inner.extend([0, 0, 0, 1]); // sequence number
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x04, 0xb0];
    icmp.extend(inner);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum);
    icmp
}

/// Whether a "fragmentation needed" about `segment`, sent from netns `from` to the segment's
/// source in netns `to`, gets past `to`'s input rules (a raw socket sees only what they let in).
fn frag_needed_arrives(from: &str, to: &str, segment: (SocketAddrV4, SocketAddrV4)) -> bool {
    let raw_icmp = || {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .unwrap()
    };
    let receiver = in_netns(to, raw_icmp);
    receiver.set_read_timeout(Some(SILENCE)).unwrap();
    let message = frag_needed(segment);
    let destination = SocketAddr::from((*segment.0.ip(), 0));
    let sender = in_netns(from, raw_icmp);
    sender.send_to(&message, &destination.into()).unwrap();
    let receiver: UdpSocket = receiver.into();
    let mut buf = [0u8; 128];
    while let Ok(n) = receiver.recv(&mut buf) {
        let header = usize::from(buf[0] & 0x0f) * 4;
        if buf.get(header..n) == Some(&message[..]) {
            return true;
        }
    }
    false
}

fn v4(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn v6(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(format!("fd79::{host}").parse().unwrap(), port)
}

#[test]
fn node_probes_reach_the_app_in_both_modes_and_nothing_else_passes_for_them() {
    if !require_root("node_probes_reach_the_app_in_both_modes_and_nothing_else_passes_for_them") {
        return;
    }
    let mut node = Node::new(&format!("prb{}", std::process::id() % 100_000));
    let (srv, srv_ip) = node.pod("s", 2);
    let (other, _) = node.pod("o", 3);
    serve_app(&srv);
    node.probe_targets(&[srv_ip]);
    let app = v4(srv_ip, APP_PORT);
    // Without capture, everyone reaches the app: what follows is the rules' doing.
    assert_eq!(get(&other, app, None).as_deref(), Ok("HTTP/1.1 200 OK"));
    assert_eq!(get(&node.name, app, None).as_deref(), Ok("HTTP/1.1 200 OK"));

    for mode in [Mode::Strict, Mode::Permissive] {
        rules::install(format!("/run/netns/{srv}").as_ref(), mode).unwrap();
        // The node's probes: a live app answers (httpGet passes), a dead one refuses (tcpSocket
        // and httpGet fail, so liveness restarts it).
        assert_eq!(
            get(&node.name, app, None).as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "{mode:?}: probe of a live app"
        );
        let dead = get(&node.name, v4(srv_ip, DEAD_PORT), None).unwrap_err();
        assert!(
            dead.contains("refused"),
            "{mode:?}: probe of a dead app: {dead}"
        );
        // Another pod in plaintext goes to the tunnel's port, which refuses it.
        let plaintext = get(&other, app, None).unwrap_err();
        assert!(plaintext.contains("refused"), "{mode:?}: {plaintext}");
    }
    rules::install(format!("/run/netns/{srv}").as_ref(), Mode::Strict).unwrap();

    // A pod passing for a probe: it takes the probe source, and (as if it had spoofed the
    // gateway's ARP) the node routes that source's replies to it. The node drops its packets.
    sh(&format!(
        "ip -n {other} addr add {PROBE_SOURCE}/32 dev eth0 \
         && ip -n {} route add {PROBE_SOURCE}/32 via {}.3",
        node.name, node.subnet
    ));
    let spoofed = get(&other, app, Some(IpAddr::V4(PROBE_SOURCE)));
    assert!(spoofed.is_err(), "a pod passed for a probe: {spoofed:?}");
    // Dropped at the node: bridged packets by the bridge table, or by the inet one where
    // br_netfilter passes them through the IP hooks too.
    let ruleset = sh(&format!("ip netns exec {} nft list ruleset", node.name));
    assert!(
        ruleset
            .lines()
            .any(|l| l.contains("saddr 169.254.7.127 counter") && !l.contains("packets 0 ")),
        "{ruleset}"
    );
    // Control: without the node's anti-spoofing chains the same attack gets in, so the test
    // above would have caught their absence.
    sh(&format!(
        "ip netns exec {0} nft delete table bridge ambit_node \
         && ip netns exec {0} nft delete chain inet ambit_node spoofed",
        node.name
    ));
    assert_eq!(
        get(&other, app, Some(IpAddr::V4(PROBE_SOURCE))).as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "the attack should work without the node's rule"
    );
}

#[test]
fn strict_mode_drops_udp_and_icmp_but_dns_and_ipv6_is_refused() {
    if !require_root("strict_mode_drops_udp_and_icmp_but_dns_and_ipv6_is_refused") {
        return;
    }
    let mut node = Node::new(&format!("nt{}", std::process::id() % 100_000));
    let (srv, srv_ip) = node.pod("s", 2);
    let (other, other_ip) = node.pod("o", 3);
    serve_app(&srv);
    let srv_path = format!("/run/netns/{srv}");

    // Uncaptured: UDP both ways, ping, IPv6 TCP all work (the checks below can fail).
    assert_eq!(udp_exchange(&other, &srv, srv_ip, 5353), (true, true));
    assert_eq!(udp_exchange(&srv, &other, other_ip, 5353), (true, true));
    assert!(ping(&other, srv_ip) && ping(&srv, other_ip));
    assert_eq!(
        get(&other, v6(2, APP_PORT), None).as_deref(),
        Ok("HTTP/1.1 200 OK")
    );

    rules::install(srv_path.as_ref(), Mode::Permissive).unwrap();
    assert_eq!(udp_exchange(&other, &srv, srv_ip, 5353), (true, true));
    assert!(ping(&other, srv_ip), "permissive mode leaves ICMP alone");
    let v6_in = get(&other, v6(2, APP_PORT), None).unwrap_err();
    assert!(v6_in.contains("refused"), "IPv6 in, permissive: {v6_in}");

    rules::install(srv_path.as_ref(), Mode::Strict).unwrap();
    assert_eq!(
        udp_exchange(&other, &srv, srv_ip, 5353),
        (false, false),
        "UDP into a strict pod"
    );
    assert_eq!(
        udp_exchange(&srv, &other, other_ip, 5353),
        (false, false),
        "UDP out of a strict pod"
    );
    assert_eq!(
        udp_exchange(&srv, &other, other_ip, 53),
        (true, true),
        "DNS queries go out and their answers come back"
    );
    assert!(!ping(&other, srv_ip), "ICMP into a strict pod");
    assert!(!ping(&srv, other_ip), "ICMP out of a strict pod");
    let v6_in = get(&other, v6(2, APP_PORT), None).unwrap_err();
    assert!(v6_in.contains("refused"), "IPv6 in, strict: {v6_in}");
    serve_app(&other);
    let v6_out = get(&srv, v6(3, APP_PORT), None).unwrap_err();
    assert!(v6_out.contains("refused"), "IPv6 out, strict: {v6_out}");
    // TCP still flows (to the tunnel's ports; none listen here, so a refusal is the answer
    // that proves the packet was not dropped: a drop would time out).
    let tcp = get(&srv, v4(other_ip, APP_PORT), None).unwrap_err();
    assert!(tcp.contains("refused"), "{tcp}");
}

#[test]
fn the_agent_keeps_the_node_rules_and_removes_them_at_uninstall() {
    if !require_root("the_agent_keeps_the_node_rules_and_removes_them_at_uninstall") {
        return;
    }
    let node = Node::new(&format!("pra{}", std::process::id() % 100_000));
    let dir = std::env::temp_dir().join(format!("ambit-probe-rules-{}", node.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("netns")).unwrap();
    nft_in(
        &node.name,
        "delete table inet ambit_node\ndelete table bridge ambit_node\n",
    );
    // The agent's apiserver on the node's loopback, where the agent runs.
    let apiserver = in_netns(&node.name, || FakeApiserver::start("ambit", "ambit-node"));
    let kubeconfig = apiserver.kubeconfig(&dir);
    let args: Vec<String> = [
        "--socket",
        dir.join("tunnel.sock").to_str().unwrap(),
        "--state",
        dir.join("pods").to_str().unwrap(),
        "--netns-dir",
        dir.join("netns").to_str().unwrap(),
        "--daemonset",
        "ambit/ambit-node",
        "--tick-ms",
        "50",
        "--probe-rules",
        "on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start_in(&node.name, &args, &kubeconfig, &dir.join("agent.log"));
    let listed = |family: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.name,
                "nft",
                "list",
                "table",
                family,
                "ambit_node",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    poll("the node's probe rules", || {
        (listed("inet") && listed("bridge")).then_some(())
    });
    // A firewall reload that flushes them: back within a tick or two.
    nft_in(&node.name, "flush ruleset\n");
    poll("the node's probe rules back", || {
        (listed("inet") && listed("bridge")).then_some(())
    });
    agent.wait_log("uninstall detection ready");
    apiserver.answer(404);
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(
        !listed("inet") && !listed("bridge"),
        "node rules left after uninstall"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn strict_mode_lets_in_icmp_errors_about_allowed_connections_only() {
    if !require_root("strict_mode_lets_in_icmp_errors_about_allowed_connections_only") {
        return;
    }
    let mut node = Node::new(&format!("mtu{}", std::process::id() % 100_000));
    let (srv, srv_ip) = node.pod("s", 2);
    let (other, other_ip) = node.pod("o", 3);
    let v4_of = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("pods have IPv4 addresses"),
    };
    let (srv_ip, other_ip) = (v4_of(srv_ip), v4_of(other_ip));
    let hbone = SocketAddrV4::new(srv_ip, ambit_capture::HBONE_PORT);
    // Control: uncaptured, an ICMP error about no connection arrives, so dropping it below is
    // the rules' doing.
    let unknown = (hbone, SocketAddrV4::new(other_ip, 40_000));
    assert!(frag_needed_arrives(&other, &srv, unknown));
    // An allowed connection into the strict pod: HBONE, which its rules let through (no
    // tunnel here; this listener stands in for it).
    let listener = in_netns(&srv, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, ambit_capture::HBONE_PORT))
    })
    .unwrap();
    rules::install(format!("/run/netns/{srv}").as_ref(), Mode::Strict).unwrap();
    let target = SocketAddr::from((srv_ip, ambit_capture::HBONE_PORT));
    let client = in_netns(&other, move || TcpStream::connect_timeout(&target, SILENCE)).unwrap();
    let _accepted = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    assert_ne!(client_port, unknown.1.port());

    // A router on the path (played by the other pod) says the pod's segments are too big.
    assert!(
        frag_needed_arrives(
            &other,
            &srv,
            (hbone, SocketAddrV4::new(other_ip, client_port))
        ),
        "path MTU of an allowed connection"
    );
    // The same about a connection that does not exist is dropped, as any other ICMP.
    assert!(
        !frag_needed_arrives(&other, &srv, unknown),
        "an ICMP error about no connection got into a strict pod"
    );
}
