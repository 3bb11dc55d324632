//! Where a data plane (node tunnel or waypoint) gets its mesh model and its certificates: the
//! controller's config stream and CA in a cluster, or files standalone (tests, benchmarks).
//! Both binaries start the same way, so it is written once here.

use crate::{ControllerEndpoint, ControllerIssuer, EndpointError, StreamState, mesh_config};
use ambit_identity::{
    CertificateAuthority, CertificateIssuer, IssueError, LocalIssuer, SpiffeId, TlsError,
    TrustBundle, TrustDomain,
};
use ambit_mesh::{Mesh, MeshConfig, MeshError};
use ambit_proto::config::v1::subscribe::Subscriber;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where the mesh model and the certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// In a cluster: the controller's config stream and CA.
    Controller {
        /// `host:port` of the controller's gRPC Service.
        address: String,
        /// The SPIFFE id the controller must present.
        identity: SpiffeId,
        /// The mesh roots (PEM, the signing root first), from the `ambit-root-cert` ConfigMap:
        /// re-read when it changes (a root rotation).
        root_cert: PathBuf,
        /// The projected service-account token (audience `ambit-ca`).
        token: PathBuf,
    },
    /// Standalone (tests, benchmarks, no cluster): a mesh file reloaded when it changes, and
    /// an in-process CA from a root and key (PEM).
    File {
        mesh: PathBuf,
        ca_cert: PathBuf,
        ca_key: PathBuf,
    },
}

/// Certificates from the controller's CA in a cluster, or from a local CA standalone.
#[derive(Debug)]
pub enum Issuer {
    Controller(ControllerIssuer),
    Local(LocalIssuer),
}

impl CertificateIssuer for Issuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        match self {
            Issuer::Controller(i) => i.issue(identity, csr_der).await,
            Issuer::Local(i) => i.issue(identity, csr_der).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the mesh roots in {path}: {source}")]
    Trust { path: PathBuf, source: TlsError },
    #[error("the local CA's root: {0}")]
    LocalTrust(#[from] TlsError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("the local CA: {0}")]
    Ca(#[from] ambit_identity::CaError),
}

/// What a source gives before anything is served.
#[derive(Debug)]
pub struct Start {
    pub trust: TrustBundle,
    pub issuer: Issuer,
    /// The first model: empty until the controller's first view, the file's otherwise.
    pub mesh: Mesh,
    /// Whether `mesh` already came from the source (files), or the first view is awaited.
    pub synced: bool,
    pub feed: Feed,
}

/// Where later models (and, from the controller, later trust bundles) come from.
#[derive(Debug)]
pub enum Feed {
    Controller {
        endpoint: Arc<ControllerEndpoint>,
        /// The published roots, reloaded into the trust bundle when they change.
        root_cert: PathBuf,
    },
    File(PathBuf),
}

fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads what `source` names. `cert_lifetime`: the lifetime asked of the CA (`None`: its
/// default; 1 h for the local CA).
pub fn start(source: &Source, cert_lifetime: Option<Duration>) -> Result<Start, SourceError> {
    match source {
        Source::Controller {
            address,
            identity,
            root_cert,
            token,
        } => {
            let trust_domain = identity.trust_domain().clone();
            let trust = TrustBundle::from_pem(trust_domain.clone(), read(root_cert)?.as_bytes())
                .map_err(|source| SourceError::Trust {
                    path: root_cert.clone(),
                    source,
                })?;
            let endpoint = Arc::new(ControllerEndpoint::new(
                address.clone(),
                identity.clone(),
                &trust,
                token.clone(),
            )?);
            let issuer = ControllerIssuer::new(
                endpoint.clone(),
                endpoint.channel(),
                cert_lifetime.unwrap_or(Duration::ZERO),
            );
            Ok(Start {
                trust,
                issuer: Issuer::Controller(issuer),
                mesh: empty_mesh(&trust_domain)?,
                synced: false,
                feed: Feed::Controller {
                    endpoint,
                    root_cert: root_cert.clone(),
                },
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
            let lifetime = cert_lifetime.unwrap_or(Duration::from_secs(3600));
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

fn empty_mesh(trust_domain: &TrustDomain) -> Result<Mesh, MeshError> {
    Mesh::new(MeshConfig {
        trust_domain: trust_domain.to_string(),
        ..MeshConfig::default()
    })
}

/// Runs `feed` on the current runtime: every new model goes to `updated`, and from the
/// controller every change of the published roots to `trust`. Returns the config stream's state
/// for readiness and metrics (`None` for a file, which has no stream).
pub fn spawn_feed<F>(
    feed: Feed,
    subscriber: Subscriber,
    trust: &TrustBundle,
    mut updated: F,
) -> Option<watch::Receiver<StreamState>>
where
    F: FnMut(Mesh) + Send + 'static,
{
    match feed {
        Feed::Controller {
            endpoint,
            root_cert,
        } => {
            tokio::spawn(watch_roots(root_cert, trust.clone()));
            let (state_tx, state) = watch::channel(StreamState::default());
            let trust_domain = trust.trust_domain().to_string();
            tokio::spawn(crate::subscribe(
                endpoint,
                subscriber,
                state_tx,
                move |resources| {
                    let converted = mesh_config(&trust_domain, resources);
                    let mesh = Mesh::new(converted.config).map_err(|e| e.to_string())?;
                    updated(mesh);
                    Ok(converted.rejected)
                },
            ));
            Some(state)
        }
        Feed::File(path) => {
            tokio::spawn(watch_mesh_file(path, updated));
            None
        }
    }
}

/// Calls `changed` whenever `path`'s modification time changes (a ConfigMap volume swaps in a
/// new file, which the path follows).
async fn on_change(path: &Path, mut changed: impl FnMut()) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = modified(path);
        if now != last {
            last = now;
            changed();
        }
    }
}

/// Reloads the mesh file when it changes; a bad file keeps the last good model.
async fn watch_mesh_file<F: FnMut(Mesh)>(path: PathBuf, mut updated: F) {
    on_change(&path, || match Mesh::from_yaml_file(&path) {
        Ok(mesh) => {
            updated(mesh);
            tracing::info!(path = %path.display(), "mesh reloaded");
        }
        Err(error) => tracing::warn!(%error, "mesh file rejected; keeping the last good one"),
    })
    .await;
}

/// Reloads the published roots into `trust` when they change (a root rotation); unusable
/// roots keep the last good bundle.
async fn watch_roots(path: PathBuf, trust: TrustBundle) {
    on_change(&path, || {
        match read(&path).and_then(|pem| {
            trust
                .replace_pem(pem.as_bytes())
                .map_err(|source| SourceError::Trust {
                    path: path.clone(),
                    source,
                })
        }) {
            Ok(true) => tracing::info!(
                path = %path.display(),
                roots = trust.roots().len(),
                "trust bundle reloaded"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "mesh roots rejected; keeping the last good ones"),
        }
    })
    .await;
}

/// The config stream's state as the admin config dump shows it.
pub fn stream_json(s: &StreamState) -> serde_json::Value {
    serde_json::json!({
        "connected": s.connected,
        "synced": s.synced,
        "accepted": s.accepted,
        "rejected": s.rejected,
        "lastError": s.last_error,
        "rejectedResources": s
            .rejected_resources
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "version": r.version, "error": r.error}))
            .collect::<Vec<_>>(),
    })
}
