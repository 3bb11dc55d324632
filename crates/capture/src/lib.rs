//! Traffic capture for enrolled pods: the privileged part of ambit, one module per job.
//!
//! - [`rules`]: the nftables rules put in a pod's network namespace (outbound TCP to the
//!   tunnel's 15001, inbound TCP except HBONE to 15006, the tunnel's marked sockets exempt).
//! - [`state`]: the records of the node's pods, shared by the CNI plugin and the agent.
//! - [`pod`]: capturing and releasing one pod, in the order that never redirects to nothing.
//! - [`cni`]: the chained CNI plugin (ADD/DEL/CHECK).
//! - [`reconcile`]: the agent's decisions, a pure function.
//! - [`netns`]: finding a pod's netns by the addresses in it.
//! - [`install`]: the CNI plugin's binary and conflist entry on the node.
//! - [`uninstall`]: telling `helm uninstall` from an upgrade at SIGTERM.
//! - [`publish`]: the node's captured pods, published for the CA (`NodeCapture`).
//! - [`agent`]: the node agent's loop and lifecycle.
//!
//! The unix-socket protocol with the node tunnel (netns fds, its enrollment decisions), the
//! capture ports and the tunnel's mark are in `ambit-handoff`, shared with the tunnel.

pub mod agent;
pub mod cni;
pub mod install;
pub mod netns;
pub mod pod;
pub mod publish;
pub mod reconcile;
pub mod rules;
pub mod state;
pub mod uninstall;

/// HBONE port, never redirected.
pub const HBONE_PORT: u16 = 15008;
