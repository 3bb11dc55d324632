//! Names, addresses and ports of one testbed instance, all derived from its name and id so two
//! instances (say the demo and a test run) never collide.
//!
//! Address plan for instance `id` (1..=99):
//! - shared bridge `<name>-br` in the host netns, host side `10.250.<id>.1/24` (apiserver binds here)
//! - node `k` (1-based): netns `<name>-node-<k>`, `eth0` = `10.250.<id>.<10+k>/24`
//! - pods of node `k`: `10.<100+id>.<k>.0/24` (the Node's podCIDR), allocated by host-local
//! - Service ClusterIPs: `10.96.0.0/16` (virtual: there is no kube-proxy)

use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Environment variable naming the root of testbed state dirs.
pub const ENV_STATE_ROOT: &str = "AMBIT_TESTBED_DIR";
pub const DEFAULT_STATE_ROOT: &str = "/run/ambit-testbed";
/// Environment variable naming the setup cache (see `setup.sh`).
pub const ENV_CACHE_DIR: &str = "AMBIT_CACHE_DIR";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/ambit";
/// Environment variable adding a directory searched for image binaries (before the defaults).
pub const ENV_BIN_DIR: &str = "AMBIT_BIN_DIR";
/// Under the setup cache: third-party apps `setup.sh` builds for the tests (Istio's echo
/// server and client), named like the images that run them. Searched last.
pub const CACHE_IMAGES_DIR: &str = "images";

pub const DEFAULT_NAME: &str = "ambit";
pub const DEFAULT_ID: u8 = 1;
pub const DEFAULT_NODES: u8 = 2;
pub const MAX_NODES: u8 = 20;

pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const APISERVER_PORT: u16 = 6443;
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// One testbed instance. Saved as `<state_dir>/testbed.json` by `up`, so `status`, `down` and the
/// node agents see exactly what `up` used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub name: String,
    pub id: u8,
    pub nodes: u8,
    pub state_dir: PathBuf,
    /// The env file written by `setup.sh`, naming the binaries.
    pub env_file: PathBuf,
    /// Directories searched, in order, for the binary an image maps to.
    pub bin_dirs: Vec<PathBuf>,
    /// Explicit image (without tag or digest) → binary entries; they win over `bin_dirs`.
    pub images: BTreeMap<String, PathBuf>,
}

impl Config {
    /// A config with defaults for everything but the name and id.
    pub fn new(name: &str, id: u8) -> Result<Self, Error> {
        // Interface names are at most 15 bytes: `<name>-br`, `<name>-v<k>`.
        let valid = !name.is_empty()
            && name.len() <= 8
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(Error::Config(format!(
                "testbed name {name:?} must be 1-8 characters of [a-z0-9], starting with a letter"
            )));
        }
        if !(1..=99).contains(&id) {
            return Err(Error::Config(format!("testbed id {id} must be in 1..=99")));
        }
        let state_root = std::env::var_os(ENV_STATE_ROOT)
            .map_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT), PathBuf::from);
        let cache = std::env::var_os(ENV_CACHE_DIR)
            .map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from);
        Ok(Self {
            name: name.to_owned(),
            id,
            nodes: DEFAULT_NODES,
            state_dir: state_root.join(name),
            env_file: cache.join("testbed.env"),
            bin_dirs: default_bin_dirs(&cache),
            images: BTreeMap::new(),
        })
    }

    pub fn with_nodes(mut self, nodes: u8) -> Result<Self, Error> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(Error::Config(format!(
                "node count {nodes} must be in 1..={MAX_NODES}"
            )));
        }
        self.nodes = nodes;
        Ok(self)
    }

    /// Loads the config `up` saved for the instance in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Self, Error> {
        let path = state_dir.join("testbed.json");
        let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&raw).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn save(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.state_dir).map_err(|e| Error::io(&self.state_dir, e))?;
        let path = self.state_dir.join("testbed.json");
        let raw = serde_json::to_vec_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(&path, raw).map_err(|e| Error::io(&path, e))
    }

    pub fn bridge(&self) -> String {
        format!("{}-br", self.name)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.id, 1)
    }
    pub fn node_name(&self, k: u8) -> String {
        format!("{}-node-{k}", self.name)
    }
    /// The node's netns is named like the node.
    pub fn node_netns(&self, k: u8) -> String {
        self.node_name(k)
    }
    /// Host end of node `k`'s veth, enslaved to the bridge.
    pub fn node_veth(&self, k: u8) -> String {
        format!("{}-v{k}", self.name)
    }
    pub fn node_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.id, 10 + k)
    }
    pub fn pod_cidr(&self, k: u8) -> String {
        format!("10.{}.{k}.0/24", 100 + u16::from(self.id))
    }
    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 100 + u16::from(self.id))
    }
    /// Pod netns names start with this, so `down` finds every one of them.
    pub fn pod_netns_prefix(&self) -> String {
        format!("{}-pod-", self.name)
    }
    pub fn node_number(&self, node_name: &str) -> Option<u8> {
        let k: u8 = node_name
            .strip_prefix(&format!("{}-node-", self.name))?
            .parse()
            .ok()?;
        (1..=self.nodes).contains(&k).then_some(k)
    }

    fn port_base(&self) -> u16 {
        20000 + u16::from(self.id) * 10
    }
    pub fn etcd_client_port(&self) -> u16 {
        self.port_base()
    }
    pub fn etcd_peer_port(&self) -> u16 {
        self.port_base() + 1
    }
    pub fn controller_manager_port(&self) -> u16 {
        self.port_base() + 2
    }
    pub fn scheduler_port(&self) -> u16 {
        self.port_base() + 3
    }
    pub fn apiserver_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.host_ip())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn node_dir(&self, k: u8) -> PathBuf {
        self.state_dir.join("nodes").join(self.node_name(k))
    }
    /// The node's stand-in for `/`: hostPath volumes other than kernel paths land below it,
    /// e.g. `/etc/cni/net.d` is `<node_root>/etc/cni/net.d`.
    pub fn node_root(&self, k: u8) -> PathBuf {
        self.node_dir(k).join("root")
    }
    /// The node agent's local API (`node::api`), which the node's kubelet endpoint asks.
    pub fn agent_socket(&self, k: u8) -> PathBuf {
        self.node_dir(k).join("agent.sock")
    }
    pub fn node_cni_conf_dir(&self, k: u8) -> PathBuf {
        self.node_root(k).join("etc/cni/net.d")
    }
    pub fn node_cni_bin_dir(&self, k: u8) -> PathBuf {
        self.node_root(k).join("opt/cni/bin")
    }
}

/// The directory of the running binary (the workspace's `target/<profile>` for `cargo run` and
/// for tests, whose binaries live in `target/<profile>/deps`), after `$AMBIT_BIN_DIR`; then the
/// apps the setup cached, so a workspace binary always wins.
fn default_bin_dirs(cache: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(ENV_BIN_DIR) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_path_buf());
        }
        dirs.push(dir.to_path_buf());
    }
    dirs.push(cache.join(CACHE_IMAGES_DIR));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits_and_addresses_follow_the_id() -> Result<(), Error> {
        let c = Config::new("abcdefgh", 7)?.with_nodes(20)?;
        assert!(c.bridge().len() <= 15);
        assert!(c.node_veth(20).len() <= 15);
        assert_eq!(c.host_ip(), Ipv4Addr::new(10, 250, 7, 1));
        assert_eq!(c.node_ip(2), Ipv4Addr::new(10, 250, 7, 12));
        assert_eq!(c.pod_cidr(2), "10.107.2.0/24");
        assert_eq!(c.node_number("abcdefgh-node-3"), Some(3));
        assert_eq!(c.node_number("abcdefgh-node-21"), None);
        assert_eq!(c.node_number("other-node-1"), None);
        Ok(())
    }

    #[test]
    fn rejects_bad_names_ids_and_node_counts() {
        assert!(Config::new("toolongname", 1).is_err());
        assert!(Config::new("Upper", 1).is_err());
        assert!(Config::new("1abc", 1).is_err());
        assert!(Config::new("ok", 0).is_err());
        assert!(Config::new("ok", 100).is_err());
        assert!(Config::new("ok", 1).and_then(|c| c.with_nodes(0)).is_err());
    }
}
