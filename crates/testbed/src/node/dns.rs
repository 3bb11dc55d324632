//! Cluster DNS, the little that pods need: `A` records for Services' ClusterIPs under
//! `<svc>.<ns>.svc.cluster.local`, served over UDP on the node's IP, with each pod's
//! `/etc/resolv.conf` pointing at it and searching its namespace (as CoreDNS + kubelet do).
//! Everything else is NXDOMAIN: test networks have no upstream resolver.

use super::NodeCtx;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::net::Ipv4Addr;
use std::sync::Arc;

pub const CLUSTER_DOMAIN: &str = "cluster.local";
const TTL: u32 = 5;

/// The resolv.conf of a pod in `namespace` whose node serves DNS on `nameserver`.
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver {nameserver}\noptions ndots:5\n"
    )
}

/// A parsed question: lowercase name without the trailing dot, type, and where it ends.
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers never appear in a question we accept.
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// The answer to one query, given a lookup from name to address.
pub fn answer(msg: &[u8], lookup: impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(msg)?;
    if msg.get(end - 2..end)? != [0, 1] {
        return None; // class IN only
    }
    let found = lookup(&name);
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(&msg[0..2]); // id
    let rd = msg[2] & 0x01;
    out.push(0x84 | rd); // QR, AA, RD echoed
    out.push(if found.is_some() { 0 } else { 3 }); // NOERROR or NXDOMAIN, RA=0
    let answers: u16 = u16::from(found.is_some() && (qtype == 1 || qtype == 255));
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&msg[12..end]);
    if let (Some(ip), 1) = (found, answers) {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// `svc.ns.svc.cluster.local` → (svc, ns)
fn service_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (svc, ns) = rest.split_once('.')?;
    (!ns.contains('.')).then_some((svc, ns))
}

pub async fn serve(ctx: Arc<NodeCtx>) -> Result<(), crate::Error> {
    let socket = tokio::net::UdpSocket::bind((ctx.node_ip, 53))
        .await
        .map_err(|e| crate::Error::Other(format!("DNS on {}:53: {e}", ctx.node_ip)))?;
    let (store, writer) = reflector::store::<Service>();
    let api: Api<Service> = Api::all(ctx.client.clone());
    tokio::spawn(async move {
        let mut s = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .boxed();
        while s.next().await.is_some() {}
    });
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let lookup = |name: &str| {
            let (svc, ns) = service_name(name)?;
            store
                .state()
                .iter()
                .find(|s| {
                    s.metadata.name.as_deref() == Some(svc)
                        && s.metadata.namespace.as_deref() == Some(ns)
                })
                .and_then(|s| s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok())
        };
        if let Some(reply) = answer(&buf[..n], lookup) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(u8::try_from(l.len()).unwrap_or(0));
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn lookup(name: &str) -> Option<Ipv4Addr> {
        (service_name(name) == Some(("echo", "default"))).then_some(Ipv4Addr::new(10, 96, 0, 10))
    }

    #[test]
    fn answers_services_and_refuses_the_rest() -> Result<(), String> {
        let r = answer(&query("Echo.default.svc.cluster.local", 1), lookup).ok_or("no reply")?;
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "rcode");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 96, 0, 10]);

        let r = answer(&query("echo.default.svc.cluster.local", 28), lookup).ok_or("no reply")?;
        assert_eq!(
            (r[3] & 0x0f, &r[6..8]),
            (0, &[0u8, 0][..]),
            "AAAA: no data, no error"
        );

        let r = answer(&query("example.com", 1), lookup).ok_or("no reply")?;
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");
        assert!(answer(&[0u8; 5], lookup).is_none());
        assert_eq!(
            resolv_conf("ns1", Ipv4Addr::new(10, 250, 1, 11))
                .lines()
                .next(),
            Some("search ns1.svc.cluster.local svc.cluster.local cluster.local")
        );
        Ok(())
    }
}
