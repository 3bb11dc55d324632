//! The node tunnel: one per node, holding only that node's workload identities.
//!
//! - [`node`]: the node-wide state: mesh model, certificates, the pods served, the handoff
//!   socket the capture agent talks to.
//! - [`pod`]: per enrolled pod, a thread that entered the pod's netns and runs a
//!   single-threaded runtime with the three listeners (15001, 15006, 15008).
//! - [`outbound`] / [`inbound`]: what happens to each connection.
//! - [`admin`], [`metrics`]: 15000 (config dump), 15020 (Prometheus), 15021 (readiness).

pub mod admin;
pub mod config;
pub mod inbound;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod pod;
mod sockets;
#[cfg(test)]
mod test_support;

pub use ambit_controller_client::{Issuer, Source};
pub use config::{Config, ConfigError, Mode};
pub use node::{Node, NodeError};

/// Tunnel ports inside each pod netns.
pub const OUTBOUND_PORT: u16 = ambit_handoff::OUTBOUND_PORT;
pub const INBOUND_PORT: u16 = ambit_handoff::INBOUND_PORT;
pub const HBONE_PORT: u16 = ambit_hbone::HBONE_PORT;
