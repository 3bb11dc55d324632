//! ambit-controller: watches the cluster, streams config to node tunnels and waypoints over
//! `ambit.config.v1`, runs the mesh CA (`ambit.ca.v1`) with node authorization, deploys
//! waypoints for Gateways of class `ambit-waypoint` (and creates those Gateways in namespaces
//! labelled `ambit.dev/waypoint=auto`), delivers HTTPRoutes and GRPCRoutes with Service
//! parents and RateLimitPolicies to waypoints, evaluates namespaces' risk profiles (refusing
//! traffic where one is enforced), and writes the status of Gateways, policies, routes and
//! RiskProfiles as Lease holder.
//!
//! See docs/controller.md.

pub mod auth;
pub mod auto_waypoint;
pub mod ca;
pub mod config;
pub mod config_service;
pub use ambit_k8s::crd;
pub mod extauthz;
pub mod grpc;
pub mod index;
mod ip_claims;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod rejections;
pub mod request_authn;
pub mod risk;
pub mod root;
pub mod route;
pub use ambit_k8s::route_crd;
pub mod route_status;
pub mod runtime;
pub mod status;
pub mod view;
pub mod waypoint;
