//! Tunables of HBONE endpoints. Every limit is explicit so a hostile peer meets a bound, not a
//! default nobody chose.

use crate::lapse::WATCHER_OVERHEAD;
use ambit_identity::MAX_PEER_CHAIN_BYTES;
use std::time::Duration;

/// HTTP/2 flow control and framing shared by clients and servers.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Per-stream receive window: large enough to keep a fast single stream busy across two
    /// proxies without waiting for WINDOW_UPDATEs.
    pub stream_window: u32,
    /// Connection receive window, shared by all multiplexed streams.
    pub connection_window: u32,
    /// Largest DATA frame we accept. Bigger frames mean fewer headers and wakeups, but frames
    /// over glibc's 128 KiB mmap threshold are mapped and unmapped per frame (measured slower).
    pub max_frame_size: u32,
    /// Bound on decoded request/response headers, against header floods.
    pub max_header_list_size: u32,
    /// Bytes a stream may queue for sending before it waits for the socket.
    pub max_send_buffer: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            max_send_buffer: 1024 * 1024,
        }
    }
}

/// Limits of an HBONE server (inbound, port 15008). Servers built with one
/// [`ServerBudget`](crate::ServerBudget) share the counted limits (connections, handshakes,
/// tunnels, per-peer and per-address caps), so in the node tunnel they hold for the whole node,
/// not per pod.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Receive windows, frame size and send buffer of the server's connections: small, because
    /// each is paid by every connection or tunnel a hostile peer can open (see
    /// [`ServerSettings::memory_bound`]).
    pub h2: H2Settings,
    /// Client connections served at once, handshakes included; past this the server stops
    /// accepting until one closes, leaving the rest waiting in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client may hold at once, a client being a verified identity at one
    /// source address (a pod); past this a new one is closed right after its TLS handshake.
    /// Any pod can get a certificate for its own service account, so an authenticated peer is
    /// not a trusted one: without this bound one pod could hold every slot. Not per identity
    /// alone: the pods of one service account on every node legitimately connect at once. A
    /// pool opens one connection per 1,000 concurrent tunnels.
    pub max_connections_per_peer: usize,
    /// A connection without an open tunnel for this long is closed (GOAWAY), so idle
    /// connections do not hold slots. Longer than the pool's idle timeout, so that clients
    /// normally close theirs first.
    pub idle_timeout: Duration,
    /// Concurrent tunnels one client connection may hold open.
    pub max_concurrent_streams: u32,
    /// Tunnels open at once over all connections; past this a CONNECT is answered 503.
    pub max_tunnels: usize,
    /// Tunnels one client (a verified identity at one source address, as for
    /// `max_connections_per_peer`) may hold open at once, over all its connections; past this
    /// its CONNECT is answered 503, as at `max_tunnels`. A share well under `max_tunnels`, so
    /// a few clients cannot take every tunnel and starve the rest: the per-connection
    /// `max_concurrent_streams` does not bound a client, which may open several connections.
    pub max_tunnels_per_peer: usize,
    /// One deadline for the TLS handshake and the HTTP/2 preface; a slower client is cut
    /// (slowloris).
    pub handshake_timeout: Duration,
    /// Connections still in their handshake at once, unauthenticated; past this a new
    /// connection is closed at once, so stalled handshakes can hold only this many of the
    /// `max_connections` slots.
    pub max_handshakes: usize,
    /// Handshakes in progress from one source address; past this its new connections are
    /// closed at once, so one address cannot take the whole handshake budget.
    pub max_handshakes_per_address: usize,
    /// Streams a client may open and reset before we accept them (rapid-reset flood bound).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we may reset for protocol errors before the connection is closed.
    pub max_local_error_reset_streams: usize,
    /// How long the tunnels of a connection whose client chain the trust bundle no longer
    /// verifies (its root withdrawn) may go on after the GOAWAY; then the connection closes.
    /// A connection whose client certificate expired also gets GOAWAY, but its tunnels go on
    /// (docs/hbone.md, "Certificates that end").
    pub distrust_drain: Duration,
    /// Each connection's `distrust_drain` is moved by up to this fraction of it either way
    /// (0.2: ±20%), so a withdrawal does not cut every node's connections, and start their
    /// reconnections, at one moment. 0 for an exact drain.
    pub distrust_drain_jitter: f64,
}

/// What one server connection may hold besides its receive window and the frame being read
/// (`max_frame_size`), at most: rustls's record being received (18 KiB) and the records it has
/// sealed but not yet sent (its default buffer limit, 64 KiB, and the records' overhead: a
/// client that stops reading leaves them queued), `ReadBuffered` (one 64 KiB frame's TLS
/// records and a byte), h2's writer (16 KiB), HPACK tables and the task (~16 KiB), and the task
/// watching its certificates with a copy of the client's chain (the verifiers refuse one over
/// 8 KiB).
const CONNECTION_OVERHEAD: u64 = 18 * 1024
    + 65 * 1024
    + crate::buffered::BUFFER_SIZE as u64
    + 16 * 1024
    + 16 * 1024
    + WATCHER_OVERHEAD
    + MAX_PEER_CHAIN_BYTES as u64;

/// What one open tunnel may hold besides its send buffer: the copy engine's read chunk waiting
/// for send capacity (64 KiB at most), the splice task, h2's stream state and the socket to
/// the target.
const TUNNEL_OVERHEAD: u64 = 64 * 1024 + 4 * 1024;

impl ServerSettings {
    /// The most memory, in bytes, that clients can make the servers sharing these limits hold,
    /// whatever they send or leave unread:
    ///
    /// `min(max_connections x connection_window, max_tunnels x stream_window)
    ///  + max_connections x (max_frame_size + connection overhead)
    ///  + max_tunnels x (max_send_buffer + tunnel overhead)`
    ///
    /// Received data the targets have not taken yet is held within the receive windows (it is
    /// released to the peer only as it is handed on): a stream's at most, and a connection's
    /// for all its streams. A tunnel holds at most its send buffer of data the client has not
    /// read (the client's windows do not matter), plus one read chunk. Kernel socket buffers
    /// are not counted: they are not the process's.
    pub fn memory_bound(&self) -> u64 {
        let (connections, tunnels) = (self.max_connections as u64, self.max_tunnels as u64);
        let received = (connections * u64::from(self.h2.connection_window))
            .min(tunnels * u64::from(self.h2.stream_window));
        let per_connection = u64::from(self.h2.max_frame_size) + CONNECTION_OVERHEAD;
        let per_tunnel = self.h2.max_send_buffer as u64 + TUNNEL_OVERHEAD;
        received + connections * per_connection + tunnels * per_tunnel
    }

    /// [`Self::memory_bound`] of `tunnels` tunnels on one connection.
    pub fn connection_memory_bound(&self, tunnels: usize) -> u64 {
        Self {
            max_connections: 1,
            max_tunnels: tunnels,
            ..self.clone()
        }
        .memory_bound()
    }
}

impl Default for ServerSettings {
    /// Sized so that [`Self::memory_bound`] (348 MiB) fits the node tunnel's 512 MiB
    /// container limit with room for its pools and config: 256 connections, 1,280 tunnels
    /// (a client may hold a quarter of them, so it takes four clients to hold them all) with
    /// 128 KiB receive windows and 32 KiB send buffers. What tunnels have received is bounded
    /// by their stream windows, so the connection window stays large (16 MiB, as the pool's):
    /// a few stalled streams must not stall the rest of their connection.
    fn default() -> Self {
        Self {
            h2: H2Settings {
                stream_window: 128 * 1024,
                connection_window: 16 * 1024 * 1024,
                max_frame_size: 64 * 1024,
                max_header_list_size: 16 * 1024,
                max_send_buffer: 32 * 1024,
            },
            max_connections: 256,
            max_connections_per_peer: 16,
            idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 1024,
            max_tunnels: 1280,
            max_tunnels_per_peer: 320,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 128,
            max_handshakes_per_address: 8,
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 256,
            distrust_drain: DISTRUST_DRAIN,
            distrust_drain_jitter: DISTRUST_DRAIN_JITTER,
        }
    }
}

/// Long enough for requests in flight when a root is withdrawn to finish, short enough that
/// sessions made under a root withdrawn for a leaked key do not linger.
const DISTRUST_DRAIN: Duration = Duration::from_secs(30);
const DISTRUST_DRAIN_JITTER: f64 = 0.2;

/// Behaviour of the outbound connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub h2: H2Settings,
    /// Tunnels multiplexed on one connection before another is dialed to the same peer.
    /// High, because each connection costs tens of KiB of TLS and HTTP/2 buffers and HPACK
    /// tables; the server's `max_concurrent_streams` must allow at least this many.
    pub max_streams_per_connection: usize,
    /// A connection with no tunnel for this long is closed.
    pub idle_timeout: Duration,
    /// How often an H2 PING checks that the peer is alive.
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long marks the connection dead.
    pub keepalive_timeout: Duration,
    /// TCP connect plus TLS and HTTP/2 handshakes must finish within this.
    pub connect_timeout: Duration,
    /// A connection takes no new tunnel from this long before the earliest `notAfter` of the
    /// certificates of its handshake (the peer's chain and our leaf), so the next tunnel goes
    /// on a new connection with the renewed certificates before the peer would refuse it.
    /// Renewal at half-life leaves far more than this.
    pub expiry_margin: Duration,
    /// As [`ServerSettings::distrust_drain`], for a connection whose server chain the trust
    /// bundle no longer verifies.
    pub distrust_drain: Duration,
    /// As [`ServerSettings::distrust_drain_jitter`].
    pub distrust_drain_jitter: f64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            h2: H2Settings::default(),
            max_streams_per_connection: 1000,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            expiry_margin: Duration::from_secs(10),
            distrust_drain: DISTRUST_DRAIN,
            distrust_drain_jitter: DISTRUST_DRAIN_JITTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_bound_fits_the_node_tunnels_limit_with_room() {
        const TUNNEL_CONTAINER_LIMIT: u64 = 512 * 1024 * 1024;
        let bound = ServerSettings::default().memory_bound();
        eprintln!("default memory bound: {} KiB", bound >> 10);
        assert!(
            bound <= TUNNEL_CONTAINER_LIMIT * 3 / 4,
            "{} MiB",
            bound >> 20
        );
    }
}
