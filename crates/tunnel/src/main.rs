//! `ambit-tunnel --node NAME (--controller HOST:PORT [--controller-identity ID] [--root-cert PEM]
//! [--token FILE] | --mesh FILE --ca-cert PEM --ca-key PEM) [--socket PATH]
//! [--mode strict|permissive] [--admin ADDR] [--metrics ADDR] [--readiness ADDR]`

use ambit_controller_client::{
    ControllerEndpoint, ControllerIssuer, StreamState, Subscriber, mesh_config, subscribe,
};
use ambit_identity::{
    CertificateAuthority, CertificateStore, LocalIssuer, RetryPolicy, TrustBundle, TrustDomain,
};
use ambit_mesh::{Mesh, MeshConfig};
use ambit_tunnel::{Config, Issuer, Node, Source, admin, metrics, node::Shared};
use anyhow::{Context, Result};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse(std::env::args().skip(1))?;
    // The node-wide runtime does rotation, admin and the mesh feed; pods get their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What the mesh source gives before anything is served.
struct Start {
    trust: TrustBundle,
    issuer: Issuer,
    mesh: Mesh,
    synced: bool,
    feed: Feed,
}

enum Feed {
    Controller(Arc<ControllerEndpoint>),
    File(PathBuf),
}

fn start(config: &Config) -> Result<Start> {
    match &config.source {
        Source::Controller {
            address,
            identity,
            root_cert,
            token,
        } => {
            let root = CertificateDer::from_pem_slice(read(root_cert)?.as_bytes())
                .with_context(|| format!("{} holds no PEM certificate", root_cert.display()))?;
            let trust_domain = identity.trust_domain().clone();
            let trust = TrustBundle::new(trust_domain.clone(), [root])?;
            let endpoint = Arc::new(ControllerEndpoint::new(
                address.clone(),
                identity.clone(),
                &trust,
                token.clone(),
            )?);
            let issuer = ControllerIssuer::new(
                endpoint.clone(),
                endpoint.channel(),
                config.cert_lifetime.unwrap_or(Duration::ZERO),
            );
            Ok(Start {
                trust,
                issuer: Issuer::Controller(issuer),
                mesh: empty_mesh(&trust_domain)?,
                synced: false,
                feed: Feed::Controller(endpoint),
            })
        }
        Source::File {
            mesh,
            ca_cert,
            ca_key,
        } => {
            let model = Mesh::from_yaml_file(mesh)?;
            let trust_domain = model.trust_domain().clone();
            let ca = CertificateAuthority::from_pem(
                trust_domain.clone(),
                &read(ca_cert)?,
                &read(ca_key)?,
            )?;
            let trust = TrustBundle::new(trust_domain, [ca.root_certificate().clone()])?;
            let lifetime = config.cert_lifetime.unwrap_or(Duration::from_secs(3600));
            Ok(Start {
                trust,
                issuer: Issuer::Local(LocalIssuer::new(Arc::new(ca), lifetime)),
                mesh: model,
                synced: true,
                feed: Feed::File(mesh.clone()),
            })
        }
    }
}

fn empty_mesh(trust_domain: &TrustDomain) -> Result<Mesh> {
    Ok(Mesh::new(MeshConfig {
        trust_domain: trust_domain.to_string(),
        ..MeshConfig::default()
    })?)
}

async fn run(config: Config) -> Result<()> {
    let start = start(&config)?;
    let shared = Arc::new(Shared::new(
        config.node.clone(),
        config.mode,
        start.trust,
        start.mesh,
        start.synced,
    ));
    let node = Node::new(
        shared.clone(),
        CertificateStore::new(start.issuer, RetryPolicy::default()),
        tokio::runtime::Handle::current(),
        config.drain_timeout,
    );
    let stream_state = match start.feed {
        Feed::Controller(endpoint) => {
            let (stream_tx, stream_state) = watch::channel(StreamState::default());
            let trust_domain = shared.mesh().trust_domain().to_string();
            let fed = node.clone();
            tokio::spawn(subscribe(
                endpoint,
                Subscriber::Node(config.node.clone()),
                stream_tx,
                move |resources| {
                    let mesh = mesh_config(&trust_domain, resources)
                        .map_err(|e| e.to_string())
                        .and_then(|c| Mesh::new(c).map_err(|e| e.to_string()))?;
                    mesh_updated(&fed, mesh);
                    Ok(())
                },
            ));
            Some(stream_state)
        }
        Feed::File(path) => {
            tokio::spawn(watch_mesh(path, node.clone()));
            None
        }
    };
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
            let mut text = m.metrics.render();
            if let Some(stream) = &stream_metrics {
                text += &metrics::render_config_stream(&stream.borrow());
            }
            (200, "text/plain; version=0.0.4", text)
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

fn stream_json(s: &StreamState) -> serde_json::Value {
    serde_json::json!({
        "connected": s.connected,
        "synced": s.synced,
        "accepted": s.accepted,
        "rejected": s.rejected,
        "lastError": s.last_error,
    })
}

/// Reloads the mesh file when it changes; a bad file keeps the last good model.
async fn watch_mesh(path: PathBuf, node: Arc<Node<Issuer>>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
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
                mesh_updated(&node, mesh);
                tracing::info!(path = %path.display(), "mesh reloaded");
            }
            Err(error) => tracing::warn!(%error, "mesh file rejected; keeping the last good one"),
        }
    }
}
