//! `ambit-tunnel`: see `--help`. Every flag has an environment variable.

use ambit_controller_client::source::{self, spawn_feed, stream_json};
use ambit_controller_client::{StreamState, Subscriber};
use ambit_handoff::{self as handoff, Request};
use ambit_identity::{CertificateStore, RetryPolicy};
use ambit_mesh::Mesh;
use ambit_tunnel::{Config, Issuer, Node, admin, node::Shared};
use anyhow::{Context, Result};
use clap::Parser as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn main() -> Result<()> {
    // Before the log: `--help` and a usage error print as clap prints them.
    let args = ambit_tunnel::config::Args::parse();
    ambit_telemetry::init_logs();
    let config = Config::from_args(args)?;
    // The node-wide runtime does rotation, admin and the mesh feed; pods get their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    // A tunnel already serving this node (a rolling upgrade) is told first thing, so it stops
    // answering ready on the port both share before the kubelet probes this pod; it hands its
    // pods over once this one has a view, and keeps serving them until then.
    let socket = config.socket.clone();
    let predecessor = tokio::task::spawn_blocking(move || {
        match handoff::send(&socket, &Request::Successor, None) {
            Ok(_) => true,
            Err(handoff::HandoffError::Refused(error)) => {
                tracing::error!(%error, "the running tunnel cannot hand this node over (an older version): it keeps the node's ports until its pod is deleted");
                false
            }
            Err(_) => false,
        }
    })
    .await?;
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
        config.handover_timeout,
    );
    let fed = node.clone();
    let stream_state = spawn_feed(
        start.feed,
        Subscriber::Node(config.node.clone()),
        &shared.trust,
        move |mesh| mesh_updated(&fed, mesh),
    );
    if predecessor {
        tracing::info!("a tunnel serves this node: taking its pods over once the mesh is synced");
        while !shared.synced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (taker, socket) = (node.clone(), config.socket.clone());
        tokio::task::spawn_blocking(move || {
            take_over(&taker, &socket);
            // Pods that could not be served yet (no certificate) are retried.
            taker.serve_held();
        })
        .await?;
    }
    let admin = serve_admin(&config, &node, stream_state).await?;

    let (listener, socket_id) = bind_socket(&config.socket)?;
    let handoff = node.clone();
    std::thread::Builder::new()
        .name("handoff".into())
        .spawn(move || handoff.serve_handoff(listener))?;
    tracing::info!(node = %config.node, socket = %config.socket.display(), mode = ?config.mode, "tunnel ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut handed_over = node.handed_over();
    let terminated = tokio::select! {
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
        _ = handed_over.wait_for(|h| *h) => false,
    };
    if terminated && node.successor_announced() {
        // Terminated while a successor starts (its pod was marked ready on this tunnel's
        // answer, or the old pod is deleted first): serve until it takes the pods.
        tracing::info!("terminated while a new tunnel starts: serving until it takes over");
        let _ = tokio::time::timeout(config.handover_timeout, handed_over.wait_for(|h| *h)).await;
    }
    if *handed_over.borrow() {
        // The successor serves the node: free the node's ports for it, and stay until the
        // pod is deleted (exiting would have the kubelet restart this container).
        tracing::info!("every pod handed over to the new tunnel; finishing open connections");
        admin.iter().for_each(tokio::task::JoinHandle::abort);
        if !terminated {
            term.recv().await;
        }
    }
    tracing::info!("draining");
    // The socket path may be the successor's by now.
    if socket_identity(&config.socket) == socket_id {
        let _ = std::fs::remove_file(&config.socket);
    }
    let draining = node.clone();
    tokio::task::spawn_blocking(move || draining.drain()).await?;
    tracing::info!("drained");
    Ok(())
}

/// Asks the tunnel on `socket` for its pods one by one and serves them on their listeners.
/// A failed exchange stops there: the pods taken are served, and the rest come back through
/// the capture agent's replay once the old tunnel is gone (exiting would drop them all).
fn take_over(node: &Node<Issuer>, socket: &Path) {
    let mut taken = 0;
    loop {
        let (reply, fds) = match handoff::exchange(socket, &Request::HandOver, None) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::error!(pods = taken, %error, "taking the pods over from the running tunnel failed; going on with those taken");
                return;
            }
        };
        let Some(pod) = reply.handed_over else {
            tracing::info!(pods = taken, "took every pod over from the running tunnel");
            return;
        };
        match node.take_over(&pod, fds) {
            Ok(()) => taken += 1,
            Err(error) => {
                tracing::warn!(uid = %pod.uid, name = %pod.name, %error, "pod handed over could not be served")
            }
        }
    }
}

/// Binds the handoff socket under a temporary name and renames it into place, so the path
/// always leads to a tunnel (the old one, then this one). Returns the socket file's identity.
fn bind_socket(path: &Path) -> Result<(UnixListener, Option<(u64, u64)>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)
        .with_context(|| format!("binding {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("moving the socket to {}", path.display()))?;
    Ok((listener, socket_identity(path)))
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Installs a new model and serves the held pods it now lists (off the runtime: serving a pod
/// waits for its certificate).
fn mesh_updated(node: &Arc<Node<Issuer>>, mesh: Mesh) {
    node.shared().set_mesh(mesh);
    let node = node.clone();
    tokio::task::spawn_blocking(move || node.serve_held());
}

/// Binds `address`, waiting up to `patience` for a tunnel this one replaces (finishing its
/// connections) to free it.
async fn bind(address: SocketAddr, what: &str, patience: Duration) -> Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match TcpListener::bind(address).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bound => return bound.with_context(|| format!("binding the {what} port {address}")),
        }
    }
}

/// Serves 15000, 15020 and 15021; the tasks' handles, to free the ports for a successor.
async fn serve_admin(
    config: &Config,
    node: &Arc<Node<Issuer>>,
    stream: Option<watch::Receiver<StreamState>>,
) -> Result<[tokio::task::JoinHandle<()>; 3]> {
    let patience = config.handover_timeout;
    let admin_listener = bind(config.admin, "admin", patience).await?;
    let metrics_listener = bind(config.metrics, "metrics", patience).await?;
    let ready_listener = bind(config.readiness, "readiness", patience).await?;
    let dump = node.clone();
    let stream_metrics = stream.clone();
    let admin = tokio::spawn(admin::serve(admin_listener, move |path| match path {
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
    let metrics = tokio::spawn(admin::serve(metrics_listener, move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            let state = stream_metrics
                .as_ref()
                .map(|stream| stream.borrow().clone());
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.metrics
                    .render(state.as_ref(), ambit_tunnel::pod::hbone_refusals()),
            )
        }
        _ => (404, "text/plain", String::new()),
    }));
    let r = node.clone();
    let ready = tokio::spawn(admin::serve(ready_listener, move |path| match path {
        "/healthz/ready" if r.ready() => (200, "text/plain", "ready\n".into()),
        "/healthz/ready" if r.successor_announced() => {
            (503, "text/plain", "a new tunnel is taking over\n".into())
        }
        "/healthz/ready" if r.shared().synced() => (503, "text/plain", "draining\n".into()),
        "/healthz/ready" => (
            503,
            "text/plain",
            "no config from the controller yet\n".into(),
        ),
        _ => (404, "text/plain", String::new()),
    }));
    Ok([admin, metrics, ready])
}
