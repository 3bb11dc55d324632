//! Node-wide state: the mesh model, the certificate store, the pods served, and the handoff
//! socket through which the capture agent hands pods over.

use crate::config::Mode;
use crate::metrics::Metrics;
use crate::pod::{self, Listeners, PodError, PodHandle, PodSpec};
use ambit_handoff::{self as handoff, EnrolledPod, Enrollment, HandedOver, Reply, Request};
use ambit_identity::{CertificateIssuer, CertificateStore, IdentityLease, StoreError, TrustBundle};
use ambit_mesh::{LiveMesh, Mesh};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "pod {uid} runs on node {node}, not here: this tunnel holds only its own node's identities"
    )]
    OtherNode { uid: String, node: String },
    #[error(transparent)]
    Certificate(#[from] StoreError),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("the tunnel is draining")]
    Draining,
    #[error("a new tunnel is taking this node over; retry")]
    Superseded,
    #[error("the tunnel has no mesh config yet (is the controller reachable?); retry")]
    NotSynced,
    #[error("the sockets handed over with pod {uid} are not listeners on the tunnel ports")]
    ForeignSockets { uid: String },
}

/// What every pod's connections read: immutable config plus the live mesh model.
#[derive(Debug)]
pub struct Shared {
    pub node: String,
    pub mode: Mode,
    pub trust: TrustBundle,
    pub metrics: Metrics,
    /// The model; `synced` once it came from its source (the controller's first delta, or
    /// the file): before that, enrollment is unknown rather than empty.
    mesh: LiveMesh,
}

impl Shared {
    /// `mesh` is the starting model; `synced` says whether it already came from the source.
    pub fn new(node: String, mode: Mode, trust: TrustBundle, mesh: Mesh, synced: bool) -> Self {
        Self {
            node,
            mode,
            trust,
            metrics: Metrics::default(),
            mesh: LiveMesh::new(mesh, synced),
        }
    }

    pub fn synced(&self) -> bool {
        self.mesh.synced()
    }

    /// The current mesh snapshot.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh.get()
    }

    pub fn set_mesh(&self, mesh: Mesh) {
        self.mesh.set(mesh);
    }
}

/// A pod the tunnel will serve once the mesh gives its addresses (and identity), or once its
/// certificate comes.
struct Held {
    name: String,
    namespace: String,
    netns: OwnedFd,
    /// Taken over from a predecessor: kept open, so connections wait in the accept queue
    /// rather than being refused until the pod is served.
    listeners: Option<Listeners>,
}

/// How soon a held pod that could not be served is tried again.
const HELD_RETRY: Duration = Duration::from_secs(2);
/// How long a pod handed over waits for its first certificate, through the CA's refusals: the
/// CA signs only once the node's capture agent has published the pod as captured (its next
/// tick, 500 ms, then the CA's watch), and refuses before.
const CERTIFICATE_PATIENCE: Duration = Duration::from_secs(5);

/// What to do with a pod handed over.
enum Decision {
    Serve,
    Hold,
    Skip,
}

struct Served {
    pod: PodHandle,
    /// Kept for a successor tunnel.
    netns_fd: OwnedFd,
    /// (device, inode) of the pod's netns: equal for two fds of the same namespace.
    netns: Option<(u64, u64)>,
    // Held while the pod is served; the store forgets the identity with its last lease.
    _lease: IdentityLease,
}

/// Whether handed-over listeners are bound to the tunnel ports, in their order (outbound,
/// inbound, HBONE): the predecessor is trusted with the netns, but a mix-up must not have a
/// pod served on some other socket.
fn on_tunnel_ports(listeners: &Listeners) -> bool {
    let ports = [crate::OUTBOUND_PORT, crate::INBOUND_PORT, crate::HBONE_PORT];
    listeners.iter().zip(ports).all(|(listener, port)| {
        socket2::SockRef::from(listener)
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .is_some_and(|address| address.port() == port)
    })
}

fn netns_identity(fd: &OwnedFd) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(fd.try_clone().ok()?);
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

pub struct Node<I> {
    shared: Arc<Shared>,
    store: CertificateStore<I>,
    pods: Mutex<HashMap<String, Served>>,
    held: Mutex<HashMap<String, Held>>,
    runtime: tokio::runtime::Handle,
    draining: AtomicBool,
    drain_timeout: Duration,
    /// How long an announced successor has to start taking the pods over.
    handover_timeout: Duration,
    /// When a new tunnel announced itself ([`Request::Successor`]): not ready from then on,
    /// unless it never asks for the pods (it died starting).
    successor: Mutex<Option<Instant>>,
    /// Handing pods over ([`Request::HandOver`]): no new pod is taken.
    superseded: AtomicBool,
    /// Every pod handed over: the successor serves this node.
    handed_over: tokio::sync::watch::Sender<bool>,
    /// Pods handed over, finishing their open connections here.
    finishing: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<I> std::fmt::Debug for Node<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<I: CertificateIssuer> Node<I> {
    /// `runtime` is where certificate rotation runs.
    pub fn new(
        shared: Arc<Shared>,
        store: CertificateStore<I>,
        runtime: tokio::runtime::Handle,
        drain_timeout: Duration,
        handover_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            store,
            pods: Mutex::default(),
            held: Mutex::default(),
            runtime,
            draining: AtomicBool::new(false),
            drain_timeout,
            handover_timeout,
            successor: Mutex::default(),
            superseded: AtomicBool::new(false),
            handed_over: tokio::sync::watch::Sender::new(false),
            finishing: Mutex::default(),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn decide(&self, mesh: &Mesh, uid: &str, namespace: &str) -> Result<Decision, NodeError> {
        Ok(match mesh.workload_by_uid(uid) {
            Some(w) if w.node != self.shared.node => {
                return Err(NodeError::OtherNode {
                    uid: uid.to_owned(),
                    node: w.node.clone(),
                });
            }
            Some(w) if !w.hbone => Decision::Skip,
            Some(w) if w.ips.is_empty() => Decision::Hold,
            Some(_) => Decision::Serve,
            // Not listed yet, in an enrolled namespace: captured and held, so it fails closed
            // until the mesh catches up rather than starting in plaintext.
            None if mesh.namespace_enrolled(namespace) => Decision::Hold,
            None => Decision::Skip,
        })
    }

    /// Takes a pod handed over by the capture agent; `Ok(true)`: capture it (served now, or
    /// held until the mesh lists its addresses), `Ok(false)`: not enrolled, nothing kept.
    /// Blocking: call it off the async runtime.
    pub fn add_pod(
        &self,
        uid: &str,
        name: &str,
        namespace: &str,
        netns: OwnedFd,
    ) -> Result<bool, NodeError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(NodeError::Draining);
        }
        if self.superseded.load(Ordering::Relaxed) {
            return Err(NodeError::Superseded);
        }
        // Without a view, "not enrolled" would be a guess that starts pods in plaintext.
        if !self.shared.synced() {
            return Err(NodeError::NotSynced);
        }
        let mesh = self.shared.mesh();
        match self.decide(&mesh, uid, namespace)? {
            Decision::Serve => {
                lock(&self.held).remove(uid);
                self.serve(&mesh, uid, netns, &mut None)?;
                Ok(true)
            }
            Decision::Hold => {
                let held = Held {
                    name: name.to_owned(),
                    namespace: namespace.to_owned(),
                    netns,
                    listeners: None,
                };
                let mut pods_held = lock(&self.held);
                // As in `serve`: `hand_over` may have emptied `held` since the check above.
                if self.superseded.load(Ordering::Relaxed) {
                    return Err(NodeError::Superseded);
                }
                pods_held.insert(uid.to_owned(), held);
                tracing::info!(%uid, %name, %namespace, "pod held until the mesh lists its addresses");
                Ok(true)
            }
            Decision::Skip => Ok(false),
        }
    }

    /// Serves the held pods the mesh now lists; drops those it says are not enrolled. A pod
    /// that cannot be served yet (no certificate: the CA is away) stays held and is retried.
    /// Blocking: call it off the async runtime.
    pub fn serve_held(self: &Arc<Self>) {
        let mesh = self.shared.mesh();
        let mut retry = false;
        let uids: Vec<String> = lock(&self.held).keys().cloned().collect();
        for uid in uids {
            let Some(mut held) = lock(&self.held).remove(&uid) else {
                continue;
            };
            match self.decide(&mesh, &uid, &held.namespace) {
                Ok(Decision::Serve) => {}
                Ok(Decision::Hold) => {
                    lock(&self.held).insert(uid, held);
                    continue;
                }
                Ok(Decision::Skip) => {
                    tracing::info!(%uid, name = %held.name, "held pod is not enrolled after all");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%uid, name = %held.name, %error, "held pod dropped");
                    continue;
                }
            }
            let served = held
                .netns
                .try_clone()
                .map_err(|e| NodeError::Pod(PodError::Setns(e)))
                .and_then(|netns| self.serve(&mesh, &uid, netns, &mut held.listeners));
            match served {
                Ok(()) => {
                    tracing::info!(%uid, name = %held.name, namespace = %held.namespace, "held pod served")
                }
                Err(error) => {
                    tracing::warn!(%uid, name = %held.name, %error, "held pod could not be served; retrying");
                    // A newer handover of the same pod wins.
                    lock(&self.held).entry(uid).or_insert(held);
                    retry = true;
                }
            }
        }
        if retry {
            let node = self.clone();
            self.runtime.spawn(async move {
                tokio::time::sleep(HELD_RETRY).await;
                let _ = tokio::task::spawn_blocking(move || node.serve_held()).await;
            });
        }
    }

    /// `listeners` (a predecessor's) are used once the pod runs, and left in place if it
    /// cannot be served yet.
    fn serve(
        &self,
        mesh: &Mesh,
        uid: &str,
        netns: OwnedFd,
        listeners: &mut Option<Listeners>,
    ) -> Result<(), NodeError> {
        let Some(workload) = mesh.workload_by_uid(uid) else {
            return Ok(());
        };
        let Some(identity) = mesh.identity(workload).cloned() else {
            return Ok(());
        };
        // The same pod handed over again (the agent restarted and replays) keeps being served
        // with its open connections; a pod with a new netns replaces the old serving.
        let netns_id = netns_identity(&netns);
        {
            let mut pods = lock(&self.pods);
            if let Some(served) = pods.get(uid)
                && served.netns.is_some()
                && served.netns == netns_id
            {
                return Ok(());
            }
            if let Some(old) = pods.remove(uid) {
                drop(pods);
                old.pod.stop(Duration::ZERO);
            }
        }
        let lease = self
            .runtime
            .block_on(self.store.acquire_within(&identity, CERTIFICATE_PATIENCE))?;
        let spec = PodSpec {
            uid: uid.to_owned(),
            name: workload.name.clone(),
            namespace: workload.namespace.clone(),
            identity,
            ips: workload.ips.clone(),
            certificate: lease.handle(),
        };
        let netns_fd = netns
            .try_clone()
            .map_err(|e| NodeError::Pod(PodError::Setns(e)))?;
        // Checked under the lock `hand_over` sets it under, after the certificate wait: a pod
        // served once the successor heard "none left" would keep ports it can never get.
        let mut pods = lock(&self.pods);
        if self.superseded.load(Ordering::Relaxed) {
            return Err(NodeError::Superseded);
        }
        let pod = pod::spawn(spec, netns, listeners.take(), self.shared.clone())?;
        let served = Served {
            pod,
            netns_fd,
            netns: netns_id,
            _lease: lease,
        };
        pods.insert(uid.to_owned(), served);
        Ok(())
    }

    /// This node's enrollment as the mesh has it, for the capture agent's reconcile.
    pub fn enrollment(&self) -> Enrollment {
        let mesh = self.shared.mesh();
        let mut enrollment = Enrollment {
            synced: self.shared.synced(),
            namespaces: mesh.config().namespaces.clone(),
            ..Enrollment::default()
        };
        for w in mesh.workloads_on(&self.shared.node) {
            if w.hbone {
                enrollment.pods.push(EnrolledPod {
                    uid: w.uid.clone(),
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    ips: w.ips.clone(),
                });
            } else {
                enrollment.opted_out.push(w.uid.clone());
            }
        }
        enrollment
    }

    /// A successor announced itself: report not ready (so its pod is not marked ready by this
    /// tunnel's answer on the readiness port) and keep serving until it takes the pods.
    pub fn announce_successor(&self) {
        *lock(&self.successor) = Some(Instant::now());
    }

    /// Gives up one pod to the successor: `send` answers with it and its fds (netns, then the
    /// listeners if served). The pod is given up only once `send` succeeded (else it stays
    /// here); its open connections then finish here, up to the drain timeout. `None` in the
    /// answer: none left, and [`Node::handed_over`] says so from then on.
    pub fn hand_over<E>(
        &self,
        send: impl FnOnce(&Reply, &[BorrowedFd<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let served = {
            let mut pods = lock(&self.pods);
            self.superseded.store(true, Ordering::Relaxed);
            let uid = pods.keys().next().cloned();
            uid.and_then(|uid| pods.remove_entry(&uid))
        };
        if let Some((uid, served)) = served {
            let mut fds = vec![served.netns_fd.as_fd()];
            fds.extend(
                served
                    .pod
                    .listeners()
                    .into_iter()
                    .flatten()
                    .map(|l| l.as_fd()),
            );
            let spec = &served.pod.spec;
            let handed = HandedOver {
                uid: spec.uid.clone(),
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                listening: fds.len() == handoff::HANDED_OVER_FDS,
            };
            if let Err(error) = send(&Self::handing(handed), &fds) {
                lock(&self.pods).entry(uid).or_insert(served);
                return Err(error);
            }
            let (pod, drain) = (served.pod, self.drain_timeout);
            lock(&self.finishing).push(std::thread::spawn(move || pod.stop(drain)));
            return Ok(());
        }
        let held = {
            let mut held = lock(&self.held);
            let uid = held.keys().next().cloned();
            uid.and_then(|uid| held.remove_entry(&uid))
        };
        let Some((uid, held)) = held else {
            send(&Reply::ok(), &[])?;
            self.handed_over.send_replace(true);
            return Ok(());
        };
        let mut fds = vec![held.netns.as_fd()];
        fds.extend(held.listeners.iter().flatten().map(|l| l.as_fd()));
        let handed = HandedOver {
            uid: uid.clone(),
            name: held.name.clone(),
            namespace: held.namespace.clone(),
            listening: fds.len() == handoff::HANDED_OVER_FDS,
        };
        if let Err(error) = send(&Self::handing(handed), &fds) {
            lock(&self.held).entry(uid).or_insert(held);
            return Err(error);
        }
        Ok(())
    }

    /// The answer handing `pod` over.
    fn handing(pod: HandedOver) -> Reply {
        tracing::info!(uid = %pod.uid, name = %pod.name, namespace = %pod.namespace, "pod handed over to the new tunnel");
        Reply {
            handed_over: Some(pod),
            ..Reply::ok()
        }
    }

    /// Takes a pod handed over by the tunnel this one replaces; its listeners, if any, are
    /// served as they are. A pod this view would not serve is held or dropped as
    /// [`Node::add_pod`] would; one that cannot be served now (no certificate) is held with
    /// its listeners, fails closed, and is retried by [`Node::serve_held`]. Blocking: call it
    /// off the async runtime.
    pub fn take_over(&self, pod: &HandedOver, fds: Vec<OwnedFd>) -> Result<(), NodeError> {
        let mut fds = fds.into_iter();
        let netns = fds.next().ok_or(NodeError::Pod(PodError::Died))?;
        let mut listeners: Option<Listeners> = fds.collect::<Vec<_>>().try_into().ok();
        if listeners.as_ref().is_some_and(|l| !on_tunnel_ports(l)) {
            return Err(NodeError::ForeignSockets {
                uid: pod.uid.clone(),
            });
        }
        let mesh = self.shared.mesh();
        let hold = |netns, listeners| {
            let held = Held {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                netns,
                listeners,
            };
            lock(&self.held).insert(pod.uid.clone(), held);
        };
        match self.decide(&mesh, &pod.uid, &pod.namespace)? {
            Decision::Serve => {
                let kept = netns
                    .try_clone()
                    .map_err(|e| NodeError::Pod(PodError::Setns(e)))?;
                let served = self.serve(&mesh, &pod.uid, netns, &mut listeners);
                served.inspect_err(|_| hold(kept, listeners.take()))
            }
            Decision::Skip => Ok(()),
            Decision::Hold => {
                hold(netns, listeners);
                Ok(())
            }
        }
    }

    /// A successor is taking over: it asked for the pods, or announced itself less than the
    /// handover timeout ago (past that, it is taken for dead and this tunnel is ready again).
    pub fn successor_announced(&self) -> bool {
        self.superseded.load(Ordering::Relaxed)
            || lock(&self.successor).is_some_and(|at| at.elapsed() < self.handover_timeout)
    }

    /// Turns true once every pod was handed over to a successor.
    pub fn handed_over(&self) -> tokio::sync::watch::Receiver<bool> {
        self.handed_over.subscribe()
    }

    /// Stops serving a pod (deleted or opted out); unknown pods are not an error.
    pub fn remove_pod(&self, uid: &str) {
        lock(&self.held).remove(uid);
        let served = lock(&self.pods).remove(uid);
        if let Some(served) = served {
            served.pod.stop(self.drain_timeout);
        }
    }

    /// Serves the capture agent's handoff socket, one thread per request (a certificate
    /// request may take a while; other pods need not wait). Blocking; run it on its own thread.
    pub fn serve_handoff(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let node = self.clone();
            let spawned = std::thread::Builder::new()
                .name("handoff-request".into())
                .spawn(move || node.handle_request(&stream));
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start a handoff thread");
            }
        }
    }

    fn handle_request(&self, stream: &std::os::unix::net::UnixStream) {
        let reply = match handoff::receive(stream) {
            Ok((
                Request::Add {
                    uid,
                    name,
                    namespace,
                },
                Some(fd),
            )) => match self.add_pod(&uid, &name, &namespace, fd) {
                Ok(capture) => {
                    tracing::info!(%uid, %name, %namespace, capture, "pod handed over");
                    Reply {
                        capture,
                        mode: self.shared.mode,
                        ..Reply::ok()
                    }
                }
                Err(error) => {
                    tracing::warn!(%uid, %name, %namespace, %error, "pod refused");
                    Reply::refused(error.to_string())
                }
            },
            Ok((Request::Add { .. }, None)) => Reply::refused("Add without a netns fd"),
            Ok((Request::Remove { uid }, _)) => {
                self.remove_pod(&uid);
                tracing::info!(%uid, "pod released");
                Reply::ok()
            }
            Ok((Request::Enrollment, _)) => Reply {
                enrollment: Some(self.enrollment()),
                ..Reply::ok()
            },
            Ok((Request::Successor, _)) => {
                tracing::info!("a new tunnel is starting on this node; it will take the pods over");
                self.announce_successor();
                Reply::ok()
            }
            Ok((Request::HandOver, _)) => {
                let sent =
                    self.hand_over(|reply, fds| handoff::answer_with_fds(stream, reply, fds));
                if let Err(error) = sent {
                    tracing::warn!(%error, "the new tunnel did not get its pod; it stays here");
                }
                return;
            }
            Err(error) => Reply::refused(error.to_string()),
        };
        let _ = handoff::answer(stream, &reply);
    }

    /// Graceful drain: refuse new pods, close every listener, let connections finish.
    /// Blocking.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        lock(&self.held).clear();
        let pods: Vec<Served> = lock(&self.pods).drain().map(|(_, s)| s).collect();
        let timeout = self.drain_timeout;
        let threads: Vec<_> = pods
            .into_iter()
            .map(|served| std::thread::spawn(move || served.pod.stop(timeout)))
            .collect();
        let finishing = std::mem::take(&mut *lock(&self.finishing));
        for t in threads.into_iter().chain(finishing) {
            let _ = t.join();
        }
    }

    /// The config dump: what is served and as whom. Never any key material.
    pub fn config_dump(&self) -> serde_json::Value {
        let pods: Vec<PodSpec> = lock(&self.pods)
            .values()
            .map(|s| s.pod.spec.clone())
            .collect();
        let certificates: Vec<serde_json::Value> = pods
            .iter()
            .filter_map(|p| {
                let cert = p.certificate.current()?;
                let unix = |t: std::time::SystemTime| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                };
                Some(serde_json::json!({
                    "identity": cert.identity().to_string(),
                    "notBefore": unix(cert.not_before()),
                    "notAfter": unix(cert.not_after()),
                }))
            })
            .collect();
        let identities: Vec<String> = self
            .store
            .identities()
            .iter()
            .map(|i| i.to_string())
            .collect();
        let held: Vec<serde_json::Value> = lock(&self.held)
            .iter()
            .map(|(uid, h)| serde_json::json!({"uid": uid, "name": h.name, "namespace": h.namespace}))
            .collect();
        serde_json::json!({
            "node": self.shared.node,
            "mode": self.shared.mode,
            "ready": self.ready(),
            "synced": self.shared.synced(),
            "pods": pods,
            "heldPods": held,
            "identities": identities,
            "certificates": certificates,
            "mesh": self.shared.mesh().config(),
        })
    }

    /// Has its mesh from the source, is not draining and no successor is taking over.
    pub fn ready(&self) -> bool {
        self.shared.synced()
            && !self.draining.load(Ordering::Relaxed)
            && !self.successor_announced()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ambit_identity::testing::TestPki;
    use ambit_identity::{IssueError, LocalIssuer, RetryPolicy, SpiffeId};
    use rustls_pki_types::CertificateDer;

    /// `srv` is served (addresses and identity); any other pod of `demo` is held.
    const MESH: &str = r#"
namespaces: [demo]
workloads:
  - {uid: srv, name: server, namespace: demo, serviceAccount: server, node: n1, ips: [10.1.0.3]}
"#;
    const HANDOVER_TIMEOUT: Duration = Duration::from_millis(300);

    /// The test CA, answering only once `open` says so, and refusing while `refusing`.
    #[derive(Clone)]
    struct GatedIssuer {
        inner: LocalIssuer,
        open: tokio::sync::watch::Sender<bool>,
        refusing: Arc<AtomicBool>,
    }

    impl CertificateIssuer for GatedIssuer {
        async fn issue(
            &self,
            identity: &SpiffeId,
            csr_der: &[u8],
        ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            if self.refusing.load(Ordering::Relaxed) {
                return Err("the pod is not captured yet".into());
            }
            self.inner.issue(identity, csr_der).await
        }
    }

    struct Fixture {
        node: Arc<Node<GatedIssuer>>,
        issuer: GatedIssuer,
        _runtime: tokio::runtime::Runtime,
    }

    fn fixture() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pki = TestPki::new("cluster.local");
        let issuer = GatedIssuer {
            inner: LocalIssuer::new(pki.ca.clone(), Duration::from_secs(600)),
            open: tokio::sync::watch::Sender::new(true),
            refusing: Arc::default(),
        };
        let mesh = Mesh::new(ambit_mesh::MeshConfig::from_yaml(MESH).unwrap()).unwrap();
        let shared = Arc::new(Shared::new(
            "n1".into(),
            Mode::Strict,
            pki.bundle(),
            mesh,
            true,
        ));
        let store = CertificateStore::new(issuer.clone(), RetryPolicy::default());
        let node = Node::new(
            shared,
            store,
            runtime.handle().clone(),
            Duration::ZERO,
            HANDOVER_TIMEOUT,
        );
        Fixture {
            node,
            issuer,
            _runtime: runtime,
        }
    }

    #[test]
    fn a_successor_that_never_asks_for_the_pods_expires() {
        let f = fixture();
        assert!(f.node.ready());
        f.node.announce_successor();
        assert!(!f.node.ready());
        assert!(f.node.successor_announced());
        let deadline = Instant::now() + 10 * HANDOVER_TIMEOUT;
        while !f.node.ready() {
            assert!(Instant::now() < deadline, "still not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!f.node.successor_announced());
    }

    /// One pod handed over, as the successor gets it (the fds duplicated).
    fn handed(node: &Node<GatedIssuer>) -> (Reply, Vec<OwnedFd>) {
        let mut got = None;
        node.hand_over(|reply, fds| {
            let fds: std::io::Result<Vec<_>> =
                fds.iter().map(|fd| fd.try_clone_to_owned()).collect();
            got = Some((reply.clone(), fds?));
            std::io::Result::Ok(())
        })
        .unwrap();
        got.unwrap()
    }

    /// Pod `srv`, as a predecessor hands it over.
    fn server() -> HandedOver {
        HandedOver {
            uid: "srv".into(),
            name: "server".into(),
            namespace: "demo".into(),
            listening: true,
        }
    }
    const TUNNEL_PORTS: [u16; 3] = [crate::OUTBOUND_PORT, crate::INBOUND_PORT, crate::HBONE_PORT];

    /// A netns and three listeners on `ports`, as a predecessor hands a pod over. On an
    /// address of their own (the host's netns; tunnels listen in pods' netns).
    fn handed_fds(ports: [u16; 3]) -> Vec<OwnedFd> {
        let mut fds = vec![netns()];
        for port in ports {
            let listener = std::net::TcpListener::bind(("127.77.0.1", port)).unwrap();
            fds.push(listener.into());
        }
        fds
    }

    /// Any fd for a pod's netns: the pods of these tests never get as far as entering it.
    fn netns() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn a_pod_added_while_the_node_is_handed_over_is_refused() {
        let f = fixture();
        f.issuer.open.send_replace(false);
        let node = f.node.clone();
        let adding = std::thread::spawn(move || node.add_pod("srv", "server", "demo", netns()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.issuer.open.receiver_count() == 0 {
            assert!(Instant::now() < deadline, "no certificate asked for");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The successor hears "none left" while the pod waits for its certificate.
        let (reply, fds) = handed(&f.node);
        assert!(reply.handed_over.is_none() && fds.is_empty());
        assert!(*f.node.handed_over().borrow());
        f.issuer.open.send_replace(true);
        let added = adding.join().unwrap();
        assert!(matches!(added, Err(NodeError::Superseded)), "{added:?}");
        assert_eq!(f.node.config_dump()["pods"], serde_json::json!([]));
    }

    #[test]
    fn a_pod_whose_certificate_is_refused_at_takeover_keeps_its_listeners() {
        let f = fixture();
        f.issuer.refusing.store(true, Ordering::Relaxed);
        let taken = f.node.take_over(&server(), handed_fds(TUNNEL_PORTS));
        assert!(matches!(taken, Err(NodeError::Certificate(_))), "{taken:?}");
        assert_eq!(f.node.config_dump()["heldPods"][0]["uid"], "srv");
        // Still open: the pod is handed on with the same sockets.
        let (reply, fds) = handed(&f.node);
        assert!(reply.handed_over.unwrap().listening);
        let handed: Vec<u16> = fds[1..]
            .iter()
            .map(|fd| {
                let listener = std::net::TcpListener::from(fd.try_clone().unwrap());
                listener.local_addr().unwrap().port()
            })
            .collect();
        assert_eq!(handed, TUNNEL_PORTS);
    }

    #[test]
    fn listeners_on_other_ports_are_refused() {
        let f = fixture();
        let taken = f.node.take_over(&server(), handed_fds([0; 3]));
        assert!(
            matches!(taken, Err(NodeError::ForeignSockets { .. })),
            "{taken:?}"
        );
        assert_eq!(f.node.config_dump()["heldPods"], serde_json::json!([]));
    }

    #[test]
    fn a_pod_the_successor_did_not_get_stays() {
        let f = fixture();
        assert!(f.node.add_pod("held", "held", "demo", netns()).unwrap());
        let failed = f.node.hand_over(|_, fds| {
            assert_eq!(fds.len(), 1);
            Err("the successor went away")
        });
        assert_eq!(failed, Err("the successor went away"));
        assert!(!*f.node.handed_over().borrow());
        let (reply, fds) = handed(&f.node);
        assert_eq!(reply.handed_over.unwrap().uid, "held");
        assert_eq!(fds.len(), 1);
        let (reply, _) = handed(&f.node);
        assert!(reply.handed_over.is_none());
        assert!(*f.node.handed_over().borrow());
    }
}
