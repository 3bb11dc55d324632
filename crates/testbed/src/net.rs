//! The testbed network: one bridge in the host netns, one netns per node on it, static routes
//! between node pod CIDRs. Nothing here touches the machine's own interfaces: the bridge has no
//! uplink, the host never forwards (its ip_forward is left alone), and there is no NAT.

use crate::Error;
use crate::config::Config;
use crate::sys::{self, ip};
use std::time::{Duration, Instant};

/// Creates the bridge, the host address on it, and every node netns with its routes.
pub fn create(config: &Config) -> Result<(), Error> {
    let br = config.bridge();
    ip(&["link", "add", &br, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/24", config.host_ip()),
        "dev",
        &br,
    ])?;
    ip(&["link", "set", &br, "up"])?;
    for k in 1..=config.nodes {
        create_node(config, k)?;
    }
    Ok(())
}

fn create_node(config: &Config, k: u8) -> Result<(), Error> {
    let ns = config.node_netns(k);
    let veth = config.node_veth(k);
    let br = config.bridge();
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["link", "set", &veth, "master", &br, "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/24", config.node_ip(k)),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    // A new netns starts with forwarding off; the node routes between its pods and the bridge,
    // so it turns forwarding on for itself only.
    sys::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]))?;
    for other in (1..=config.nodes).filter(|&o| o != k) {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            &config.pod_cidr(other),
            "via",
            &config.node_ip(other).to_string(),
        ])?;
    }
    // Host-network pods reach ClusterIPs as on a real node: the kube-proxy stand-in DNATs
    // them in OUTPUT, but the socket needs a route first. On-link: nothing leaves the bridge.
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        crate::config::SERVICE_CIDR,
        "dev",
        "eth0",
    ])?;
    // So the host (the apiserver) can answer pods: on-bridge routes only, never forwarded.
    ip(&[
        "route",
        "add",
        &config.pod_cidr(k),
        "via",
        &config.node_ip(k).to_string(),
        "dev",
        &br,
    ])?;
    Ok(())
}

/// Removes every netns (killing what runs inside) and the bridge. Best effort; returns what
/// could not be removed.
pub fn destroy(config: &Config) -> Vec<String> {
    let mut left = Vec::new();
    let node_prefix = format!("{}-node-", config.name);
    let pod_prefix = config.pod_netns_prefix();
    let all = sys::netns_list();
    // Pods first: their processes may hold the node's CNI state.
    let (pods, nodes): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|n| n.starts_with(&pod_prefix) || n.starts_with(&node_prefix))
        .partition(|n| n.starts_with(&pod_prefix));
    for ns in pods.iter().chain(nodes.iter()) {
        if let Err(e) = sys::netns_destroy(ns) {
            left.push(format!("netns {ns}: {e}"));
        }
    }
    // The kernel frees a deleted netns, and the veths in it, once its last reference is gone,
    // a moment after `ip netns del`: an `up` right after a `down` would find the node veths'
    // host ends still there.
    let veths: Vec<String> = (1..=config.nodes).map(|k| config.node_veth(k)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while veths.iter().any(|v| sys::link_exists(v)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for v in veths.iter().filter(|v| sys::link_exists(v)) {
        if let Err(e) = ip(&["link", "del", v]) {
            left.push(format!("veth {v}: {e}"));
        }
    }
    let br = config.bridge();
    if sys::link_exists(&br)
        && let Err(e) = ip(&["link", "del", &br])
    {
        left.push(format!("bridge {br}: {e}"));
    }
    left
}

/// Our netns still present.
pub fn leftover_netns(config: &Config) -> Vec<String> {
    let node_prefix = format!("{}-node-", config.name);
    let pod_prefix = config.pod_netns_prefix();
    sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&pod_prefix) || n.starts_with(&node_prefix))
        .collect()
}
