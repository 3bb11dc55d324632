//! The checked-in CRDs are exactly what the Rust types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn check(file: &str, generated: String, arg: &str) {
    let path = format!(
        "{}/../../charts/ambit/crds/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{path} drifted from its Rust type; regenerate it with\n  cargo run -p ambit-controller --bin crdgen {arg} > charts/ambit/crds/{file}"
    );
}

#[test]
fn checked_in_crd_matches_the_rust_type() {
    check(
        "authorizationpolicies.yaml",
        ambit_controller::crd::authorization_policy_crd_yaml().unwrap(),
        "",
    );
}

#[test]
fn checked_in_request_authentication_crd_matches_the_rust_type() {
    check(
        "requestauthentications.yaml",
        ambit_controller::crd::request_authentication_crd_yaml().unwrap(),
        "requestauthentications",
    );
}

#[test]
fn checked_in_rate_limit_policy_crd_matches_the_rust_type() {
    check(
        "ratelimitpolicies.yaml",
        ambit_controller::ratelimit::crd_yaml().unwrap(),
        "ratelimitpolicies",
    );
}

#[test]
fn checked_in_node_capture_crd_matches_the_rust_type() {
    check(
        "nodecaptures.yaml",
        ambit_k8s::node_capture::crd_yaml().unwrap(),
        "nodecaptures",
    );
}

#[test]
fn checked_in_risk_profile_crd_matches_the_rust_type() {
    check(
        "riskprofiles.yaml",
        ambit_k8s::risk_profile::crd_yaml().unwrap(),
        "riskprofiles",
    );
}
