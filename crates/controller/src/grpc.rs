//! The gRPC server on 15012: TLS 1.3 with the controller's SPIFFE certificate (rotated by an
//! `ambit_identity::CertificateStore` over the local CA), no client certificates (callers
//! authenticate with tokens: they have no certificate before they ask the CA for one). Any pod
//! can reach it, so every resource a caller can hold is bounded: connections, handshakes (in
//! all and per source address), streams and requests per connection, message sizes; dead peers
//! are found by keepalive, and connections that hold no stream are closed after an idle time.

use crate::ca::CaService;
use crate::config_service::ConfigServer;
use ambit_admission::HandshakeBudget;
use ambit_identity::CertificateHandle;
use ambit_proto::ca::v1::certificate_service_server::CertificateServiceServer;
use ambit_proto::config::v1::config_service_server::ConfigServiceServer;
use futures::Stream;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Connections served at once, handshakes included: one per tunnel and waypoint, and the CA
/// calls of each. Past it the accept loop waits, leaving the rest in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 2048;
/// TLS handshakes in progress at once, so stalled handshakes hold only this many of the
/// connection slots. Past it the oldest handshake is cut for the new one: a stalled handshake
/// has had the longest to finish, while a client's completes in milliseconds, so a flood must
/// outpace every handshake to keep clients out.
pub const MAX_HANDSHAKES: usize = 64;
/// TLS handshakes in progress at once from one source address (a node's tunnel, a pod); past
/// it a new connection from that address is closed at once, so one address cannot take the
/// whole handshake budget.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// How long a connection may hold no stream before it is closed (`AMBIT_GRPC_IDLE_TIMEOUT_SECS`):
/// a tunnel or waypoint always holds its config stream, so only callers done with the CA, or
/// connections never used, are idle.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A TLS handshake slower than this is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 streams one connection may open: a tunnel or waypoint holds one config stream and
/// makes a CA call now and then.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Requests one connection may have in flight; more wait for one to finish.
const CONCURRENCY_PER_CONNECTION: usize = 16;
/// A PING every interval; a peer that does not answer within the timeout is dropped, with its
/// streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message a caller may send: a CSR, or a Subscribe that lists every resource a
/// tunnel holds (about 60 bytes each).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Receive windows: what a client may send ahead; requests are small.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 1 << 20;

/// Serves the CA and config services on `incoming` with the bounds above, until the stream of
/// connections ends.
pub async fn serve(
    incoming: impl futures::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static,
    ca: CaService,
    config: ConfigServer,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(CountStreams))
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(CertificateServiceServer::new(ca).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(ConfigServiceServer::new(config).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming(incoming)
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug)]
struct Resolver(CertificateHandle);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key().clone())
    }
}

pub fn server_tls(certificate: CertificateHandle) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut config = ServerConfig::builder_with_provider(ambit_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certificate)));
    config.alpn_protocols = vec![ambit_identity::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A server-side TLS connection tonic can serve, holding its connection slot, closed once it
/// has held no stream for its idle timeout.
#[derive(Debug)]
pub struct TlsConn {
    tls: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
    streams: Arc<OpenStreams>,
    idle_timeout: Duration,
    /// When to look at the connection's streams next.
    idle_check: Pin<Box<Sleep>>,
}

impl TlsConn {
    fn new(tls: TlsStream<TcpStream>, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            tls,
            _slot: slot,
            streams: Arc::new(OpenStreams::new()),
            idle_timeout,
            idle_check: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Whether the connection has held no stream for its idle timeout; otherwise arms the
    /// next look (the pending read polls it, so the timer wakes the connection).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let next = match self.streams.idle_since() {
                Some(since) if since.elapsed() >= self.idle_timeout => return true,
                Some(since) => since + self.idle_timeout,
                None => Instant::now() + self.idle_timeout,
            };
            self.idle_check.as_mut().reset(next);
        }
        false
    }
}

/// What tonic puts in each request's extensions: its connection's stream count.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    streams: Arc<OpenStreams>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            streams: self.streams.clone(),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle_expired(cx) {
            tracing::debug!(peer = ?self.tls.get_ref().0.peer_addr().ok(), "gRPC: closing a connection that held no stream for its idle timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no stream for the idle timeout",
            )));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Accepts TCP on `listener` and yields connections that completed the TLS handshake
/// (each handshake in its own task, bounded by a deadline and by a [`HandshakeBudget`], so
/// a slow client stalls no one), at most [`MAX_CONNECTIONS`] at once, each closed once it has
/// held no stream for `idle_timeout`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    idle_timeout: Duration,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = HandshakeBudget::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS);
    tokio::spawn(async move {
        loop {
            let Ok(slot) = connections.clone().acquire_owned().await else {
                break;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(handshaking) = handshakes.admit(peer.ip()) else {
                tracing::debug!(%peer, max = MAX_HANDSHAKES_PER_ADDRESS, "gRPC: too many TLS handshakes in progress from this address; closing a new connection");
                continue;
            };
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::select! {
                    done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => done,
                    () = handshaking.cut() => {
                        tracing::debug!(%peer, max = MAX_HANDSHAKES, "gRPC: TLS handshake cut for a newer one");
                        return;
                    }
                };
                drop(handshaking);
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx
                            .send(Ok(TlsConn::new(tls, slot, idle_timeout)))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The streams open on one connection, and since when it has had none.
#[derive(Debug)]
struct OpenStreams {
    count: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl OpenStreams {
    fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// Since when no stream has been open; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.count.load(Ordering::Acquire) == 0).then_some(since)
    }

    fn open(self: &Arc<Self>) -> OpenStream {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }
}

/// One request or stream, counted on its connection until its response body is dropped.
struct OpenStream(Arc<OpenStreams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut since = self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// Counts each request on its connection ([`ConnInfo`]) from its call until its response body
/// ends: a config stream's body lives as long as the stream.
#[derive(Debug, Clone)]
struct CountStreams<S>(S);

impl<S, B> tower::Service<http::Request<B>> for CountStreams<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let open = request
            .extensions()
            .get::<ConnInfo>()
            .map(|c| c.streams.open());
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            let Some(open) = open else {
                return Ok(response);
            };
            Ok(response.map(|body| {
                use http_body_util::BodyExt;
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _counted = &open;
                    frame
                }))
            }))
        })
    }
}
