//! The HBONE server: TLS with a verified client identity, HTTP/2, and each CONNECT stream handed
//! to a handler that decides it.

use crate::buffered::ReadBuffered;
use crate::copy::{Transferred, splice_tcp_h2};
use crate::error::HboneError;
use crate::headers::TunnelHeaders;
use crate::settings::ServerSettings;
use crate::stream::H2Stream;
use ambit_identity::{SpiffeId, peer_identity};
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A verified CONNECT request.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The client's SPIFFE id, from its verified certificate.
    pub peer: SpiffeId,
    /// The client's TCP address.
    pub peer_addr: SocketAddr,
    /// Where the client wants to go (`:authority`).
    pub target: SocketAddr,
    pub headers: TunnelHeaders,
}

/// Why a handler turns a tunnel down; each maps to the HBONE status the client sees.
#[derive(Debug)]
pub enum Refusal {
    /// Authorization said no: 401.
    Denied,
    /// The target refused or could not be reached: 503.
    Unreachable,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied => StatusCode::UNAUTHORIZED,
            Refusal::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A CONNECT stream awaiting the handler's decision.
pub struct PendingTunnel {
    respond: SendResponse<Bytes>,
    recv: h2::RecvStream,
}

impl fmt::Debug for PendingTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingTunnel")
            .field("stream_id", &self.respond.stream_id().as_u32())
            .finish()
    }
}

impl PendingTunnel {
    /// Answers 200 and returns the established tunnel.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let send = self
            .respond
            .send_response(response(StatusCode::OK), false)?;
        Ok(H2Stream::new(send, self.recv, None))
    }

    /// Answers with the refusal's status and ends the stream.
    pub fn refuse(self, refusal: Refusal) {
        respond_and_end(self.respond, refusal.status());
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

fn respond_and_end(mut respond: SendResponse<Bytes>, status: StatusCode) {
    // The client may already have gone; nothing is left to tell it then.
    let _ = respond.send_response(response(status), true);
}

/// Decides each verified CONNECT: check policy, then accept (and carry bytes) or refuse.
///
/// The returned future is spawned as the tunnel's task and lives as long as the tunnel, so it
/// owns what it needs (clone from `self` up front) and stays small: its size is paid by every
/// open tunnel.
pub trait ConnectHandler: Send + Sync + 'static {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<Self>;
}

/// Connects to `target` and carries the tunnel to it; answers 503 if it refuses.
pub async fn forward_to_target(
    target: SocketAddr,
    tunnel: PendingTunnel,
) -> Result<Transferred, HboneError> {
    // Boxed so the connect state is freed once connected instead of sized into the tunnel.
    let mut upstream = match Box::pin(TcpStream::connect(target)).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tunnel.refuse(Refusal::Unreachable);
            return Err(error.into());
        }
    };
    let stream = tunnel.accept()?;
    Ok(splice_tcp_h2(&mut upstream, stream).await?)
}

const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

pub struct HboneServer<H> {
    acceptor: TlsAcceptor,
    settings: Arc<ServerSettings>,
    handler: Arc<H>,
    peers: Arc<PeerConnections>,
}

/// A client, as the per-peer connection limit counts them: a verified identity at one address.
type Peer = (SpiffeId, IpAddr);

/// Open connections per client.
#[derive(Debug, Default)]
struct PeerConnections(Mutex<HashMap<Peer, usize>>);

impl PeerConnections {
    /// Counts a connection of `peer`, unless it already holds `max`.
    fn enter(self: &Arc<Self>, peer: Peer, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            peer,
        })
    }
}

/// One counted connection; uncounted when dropped.
struct PeerSlot {
    peers: Arc<PeerConnections>,
    peer: Peer,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// The tunnels open on one connection, and a wake-up when the last one ends.
#[derive(Debug, Default)]
struct OpenTunnels {
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

/// One open tunnel, counted while its task runs.
struct TunnelSlot(Arc<OpenTunnels>);

impl TunnelSlot {
    fn new(tunnels: &Arc<OpenTunnels>) -> Self {
        tunnels.count.fetch_add(1, Ordering::AcqRel);
        Self(tunnels.clone())
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

impl<H> fmt::Debug for HboneServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<H> Clone for HboneServer<H> {
    fn clone(&self) -> Self {
        Self {
            acceptor: self.acceptor.clone(),
            settings: self.settings.clone(),
            handler: self.handler.clone(),
            peers: self.peers.clone(),
        }
    }
}

impl<H: ConnectHandler> HboneServer<H> {
    /// `tls` comes from [`ambit_identity::server_config`].
    pub fn new(tls: rustls::ServerConfig, settings: ServerSettings, handler: H) -> Self {
        Self {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            settings: Arc::new(settings),
            handler: Arc::new(handler),
            peers: Arc::default(),
        }
    }

    /// Accepts connections forever; each connection runs in its own task. Accept errors (such
    /// as running out of file descriptors) are logged and retried with backoff: the listener
    /// keeps serving once the pressure is gone.
    pub async fn serve(self, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.max_connections));
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(
                        max_connections = self.settings.max_connections,
                        "HBONE server at its connection limit; new connections wait"
                    );
                    match slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => return,
                    }
                }
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "HBONE accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(error) = server.serve_connection(tcp, peer).await {
                    tracing::debug!(%peer, %error, "HBONE connection ended with an error");
                }
                drop(slot);
            });
        }
    }

    /// Runs one client connection: TLS, identity, then every CONNECT stream on it, until the
    /// client closes it or it has had no open tunnel for the idle timeout.
    pub async fn serve_connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), HboneError> {
        tcp.set_nodelay(true)?;
        let timeout = self.settings.handshake_timeout;
        let timed_out = |_| HboneError::HandshakeTimeout {
            peer,
            timeout_ms: timeout.as_millis(),
        };
        // One deadline for TLS and the HTTP/2 preface: a client that stalls in either is cut.
        let deadline = tokio::time::Instant::now() + timeout;
        let tls = tokio::time::timeout_at(deadline, self.acceptor.accept(ReadBuffered::new(tcp)))
            .await
            .map_err(timed_out)?
            .map_err(|source| HboneError::Tls { peer, source })?;
        let identity = peer_identity(tls.get_ref().1.peer_certificates())
            .map_err(|source| HboneError::PeerIdentity { peer, source })?;
        let max = self.settings.max_connections_per_peer;
        let Some(_counted) = self.peers.enter((identity.clone(), peer.ip()), max) else {
            tracing::warn!(%peer, %identity, max, "HBONE client at its connection limit; closing its new connection");
            return Err(HboneError::PeerConnectionLimit {
                peer,
                identity,
                max,
            });
        };
        let mut connection = tokio::time::timeout_at(deadline, self.h2_builder().handshake(tls))
            .await
            .map_err(timed_out)??;
        let tunnels = Arc::new(OpenTunnels::default());
        let idle_timeout = self.settings.idle_timeout;
        // When the connection last had no open tunnel; `None` while one is open.
        let mut idle_since = Some(tokio::time::Instant::now());
        loop {
            let idle_until = idle_since.map(|since| since + idle_timeout);
            tokio::select! {
                accepted = connection.accept() => {
                    let Some(accepted) = accepted else { break };
                    let (request, respond) = accepted?;
                    if let Some((request, tunnel)) =
                        parse_connect(request, respond, identity.clone(), peer)
                    {
                        idle_since = None;
                        let open = TunnelSlot::new(&tunnels);
                        let task = self.handler.handle(request, tunnel);
                        tokio::spawn(async move {
                            task.await;
                            drop(open);
                        });
                    }
                }
                () = tunnels.none_left.notified(), if idle_since.is_none() => {
                    if tunnels.count.load(Ordering::Acquire) == 0 {
                        idle_since = Some(tokio::time::Instant::now());
                    }
                }
                () = sleep_until(idle_until), if idle_until.is_some() => {
                    tracing::debug!(%peer, %identity, "HBONE connection idle; closing it");
                    // GOAWAY: tunnels the client opened meanwhile are still served; the
                    // loop runs until the connection is closed.
                    connection.graceful_shutdown();
                    idle_since = None;
                }
            }
        }
        Ok(())
    }

    fn h2_builder(&self) -> h2::server::Builder {
        let s = &self.settings;
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(s.h2.stream_window)
            .initial_connection_window_size(s.h2.connection_window)
            .max_frame_size(s.h2.max_frame_size)
            .max_header_list_size(s.h2.max_header_list_size)
            .max_send_buffer_size(s.h2.max_send_buffer)
            .max_concurrent_streams(s.max_concurrent_streams)
            .max_pending_accept_reset_streams(s.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(s.max_local_error_reset_streams));
        builder
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Validates the request shape; answers 400 itself when it is not a CONNECT to `ip:port`.
fn parse_connect(
    request: Request<h2::RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SpiffeId,
    peer_addr: SocketAddr,
) -> Option<(ConnectRequest, PendingTunnel)> {
    if request.method() != Method::CONNECT {
        tracing::debug!(%peer, method = %request.method(), "refusing a non-CONNECT request");
        respond_and_end(respond, StatusCode::BAD_REQUEST);
        return None;
    }
    let target = request
        .uri()
        .authority()
        .and_then(|authority| authority.as_str().parse::<SocketAddr>().ok());
    let Some(target) = target else {
        tracing::debug!(%peer, uri = %request.uri(), "refusing a CONNECT whose authority is not ip:port");
        respond_and_end(respond, StatusCode::BAD_REQUEST);
        return None;
    };
    let headers = TunnelHeaders::from_headers(request.headers());
    let recv = request.into_body();
    Some((
        ConnectRequest {
            peer,
            peer_addr,
            target,
            headers,
        },
        PendingTunnel { respond, recv },
    ))
}
