//! Reaching the controller: TLS that accepts only the controller's SPIFFE id, connections cut
//! once their chain's root is withdrawn, and the projected service-account token on every call.

use ambit_identity::{BundleChanges, CertificateHandle, ChainRole, SpiffeId, TrustBundle};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A controller that stops answering PINGs is given up on within interval + timeout, and the
/// stream reconnects (to the other replica, behind the Service).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("controller address {0:?} is not host:port")]
    Address(String),
    #[error("controller TLS: {0}")]
    Tls(#[from] ambit_identity::TlsError),
    #[error("reading the service-account token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("the service-account token file {0} is empty")]
    EmptyToken(String),
}

/// Where the controller is and how to prove who we are to it.
#[derive(Debug)]
pub struct ControllerEndpoint {
    connector: Connector,
    identity: SpiffeId,
    token: PathBuf,
}

// rustls is reached through tokio-rustls to keep one version in the tree.
mod rustls_config {
    pub use tokio_rustls::rustls::ClientConfig;
}

impl ControllerEndpoint {
    /// `address` is `host:port` (a DNS name is resolved at each connect, so a moved Service
    /// is followed); `identity` is the SPIFFE id the controller must present, chained to
    /// `trust`; `token` is the projected token file (re-read per call: kubelet rotates it).
    pub fn new(
        address: impl Into<String>,
        identity: SpiffeId,
        trust: &TrustBundle,
        token: impl Into<PathBuf>,
    ) -> Result<Self, EndpointError> {
        let address = address.into();
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(EndpointError::Address(address)),
        }
        // The caller has no certificate: it authenticates with its token, and this very
        // connection is how it gets its first certificates.
        let tls = ambit_identity::client_config(
            CertificateHandle::without_certificate(),
            trust,
            vec![identity.clone()],
        )?;
        Ok(Self {
            connector: Connector {
                address,
                tls: Arc::new(tls),
                trust: trust.clone(),
            },
            identity,
            token: token.into(),
        })
    }

    pub fn address(&self) -> &str {
        &self.connector.address
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// A channel that connects on first use and reconnects after failures.
    pub fn channel(&self) -> Channel {
        let connector = self.connector.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let connector = connector.clone();
            async move { connector.connect().await.map(hyper_util::rt::TokioIo::new) }
        });
        Endpoint::from_static("http://ambit-controller")
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector)
    }

    /// `message` with the current token as `authorization: Bearer`.
    pub async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, EndpointError> {
        let token = read_token(&self.token).await?;
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| EndpointError::EmptyToken(self.token.display().to_string()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// What the channel needs to open a connection to the controller.
#[derive(Debug, Clone)]
struct Connector {
    address: String,
    tls: Arc<rustls_config::ClientConfig>,
    trust: TrustBundle,
}

impl Connector {
    /// TCP to the first address `address` resolves to that answers, then TLS verifying the
    /// controller's identity.
    async fn connect(&self) -> io::Result<ControllerConnection> {
        // Subscribed before the handshake: a root withdrawn during it is seen, not missed.
        let changes = self.trust.changes();
        let mut last = None;
        for addr in tokio::net::lookup_host(self.address.as_str()).await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(ambit_identity::server_name(addr.ip()), tcp)
                        .await?;
                    return Ok(ControllerConnection::new(tls, self.trust.clone(), changes));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.address),
            )
        }))
    }
}

/// A TLS connection to the controller, cut once the roots no longer verify the chain the
/// controller presented at its handshake. A root is withdrawn when its key may have leaked;
/// a session authenticated under it must not go on carrying config and certificates for the
/// node, so reads and writes fail from then on and the channel's next call reconnects under
/// the roots trusted now (the config stream resumes from what it holds).
struct ControllerConnection {
    tls: TlsStream<TcpStream>,
    /// Ready once the chain stops verifying; polled on every read and write, so a change of
    /// the roots wakes the connection's task.
    distrusted: Pin<Box<dyn Future<Output = ()> + Send>>,
    cut: bool,
}

impl ControllerConnection {
    fn new(tls: TlsStream<TcpStream>, trust: TrustBundle, mut changes: BundleChanges) -> Self {
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        let at = SystemTime::now();
        let distrusted = Box::pin(async move {
            loop {
                changes.changed().await;
                if !trust.verifies(&chain, ChainRole::Server, at) {
                    return;
                }
            }
        });
        Self {
            tls,
            distrusted,
            cut: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.cut && self.distrusted.as_mut().poll(cx).is_ready() {
            self.cut = true;
            tracing::warn!(
                "the controller's certificate no longer chains to a trusted root; \
                 closing the connection to reconnect under the current roots"
            );
        }
        if self.cut {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the controller's certificate no longer chains to a trusted root",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for ControllerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControllerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

async fn read_token(path: &Path) -> Result<String, EndpointError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| EndpointError::Token {
            path: path.display().to_string(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(EndpointError::EmptyToken(path.display().to_string()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ambit_identity::testing::TestPki;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
    use tokio_rustls::rustls::sign::CertifiedKey;

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A controller stand-in on loopback: TLS with the controller's certificate from `pki`,
    /// no client certificates (as the real one), echoing what it reads.
    async fn echo_controller(pki: &TestPki, identity: SpiffeId) -> std::net::SocketAddr {
        let certificate = pki.certificate(&identity);
        let config = ServerConfig::builder_with_provider(ambit_identity::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certificate.certified_key().clone())));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn controller(pki: &TestPki) -> SpiffeId {
        pki.id("ambit-system", "ambit-controller")
    }

    fn connector_to(pki: &TestPki, trust: &TrustBundle, addr: std::net::SocketAddr) -> Connector {
        ControllerEndpoint::new(
            addr.to_string(),
            controller(pki),
            trust,
            "/nonexistent/token",
        )
        .unwrap()
        .connector
    }

    async fn echoes(connection: &mut ControllerConnection) -> io::Result<()> {
        connection.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), connection.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_is_cut_once_its_root_is_withdrawn_and_kept_while_it_stays() {
        let pki = TestPki::new("cluster.local");
        let other = TestPki::new("cluster.local");
        let addr = echo_controller(&pki, controller(&pki)).await;
        let trust = pki.bundle();
        let connector = connector_to(&pki, &trust, addr);
        let mut connection = connector.connect().await.unwrap();
        echoes(&mut connection).await.unwrap();

        // A rotation that keeps the controller's root: the connection goes on.
        trust
            .replace([
                other.ca.root_certificate().clone(),
                pki.ca.root_certificate().clone(),
            ])
            .unwrap();
        echoes(&mut connection).await.unwrap();

        // Its root withdrawn while a read waits on the connection (as hyper's always does):
        // the read is woken and fails, without waiting for the peer.
        let pending = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let read = connection.read(&mut buf).await.map(|_| ());
            (read, connection)
        });
        // The spawned read runs until it waits for the peer before this task goes on.
        tokio::task::yield_now().await;
        assert!(!pending.is_finished());
        trust
            .replace([other.ca.root_certificate().clone()])
            .unwrap();
        let (read, mut connection) = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the waiting read is woken by the withdrawal")
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(
            echoes(&mut connection).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        // And a new connection is refused under the roots now trusted.
        assert!(connector.connect().await.is_err());
    }

    #[tokio::test]
    async fn a_controller_with_a_certificate_of_another_root_is_refused() {
        let pki = TestPki::new("cluster.local");
        let other = TestPki::new("cluster.local");
        let addr = echo_controller(&other, controller(&other)).await;
        let connector = connector_to(&pki, &pki.bundle(), addr);
        assert!(connector.connect().await.is_err());
    }

    #[tokio::test]
    async fn a_peer_of_the_mesh_that_is_not_the_controller_is_refused() {
        let pki = TestPki::new("cluster.local");
        let addr = echo_controller(&pki, pki.id("demo", "client")).await;
        let connector = connector_to(&pki, &pki.bundle(), addr);
        assert!(connector.connect().await.is_err());
        let addr = echo_controller(&pki, controller(&pki)).await;
        assert!(
            connector_to(&pki, &pki.bundle(), addr)
                .connect()
                .await
                .is_ok()
        );
    }
}
