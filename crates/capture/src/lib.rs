//! Traffic capture for enrolled pods.
//!
//! - [`rules`]: the nftables rules put in a pod's network namespace (outbound TCP to the
//!   tunnel's 15001, inbound TCP except HBONE to 15006, the tunnel's marked sockets exempt).
//! - [`handoff`]: the unix-socket protocol that passes a pod's netns fd to the node tunnel.
//! - [`cni`]: the chained CNI plugin (ADD/DEL/CHECK) doing both for a new pod.
//! - [`agent`]: the pods the node agent remembers, replayed to a restarted tunnel.

pub mod agent;
pub mod cni;
pub mod handoff;
pub mod rules;

/// SO_MARK the tunnel puts on its own sockets; the capture rules let marked traffic through.
pub const TUNNEL_MARK: u32 = 0x539;
/// Outbound capture port (inside each pod netns).
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PORT: u16 = 15006;
/// HBONE port, never redirected.
pub const HBONE_PORT: u16 = 15008;
/// Default path of the tunnel's handoff socket (shared hostPath in the DaemonSet).
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/tunnel.sock";
