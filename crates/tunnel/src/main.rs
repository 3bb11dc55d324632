//! `ambit-tunnel`: see `--help`. Every flag has an environment variable.

use ambit_controller_client::source::{self, spawn_feed, stream_json};
use ambit_controller_client::{StreamState, Subscriber};
use ambit_identity::{CertificateStore, RetryPolicy};
use ambit_mesh::Mesh;
use ambit_tunnel::{Config, Issuer, Node, admin, node::Shared};
use anyhow::{Context, Result};
use clap::Parser as _;
use std::sync::Arc;
use tokio::sync::watch;

fn main() -> Result<()> {
    // Before the log: `--help` and a usage error print as clap prints them.
    let args = ambit_tunnel::config::Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_args(args)?;
    // The node-wide runtime does rotation, admin and the mesh feed; pods get their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let start = source::start(&config.source, config.cert_lifetime)?;
    let shared = Arc::new(Shared::new(
        config.node.clone(),
        config.mode,
        start.trust,
        start.mesh,
        start.synced,
    ));
    let node = Node::new(
        shared.clone(),
        CertificateStore::new(start.issuer, RetryPolicy::default()).following(shared.trust.clone()),
        tokio::runtime::Handle::current(),
        config.drain_timeout,
    );
    let fed = node.clone();
    let stream_state = spawn_feed(
        start.feed,
        Subscriber::Node(config.node.clone()),
        &shared.trust,
        move |mesh| mesh_updated(&fed, mesh),
    );
    serve_admin(&config, &node, stream_state).await?;

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

/// Installs a new model and serves the held pods it now lists (off the runtime: serving a pod
/// waits for its certificate).
fn mesh_updated(node: &Arc<Node<Issuer>>, mesh: Mesh) {
    node.shared().set_mesh(mesh);
    let node = node.clone();
    tokio::task::spawn_blocking(move || node.serve_held());
}

async fn serve_admin(
    config: &Config,
    node: &Arc<Node<Issuer>>,
    stream: Option<watch::Receiver<StreamState>>,
) -> Result<()> {
    let admin_listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("binding the admin port {}", config.admin))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics)
        .await
        .with_context(|| format!("binding the metrics port {}", config.metrics))?;
    let ready_listener = tokio::net::TcpListener::bind(config.readiness)
        .await
        .with_context(|| format!("binding the readiness port {}", config.readiness))?;
    let dump = node.clone();
    let stream_metrics = stream.clone();
    tokio::spawn(admin::serve(admin_listener, move |path| match path {
        "/config_dump" => {
            let mut body = dump.config_dump();
            if let Some(stream) = &stream {
                body["controller"] = stream_json(&stream.borrow());
            }
            (
                200,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        _ => (404, "text/plain", "try /config_dump\n".into()),
    }));
    let m = node.shared().clone();
    tokio::spawn(admin::serve(metrics_listener, move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            let state = stream_metrics
                .as_ref()
                .map(|stream| stream.borrow().clone());
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.metrics.render(state.as_ref()),
            )
        }
        _ => (404, "text/plain", String::new()),
    }));
    let r = node.clone();
    tokio::spawn(admin::serve(ready_listener, move |path| match path {
        "/healthz/ready" if r.ready() => (200, "text/plain", "ready\n".into()),
        "/healthz/ready" if r.shared().synced() => (503, "text/plain", "draining\n".into()),
        "/healthz/ready" => (
            503,
            "text/plain",
            "no config from the controller yet\n".into(),
        ),
        _ => (404, "text/plain", String::new()),
    }));
    Ok(())
}
