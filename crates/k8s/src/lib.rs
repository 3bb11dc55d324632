//! Kubernetes objects that ambit-controller and kubectl-ambit must agree on, written once: the
//! custom resources (`AuthorizationPolicy`, `RequestAuthentication`, `RateLimitPolicy`,
//! `NodeCapture`, `RiskProfile`) and the subset of Gateway API's types the controller reads and
//! writes, the waypoint Gateway that `kubectl ambit waypoint apply` and automatic waypoints
//! write, which the controller validates and deploys, and the labels and annotations on them.
#![forbid(unsafe_code)]

pub mod crd;
pub mod names;
pub mod node_capture;
pub mod ratelimit_crd;
pub mod risk_profile;
pub mod route_crd;
pub mod waypoint;
