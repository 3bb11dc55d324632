//! What every connection of the waypoint reads: the served account, the current mesh model,
//! readiness and draining.

use crate::access_log::AccessLog;
use crate::http::span::Tracing;
use crate::metrics::Metrics;
use ambit_controller_client::StreamState;
use ambit_identity::SpiffeId;
use ambit_mesh::{LiveMesh, Mesh};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Shared {
    /// `(namespace, service account)` whose traffic this waypoint handles.
    pub namespace: String,
    pub for_service_account: String,
    /// The waypoint's own identity, presented in and out.
    pub identity: SpiffeId,
    /// Shared with the layers that count on their own (retries).
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Makes each request's span when OTLP export is on.
    pub tracer: Option<Tracing>,
    mesh: LiveMesh,
    certified: AtomicBool,
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    stream: OnceLock<watch::Receiver<StreamState>>,
}

impl Shared {
    pub fn new(
        namespace: String,
        for_service_account: String,
        identity: SpiffeId,
        mesh: Mesh,
        synced: bool,
        access_log: AccessLog,
        tracer: Option<Tracing>,
    ) -> Self {
        Self {
            namespace,
            for_service_account,
            identity,
            metrics: Arc::default(),
            access_log,
            tracer,
            mesh: LiveMesh::new(mesh, synced),
            certified: AtomicBool::new(false),
            draining: watch::channel(false).0,
            active: AtomicUsize::new(0),
            stream: OnceLock::new(),
        }
    }

    /// The current model; a request keeps the one it started with.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.get()
    }

    /// Serves `mesh` from now on. Routes it could not compile were left out alone: each is
    /// logged, since the controller does not check everything the waypoint compiles.
    pub fn set_mesh(&self, mesh: Mesh) {
        for error in mesh.route_errors() {
            tracing::warn!(%error, "route left out");
        }
        self.mesh.set(mesh);
    }

    pub fn served(&self) -> (&str, &str) {
        (&self.namespace, &self.for_service_account)
    }

    pub fn set_certified(&self) {
        self.certified.store(true, Ordering::Release);
    }

    pub fn synced(&self) -> bool {
        self.mesh.synced()
    }

    /// Ready: a certificate and a config, and not draining.
    pub fn ready(&self) -> bool {
        self.synced() && self.certified.load(Ordering::Acquire) && !self.draining()
    }

    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Flips to `true` when draining starts.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Counts an open downstream connection until the guard drops.
    pub fn active_guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn set_stream(&self, stream: watch::Receiver<StreamState>) {
        let _ = self.stream.set(stream);
    }

    pub fn stream(&self) -> Option<StreamState> {
        self.stream.get().map(|s| s.borrow().clone())
    }
}

#[derive(Debug)]
pub struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
