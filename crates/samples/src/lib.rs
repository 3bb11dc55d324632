//! Sample workloads: `ambit-echo-server` and `ambit-echo-client`.
//!
//! The server answers on every port it is given. A connection whose first bytes look like an
//! HTTP/1.1 request line gets one HTTP response naming the server (pod name, or hostname);
//! anything else is echoed back, prefixed once with a greeting line naming the server, so a
//! client can tell which replica answered. [`load`] is `ambit-load`'s steady load.

pub mod load;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on one read and on a whole HTTP request head: the server is a toy, not a target.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Idle connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The name the server reports: `POD_NAME`, else `HOSTNAME`, else the kernel's hostname.
pub fn server_name() -> String {
    for var in ["POD_NAME", "HOSTNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return v;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IDLE_TIMEOUT * 10, handle(stream, &name)).await;
        });
    }
}

fn looks_like_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
    ];
    METHODS.iter().any(|m| buf.starts_with(m))
}

async fn handle(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    if n == 0 {
        return Ok(());
    }
    if looks_like_http(&buf[..n]) {
        return http(stream, name, buf, n).await;
    }
    stream
        .write_all(format!("hello from {name}\n").as_bytes())
        .await?;
    stream.write_all(&buf[..n]).await?;
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// One HTTP/1.1 response per connection (`Connection: close`): enough for curl, probes and tests.
async fn http(
    mut stream: TcpStream,
    name: &str,
    mut buf: Vec<u8>,
    mut n: usize,
) -> std::io::Result<()> {
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            let body = "request head too large\n";
            let resp = format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return stream.write_all(resp.as_bytes()).await;
        }
        let m = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf[n..])).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if m == 0 {
            return Ok(());
        }
        n += m;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let request_line = head.lines().next().unwrap_or_default();
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let body = format!("{name} {path}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: {name}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Connects to `addr`, sends `message` (a line), and returns what came back up to the echo of
/// the message, or the whole HTTP response when `message` is an HTTP request.
pub async fn exchange(addr: &str, message: &str, timeout: Duration) -> std::io::Result<String> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        if looks_like_http(message.as_bytes()) {
            stream.write_all(message.as_bytes()).await?;
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await?;
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        echo(&mut stream, message).await
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply from {addr} within {timeout:?}"),
        )
    })?
}

/// Sends `message` (a line) on `stream` and reads what comes back up to its echo (after the
/// greeting line on a connection's first message), or to the end of the stream.
pub async fn echo(stream: &mut TcpStream, message: &str) -> std::io::Result<String> {
    stream.write_all(message.as_bytes()).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(message.as_bytes()) && out.contains(&b'\n') {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_tcp_and_answers_http() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(serve(listener, "pod-a".into()));
        let reply = exchange(&addr, "ping\n", Duration::from_secs(5)).await?;
        assert_eq!(reply, "hello from pod-a\nping\n");
        let reply = exchange(
            &addr,
            "GET /x HTTP/1.1\r\nhost: a\r\n\r\n",
            Duration::from_secs(5),
        )
        .await?;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("pod-a /x\n"), "{reply}");
        server.abort();
        Ok(())
    }
}
