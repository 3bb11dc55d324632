//! Prints the `AuthorizationPolicy` CRD, generated from the Rust type:
//! `cargo run -p ambit-controller --bin crdgen > charts/ambit/crds/authorizationpolicies.yaml`

fn main() -> anyhow::Result<()> {
    print!(
        "{}",
        ambit_controller::crd::authorization_policy_crd_yaml()?
    );
    Ok(())
}
