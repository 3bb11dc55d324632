//! The agent's local API, HTTP/1.1 on a unix socket only root can open
//! (`nodes/<node>/agent.sock`), for the node's kubelet endpoint (`kubelet-streaming`, a Go
//! program built on the kubelet's own streaming server; see `crates/testbed/kubelet-streaming`):
//!
//! - `GET /pods/{namespace}/{pod}`: where a pod runs, as [`super::pod::PodInfo`] JSON (404 if
//!   this node does not run it), so exec enters its container and port-forward dials into its
//!   netns;
//! - `GET /containerLogs/{namespace}/{pod}/{container}`: [`super::logs`].
//!
//! The socket, not the apiserver, is the source of truth for container pids: a pod's status can
//! be written by anyone allowed to patch it, and must not steer exec into another process.

use super::NodeCtx;
use crate::Error;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// The kubelet port the node's kubelet endpoint listens on (node IP), as advertised in the Node's
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
pub const KUBELET_PORT: u16 = 10250;
const MAX_HEAD: usize = 16 * 1024;

pub async fn serve(ctx: Arc<NodeCtx>) -> Result<(), Error> {
    let path = ctx.config.agent_socket(ctx.k);
    // A socket left by an earlier agent of this node would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(&path, e))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(&ctx, stream).await {
                tracing::debug!("agent API: {e}");
            }
        });
    }
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
    if target.starts_with("/containerLogs/") {
        return super::logs::respond(ctx, target, s).await;
    }
    match parse_pod_target(target).and_then(|(ns, name)| ctx.pods.lookup(ns, name)) {
        Some(info) => {
            let body = serde_json::to_vec(&info).map_err(std::io::Error::other)?;
            reply(&mut s, "200 OK", "application/json", &body).await
        }
        None => {
            reply(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"no such pod on this node\n",
            )
            .await
        }
    }
}

/// `/pods/{namespace}/{pod}` → (namespace, pod)
fn parse_pod_target(target: &str) -> Option<(&str, &str)> {
    let (ns, name) = target.strip_prefix("/pods/")?.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// A whole response with a body, then the connection closes.
pub async fn reply<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pod_targets() {
        assert_eq!(
            parse_pod_target("/pods/default/echo-1"),
            Some(("default", "echo-1"))
        );
        assert_eq!(parse_pod_target("/pods/default/"), None);
        assert_eq!(parse_pod_target("/pods/default/a/b"), None);
        assert_eq!(parse_pod_target("/exec/default/a/b"), None);
    }
}
