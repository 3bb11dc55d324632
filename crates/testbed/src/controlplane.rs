//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler as detached processes, and
//! the admin kubeconfig.

use crate::Error;
use crate::config::{APISERVER_PORT, Config, SERVICE_ACCOUNT_ISSUER, SERVICE_CIDR};
use crate::pki;
use crate::sys;
use crate::tools::Tools;
use std::path::Path;

/// Process names, in start order (also the pid/log file names).
pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";

fn p(path: &Path) -> String {
    path.display().to_string()
}

pub fn write_kubeconfig(config: &Config) -> Result<(), Error> {
    let pki = config.pki_dir();
    let name = &config.name;
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {name}-admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}-admin
    namespace: default
current-context: {name}
",
        server = config.apiserver_url(),
        ca = p(&pki.join(pki::CA_CERT)),
        cert = p(&pki.join(pki::ADMIN_CERT)),
        key = p(&pki.join(pki::ADMIN_KEY)),
    );
    let path = config.kubeconfig();
    std::fs::write(&path, yaml).map_err(|e| Error::io(&path, e))
}

pub fn start_etcd(config: &Config, tools: &Tools) -> Result<(), Error> {
    let data = config.state_dir.join("etcd");
    let client = format!("http://127.0.0.1:{}", config.etcd_client_port());
    let peer = format!("http://127.0.0.1:{}", config.etcd_peer_port());
    let args = vec![
        "--name=testbed".to_owned(),
        format!("--data-dir={}", p(&data)),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=testbed={peer}"),
        "--initial-cluster-state=new".to_owned(),
        // Throwaway data: durability buys nothing and fsync costs seconds on a busy disk.
        "--unsafe-no-fsync".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    sys::spawn_daemon(
        ETCD,
        &tools.etcd,
        &args,
        &config.log_dir(),
        &pid_dir(config),
    )
    .map(|_| ())
}

pub fn start_apiserver(config: &Config, tools: &Tools) -> Result<(), Error> {
    let pki = config.pki_dir();
    let args = vec![
        format!(
            "--etcd-servers=http://127.0.0.1:{}",
            config.etcd_client_port()
        ),
        format!("--bind-address={}", config.host_ip()),
        format!("--advertise-address={}", config.host_ip()),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--tls-cert-file={}", p(&pki.join(pki::APISERVER_CERT))),
        format!(
            "--tls-private-key-file={}",
            p(&pki.join(pki::APISERVER_KEY))
        ),
        format!("--client-ca-file={}", p(&pki.join(pki::CA_CERT))),
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        format!("--service-account-key-file={}", p(&pki.join(pki::SA_PUB))),
        format!(
            "--service-account-signing-key-file={}",
            p(&pki.join(pki::SA_KEY))
        ),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=RBAC".to_owned(),
        // Node names resolve nowhere: reach the nodes' kubelet endpoints by node IP, with
        // mutual TLS under the testbed CA (their serving certs carry the node IP).
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        format!(
            "--kubelet-client-certificate={}",
            p(&pki.join(pki::KUBELET_CLIENT_CERT))
        ),
        format!(
            "--kubelet-client-key={}",
            p(&pki.join(pki::KUBELET_CLIENT_KEY))
        ),
        format!(
            "--kubelet-certificate-authority={}",
            p(&pki.join(pki::CA_CERT))
        ),
        // No kube-proxy in the host netns: webhooks and aggregated APIs are reached at their
        // endpoints' pod IPs (routed over the bridge) instead of their ClusterIPs.
        "--enable-aggregator-routing=true".to_owned(),
        "--allow-privileged=true".to_owned(),
        format!(
            "--cert-dir={}",
            p(&config.state_dir.join("apiserver-certs"))
        ),
        "--profiling=false".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--v=1".to_owned(),
    ];
    sys::spawn_daemon(
        APISERVER,
        &tools.kube_apiserver,
        &args,
        &config.log_dir(),
        &pid_dir(config),
    )
    .map(|_| ())
}

pub fn start_controller_manager(config: &Config, tools: &Tools) -> Result<(), Error> {
    let kc = p(&config.kubeconfig());
    let pki = config.pki_dir();
    let args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", config.controller_manager_port()),
        "--leader-elect=false".to_owned(),
        format!("--root-ca-file={}", p(&pki.join(pki::CA_CERT))),
        format!(
            "--service-account-private-key-file={}",
            p(&pki.join(pki::SA_KEY))
        ),
        // Node pod CIDRs are set by the node agents, as a cloud provider would.
        "--allocate-node-cidrs=false".to_owned(),
        format!("--cluster-cidr={}", config.cluster_cidr()),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--controllers=*".to_owned(),
        "--profiling=false".to_owned(),
        "--v=1".to_owned(),
    ];
    sys::spawn_daemon(
        CONTROLLER_MANAGER,
        &tools.kube_controller_manager,
        &args,
        &config.log_dir(),
        &pid_dir(config),
    )
    .map(|_| ())
}

pub fn start_scheduler(config: &Config, tools: &Tools) -> Result<(), Error> {
    let kc = p(&config.kubeconfig());
    let args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", config.scheduler_port()),
        "--leader-elect=false".to_owned(),
        "--profiling=false".to_owned(),
        "--v=1".to_owned(),
    ];
    sys::spawn_daemon(
        SCHEDULER,
        &tools.kube_scheduler,
        &args,
        &config.log_dir(),
        &pid_dir(config),
    )
    .map(|_| ())
}

/// The node's kubelet endpoint (`kubelet-streaming`: exec, port-forward, logs) on the node IP,
/// port 10250, inside the node's netns as kubelet lives in its host's.
pub fn start_kubelet_streaming(config: &Config, tools: &Tools, k: u8) -> Result<(), Error> {
    let pki = config.pki_dir();
    let node = config.node_name(k);
    let args = vec![
        format!("--net=/run/netns/{}", config.node_netns(k)),
        "--".to_owned(),
        p(&tools.kubelet_streaming),
        format!(
            "--listen={}:{}",
            config.node_ip(k),
            crate::node::api::KUBELET_PORT
        ),
        format!("--tls-cert={}", p(&pki.join(pki::kubelet_cert(&node)))),
        format!("--tls-key={}", p(&pki.join(pki::kubelet_key(&node)))),
        format!("--client-ca={}", p(&pki.join(pki::CA_CERT))),
        format!("--client-cn={}", pki::KUBELET_CLIENT_CN),
        format!("--agent-socket={}", p(&config.agent_socket(k))),
    ];
    sys::spawn_daemon(
        &format!("kubelet-{node}"),
        Path::new("nsenter"),
        &args,
        &config.log_dir(),
        &pid_dir(config),
    )
    .map(|_| ())
}

pub fn pid_dir(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("pids")
}
