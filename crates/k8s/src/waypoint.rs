//! The waypoint Gateway: class `ambit-waypoint`, exactly one listener 15008/HBONE, and the
//! annotation `ambit.dev/for-service-account` naming the service account it serves.

use serde_json::json;

/// `spec.gatewayClassName` of every waypoint Gateway.
pub const WAYPOINT_CLASS: &str = "ambit-waypoint";
/// `spec.controllerName` of the `ambit-waypoint` GatewayClass.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint-controller";
/// The annotation (or label) naming the service account a waypoint serves.
pub const FOR_SERVICE_ACCOUNT: &str = "ambit.dev/for-service-account";
/// Annotation the controller puts on a waypoint Gateway (RFC 3339) once a pod of it has been
/// Ready: from then on the service account is bound to the waypoint, for good.
pub const SERVING_SINCE: &str = "ambit.dev/serving-since";
/// Label on a waypoint's pods naming its Gateway: what tells a waypoint pod from an
/// application's.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const LISTENER_NAME: &str = "mesh";
pub const HBONE_PORT: u16 = 15008;
/// The name a waypoint gets unless one is given: `waypoint-<service account>`.
pub const NAME_PREFIX: &str = "waypoint-";

/// The waypoint Gateway `name` in `namespace` for service account `sa`.
pub fn gateway(namespace: &str, name: &str, sa: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {FOR_SERVICE_ACCOUNT: sa},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": LISTENER_NAME, "port": HBONE_PORT, "protocol": "HBONE"}],
        },
    })
}

/// An RFC 1035 label, what a waypoint's name must be: its Service takes the name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_a_waypoint_of_its_account() {
        let gw = gateway("shop", "waypoint-back", "back");
        assert_eq!(gw["metadata"]["annotations"][FOR_SERVICE_ACCOUNT], "back");
        assert_eq!(gw["spec"]["gatewayClassName"], "ambit-waypoint");
        assert_eq!(
            gw["spec"]["listeners"],
            json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
        );
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "waypoint-back", "a1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "1a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
