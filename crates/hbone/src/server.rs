//! The HBONE server: TLS with a verified client identity, HTTP/2, and each CONNECT stream handed
//! to a handler that decides it.

use crate::buffered::ReadBuffered;
use crate::connect::check_connect;
use crate::copy::{Transferred, splice_tcp_h2};
use crate::error::HboneError;
use crate::headers::TunnelHeaders;
use crate::lapse::{Authenticated, Lapse, Presented, PresentedNotAfter, jittered};
use crate::refusals::{REFUSAL_WARN_EVERY, Refusals, TunnelLimit, TunnelRefusals};
use crate::settings::ServerSettings;
use crate::stream::H2Stream;
use ambit_admission::{Handshake, HandshakeBudget};
use ambit_identity::{ChainRole, SpiffeId, TrustBundle, peer_identity_and_not_after};
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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

    /// How many tunnels `peer` may hold at once (over all its connections), given the
    /// settings' per-client `share`; asked once per connection. A handler that knows `peer`
    /// carries many clients' traffic (a waypoint: one replica is one client to every node it
    /// forwards to) may give it more; the server's total still bounds it.
    fn tunnel_share(&self, peer: &SpiffeId, share: usize) -> usize {
        let _ = peer;
        share
    }
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
    tls: Arc<rustls::ServerConfig>,
    /// The bundle `tls` verifies clients with: a change re-checks open connections.
    trust: TrustBundle,
    budget: ServerBudget,
    handler: Arc<H>,
    /// Set by [`HboneServer::go_away`]; shared by the clones serving its connections.
    going_away: Arc<tokio::sync::watch::Sender<bool>>,
    presented_not_after: Arc<PresentedNotAfter>,
}

/// A client, as the per-peer limits count them: a verified identity at one source address, which
/// is one pod (the node tunnel dials from the pod's netns). Not the identity alone: any pod can
/// get a certificate for its own service account, and one service account may have many pods
/// on many nodes, all legitimately connecting at once, so a share per identity would let one
/// busy workload starve its own other pods. Not the address alone: clients behind one address
/// with different identities are different tenants.
type Peer = (SpiffeId, IpAddr);

/// The counted limits of [`ServerSettings`]: connections, handshakes, tunnels, and the caps per
/// peer and per source address. Servers built with clones of one budget share them, so the
/// node tunnel's per-pod servers are bounded together (and [`ServerSettings::memory_bound`]
/// holds for the node).
#[derive(Debug, Clone)]
pub struct ServerBudget(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    settings: ServerSettings,
    connections: Arc<Semaphore>,
    handshakes: HandshakeBudget,
    tunnels: Arc<Semaphore>,
    connections_per_peer: Arc<Counts<Peer>>,
    tunnels_per_peer: Arc<Counts<Peer>>,
    refusals: Refusals,
}

impl ServerBudget {
    pub fn new(settings: ServerSettings) -> Self {
        Self(Arc::new(Budget {
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            handshakes: HandshakeBudget::new(
                settings.max_handshakes,
                settings.max_handshakes_per_address,
            ),
            tunnels: Arc::new(Semaphore::new(settings.max_tunnels)),
            connections_per_peer: Arc::default(),
            tunnels_per_peer: Arc::default(),
            refusals: Refusals::default(),
            settings,
        }))
    }

    pub fn settings(&self) -> &ServerSettings {
        &self.0.settings
    }

    /// CONNECTs answered 503 at a tunnel limit so far, by limit.
    pub fn tunnel_refusals(&self) -> TunnelRefusals {
        self.0.refusals.totals()
    }

    /// Answers a CONNECT 503 at `limit` (`max` tunnels), counts it, and warns now and then: a
    /// refused tunnel is a failed connection for the client's app, which an operator must see.
    fn refuse(
        &self,
        respond: SendResponse<Bytes>,
        limit: TunnelLimit,
        identity: &SpiffeId,
        peer: SocketAddr,
        max: usize,
    ) {
        respond_and_end(respond, StatusCode::SERVICE_UNAVAILABLE);
        if self.0.refusals.count(limit) {
            let TunnelRefusals { peer_share, node } = self.tunnel_refusals();
            tracing::warn!(
                %peer,
                %identity,
                ?limit,
                max,
                refused_at_peer_share = peer_share,
                refused_at_node_limit = node,
                "HBONE tunnel refused (503): at a tunnel limit; totals since start, warned at most every {}s",
                REFUSAL_WARN_EVERY.as_secs()
            );
        }
    }

    /// A handshake slot for a connection from `peer`, unless its address already has as many
    /// handshakes in progress as allowed. When the server has, the oldest handshake is cut to
    /// make room: a stalled one has had the longest to finish, while a client's completes in
    /// milliseconds, so a flood must outpace every handshake to keep clients out.
    fn admit_handshake(&self, peer: SocketAddr) -> Result<HandshakeSlot, HboneError> {
        let handshakes = &self.0.handshakes;
        let handshake = handshakes
            .admit(peer.ip())
            .ok_or(HboneError::HandshakeBudget {
                peer,
                scope: "its address",
                max: handshakes.max_per_address(),
            })?;
        Ok(HandshakeSlot {
            budget: self.clone(),
            handshake,
        })
    }
}

/// A handshake in progress, counted until dropped.
struct HandshakeSlot {
    budget: ServerBudget,
    handshake: Handshake,
}

impl HandshakeSlot {
    /// Runs a step of the handshake until `deadline`, or until the slot is taken for a newer
    /// handshake.
    async fn bound<T>(
        &self,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
        step: impl Future<Output = T>,
    ) -> Result<T, HboneError> {
        let settings = self.budget.settings();
        tokio::select! {
            done = tokio::time::timeout_at(deadline, step) => {
                done.map_err(|_| HboneError::HandshakeTimeout {
                    peer,
                    timeout_ms: settings.handshake_timeout.as_millis(),
                })
            }
            () = self.handshake.cut() => Err(HboneError::HandshakeBudget {
                peer,
                scope: "the server",
                max: settings.max_handshakes,
            }),
        }
    }
}

/// Open entries per key.
#[derive(Debug)]
struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone> Counts<K> {
    /// Counts an entry of `key`, unless it already has `max`; [`Self::leave`] uncounts it.
    fn try_enter(&self, key: &K, max: usize) -> bool {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_default();
        if *count >= max {
            if *count == 0 {
                open.remove(key);
            }
            return false;
        }
        *count += 1;
        true
    }

    fn leave(&self, key: &K) {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                open.remove(key);
            }
        }
    }

    /// [`Self::try_enter`], uncounted when the entry is dropped.
    fn enter(self: &Arc<Self>, key: K, max: usize) -> Option<Counted<K>> {
        self.try_enter(&key, max).then(|| Counted {
            counts: self.clone(),
            key,
        })
    }
}

/// One counted entry; uncounted when dropped.
struct Counted<K: Eq + Hash + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for Counted<K> {
    fn drop(&mut self) {
        self.counts.leave(&self.key);
    }
}

/// The tunnels of one connection: counted in the budget's tunnel limit, in their client's
/// share, and on the connection (with a wake-up when the last one ends). One per connection,
/// so that what each open tunnel holds is one pointer to it ([`TunnelSlot`]).
struct OpenTunnels {
    budget: ServerBudget,
    client: Peer,
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl OpenTunnels {
    fn new(budget: &ServerBudget, client: Peer) -> Self {
        Self {
            budget: budget.clone(),
            client,
            count: AtomicUsize::new(0),
            none_left: tokio::sync::Notify::new(),
        }
    }

    /// A slot for one more tunnel, within the client's share (`max_per_peer`) and the
    /// budget's tunnel limit; or the limit that refuses it.
    fn open(self: &Arc<Self>, max_per_peer: usize) -> Result<TunnelSlot, TunnelLimit> {
        let budget = &self.budget.0;
        if !budget
            .tunnels_per_peer
            .try_enter(&self.client, max_per_peer)
        {
            return Err(TunnelLimit::PeerShare);
        }
        match budget.tunnels.try_acquire() {
            // Given back by the slot's drop, with the share.
            Ok(permit) => permit.forget(),
            Err(_) => {
                budget.tunnels_per_peer.leave(&self.client);
                return Err(TunnelLimit::Node);
            }
        }
        self.count.fetch_add(1, Ordering::AcqRel);
        Ok(TunnelSlot(self.clone()))
    }
}

/// One open tunnel, counted on its connection, in its client's share and in the budget while
/// its task runs.
struct TunnelSlot(Arc<OpenTunnels>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let tunnels = &self.0;
        let budget = &tunnels.budget.0;
        budget.tunnels.add_permits(1);
        budget.tunnels_per_peer.leave(&tunnels.client);
        if tunnels.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            tunnels.none_left.notify_one();
        }
    }
}

/// A tunnel's task: the handler's future and the tunnel's slot, given back when it ends. Not
/// an async block, which would hold the handler's future twice (as captured and as awaited):
/// every open tunnel pays for this task's size.
struct TunnelTask<F> {
    task: Pin<Box<F>>,
    _slot: TunnelSlot,
}

impl<F: Future<Output = ()>> Future for TunnelTask<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.task.as_mut().poll(cx)
    }
}

impl<H> fmt::Debug for HboneServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneServer")
            .field("settings", self.budget.settings())
            .finish_non_exhaustive()
    }
}

impl<H> Clone for HboneServer<H> {
    fn clone(&self) -> Self {
        Self {
            tls: self.tls.clone(),
            trust: self.trust.clone(),
            budget: self.budget.clone(),
            handler: self.handler.clone(),
            going_away: self.going_away.clone(),
            presented_not_after: self.presented_not_after.clone(),
        }
    }
}

impl<H: ConnectHandler> HboneServer<H> {
    /// `tls` comes from [`ambit_identity::server_config`] with `trust`: open connections whose
    /// client chain a change of `trust` leaves unverified are cut.
    pub fn new(
        tls: rustls::ServerConfig,
        trust: &TrustBundle,
        settings: ServerSettings,
        handler: H,
    ) -> Self {
        Self::with_budget(tls, trust, ServerBudget::new(settings), handler)
    }

    /// A server counted in `budget`, together with every other server built with it.
    pub fn with_budget(
        tls: rustls::ServerConfig,
        trust: &TrustBundle,
        budget: ServerBudget,
        handler: H,
    ) -> Self {
        Self {
            tls: Arc::new(tls),
            trust: trust.clone(),
            budget,
            handler: Arc::new(handler),
            going_away: Arc::new(tokio::sync::watch::Sender::new(false)),
            presented_not_after: Arc::default(),
        }
    }

    fn settings(&self) -> &ServerSettings {
        self.budget.settings()
    }

    /// Asks every connection of this server (and its clones) to go away: GOAWAY, after which
    /// the tunnels open on it go on and the client opens new ones on a new connection (to
    /// whoever listens then: a successor, in a tunnel upgrade). Call it once the listener is
    /// closed.
    pub fn go_away(&self) {
        self.going_away.send_replace(true);
    }

    /// Accepts connections forever; each connection runs in its own task. Accept errors (such
    /// as running out of file descriptors) are logged and retried with backoff: the listener
    /// keeps serving once the pressure is gone.
    pub async fn serve(self, listener: TcpListener) {
        let slots = self.budget.0.connections.clone();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(
                        max_connections = self.settings().max_connections,
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
            // The connection's future (~9.6 KiB) is built inside the task, on the heap: built
            // here it sat in this loop's frame (three copies), and every thread serving an HBONE
            // listener touched that frame's ~30 KiB of stack even with no connection
            // (docs/performance.md, "What an enrolled pod costs").
            tokio::spawn(async move {
                if let Err(error) = Box::pin(server.serve_connection(tcp, peer)).await {
                    tracing::debug!(%peer, %error, "HBONE connection ended with an error");
                }
                drop(slot);
            });
        }
    }

    /// Runs one client connection: TLS, identity, then every CONNECT stream on it, until the
    /// client closes it or it has had no open tunnel for the idle timeout. A connection that
    /// finds the handshake budget spent is closed at once. Once the client's certificate
    /// expires or its root is withdrawn, the connection gets GOAWAY and new CONNECTs on it
    /// are refused unprocessed (REFUSED_STREAM, so the client may retry elsewhere); a
    /// withdrawn root also closes it `distrust_drain` later.
    pub async fn serve_connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), HboneError> {
        let handshaking = self.budget.admit_handshake(peer)?;
        tcp.set_nodelay(true)?;
        // One deadline for TLS and the HTTP/2 preface: a client that stalls in either is cut.
        let deadline = tokio::time::Instant::now() + self.settings().handshake_timeout;
        let changes = self.trust.changes();
        let (acceptor, presented) = self.acceptor();
        let tls = handshaking
            .bound(peer, deadline, acceptor.accept(ReadBuffered::new(tcp)))
            .await?
            .map_err(|source| HboneError::Tls { peer, source })?;
        let peer_chain = tls.get_ref().1.peer_certificates();
        let (identity, leaf_not_after) = peer_identity_and_not_after(peer_chain)
            .map_err(|source| HboneError::PeerIdentity { peer, source })?;
        let authenticated = Authenticated::with_leaf_not_after(
            &self.trust,
            changes,
            peer_chain,
            ChainRole::Client,
            Some(leaf_not_after),
            presented.not_after(&self.presented_not_after),
        );
        let client: Peer = (identity.clone(), peer.ip());
        let max = self.settings().max_connections_per_peer;
        let peers = &self.budget.0.connections_per_peer;
        let Some(_counted) = peers.enter(client.clone(), max) else {
            tracing::warn!(%peer, %identity, max, "HBONE client at its connection limit; closing its new connection");
            return Err(HboneError::PeerConnectionLimit {
                peer,
                identity,
                max,
            });
        };
        let mut connection = handshaking
            .bound(peer, deadline, self.h2_builder().handshake(tls))
            .await??;
        drop(handshaking);
        let tunnels = Arc::new(OpenTunnels::new(&self.budget, client));
        let max_per_peer = self
            .handler
            .tunnel_share(&identity, self.settings().max_tunnels_per_peer);
        let idle_timeout = self.settings().idle_timeout;
        // When the connection last had no open tunnel; `None` while one is open.
        let mut idle_since = Some(tokio::time::Instant::now());
        let mut lapses =
            authenticated.watch(std::time::Duration::ZERO, Some(self.going_away.subscribe()));
        // Set once the client's certificates lapsed: no new tunnel on this connection.
        let mut refusing = false;
        let mut cut_at: Option<tokio::time::Instant> = None;
        loop {
            let idle_until = idle_since.map(|since| since + idle_timeout);
            tokio::select! {
                accepted = connection.accept() => {
                    let Some(accepted) = accepted else { break };
                    let (request, mut respond) = accepted?;
                    if refusing {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let slot = match tunnels.open(max_per_peer) {
                        Ok(slot) => slot,
                        Err(limit) => {
                            let max = match limit {
                                TunnelLimit::PeerShare => max_per_peer,
                                TunnelLimit::Node => self.settings().max_tunnels,
                            };
                            self.budget.refuse(respond, limit, &identity, peer, max);
                            continue;
                        }
                    };
                    if let Some((request, tunnel)) =
                        parse_connect(request, respond, identity.clone(), peer)
                    {
                        idle_since = None;
                        let task = Box::pin(self.handler.handle(request, tunnel));
                        tokio::spawn(TunnelTask { task, _slot: slot });
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
                Some(lapse) = lapses.recv() => {
                    tracing::debug!(%peer, %identity, ?lapse, "HBONE connection takes no new tunnels; GOAWAY");
                    connection.graceful_shutdown();
                    refusing |= lapse != Lapse::GoingAway;
                    if lapse == Lapse::Distrusted {
                        let s = self.settings();
                        let (drain, jitter) = (s.distrust_drain, s.distrust_drain_jitter);
                        let drain = jittered(drain, jitter, &mut fastrand::Rng::new());
                        cut_at = Some(tokio::time::Instant::now() + drain);
                    }
                }
                () = sleep_until(cut_at), if cut_at.is_some() => {
                    tracing::warn!(%peer, %identity, "HBONE client's root is no longer trusted; closing the connection and its tunnels");
                    break;
                }
            }
        }
        Ok(())
    }

    /// An acceptor for one connection, and what it will have presented: the certificate of
    /// each handshake is the resolver's current one, and the connection takes no tunnels past
    /// its end. A copy of the config per handshake (a few small allocations) is the price.
    fn acceptor(&self) -> (TlsAcceptor, Arc<Presented>) {
        let presented = Arc::new(Presented::new(self.tls.cert_resolver.clone()));
        let mut tls = (*self.tls).clone();
        tls.cert_resolver = presented.clone();
        (TlsAcceptor::from(Arc::new(tls)), presented)
    }

    fn h2_builder(&self) -> h2::server::Builder {
        let s = self.settings();
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

/// Validates the request shape ([`check_connect`]); answers 400 itself when it is not a
/// CONNECT to `ip:port`.
fn parse_connect(
    request: Request<h2::RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SpiffeId,
    peer_addr: SocketAddr,
) -> Option<(ConnectRequest, PendingTunnel)> {
    let (target, headers) = match check_connect(&request) {
        Ok(checked) => checked,
        Err(error) => {
            tracing::debug!(%peer, %error, "refusing a request that is not a tunnel");
            respond_and_end(respond, StatusCode::BAD_REQUEST);
            return None;
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open tunnel's task is the handler's future and what the server adds to it: the
    /// box holding that future and the one-pointer slot. An async block around the handler's
    /// future held it twice (1,280-byte tasks in the transport benchmark, 640 now).
    #[test]
    fn a_tunnel_task_adds_two_pointers_to_the_handlers_future() {
        let size = std::mem::size_of::<TunnelTask<std::future::Ready<()>>>();
        assert_eq!(size, 2 * std::mem::size_of::<usize>());
    }
}
