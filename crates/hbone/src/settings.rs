//! Tunables of HBONE endpoints. Every limit is explicit so a hostile peer meets a bound, not a
//! default nobody chose.

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

/// Limits of an HBONE server (inbound, port 15008).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub h2: H2Settings,
    /// Client connections served at once; past this the server stops accepting until one
    /// closes, leaving the rest waiting in the kernel's backlog.
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
    /// A TLS handshake slower than this is dropped (slowloris).
    pub handshake_timeout: Duration,
    /// Streams a client may open and reset before we accept them (rapid-reset flood bound).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we may reset for protocol errors before the connection is closed.
    pub max_local_error_reset_streams: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            h2: H2Settings::default(),
            max_connections: 4096,
            max_connections_per_peer: 16,
            idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 1024,
            handshake_timeout: Duration::from_secs(10),
            max_pending_accept_reset_streams: 50,
            max_local_error_reset_streams: 256,
        }
    }
}

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
        }
    }
}
