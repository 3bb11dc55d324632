//! The tunnel's own HTTP endpoints: admin (`/config_dump`, localhost only), Prometheus
//! metrics and readiness. A minimal HTTP/1.1 responder: one GET per connection, bounded reads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: status, content type, body.
pub type Response = (u16, &'static str, String);

/// Serves `route(path)` on `listener` forever.
pub fn serve<F>(listener: TcpListener, route: F) -> impl Future<Output = ()>
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let route = Arc::new(route);
    async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let route = route.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT, respond(tcp, &*route)).await;
            });
        }
    }
}

async fn respond(
    mut tcp: TcpStream,
    route: &(dyn Fn(&str) -> Response + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return write(&mut tcp, (431, "text/plain", "request too large\n".into())).await;
        }
        let n = tcp.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let response = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => route(path.split('?').next().unwrap_or(path)),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    write(&mut tcp, response).await
}

async fn write(tcp: &mut TcpStream, (status, content_type, body): Response) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn routes_get_and_refuses_others() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, |path| match path {
            "/x" => (200, "text/plain", "hello".into()),
            _ => (404, "text/plain", String::new()),
        }));
        let get = |req: &'static str| async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /x?y=1 HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("hello"),
            "{ok}"
        );
        assert!(
            get("GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get("POST /x HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
    }
}
