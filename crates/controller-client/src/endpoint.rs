//! Reaching the controller: TLS that accepts only the controller's SPIFFE id, and the
//! projected service-account token on every call.

use ambit_identity::{CertificateHandle, SpiffeId, TrustBundle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
    address: String,
    identity: SpiffeId,
    tls: Arc<rustls_config::ClientConfig>,
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
            address,
            identity,
            tls: Arc::new(tls),
            token: token.into(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// A channel that connects on first use and reconnects after failures.
    pub fn channel(&self) -> Channel {
        let address = self.address.clone();
        let tls = self.tls.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let address = address.clone();
            let tls = tls.clone();
            async move {
                let mut last = None;
                for addr in tokio::net::lookup_host(address.as_str()).await? {
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            let tls = tokio_rustls::TlsConnector::from(tls)
                                .connect(ambit_identity::server_name(addr.ip()), tcp)
                                .await?;
                            return Ok(hyper_util::rt::TokioIo::new(tls));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{address} resolves to no address"),
                    )
                }))
            }
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
