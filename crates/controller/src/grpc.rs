//! The gRPC server on 15012: TLS 1.3 with the controller's SPIFFE certificate (rotated by an
//! `ambit_identity::CertificateStore` over the local CA), no client certificates (callers
//! authenticate with tokens: they have no certificate before they ask the CA for one). Any pod
//! can reach it, so every resource a caller can hold is bounded: connections, handshakes,
//! streams and requests per connection, message sizes, and dead peers are found by keepalive.

use crate::ca::CaService;
use crate::config_service::ConfigServer;
use ambit_identity::CertificateHandle;
use ambit_proto::ca::v1::certificate_service_server::CertificateServiceServer;
use ambit_proto::config::v1::config_service_server::ConfigServiceServer;
use futures::Stream;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Connections served at once, handshakes included: one per tunnel and waypoint, and the CA
/// calls of each. Past it the accept loop waits, leaving the rest in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 2048;
/// TLS handshakes in progress at once; past this a new connection is closed at once, so
/// stalled handshakes hold only this many of the connection slots.
pub const MAX_HANDSHAKES: usize = 64;
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

/// A server-side TLS connection tonic can serve, holding its connection slot.
#[derive(Debug)]
pub struct TlsConn {
    tls: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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
/// (each handshake in its own task, bounded by a deadline and by [`MAX_HANDSHAKES`], so a slow
/// client stalls no one), at most [`MAX_CONNECTIONS`] at once.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
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
            let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%peer, max = MAX_HANDSHAKES, "gRPC: too many TLS handshakes in progress; closing a new connection");
                continue;
            };
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshaking);
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(TlsConn { tls, _slot: slot })).await;
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
