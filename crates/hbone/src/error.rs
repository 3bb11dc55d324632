use ambit_identity::{PeerIdentityError, SpiffeId, TlsError, peer_identity_error};
use std::io;
use std::net::SocketAddr;

/// Why a tunnel could not be opened or served. Messages name the likely cause for operators.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error(
        "could not reach HBONE peer {peer}: {source} (is a NetworkPolicy or firewall blocking port 15008?)"
    )]
    Connect { peer: SocketAddr, source: io::Error },
    #[error("TLS handshake with {peer} failed: {}", tls_cause(source))]
    Tls { peer: SocketAddr, source: io::Error },
    #[error("handshake with {peer} did not finish within {timeout_ms} ms")]
    HandshakeTimeout { peer: SocketAddr, timeout_ms: u128 },
    #[error("peer {peer} negotiated no h2 ALPN; it does not speak HBONE")]
    NoH2 { peer: SocketAddr },
    #[error("peer {peer} has an unusable identity: {source}")]
    PeerIdentity {
        peer: SocketAddr,
        source: PeerIdentityError,
    },
    #[error("HBONE peer {peer} is unavailable (the dial this tunnel waited for failed): {reason}")]
    PeerUnavailable {
        peer: SocketAddr,
        reason: std::sync::Arc<str>,
    },
    #[error("{identity} at {peer} already holds {max} connections, the most one client may")]
    PeerConnectionLimit {
        peer: SocketAddr,
        identity: SpiffeId,
        max: usize,
    },
    #[error("handshake with {peer} cut: {scope} already has {max} handshakes in progress")]
    HandshakeBudget {
        peer: SocketAddr,
        scope: &'static str,
        max: usize,
    },
    #[error("no certificate is available for local identity {0}")]
    NoCertificate(SpiffeId),
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    #[error("HTTP/2 error: {0}")]
    H2(#[from] h2::Error),
    #[error("peer refused the tunnel to {target} with HTTP {status}")]
    Refused {
        target: SocketAddr,
        status: http::StatusCode,
    },
    #[error("invalid CONNECT request: {0}")]
    Request(#[from] http::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A handshake error as an operator reads it: an identity refusal by its own message, which
/// rustls would show in its Debug form.
fn tls_cause(source: &io::Error) -> String {
    let identity = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(peer_identity_error);
    match identity {
        Some(identity) => format!("invalid peer certificate: {identity}"),
        None => source.to_string(),
    }
}
