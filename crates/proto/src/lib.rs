//! ambit's gRPC APIs, generated at build time from `proto/` (no `protoc` needed).
//!
//! - [`config::v1`]: the delta config stream to node tunnels and waypoints;
//! - [`ca::v1`]: the mesh CA (CSR in, chain out).

pub mod config {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("ambit.config.v1");
    }
}

pub mod ca {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("ambit.ca.v1");
    }
}

/// The gRPC port of the controller (config stream and CA).
pub const CONTROLLER_GRPC_PORT: u16 = 15012;
/// The controller's metrics and health port.
pub const CONTROLLER_METRICS_PORT: u16 = 15014;
/// Audience of the service-account tokens callers present.
pub const TOKEN_AUDIENCE: &str = "ambit-ca";
