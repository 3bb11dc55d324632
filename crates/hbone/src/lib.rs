//! HBONE: the mesh transport. HTTP/2 CONNECT tunnels over mutual TLS between SPIFFE
//! identities, wire-compatible with Istio ambient (port 15008, `:authority` = target
//! `ip:port`, SPIFFE URI SANs).
//!
//! - [`HboneServer`] terminates TLS and HTTP/2 and hands each verified CONNECT to a handler.
//! - [`HbonePool`] multiplexes outbound tunnels over pooled connections.
//! - [`splice_tcp_h2`] is the copy engine that carries bytes between a socket and a tunnel.

mod buffered;
mod client;
mod connect;
mod copy;
mod error;
mod headers;
mod lapse;
mod pool;
mod refusals;
mod server;
mod settings;
mod stream;

pub use buffered::ReadBuffered;
pub use client::{ClientConnection, Dialer, connect_marked};
pub use connect::{BadConnect, check_connect};
pub use copy::{Transferred, splice_tcp_h2, splice_tcp_tcp};
pub use error::HboneError;
pub use headers::TunnelHeaders;
pub use pool::{HbonePool, LocalIdentities, PoolKey, PoolStats};
pub use refusals::{TunnelLimit, TunnelRefusals};
pub use server::{
    ConnectHandler, ConnectRequest, HboneServer, PendingTunnel, Refusal, ServerBudget,
    forward_to_target,
};
pub use settings::{H2Settings, PoolSettings, ServerSettings};
pub use stream::H2Stream;

/// The HBONE port inside every pod network namespace.
pub const HBONE_PORT: u16 = 15008;
