//! The gRPC server on 15012: TLS 1.3 with the controller's SPIFFE certificate (rotated by an
//! `ambit_identity::CertificateStore` over the local CA), no client certificates (callers
//! authenticate with tokens: they have no certificate before they ask the CA for one).

use ambit_identity::CertificateHandle;
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
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A server-side TLS connection tonic can serve.
#[derive(Debug)]
pub struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TCP on `listener` and yields connections that completed the TLS handshake
/// (each handshake in its own task, bounded by a deadline, so a slow client stalls no one).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(TlsConn(tls))).await;
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
