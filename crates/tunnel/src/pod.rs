//! One enrolled pod: a thread that entered the pod's netns, and on it a single-threaded
//! runtime with the pod's three listeners. Every socket the tunnel opens for this pod (the
//! listeners, HBONE dials, connections to the app, passthrough) is created on this thread, so
//! it lives in the pod's netns: source addresses are the pod's, and the node needs no routes
//! or rules of its own. One runtime per pod keeps each connection's wakeups on one thread.

use crate::inbound::{self, InboundHandler};
use crate::node::Shared;
use crate::outbound;
use crate::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use ambit_handoff::TUNNEL_MARK;
use ambit_hbone::{
    Dialer, HbonePool, HboneServer, PoolSettings, ServerBudget, ServerSettings, TunnelRefusals,
};
use ambit_identity::{CertificateHandle, SpiffeId, server_config};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One HBONE budget for every pod's server: the connection, handshake and tunnel limits, and
/// so the memory bound of `ServerSettings`, hold for the whole node (one tunnel per node).
static HBONE_BUDGET: LazyLock<ServerBudget> =
    LazyLock::new(|| ServerBudget::new(ServerSettings::default()));

/// CONNECTs the node's HBONE servers answered 503 at a tunnel limit so far.
pub fn hbone_refusals() -> TunnelRefusals {
    HBONE_BUDGET.tunnel_refusals()
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("cannot enter the pod's network namespace: {0}")]
    Setns(std::io::Error),
    #[error(
        "cannot open listener {port} in the pod netns (is another tunnel serving it?): {source}"
    )]
    Listen { port: u16, source: std::io::Error },
    #[error("cannot start the pod's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("TLS config: {0}")]
    Tls(#[from] ambit_identity::TlsError),
    #[error("the pod's thread ended before its listeners were ready")]
    Died,
}

/// What the tunnel serves a pod as.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodSpec {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(serialize_with = "display")]
    pub identity: SpiffeId,
    pub ips: Vec<IpAddr>,
    #[serde(skip)]
    pub certificate: CertificateHandle,
}

fn display<S: serde::Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Per-pod state shared by its connections.
#[derive(Debug)]
pub struct PodContext {
    pub spec: PodSpec,
    pub shared: Arc<Shared>,
    pub pool: HbonePool,
    pub active: Arc<AtomicUsize>,
}

/// Counts a live connection of the pod, for graceful drain.
#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    pub fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        Self(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pod's listening sockets (outbound, inbound, HBONE): open ones handed over by the
/// tunnel this one replaces, or, from [`PodHandle::hand_over`], to hand to the next one.
pub type Listeners = [OwnedFd; 3];

/// A running pod; [`PodHandle::stop`] drains it.
#[derive(Debug)]
pub struct PodHandle {
    pub spec: PodSpec,
    stop: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<()>>,
    /// Copies of the listening sockets, for a successor.
    listeners: Option<Listeners>,
}

impl PodHandle {
    /// The listening sockets, to send to a successor tunnel, which accepts from them from
    /// then on: connections queued meanwhile wait, none is refused. [`PodHandle::stop`] then
    /// closes only this tunnel's copies.
    pub fn listeners(&self) -> Option<&Listeners> {
        self.listeners.as_ref()
    }

    /// Closes the listeners, lets open connections finish for up to `drain`, then ends the
    /// pod's runtime. Blocks until the thread is gone.
    pub fn stop(mut self, drain: Duration) {
        // Without a successor, a listener kept open here would queue connections that are
        // never accepted instead of refusing them.
        self.listeners = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(drain);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts serving a pod in `netns`, on `inherited` listeners (a predecessor's) or new ones;
/// returns once its listeners are open.
pub fn spawn(
    spec: PodSpec,
    netns: OwnedFd,
    inherited: Option<Listeners>,
    shared: Arc<Shared>,
) -> Result<PodHandle, PodError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread_spec = spec.clone();
    let thread = std::thread::Builder::new()
        .name(format!("pod-{}", spec.name))
        .spawn(move || {
            if let Err(error) = run(thread_spec, netns, inherited, shared, stop_rx, &ready_tx) {
                let _ = ready_tx.send(Err(error));
            }
        })
        .map_err(PodError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(listeners)) => Ok(PodHandle {
            spec,
            stop: Some(stop_tx),
            thread: Some(thread),
            listeners: Some(listeners),
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(PodError::Died)
        }
    }
}

/// The listener on `port`: the inherited socket, or a new one.
async fn listen(port: u16, inherited: Option<OwnedFd>) -> Result<TcpListener, PodError> {
    let listener = match inherited {
        Some(fd) => {
            let std = std::net::TcpListener::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std))
        }
        None => TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)).await,
    };
    listener.map_err(|source| PodError::Listen { port, source })
}

fn copy(listener: &TcpListener) -> std::io::Result<OwnedFd> {
    listener.as_fd().try_clone_to_owned()
}

fn run(
    spec: PodSpec,
    netns: OwnedFd,
    inherited: Option<Listeners>,
    shared: Arc<Shared>,
    stop: oneshot::Receiver<Duration>,
    ready: &std::sync::mpsc::Sender<Result<Listeners, PodError>>,
) -> Result<(), PodError> {
    // setns(2) moves only this thread; every socket created here on is in the pod's netns.
    move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| PodError::Setns(e.into()))?;
    drop(netns);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PodError::Runtime)?;
    runtime.block_on(async move {
        let [outbound_fd, inbound_fd, hbone_fd] = inherited.map_or([None, None, None], |l| l.map(Some));
        let outbound_listener = listen(OUTBOUND_PORT, outbound_fd).await?;
        let inbound_listener = listen(INBOUND_PORT, inbound_fd).await?;
        let hbone_listener = listen(HBONE_PORT, hbone_fd).await?;
        let copies = [&outbound_listener, &inbound_listener, &hbone_listener]
            .map(copy);
        let [Ok(o), Ok(i), Ok(h)] = copies else {
            return Err(PodError::Runtime(std::io::Error::other("cannot copy a listener fd")));
        };
        let dialer = Dialer::new(shared.trust.clone(), PoolSettings::default())
            .with_socket_mark(TUNNEL_MARK);
        let identities: HashMap<SpiffeId, CertificateHandle> =
            HashMap::from([(spec.identity.clone(), spec.certificate.clone())]);
        let pool = HbonePool::new(dialer, Arc::new(identities));
        let tls = server_config(spec.certificate.clone(), &shared.trust)?;
        let active = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(PodContext {
            spec,
            shared,
            pool,
            active: active.clone(),
        });
        let hbone = HboneServer::with_budget(
            tls,
            &ctx.shared.trust,
            HBONE_BUDGET.clone(),
            InboundHandler { ctx: ctx.clone() },
        );
        let _ = ready.send(Ok([o, i, h]));
        tracing::info!(pod = %ctx.spec.name, namespace = %ctx.spec.namespace, identity = %ctx.spec.identity, "serving pod");
        let server = hbone.clone();
        let drain = tokio::select! {
            _ = server.serve(hbone_listener) => Duration::ZERO,
            _ = outbound::serve(ctx.clone(), outbound_listener) => Duration::ZERO,
            _ = inbound::serve_plaintext(ctx.clone(), inbound_listener) => Duration::ZERO,
            drain = stop => drain.unwrap_or(Duration::ZERO),
        };
        // Listeners are closed now (a successor may accept on its copies); HBONE clients
        // open new tunnels on new connections, open connections get until the deadline.
        hbone.go_away();
        let deadline = tokio::time::Instant::now() + drain;
        while active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(pod = %ctx.spec.name, left = active.load(Ordering::Relaxed), "pod drained");
        Ok::<(), PodError>(())
    })
}
