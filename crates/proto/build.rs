//! Code generation without `protoc`: protox parses the .proto files in Rust, tonic-prost-build
//! generates the messages and services from the descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ambit/config/v1/config.proto",
        "proto/ambit/ca/v1/ca.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Deterministic encoding: the controller versions resources by a hash of their bytes.
        .btree_map(".")
        .compile_fds(descriptors)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
