//! Traffic capture for enrolled pods: the privileged part of ambit, one module per job.
//!
//! - [`rules`]: the nftables rules put in a pod's network namespace (outbound TCP to the
//!   tunnel's 15001, inbound TCP except HBONE to 15006, the tunnel's marked sockets exempt).
//! - [`handoff`]: the unix-socket protocol with the node tunnel (netns fds, its enrollment
//!   decisions).
//! - [`state`]: the records of the node's pods, shared by the CNI plugin and the agent.
//! - [`pod`]: capturing and releasing one pod, in the order that never redirects to nothing.
//! - [`cni`]: the chained CNI plugin (ADD/DEL/CHECK).
//! - [`reconcile`]: the agent's decisions, a pure function.
//! - [`netns`]: finding a pod's netns by the addresses in it.
//! - [`install`]: the CNI plugin's binary and conflist entry on the node.
//! - [`uninstall`]: telling `helm uninstall` from an upgrade at SIGTERM.
//! - [`agent`]: the node agent's loop and lifecycle.

pub mod agent;
pub mod cni;
pub mod handoff;
pub mod install;
pub mod netns;
pub mod pod;
pub mod reconcile;
pub mod rules;
pub mod state;
pub mod uninstall;

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
