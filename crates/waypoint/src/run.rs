//! The wiring: source → certificate → model → listeners; SIGTERM drains.

use crate::access_log::AccessLog;
use crate::admin::{self, Endpoints};
use crate::config::Config;
use crate::http::span::Tracing;
use crate::http::upstream::Upstreams;
use crate::inbound::Inbound;
use crate::state::Shared;
use ambit_controller_client::source::{self, SourceError, spawn_feed};
use ambit_controller_client::{ServiceAccountRef, Subscriber};
use ambit_hbone::{Dialer, HbonePool, HboneServer, PoolSettings, ServerSettings};
use ambit_identity::{CertificateHandle, CertificateStore, RetryPolicy, SpiffeId};
use ambit_telemetry::otlp::{Otlp, OtlpError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the waypoint's identity: {0}")]
    Identity(#[from] ambit_identity::SpiffeIdError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] ambit_identity::TlsError),
    #[error("signals: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Otlp(#[from] OtlpError),
}

const CERT_RETRY_MIN: Duration = Duration::from_millis(500);
const CERT_RETRY_MAX: Duration = Duration::from_secs(10);

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// A running waypoint: its state and the address it took for HBONE (tests bind port 0).
#[derive(Debug)]
pub struct Running {
    pub shared: Arc<Shared>,
    pub hbone_addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    drain_timeout: Duration,
    otlp: Option<Otlp>,
}

/// Starts the waypoint on the current runtime: returns once it listens for HBONE, which is
/// after its certificate has been issued.
pub async fn start(config: Config) -> Result<Running, RunError> {
    let start = source::start(&config.source, config.cert_lifetime)?;
    let identity = config.identity(start.trust.trust_domain())?;
    let otlp = config.otlp.as_ref().map(Otlp::start).transpose()?;
    let shared = Arc::new(Shared::new(
        config.namespace.clone(),
        config.for_service_account.clone(),
        identity.clone(),
        start.mesh,
        start.synced,
        AccessLog::stderr(config.access_log),
        otlp.as_ref()
            .zip(config.otlp.as_ref())
            .map(|(o, c)| Tracing {
                tracer: o.tracer("ambit-waypoint"),
                url_path: c.url_path,
            }),
    ));
    let fed = shared.clone();
    let stream = spawn_feed(
        start.feed,
        Subscriber::Waypoint(ServiceAccountRef {
            namespace: config.namespace.clone(),
            name: config.for_service_account.clone(),
        }),
        &start.trust,
        move |mesh| fed.set_mesh(mesh),
    );
    if let Some(stream) = stream {
        shared.set_stream(stream);
    }
    for (addr, endpoints) in [
        (config.readiness, Endpoints::Readiness),
        (config.metrics, Endpoints::Metrics),
        (config.admin, Endpoints::Admin),
    ] {
        tokio::spawn(admin::serve(bind(addr).await?, shared.clone(), endpoints));
    }
    let store =
        CertificateStore::new(start.issuer, RetryPolicy::default()).following(start.trust.clone());
    let lease = acquire(&store, &identity).await;
    let handle = lease.handle();
    tracing::info!(%identity, "certificate issued");
    let tls = ambit_identity::server_config(handle.clone(), &start.trust)?;
    let identities: HashMap<SpiffeId, CertificateHandle> =
        HashMap::from([(identity.clone(), handle)]);
    let pool = HbonePool::new(
        Dialer::new(start.trust.clone(), PoolSettings::default()),
        Arc::new(identities),
    );
    let upstreams = Arc::new(Upstreams::new(pool, identity));
    let inbound = Inbound::new(shared.clone(), upstreams, config.http_limits.clone());
    let listener = bind(config.listen).await?;
    let hbone_addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    // Ready once it listens: a readiness probe answered before would send traffic to a port
    // that refuses it.
    shared.set_certified();
    let trust = start.trust.clone();
    let server = tokio::spawn(async move {
        // The lease lives as long as the server: rotation keeps renewing it.
        let _lease = lease;
        HboneServer::new(tls, &trust, ServerSettings::default(), inbound)
            .serve(listener)
            .await;
    });
    tracing::info!(%hbone_addr, namespace = %config.namespace, for_service_account = %config.for_service_account, "waypoint listening");
    Ok(Running {
        shared,
        hbone_addr,
        server,
        drain_timeout: config.drain_timeout,
        otlp,
    })
}

/// The first certificate, retried with backoff: without it nothing can be served, and the
/// controller may not be up yet.
async fn acquire<I: ambit_identity::CertificateIssuer>(
    store: &CertificateStore<I>,
    identity: &SpiffeId,
) -> ambit_identity::IdentityLease {
    let mut backoff = CERT_RETRY_MIN;
    loop {
        match store.acquire(identity).await {
            Ok(lease) => return lease,
            Err(error) => {
                tracing::warn!(%identity, %error, retry_in_ms = backoff.as_millis() as u64, "no certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(CERT_RETRY_MAX);
            }
        }
    }
}

impl Running {
    /// Drains: readiness fails, new tunnels are refused, HTTP connections are closed
    /// gracefully, and open connections get up to the drain timeout to finish.
    pub async fn drain(self) {
        self.shared.start_draining();
        self.server.abort();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.shared.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(left_open = self.shared.active(), "drained");
        if let Some(otlp) = self.otlp {
            // The spans of the last requests: flushed off the runtime, whose tasks the
            // export needs.
            let _ = tokio::task::spawn_blocking(move || otlp.shutdown()).await;
        }
    }
}

/// Runs until SIGTERM or ctrl-c, then drains.
pub async fn run(config: Config) -> Result<(), RunError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signal)?;
    let running = start(config).await?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("draining");
    running.drain().await;
    Ok(())
}
