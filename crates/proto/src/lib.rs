//! ambit's gRPC APIs, generated at build time from `proto/` (no `protoc` needed).
//!
//! - [`config::v1`]: the delta config stream to node tunnels and waypoints;
//! - [`ca::v1`]: the mesh CA (CSR in, chain out).

pub mod config {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("ambit.config.v1");
        // The server of `ConfigService`, sending `EncodedDelta` (see build.rs).
        include!(concat!(
            env!("OUT_DIR"),
            "/ambit.config.v1.ConfigService.rs"
        ));
    }
}

pub mod ca {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("ambit.ca.v1");
    }
}

/// `ambit.config.v1.Delta` as the server sends it: each upsert is an encoded `Resource`.
/// A repeated embedded message and repeated bytes are the same on the wire, so clients decode
/// it as `Delta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedDelta {
    #[prost(string, tag = "1")]
    pub nonce: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub upserts: Vec<prost::bytes::Bytes>,
    #[prost(string, repeated, tag = "3")]
    pub removals: Vec<String>,
    #[prost(bool, tag = "4")]
    pub more: bool,
}

/// The gRPC port of the controller (config stream and CA).
pub const CONTROLLER_GRPC_PORT: u16 = 15012;
/// The controller's metrics and health port.
pub const CONTROLLER_METRICS_PORT: u16 = 15014;
/// Audience of the service-account tokens callers present.
pub const TOKEN_AUDIENCE: &str = "ambit-ca";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use config::v1 as pb;
    use prost::Message;

    #[test]
    fn an_encoded_delta_decodes_as_a_delta() {
        let resource = pb::Resource {
            name: "namespace/shop".into(),
            version: "1".into(),
            kind: Some(pb::resource::Kind::Namespace(pb::Namespace {
                name: "shop".into(),
            })),
        };
        let encoded = EncodedDelta {
            nonce: "7".into(),
            upserts: vec![resource.encode_to_vec().into(); 2],
            removals: vec!["workload/gone".into()],
            more: true,
        };
        let delta = pb::Delta::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            delta,
            pb::Delta {
                nonce: "7".into(),
                upserts: vec![resource; 2],
                removals: vec!["workload/gone".into()],
                more: true,
            }
        );
    }
}
