//! A small kube-proxy: Service ClusterIPs DNAT'd to ready endpoints by nftables in the node's
//! netns, which every packet a pod sends off-pod passes through. Rebuilt whole (one atomic
//! `nft -f`) on every Service or EndpointSlice change.

use super::NodeCtx;
use crate::Error;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

pub const TABLE: &str = "ambit-testbed-proxy";

/// One Service port and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub vip: String,
    pub protocol: String,
    pub port: i32,
    /// (endpoint IP, port); empty means reject.
    pub backends: Vec<(String, i32)>,
}

pub fn rules(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<Rule> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let my_slices: Vec<&Arc<EndpointSlice>> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(name)
                    && s.address_type == "IPv4"
            })
            .collect();
        for sp in spec.ports.iter().flatten() {
            let protocol = sp
                .protocol
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_lowercase();
            let mut backends = Vec::new();
            for s in &my_slices {
                let Some(port) = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| {
                        p.name.as_deref().unwrap_or_default()
                            == sp.name.as_deref().unwrap_or_default()
                            && p.protocol
                                .as_deref()
                                .unwrap_or("TCP")
                                .eq_ignore_ascii_case(&protocol)
                    })
                    .and_then(|p| p.port)
                else {
                    continue;
                };
                for e in &s.endpoints {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    backends.extend(e.addresses.iter().map(|a| (a.clone(), port)));
                }
            }
            backends.sort();
            backends.dedup();
            out.push(Rule {
                vip: vip.to_owned(),
                protocol,
                port: sp.port,
                backends,
            });
        }
    }
    out.sort_by(|a, b| (&a.vip, a.port, &a.protocol).cmp(&(&b.vip, b.port, &b.protocol)));
    out
}

/// The whole table, replacing the previous one in one transaction.
pub fn render(rules: &[Rule]) -> String {
    let mut body = String::new();
    for r in rules {
        let m = format!("ip daddr {} {} dport {}", r.vip, r.protocol, r.port);
        let action = match r.backends.as_slice() {
            [] if r.protocol == "tcp" => "reject with tcp reset".to_owned(),
            [] => "reject".to_owned(),
            [(ip, port)] => format!("dnat ip to {ip} : {port}"),
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                    .collect();
                format!(
                    "dnat ip to numgen random mod {} map {{ {} }}",
                    many.len(),
                    map.join(", ")
                )
            }
        };
        let _ = writeln!(body, "    {m} {action}");
    }
    format!(
        "add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain services {{
{body}  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    # A pod reaching itself or a neighbour through a VIP: the reply would skip this netns on
    # the cni0 bridge, so the request is made to come from the node (as kube-proxy's hairpin).
    ct status dnat oifname \"cni0\" masquerade
  }}
}}
"
    )
}

async fn apply(script: &str) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Other(format!("nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| Error::Other(format!("nft stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Other(format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Watches Services and EndpointSlices and keeps the node's table in step. Runs in the node's
/// netns (the agent's), so `nft` acts there.
pub async fn run(ctx: Arc<NodeCtx>) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let svc_api: Api<Service> = Api::all(ctx.client.clone());
    let eps_api: Api<EndpointSlice> = Api::all(ctx.client.clone());
    let tx1 = tx.clone();
    tokio::spawn(async move {
        let mut s = reflector::reflector(
            svc_writer,
            watcher::watcher(svc_api, watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        .boxed();
        while s.next().await.is_some() {
            let _ = tx1.try_send(());
        }
    });
    tokio::spawn(async move {
        let mut s = reflector::reflector(
            eps_writer,
            watcher::watcher(eps_api, watcher::Config::default()),
        )
        .default_backoff()
        .touched_objects()
        .boxed();
        while s.next().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    let mut last = String::new();
    while rx.recv().await.is_some() {
        // Coalesce a burst of changes into one rebuild.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        let script = render(&rules(&svc_store.state(), &eps_store.state()));
        if script == last {
            continue;
        }
        match apply(&script).await {
            Ok(()) => last = script,
            Err(e) => {
                tracing::warn!("service proxy: {e}");
                let _ = tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Arc<Service> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        })).unwrap_or_default())
    }

    fn slice(ready: bool) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": "echo-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.101.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.101.2.2"], "conditions": {"ready": ready}},
            ],
        })).unwrap_or_default())
    }

    #[test]
    fn ready_endpoints_become_dnat_targets() {
        let r = rules(&[svc()], &[slice(true)]);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].backends,
            vec![
                ("10.101.1.2".to_owned(), 8080),
                ("10.101.2.2".to_owned(), 8080)
            ]
        );
        let text = render(&r);
        assert!(text.contains("ip daddr 10.96.0.10 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.101.1.2 . 8080, 1 : 10.101.2.2 . 8080 }"), "{text}");
        let r = rules(&[svc()], &[slice(false)]);
        assert_eq!(r[0].backends, vec![("10.101.1.2".to_owned(), 8080)]);
        assert!(render(&r).contains("dnat ip to 10.101.1.2 : 8080"));
        let r = rules(&[svc()], &[]);
        assert!(render(&r).contains("ip daddr 10.96.0.10 tcp dport 80 reject with tcp reset"));
    }
}
