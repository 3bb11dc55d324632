//! The processes a benchmark is made of. Each prints `LISTENING addr` once ready.

use crate::process::LISTENING;
use ambit_hbone::{
    ConnectHandler, ConnectRequest, Dialer, HbonePool, HboneServer, LocalIdentities, PendingTunnel,
    PoolKey, PoolSettings, ServerSettings, TunnelHeaders, forward_to_target, splice_tcp_h2,
    splice_tcp_tcp,
};
use ambit_identity::{
    CertificateAuthority, CertificateHandle, CertificateRequest, SpiffeId, TrustBundle,
    server_config,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TRUST_DOMAIN: &str = "bench.local";
/// First byte a client sends to the bench server to pick a mode.
pub const MODE_ECHO: u8 = b'E';
pub const MODE_SINK: u8 = b'S';

/// `ambit-bench role ...`: what [`crate::process`] starts.
#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// The HTTP/1 and TCP echo application behind every path.
    Server,
    HttpApp {
        at: SocketAddr,
    },
    TcpProxy {
        to: SocketAddr,
    },
    HboneOut {
        peer: SocketAddr,
        target: SocketAddr,
        /// The identity the peer must present (default: the benchmark's server's).
        peer_id: Option<SpiffeId>,
    },
    HboneIn {
        at: Option<SocketAddr>,
    },
}

pub fn run(role: Role) -> Result<()> {
    let runtime = match (&role, proxy_workers()) {
        // The application is the baseline, not under test: give it the fastest setup.
        (Role::Server | Role::HttpApp { .. }, _) | (_, 1) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        }
        (_, workers) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let role = async {
            match role {
                Role::Server => server().await,
                Role::HttpApp { at } => http_app(at).await,
                Role::TcpProxy { to } => tcp_proxy(to).await,
                Role::HboneOut {
                    peer,
                    target,
                    peer_id,
                } => {
                    let peer_id = match peer_id {
                        Some(id) => id,
                        None => server_id()?,
                    };
                    hbone_out(peer, target, peer_id).await
                }
                Role::HboneIn { at } => hbone_in(at.unwrap_or(ANY_LOOPBACK_PORT)).await,
            }
        };
        // Exiting normally on SIGTERM lets profilers and sanitizers write their reports.
        tokio::select! {
            result = role => result,
            _ = terminate.recv() => Ok(()),
        }
    })
}

/// Worker threads of each proxy and tunnel process: one event loop by default, as each of the
/// tunnel's per-core loops runs; `AMBIT_BENCH_WORKERS=N` compares a work-stealing runtime.
pub fn proxy_workers() -> usize {
    std::env::var("AMBIT_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(1)
}

/// Where a role listens unless told: a free port on loopback.
const ANY_LOOPBACK_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

async fn listen(at: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("listening on {at}"))?;
    println!("{LISTENING}{}", listener.local_addr()?);
    Ok(listener)
}

/// The application server: echo (for round trips) or sink (for throughput, answering with the
/// byte count at end of stream), chosen by the first byte.
async fn server() -> Result<()> {
    let listener = listen(ANY_LOOPBACK_PORT).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let mut mode = [0u8; 1];
            if socket.read_exact(&mut mode).await.is_err() {
                return;
            }
            let (mut read, mut write) = socket.split();
            match mode[0] {
                MODE_ECHO => {
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                }
                MODE_SINK => {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = write.write_all(&total.to_be_bytes()).await;
                }
                _ => {}
            }
            let _ = write.shutdown().await;
        });
    }
}

/// Body of every answer of the HTTP app.
pub const HTTP_BODY_SIZE: usize = 1024;

/// The HTTP application: `200` with a 1 KiB body to any request, over HTTP/1.1 (keep-alive)
/// or HTTP/2 prior knowledge on the same port.
async fn http_app(at: SocketAddr) -> Result<()> {
    let body = Bytes::from(vec![b'a'; HTTP_BODY_SIZE]);
    let listener = listen(at).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let response = hyper::Response::builder()
                    .header(hyper::header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(body.clone()));
                async move { response }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn tcp_proxy(to: SocketAddr) -> Result<()> {
    let listener = listen(ANY_LOOPBACK_PORT).await?;
    loop {
        let (mut downstream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(to).await {
                let _ = splice_tcp_tcp(&mut downstream, &mut upstream).await;
            }
        });
    }
}

/// The CA material a role receives on stdin: certificate PEM, then key PEM.
fn read_ca() -> Result<Arc<CertificateAuthority>> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let split = text
        .find("-----BEGIN PRIVATE KEY-----")
        .context("CA key on stdin")?;
    let (certificate, key) = text.split_at(split);
    Ok(Arc::new(CertificateAuthority::from_pem(
        TRUST_DOMAIN.parse()?,
        certificate,
        key,
    )?))
}

pub fn client_id() -> Result<SpiffeId> {
    Ok(SpiffeId::new(TRUST_DOMAIN.parse()?, "bench", "client")?)
}

pub fn server_id() -> Result<SpiffeId> {
    Ok(SpiffeId::new(TRUST_DOMAIN.parse()?, "bench", "server")?)
}

pub fn bundle(ca: &CertificateAuthority) -> Result<TrustBundle> {
    Ok(TrustBundle::new(
        ca.trust_domain().clone(),
        [ca.root_certificate().clone()],
    )?)
}

pub fn mint(ca: &CertificateAuthority, identity: &SpiffeId) -> Result<CertificateHandle> {
    let request = CertificateRequest::new(identity)?;
    let leaf = ca.sign(request.csr_der(), identity, Duration::from_secs(3600))?;
    Ok(CertificateHandle::fixed(request.complete(vec![leaf])?))
}

/// The client half of a node tunnel: plain TCP in, pooled HBONE out to `peer` (which must
/// present `peer_id`), for `target`.
async fn hbone_out(peer: SocketAddr, target: SocketAddr, peer_id: SpiffeId) -> Result<()> {
    let ca = read_ca()?;
    let local = client_id()?;
    let identities: HashMap<SpiffeId, CertificateHandle> =
        HashMap::from([(local.clone(), mint(&ca, &local)?)]);
    let identities: Arc<dyn LocalIdentities> = Arc::new(identities);
    let pool = HbonePool::new(
        Dialer::new(bundle(&ca)?, PoolSettings::default()),
        identities,
    );
    let key = PoolKey::new(local, peer, vec![peer_id]);
    let listener = listen(ANY_LOOPBACK_PORT).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        let (pool, key) = (pool.clone(), key.clone());
        tokio::spawn(async move {
            match pool.connect(&key, target, &TunnelHeaders::default()).await {
                Ok(tunnel) => {
                    let _ = splice_tcp_h2(&mut socket, tunnel).await;
                }
                Err(error) => eprintln!("hbone-out: {error}"),
            }
        });
    }
}

struct Forward;

impl ConnectHandler for Forward {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        let target = request.target;
        async move {
            let _ = forward_to_target(target, tunnel).await;
        }
    }
}

/// The server half of a node tunnel: HBONE in at `at`, plain TCP to the CONNECT target.
async fn hbone_in(at: SocketAddr) -> Result<()> {
    let ca = read_ca()?;
    let trust = bundle(&ca)?;
    let tls = server_config(mint(&ca, &server_id()?)?, &trust)?;
    // The idle-memory run holds 10,000 tunnels from one client, past the node tunnel's defaults
    // of 1,280 and 320 per client (which bound the worst case, not what an idle tunnel costs).
    let settings = ServerSettings {
        max_tunnels: 20_000,
        max_tunnels_per_peer: 20_000,
        ..ServerSettings::default()
    };
    let server = HboneServer::new(tls, &trust, settings, Forward);
    let listener = listen(at).await?;
    server.serve(listener).await;
    Ok(())
}
