//! The checked-in AuthorizationPolicy CRD is exactly what the Rust type generates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn checked_in_crd_matches_the_rust_type() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../charts/ambit/crds/authorizationpolicies.yaml"
    );
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = ambit_controller::crd::authorization_policy_crd_yaml().unwrap();
    assert!(
        checked_in == generated,
        "{path} drifted from the AuthorizationPolicy type; regenerate it with\n  cargo run -p ambit-controller --bin crdgen > charts/ambit/crds/authorizationpolicies.yaml"
    );
}
