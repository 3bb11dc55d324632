//! Labels and object names the controller writes and users and `kubectl ambit` read.

/// Namespace label that enrolls it; on a pod, `none` opts the pod out.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";
/// The label selector of enrolled namespaces.
pub const ENROLLED_SELECTOR: &str = "ambit.dev/dataplane-mode=ambient";

/// Namespace label choosing the SP 800-233 requirement set the namespace is held to: `low`,
/// `medium` or `high` (docs/risk-profiles.md); none: no profile.
pub const RISK_PROFILE_LABEL: &str = "ambit.dev/risk-profile";
/// Namespace label saying what a violated risk profile does: `report` (the default) only
/// reports, `enforce` also makes the mesh refuse what it can (docs/risk-profiles.md).
pub const RISK_ENFORCEMENT_LABEL: &str = "ambit.dev/risk-enforcement";
/// The controller's settings, as environment variables the chart sets on its Deployment, that
/// `kubectl ambit threats` reads back: the leaf lifetime in seconds, and the external
/// authorization providers as a JSON list.
pub const CERT_LIFETIME_ENV: &str = "AMBIT_CERT_LIFETIME_SECS";
pub const EXT_AUTHZ_PROVIDERS_ENV: &str = "AMBIT_EXT_AUTHZ_PROVIDERS";
/// The leaf lifetime the controller gives without [`CERT_LIFETIME_ENV`].
pub const DEFAULT_CERT_LIFETIME_SECS: u64 = 3600;
/// The node tunnel's mode, `strict` (its default) or `permissive`: its `--mode` flag, or this
/// variable when the flag is not given (crates/tunnel's config; the chart passes the flag).
pub const TUNNEL_MODE_FLAG: &str = "--mode";
pub const TUNNEL_MODE_ENV: &str = "AMBIT_MODE";

/// The controller's leader-election Lease, in the install's namespace.
pub const CONTROLLER_LEASE: &str = "ambit-controller";
/// The ConfigMap publishing the mesh root in every namespace a waypoint runs in, and the
/// install's, under [`ROOT_CONFIGMAP_KEY`].
pub const ROOT_CONFIGMAP: &str = "ambit-root-cert";
pub const ROOT_CONFIGMAP_KEY: &str = "root.crt";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enrolled_selector_is_the_label() {
        assert_eq!(
            ENROLLED_SELECTOR,
            format!("{DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT}")
        );
    }
}
