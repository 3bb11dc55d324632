//! Loopback fixtures: an HBONE server in front of TCP apps, an outbound proxy that splices
//! accepted sockets into pooled tunnels, and a relay that can freeze to play a dead peer.

// Test fixtures panic on failure; each test uses a different subset of them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ambit_hbone::{
    ConnectHandler, ConnectRequest, Dialer, H2Stream, HboneError, HbonePool, HboneServer,
    LocalIdentities, PendingTunnel, PoolKey, PoolSettings, Refusal, ServerSettings, TunnelHeaders,
    forward_to_target, splice_tcp_h2,
};
use ambit_identity::testing::TestPki;
use ambit_identity::{CertificateHandle, SpiffeId, server_config};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub const SERVER_NS: &str = "demo";
pub const SERVER_SA: &str = "server";

/// Forwards every CONNECT to its target and reports each request it saw.
#[derive(Clone)]
pub struct Forward {
    pub seen: mpsc::UnboundedSender<ConnectRequest>,
}

impl ConnectHandler for Forward {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        let _ = self.seen.send(request.clone());
        let target = request.target;
        async move {
            let _ = forward_to_target(target, tunnel).await;
        }
    }
}

/// Refuses every CONNECT as unauthorized.
pub struct DenyAll;

impl ConnectHandler for DenyAll {
    fn handle(
        &self,
        _request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        tunnel.refuse(Refusal::Denied);
        std::future::ready(())
    }
}

pub async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Starts an HBONE server presenting `demo/server` from `pki`.
pub async fn start_server<H: ConnectHandler>(pki: &TestPki, handler: H) -> SocketAddr {
    start_server_with(pki, handler, ServerSettings::default()).await
}

pub async fn start_server_with<H: ConnectHandler>(
    pki: &TestPki,
    handler: H,
    settings: ServerSettings,
) -> SocketAddr {
    let trust = pki.bundle();
    let tls = server_config(pki.handle(SERVER_NS, SERVER_SA), &trust).unwrap();
    let server = HboneServer::new(tls, &trust, settings, handler);
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

/// An HBONE server that forwards, plus the receiver of the requests it saw.
pub async fn start_forwarding_server(
    pki: &TestPki,
) -> (SocketAddr, mpsc::UnboundedReceiver<ConnectRequest>) {
    let (seen, requests) = mpsc::unbounded_channel();
    (start_server(pki, Forward { seen }).await, requests)
}

/// A TCP echo app: copies until the client half-closes, then half-closes back.
pub async fn start_echo() -> SocketAddr {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

pub struct Client {
    pub pool: HbonePool,
    pub key: PoolKey,
}

pub fn fast_pool_settings() -> PoolSettings {
    PoolSettings {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..PoolSettings::default()
    }
}

/// A pool whose only local identity is `certificate` (claimed as `local`), expecting the
/// server to be `expected`.
pub fn client_with(
    pki: &TestPki,
    local: SpiffeId,
    certificate: CertificateHandle,
    server: SocketAddr,
    expected: SpiffeId,
    settings: PoolSettings,
) -> Client {
    let identities: HashMap<SpiffeId, CertificateHandle> =
        HashMap::from([(local.clone(), certificate)]);
    let identities: Arc<dyn LocalIdentities> = Arc::new(identities);
    let pool = HbonePool::new(Dialer::new(pki.bundle(), settings), identities);
    Client {
        pool,
        key: PoolKey::new(local, server, vec![expected]),
    }
}

/// A well-configured `demo/client` of `pki` talking to `server`.
pub fn client(pki: &TestPki, server: SocketAddr) -> Client {
    client_with_settings(pki, server, fast_pool_settings())
}

/// `demo/client` with pool `settings`.
pub fn client_with_settings(pki: &TestPki, server: SocketAddr, settings: PoolSettings) -> Client {
    client_with(
        pki,
        pki.id("demo", "client"),
        pki.handle("demo", "client"),
        server,
        pki.id(SERVER_NS, SERVER_SA),
        settings,
    )
}

/// A client claiming `local` but presenting `certificate`, expecting the real server.
pub fn client_presenting(
    pki: &TestPki,
    local: SpiffeId,
    certificate: CertificateHandle,
    server: SocketAddr,
) -> Client {
    client_with(
        pki,
        local,
        certificate,
        server,
        pki.id(SERVER_NS, SERVER_SA),
        fast_pool_settings(),
    )
}

impl Client {
    /// Opens a tunnel to `target` with no pass-through headers.
    pub async fn open(&self, target: SocketAddr) -> Result<H2Stream, HboneError> {
        self.pool
            .connect(&self.key, target, &TunnelHeaders::default())
            .await
    }
}

/// A plain TCP listener whose connections are spliced into pooled tunnels to `target`: the
/// client half of a node tunnel, in miniature.
pub async fn start_outbound(client: &Client, target: SocketAddr) -> SocketAddr {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (pool, key) = (client.pool.clone(), client.key.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move {
                if let Ok(tunnel) = pool.connect(&key, target, &TunnelHeaders::default()).await {
                    let _ = splice_tcp_h2(&mut socket, tunnel).await;
                }
            });
        }
    });
    addr
}

/// A TCP relay whose existing connections can be frozen: bytes stop flowing but sockets stay
/// open, like a peer that hung.
pub struct Relay {
    pub addr: SocketAddr,
    freezers: Arc<Mutex<Vec<watch::Sender<bool>>>>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = listen().await;
        let addr = listener.local_addr().unwrap();
        let freezers: Arc<Mutex<Vec<watch::Sender<bool>>>> = Arc::default();
        let registry = freezers.clone();
        tokio::spawn(async move {
            loop {
                let (downstream, _) = listener.accept().await.unwrap();
                let upstream = TcpStream::connect(upstream).await.unwrap();
                let (freeze, frozen) = watch::channel(false);
                registry.lock().unwrap().push(freeze);
                let (down_read, down_write) = downstream.into_split();
                let (up_read, up_write) = upstream.into_split();
                tokio::spawn(relay_half(down_read, up_write, frozen.clone()));
                tokio::spawn(relay_half(up_read, down_write, frozen));
            }
        });
        Self { addr, freezers }
    }

    /// Freezes every connection open now; later connections flow normally.
    pub fn freeze_existing(&self) {
        for freeze in self.freezers.lock().unwrap().iter() {
            let _ = freeze.send(true);
        }
    }
}

async fn relay_half(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => Some(read),
            () = async { let _ = frozen.wait_for(|f| *f).await; } => None,
        };
        let n = match read {
            None => break,
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => n,
        };
        let is_frozen = *frozen.borrow();
        if is_frozen {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Frozen: hold both sockets open and never forward again.
    std::future::pending::<()>().await;
}

/// Polls `condition` every 10 ms until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
