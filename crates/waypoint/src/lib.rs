//! The waypoint: the L7 proxy of one service account (NIST SP 800-233 DPA-2, "L7 per service
//! account"). Client tunnels send it the traffic for that account's pods over HBONE; it applies
//! L4 and L7 policy with the real client identity, picks an endpoint, and opens HBONE to the
//! pod as itself.
//!
//! - [`config`]: flags and environment, parsed once.
//! - [`state`]: the mesh model it serves from, readiness, draining.
//! - [`destination`]: what a CONNECT's `:authority` names (a Service VIP or a pod of the served
//!   account) and which protocol it speaks. Pure.
//! - [`inbound`]: HBONE in; TCP is forwarded, HTTP goes through [`http`].
//! - [`http`]: the request path as tower layers on hyper: telemetry → balance → authz →
//!   forward (upstream HTTP over pooled HBONE).
//! - [`metrics`], [`admin`], [`access_log`]: Prometheus metrics, readiness, the config dump,
//!   and a JSON line per request.
//! - [`run`]: the wiring.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod destination;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod run;
pub mod state;

pub use config::{Args, Config, ConfigError};
