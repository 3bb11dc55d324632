//! The vendored Envoy ext_authz v3 protos (proto/, trimmed: see each file's header) compiled
//! without `protoc`, as crates/proto does: protox parses, tonic-prost-build generates the
//! messages and the `Authorization` client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/envoy/service/auth/v3/external_auth.proto";
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(protox::compile([file], ["proto"])?)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
