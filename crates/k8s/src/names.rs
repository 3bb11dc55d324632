//! Labels and object names the controller writes and users and `kubectl ambit` read.

/// Namespace label that enrolls it; on a pod, `none` opts the pod out.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
pub const DATAPLANE_MODE_NONE: &str = "none";
/// The label selector of enrolled namespaces.
pub const ENROLLED_SELECTOR: &str = "ambit.dev/dataplane-mode=ambient";

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
