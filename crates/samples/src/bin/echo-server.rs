//! `ambit-echo-server [PORT...]`: TCP echo + tiny HTTP/1.1 responder on each port (default 8080),
//! on all addresses. `ECHO_PORTS` (comma separated) is read when no port is given.

use anyhow::{Context, Result};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut ports: Vec<String> = std::env::args().skip(1).collect();
    if ports.is_empty() {
        ports = std::env::var("ECHO_PORTS")
            .unwrap_or_else(|_| "8080".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
    }
    let name = ambit_samples::server_name();
    let mut tasks = Vec::new();
    for port in ports {
        let port: u16 = port.parse().with_context(|| format!("bad port {port:?}"))?;
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding port {port}"))?;
        println!(
            "ambit-echo-server {name} listening on {}",
            listener.local_addr()?
        );
        tasks.push(tokio::spawn(ambit_samples::serve(listener, name.clone())));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
