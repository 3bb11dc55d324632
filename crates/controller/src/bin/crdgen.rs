//! Prints one of ambit's CRDs, generated from its Rust type:
//! `cargo run -p ambit-controller --bin crdgen > charts/ambit/crds/authorizationpolicies.yaml`
//! `cargo run -p ambit-controller --bin crdgen requestauthentications > charts/ambit/crds/requestauthentications.yaml`
//! `cargo run -p ambit-controller --bin crdgen ratelimitpolicies > charts/ambit/crds/ratelimitpolicies.yaml`
//! `cargo run -p ambit-controller --bin crdgen nodecaptures > charts/ambit/crds/nodecaptures.yaml`
//! `cargo run -p ambit-controller --bin crdgen riskprofiles > charts/ambit/crds/riskprofiles.yaml`

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1);
    let yaml = match which.as_deref() {
        None | Some("authorizationpolicies") => {
            ambit_controller::crd::authorization_policy_crd_yaml()?
        }
        Some("requestauthentications") => ambit_controller::crd::request_authentication_crd_yaml()?,
        Some("ratelimitpolicies") => ambit_controller::ratelimit::crd_yaml()?,
        Some("nodecaptures") => ambit_k8s::node_capture::crd_yaml()?,
        Some("riskprofiles") => ambit_k8s::risk_profile::crd_yaml()?,
        Some(other) => anyhow::bail!(
            "unknown CRD {other:?}: authorizationpolicies, requestauthentications, ratelimitpolicies, nodecaptures or riskprofiles"
        ),
    };
    print!("{yaml}");
    Ok(())
}
