//! Code generation without `protoc`: protox parses the .proto files in Rust, tonic-prost-build
//! generates the messages, clients and the CA server from the descriptors. The config server is
//! declared by hand (tonic-build's manual builder) so that it sends `EncodedDelta`, the
//! wire-identical form of `Delta` whose resources are already encoded: the controller encodes
//! each resource once and shares the bytes across every subscriber.

use tonic_build::manual::{Builder, Method, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = "proto/ambit/config/v1/config.proto";
    let ca = "proto/ambit/ca/v1/ca.proto";
    for (file, build_server) in [(config, false), (ca, true)] {
        tonic_prost_build::configure()
            .build_server(build_server)
            .build_client(true)
            // Deterministic encoding: the controller versions resources by a hash of their bytes.
            .btree_map(".")
            .compile_fds(protox::compile([file], ["proto"])?)?;
        println!("cargo:rerun-if-changed={file}");
    }
    let stream = Method::builder()
        .name("stream")
        .route_name("Stream")
        .input_type("super::ClientMessage")
        .output_type("crate::EncodedDelta")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = Service::builder()
        .name("ConfigService")
        .package("ambit.config.v1")
        .method(stream)
        .build();
    Builder::new()
        .build_client(false)
        .build_server(true)
        .compile(&[service]);
    Ok(())
}
