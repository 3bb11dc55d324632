//! Dialing HBONE peers (TCP, mutual TLS with an expected identity, HTTP/2) and opening CONNECT
//! streams on the resulting connections.

use crate::buffered::ReadBuffered;
use crate::copy::MAX_DATA_FRAME;
use crate::error::HboneError;
use crate::headers::TunnelHeaders;
use crate::lapse::Authenticated;
use crate::settings::PoolSettings;
use crate::stream::{H2Stream, StreamLease};
use ambit_identity::{
    ALPN_H2, CertificateHandle, ChainRole, SpiffeId, TrustBundle, client_config, server_name,
};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The HTTP/2 connection future of a dialed peer; it must be polled for streams to progress.
pub type ClientConnection = h2::client::Connection<TlsStream<ReadBuffered<TcpStream>>, Bytes>;

/// Makes authenticated HTTP/2 connections to HBONE peers.
#[derive(Debug, Clone)]
pub struct Dialer {
    trust: TrustBundle,
    settings: Arc<PoolSettings>,
    /// SO_MARK for dialed sockets, so a node tunnel's own traffic is not captured again.
    socket_mark: Option<u32>,
}

impl Dialer {
    pub fn new(trust: TrustBundle, settings: PoolSettings) -> Self {
        Self {
            trust,
            settings: Arc::new(settings),
            socket_mark: None,
        }
    }

    /// Marks every socket this dialer opens with `mark` (SO_MARK, needs CAP_NET_ADMIN), so
    /// packet filters can tell the tunnel's own connections from the traffic it captures.
    pub fn with_socket_mark(mut self, mark: u32) -> Self {
        self.socket_mark = Some(mark);
        self
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Connects to `peer` presenting `local`, and accepts the peer only if its SPIFFE id is
    /// one of `expected`.
    pub async fn dial(
        &self,
        local: CertificateHandle,
        peer: SocketAddr,
        expected: Vec<SpiffeId>,
    ) -> Result<(SendRequest<Bytes>, ClientConnection), HboneError> {
        let (send, connection, _) = self.dial_authenticated(local, peer, expected).await?;
        Ok((send, connection))
    }

    /// [`Self::dial`], with what the connection was authenticated with, to watch it.
    pub(crate) async fn dial_authenticated(
        &self,
        local: CertificateHandle,
        peer: SocketAddr,
        expected: Vec<SpiffeId>,
    ) -> Result<(SendRequest<Bytes>, ClientConnection, Authenticated), HboneError> {
        let timeout = self.settings.connect_timeout;
        tokio::time::timeout(timeout, self.dial_inner(local, peer, expected))
            .await
            .map_err(|_| HboneError::HandshakeTimeout {
                peer,
                timeout_ms: timeout.as_millis(),
            })?
    }

    async fn dial_inner(
        &self,
        local: CertificateHandle,
        peer: SocketAddr,
        expected: Vec<SpiffeId>,
    ) -> Result<(SendRequest<Bytes>, ClientConnection, Authenticated), HboneError> {
        // Read before the handshake: a certificate rotated during it is newer and ends later,
        // so the connection is retired early rather than late.
        let own_not_after = local.current().map(|own| own.not_after());
        let changes = self.trust.changes();
        let config = client_config(local, &self.trust, expected)?;
        let tcp = connect_marked(peer, self.socket_mark)
            .await
            .map_err(|source| HboneError::Connect { peer, source })?;
        tcp.set_nodelay(true)?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(server_name(peer.ip()), ReadBuffered::new(tcp))
            .await
            .map_err(|source| HboneError::Tls { peer, source })?;
        // rustls takes 64 KiB per write by default, so the copy engine's largest DATA frame
        // (64 KiB and its header) went out in two `writev`s, the second a TLS record of 9
        // bytes. A server (32 KiB send buffers by default) makes no frame that large.
        tls.get_mut().1.set_buffer_limit(Some(MAX_DATA_FRAME));
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(HboneError::NoH2 { peer });
        }
        let authenticated = Authenticated::new(
            &self.trust,
            changes,
            tls.get_ref().1.peer_certificates(),
            ChainRole::Server,
            own_not_after,
        );
        let h2 = &self.settings.h2;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(h2.stream_window)
            .initial_connection_window_size(h2.connection_window)
            .max_frame_size(h2.max_frame_size)
            .max_header_list_size(h2.max_header_list_size)
            .max_send_buffer_size(h2.max_send_buffer)
            .enable_push(false)
            .handshake(tls)
            .await?;
        Ok((send, connection, authenticated))
    }

    /// One tunnel on a connection of its own, with a full handshake; the connection closes
    /// when the tunnel ends.
    pub async fn connect_unpooled(
        &self,
        local: CertificateHandle,
        peer: SocketAddr,
        expected: Vec<SpiffeId>,
        target: SocketAddr,
        headers: &TunnelHeaders,
    ) -> Result<H2Stream, HboneError> {
        let (send, connection) = self.dial(local, peer, expected).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "unpooled HBONE connection failed");
            }
        });
        open_tunnel(send, target, headers, None).await
    }
}

/// Connects to `peer` from a socket carrying `mark` (SO_MARK) when one is given.
pub async fn connect_marked(peer: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(mark) = mark else {
        return TcpStream::connect(peer).await;
    };
    let socket = if peer.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&socket).set_mark(mark)?;
    socket.connect(peer).await
}

/// Sends CONNECT for `target` and waits for the peer's answer.
pub(crate) async fn open_tunnel(
    send: SendRequest<Bytes>,
    target: SocketAddr,
    headers: &TunnelHeaders,
    lease: Option<StreamLease>,
) -> Result<H2Stream, HboneError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(Uri::try_from(target.to_string()).map_err(http::Error::from)?)
        .body(())?;
    headers.apply_to(request.headers_mut());
    let mut send = send.ready().await?;
    let (response, stream) = send.send_request(request, false)?;
    let response = response.await?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Refused {
            target,
            status: response.status(),
        });
    }
    Ok(H2Stream::new(stream, response.into_body(), lease))
}
