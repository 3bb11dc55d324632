//! Node-wide state: the mesh model, the certificate store, the pods served, and the handoff
//! socket through which the capture agent hands pods over.

use crate::config::Mode;
use crate::metrics::Metrics;
use crate::pod::{self, PodError, PodHandle, PodSpec};
use ambit_capture::handoff::{self, Request};
use ambit_identity::{CertificateIssuer, CertificateStore, IdentityLease, StoreError, TrustBundle};
use ambit_mesh::Mesh;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("pod {0} is not in the mesh config (yet); the capture agent should retry")]
    UnknownPod(String),
    #[error(
        "pod {uid} runs on node {node}, not here: this tunnel holds only its own node's identities"
    )]
    OtherNode { uid: String, node: String },
    #[error("pod {0} is not enrolled in the mesh")]
    NotEnrolled(String),
    #[error(transparent)]
    Certificate(#[from] StoreError),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("the tunnel is draining")]
    Draining,
}

/// What every pod's connections read: immutable config plus the live mesh model.
#[derive(Debug)]
pub struct Shared {
    pub node: String,
    pub mode: Mode,
    pub trust: TrustBundle,
    pub metrics: Metrics,
    mesh: RwLock<Arc<Mesh>>,
}

impl Shared {
    pub fn new(node: String, mode: Mode, trust: TrustBundle, mesh: Mesh) -> Self {
        Self {
            node,
            mode,
            trust,
            metrics: Metrics::default(),
            mesh: RwLock::new(Arc::new(mesh)),
        }
    }

    /// The current mesh snapshot.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.mesh
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_mesh(&self, mesh: Mesh) {
        *self
            .mesh
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(mesh);
    }
}

struct Served {
    pod: PodHandle,
    /// (device, inode) of the pod's netns: equal for two fds of the same namespace.
    netns: Option<(u64, u64)>,
    // Held while the pod is served; the store forgets the identity with its last lease.
    _lease: IdentityLease,
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
    runtime: tokio::runtime::Handle,
    draining: AtomicBool,
    drain_timeout: Duration,
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
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            store,
            pods: Mutex::default(),
            runtime,
            draining: AtomicBool::new(false),
            drain_timeout,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts serving a pod. Blocking: call it off the async runtime.
    pub fn add_pod(&self, uid: &str, netns: OwnedFd) -> Result<(), NodeError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(NodeError::Draining);
        }
        let mesh = self.shared.mesh();
        let workload = mesh
            .workload_by_uid(uid)
            .ok_or_else(|| NodeError::UnknownPod(uid.to_owned()))?;
        if workload.node != self.shared.node {
            return Err(NodeError::OtherNode {
                uid: uid.to_owned(),
                node: workload.node.clone(),
            });
        }
        if !workload.hbone {
            return Err(NodeError::NotEnrolled(uid.to_owned()));
        }
        let identity = mesh
            .identity(workload)
            .cloned()
            .ok_or_else(|| NodeError::UnknownPod(uid.to_owned()))?;
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
        let lease = self.runtime.block_on(self.store.acquire(&identity))?;
        let spec = PodSpec {
            uid: uid.to_owned(),
            name: workload.name.clone(),
            namespace: workload.namespace.clone(),
            identity,
            ips: workload.ips.clone(),
            certificate: lease.handle(),
        };
        let pod = pod::spawn(spec, netns, self.shared.clone())?;
        let served = Served {
            pod,
            netns: netns_id,
            _lease: lease,
        };
        lock(&self.pods).insert(uid.to_owned(), served);
        Ok(())
    }

    /// Stops serving a pod (deleted or opted out); unknown pods are not an error.
    pub fn remove_pod(&self, uid: &str) {
        let served = lock(&self.pods).remove(uid);
        if let Some(served) = served {
            served.pod.stop(self.drain_timeout);
        }
    }

    /// Serves the capture agent's handoff socket. Blocking; run it on its own thread.
    pub fn serve_handoff(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let result = match handoff::receive(&stream) {
                Ok((
                    Request::Add {
                        uid,
                        name,
                        namespace,
                    },
                    Some(fd),
                )) => {
                    let result = self.add_pod(&uid, fd);
                    match &result {
                        Ok(()) => tracing::info!(%uid, %name, %namespace, "pod handed over"),
                        Err(error) => {
                            tracing::warn!(%uid, %name, %namespace, %error, "pod refused")
                        }
                    }
                    result.map_err(|e| e.to_string())
                }
                Ok((Request::Add { .. }, None)) => Err("Add without a netns fd".into()),
                Ok((Request::Enrollment, _)) => Err("not supported yet".into()),
                Ok((Request::Remove { uid }, _)) => {
                    self.remove_pod(&uid);
                    tracing::info!(%uid, "pod released");
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            };
            let reply = match result {
                Ok(()) => handoff::Reply {
                    capture: true,
                    ..handoff::Reply::ok()
                },
                Err(error) => handoff::Reply::refused(error),
            };
            let _ = handoff::answer(&stream, &reply);
        }
    }

    /// Graceful drain: refuse new pods, close every listener, let connections finish.
    /// Blocking.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let pods: Vec<Served> = lock(&self.pods).drain().map(|(_, s)| s).collect();
        let timeout = self.drain_timeout;
        let threads: Vec<_> = pods
            .into_iter()
            .map(|served| std::thread::spawn(move || served.pod.stop(timeout)))
            .collect();
        for t in threads {
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
        serde_json::json!({
            "node": self.shared.node,
            "mode": self.shared.mode,
            "ready": self.ready(),
            "pods": pods,
            "identities": identities,
            "certificates": certificates,
            "mesh": self.shared.mesh().config(),
        })
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}
