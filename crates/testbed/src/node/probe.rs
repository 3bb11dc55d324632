//! Probes (startup, liveness, readiness), run from the node's netns as kubelet runs them from
//! the host's: httpGet and tcpSocket connect from there, exec enters the pod's netns.

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(name) => c
            .ports
            .as_ref()?
            .iter()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// One probe attempt. `netns` is the pod's netns (for exec probes), `None` for host-network pods.
pub async fn check(c: &Container, probe: &Probe, pod_ip: &str, netns: Option<&str>) -> bool {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = port(c, &h.port)?;
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            let mut s = TcpStream::connect((host.as_str(), port)).await.ok()?;
            let path = h.path.as_deref().unwrap_or("/");
            let req = format!(
                "GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nuser-agent: kube-probe/ambit-testbed\r\nconnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = [0u8; 32];
            let n = s.read(&mut buf).await.ok()?;
            let line = std::str::from_utf8(&buf[..n]).ok()?;
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        } else if let Some(t) = &probe.tcp_socket {
            let port = port(c, &t.port)?;
            let host = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_owned());
            Some(TcpStream::connect((host.as_str(), port)).await.is_ok())
        } else if let Some(e) = &probe.exec {
            let argv = e.command.as_deref().unwrap_or_default();
            let (first, rest) = argv.split_first()?;
            let mut cmd = tokio::process::Command::new("nsenter");
            if let Some(ns) = netns {
                cmd.arg(format!("--net=/run/netns/{ns}"));
            }
            cmd.arg("--").arg(first).args(rest).kill_on_drop(true);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            Some(cmd.status().await.ok()?.success())
        } else {
            // gRPC probes: not implemented; counted as passing so such pods still become Ready.
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}
