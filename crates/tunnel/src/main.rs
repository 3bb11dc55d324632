//! `ambit-tunnel --node NAME --mesh FILE --ca-cert PEM --ca-key PEM [--socket PATH]
//! [--mode strict|permissive] [--admin ADDR] [--metrics ADDR] [--readiness ADDR]`

use ambit_identity::{
    CertificateAuthority, CertificateStore, LocalIssuer, RetryPolicy, TrustBundle,
};
use ambit_mesh::Mesh;
use ambit_tunnel::{Config, admin, node::Shared};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse(std::env::args().skip(1))?;
    // The node-wide runtime does rotation, admin and the mesh watch; pods get their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let mesh = Mesh::from_yaml_file(&config.mesh_file)?;
    let trust_domain = mesh.trust_domain().clone();
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let ca = CertificateAuthority::from_pem(
        trust_domain.clone(),
        &read(&config.ca_cert)?,
        &read(&config.ca_key)?,
    )?;
    let trust = TrustBundle::new(trust_domain, [ca.root_certificate().clone()])?;
    let issuer = LocalIssuer::new(Arc::new(ca), config.cert_lifetime);
    let shared = Arc::new(Shared::new(config.node.clone(), config.mode, trust, mesh));
    let node = ambit_tunnel::Node::new(
        shared.clone(),
        CertificateStore::new(issuer, RetryPolicy::default()),
        tokio::runtime::Handle::current(),
        config.drain_timeout,
    );

    let admin_listener = tokio::net::TcpListener::bind(config.admin).await?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics).await?;
    let ready_listener = tokio::net::TcpListener::bind(config.readiness).await?;
    let dump = node.clone();
    tokio::spawn(admin::serve(admin_listener, move |path| match path {
        "/config_dump" => (
            200,
            "application/json",
            serde_json::to_string_pretty(&dump.config_dump()).unwrap_or_default(),
        ),
        _ => (404, "text/plain", "try /config_dump\n".into()),
    }));
    let m = shared.clone();
    tokio::spawn(admin::serve(metrics_listener, move |path| match path {
        "/metrics" | "/stats/prometheus" => (200, "text/plain; version=0.0.4", m.metrics.render()),
        _ => (404, "text/plain", String::new()),
    }));
    let r = node.clone();
    tokio::spawn(admin::serve(ready_listener, move |path| match path {
        "/healthz/ready" if r.ready() => (200, "text/plain", "ready\n".into()),
        "/healthz/ready" => (503, "text/plain", "draining\n".into()),
        _ => (404, "text/plain", String::new()),
    }));
    tokio::spawn(watch_mesh(config.mesh_file.clone(), shared.clone()));

    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = std::os::unix::net::UnixListener::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    let handoff = node.clone();
    std::thread::Builder::new()
        .name("handoff".into())
        .spawn(move || handoff.serve_handoff(listener))?;
    tracing::info!(node = %config.node, socket = %config.socket.display(), mode = ?config.mode, "tunnel ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("draining");
    let _ = std::fs::remove_file(&config.socket);
    let draining = node.clone();
    tokio::task::spawn_blocking(move || draining.drain()).await?;
    tracing::info!("drained");
    Ok(())
}

/// Reloads the mesh file when it changes; a bad file keeps the last good model.
async fn watch_mesh(path: std::path::PathBuf, shared: Arc<Shared>) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = modified(&path);
        if now == last {
            continue;
        }
        last = now;
        match Mesh::from_yaml_file(&path) {
            Ok(mesh) => {
                shared.set_mesh(mesh);
                tracing::info!(path = %path.display(), "mesh reloaded");
            }
            Err(error) => tracing::warn!(%error, "mesh file rejected; keeping the last good one"),
        }
    }
}
