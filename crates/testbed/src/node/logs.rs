//! The one kubelet API endpoint the testbed serves: `/containerLogs/{ns}/{pod}/{container}` on
//! the node's IP, port 10250, so `kubectl logs [-f] [--tail N]` works (the apiserver proxies it
//! here). HTTPS with a self-signed cert: the apiserver runs without
//! `--kubelet-certificate-authority`, so it does not verify kubelet serving certs. `exec`,
//! `attach` and `port-forward` are not served.

use super::NodeCtx;
use crate::Error;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const KUBELET_PORT: u16 = 10250;
const MAX_HEAD: usize = 16 * 1024;

fn tls_config(ctx: &NodeCtx) -> Result<rustls::ServerConfig, Error> {
    let err = |e: &dyn std::fmt::Display| Error::Pki(format!("kubelet serving cert: {e}"));
    let mut params =
        rcgen::CertificateParams::new(vec![ctx.node_name.clone()]).map_err(|e| err(&e))?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(ctx.node_ip)));
    let key = rcgen::KeyPair::generate().map_err(|e| err(&e))?;
    let cert = params.self_signed(&key).map_err(|e| err(&e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| err(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub async fn serve(ctx: Arc<NodeCtx>) -> Result<(), Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&ctx)?));
    let listener = TcpListener::bind((ctx.node_ip, KUBELET_PORT))
        .await
        .map_err(|e| Error::Other(format!("kubelet port {}:{KUBELET_PORT}: {e}", ctx.node_ip)))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                let _ = handle(&ctx, tls).await;
            }
        });
    }
}

/// `/containerLogs/ns/pod/container?follow=true&tailLines=N` → (ns, pod, container, follow, tail)
pub fn parse_target(target: &str) -> Option<(String, String, String, bool, Option<usize>)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (ns, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || [ns, pod, container]
            .iter()
            .any(|p| p.is_empty() || p.contains(".."))
    {
        return None;
    }
    let mut follow = false;
    let mut tail = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("follow", v)) => follow = v == "true" || v == "1",
            Some(("tailLines", v)) => tail = v.parse().ok(),
            _ => {}
        }
    }
    Some((
        ns.to_owned(),
        pod.to_owned(),
        container.to_owned(),
        follow,
        tail,
    ))
}

async fn handle<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ctx: &NodeCtx,
    mut s: S,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = line.split_whitespace().nth(1).unwrap_or_default();
    let Some((ns, pod, container, follow, tail)) = parse_target(target) else {
        return s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 44\r\nconnection: close\r\n\r\nambit-testbed serves only /containerLogs/...\n").await;
    };
    let path = super::container_log_path(&ctx.config, &ns, &pod, &container);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        let body = format!("no log for {ns}/{pod}/{container}\n");
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return s.write_all(resp.as_bytes()).await;
    };
    let mut all = Vec::new();
    file.read_to_end(&mut all).await?;
    let mut offset = all.len() as u64;
    let start = tail_start(&all, tail);
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
        .await?;
    s.write_all(&all[start..]).await?;
    s.flush().await?;
    if !follow {
        return s.shutdown().await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let len = tokio::fs::metadata(&path).await?.len();
        if len > offset {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut more = vec![0u8; usize::try_from(len - offset).unwrap_or(0)];
            file.read_exact(&mut more).await?;
            offset = len;
            s.write_all(&more).await?;
            s.flush().await?;
        }
    }
}

/// Where the last `tail` lines of `all` start.
fn tail_start(all: &[u8], tail: Option<usize>) -> usize {
    let Some(n) = tail else { return 0 };
    if n == 0 {
        return all.len();
    }
    let body = all.strip_suffix(b"\n").unwrap_or(all);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_requests_and_refuses_others() {
        assert_eq!(
            parse_target("/containerLogs/default/echo-1/server?follow=true&tailLines=5"),
            Some((
                "default".into(),
                "echo-1".into(),
                "server".into(),
                true,
                Some(5)
            ))
        );
        assert_eq!(
            parse_target("/containerLogs/a/b/c"),
            Some(("a".into(), "b".into(), "c".into(), false, None))
        );
        assert_eq!(parse_target("/containerLogs/a/../c"), None);
        assert_eq!(parse_target("/containerLogs/a/b"), None);
        assert_eq!(parse_target("/exec/a/b/c"), None);
        assert_eq!(tail_start(b"a\nb\nc\n", Some(2)), 2);
        assert_eq!(tail_start(b"a\nb\nc\n", Some(5)), 0);
        assert_eq!(tail_start(b"a\nb\nc\n", Some(0)), 6);
        assert_eq!(tail_start(b"a\nb\nc", None), 0);
    }
}
