//! `/containerLogs/{ns}/{pod}/{container}`, the log part of the kubelet API, answered from the
//! container log files: `kubectl logs [-f] [--tail N]` works. The agent serves it on its unix
//! socket ([`super::api`]); the node's kubelet endpoint (port 10250) passes it through.

use super::NodeCtx;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

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

/// Answers one `/containerLogs/...` request (`target` is its request target) on `s`.
pub async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    ctx: &NodeCtx,
    target: &str,
    mut s: S,
) -> std::io::Result<()> {
    let Some((ns, pod, container, follow, tail)) = parse_target(target) else {
        return super::api::reply(
            &mut s,
            "404 Not Found",
            "text/plain",
            b"not a log request\n",
        )
        .await;
    };
    let path = super::container_log_path(&ctx.config, &ns, &pod, &container);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        let body = format!("no log for {ns}/{pod}/{container}\n");
        return super::api::reply(&mut s, "404 Not Found", "text/plain", body.as_bytes()).await;
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
