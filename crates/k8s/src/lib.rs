//! Kubernetes objects that ambit-controller and kubectl-ambit must agree on, written once: the
//! waypoint Gateway `kubectl ambit waypoint apply` and automatic waypoints write, which the
//! controller validates and deploys, and the names and annotations on it.
#![forbid(unsafe_code)]

pub mod waypoint;
