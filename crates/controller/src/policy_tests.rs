#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::index::Entry;
use serde_json::json;

fn ap(spec: serde_json::Value) -> AuthorizationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "p", "generation": 3},
        "spec": spec,
    }))
    .unwrap()
}

fn workload(name: &str, sa: &str, app: &str, opted_out: bool) -> pb::Workload {
    pb::Workload {
        uid: name.into(),
        name: name.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        opted_out,
        ..Default::default()
    }
}

fn entry(name: &str, kind: pb::resource::Kind) -> (crate::index::Name, Entry) {
    let resource = pb::Resource {
        name: name.into(),
        version: String::new(),
        kind: Some(kind),
    };
    (
        name.into(),
        Entry {
            version: 0,
            resource: Arc::new(resource),
            encoded: Default::default(),
        },
    )
}

/// Namespace `shop` enrolled; `backend` pods (sa `backend`, one opted out with sa `legacy`),
/// `frontend` pods (sa `frontend`, which has a waypoint).
fn snapshot() -> Snapshot {
    use pb::resource::Kind;
    Snapshot {
        resources: [
            entry(
                "namespace/shop",
                Kind::Namespace(pb::Namespace {
                    name: "shop".into(),
                }),
            ),
            entry(
                "workload/b1",
                Kind::Workload(workload("b1", "backend", "backend", false)),
            ),
            entry(
                "workload/b2",
                Kind::Workload(workload("b2", "legacy", "backend", true)),
            ),
            entry(
                "workload/f1",
                Kind::Workload(workload("f1", "frontend", "frontend", false)),
            ),
            entry(
                "waypoint/shop/wp",
                Kind::Waypoint(pb::Waypoint {
                    name: "wp".into(),
                    namespace: "shop".into(),
                    for_service_account: "frontend".into(),
                    ..Default::default()
                }),
            ),
            entry(
                "extauthzprovider/authz",
                Kind::ExtAuthzProvider(pb::ExtAuthzProvider {
                    name: "authz".into(),
                    ..Default::default()
                }),
            ),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn decide_in_snapshot(spec: serde_json::Value) -> Enforced {
    let s = snapshot();
    decide(&ap(spec), &MeshFacts::new(&s))
}

#[test]
fn l4_policies_are_enforced() {
    let e = decide_in_snapshot(json!({"rules": [{"principals": ["*"], "ports": [8080]}]}));
    assert!(e.enforced);
    assert_eq!(e.reason, "Enforced");
}

#[test]
fn l7_rules_need_a_waypoint_for_every_selected_service_account() {
    let e = decide_in_snapshot(json!({"rules": [{"methods": ["GET"]}]}));
    assert!(!e.enforced);
    assert_eq!(e.reason, "WaypointRequired");
    // `frontend` has a waypoint; the opted-out `legacy` pod is not in the mesh.
    assert!(
        e.message.contains("service accounts backend have none"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("kubectl ambit waypoint apply -n shop --service-account backend"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("frontend") && !e.message.contains("legacy"));

    let covered = decide_in_snapshot(json!({
        "selector": {"matchLabels": {"app": "frontend"}},
        "action": "DENY",
        "rules": [{"paths": ["/admin/*"]}],
    }));
    assert!(covered.enforced, "{covered:?}");
    // Selecting no pods at all needs no waypoint yet.
    let nobody = decide_in_snapshot(json!({
        "selector": {"matchLabels": {"app": "nothing"}},
        "rules": [{"hosts": ["*"]}],
    }));
    assert!(nobody.enforced);
}

#[test]
fn custom_policies_need_a_waypoint_and_a_declared_provider() {
    let frontend = json!({"matchLabels": {"app": "frontend"}});
    let e = decide_in_snapshot(json!({
        "selector": frontend, "action": "CUSTOM", "provider": {"name": "authz"},
        "rules": [{"ports": [8080]}],
    }));
    assert!(e.enforced, "{e:?}");
    // Even with L4 rules only: a node tunnel cannot ask the provider.
    let e = decide_in_snapshot(json!({
        "action": "CUSTOM", "provider": {"name": "authz"}, "rules": [{"ports": [8080]}],
    }));
    assert_eq!(e.reason, "WaypointRequired");
    assert!(e.message.contains("node tunnels deny"), "{}", e.message);
    let e = decide_in_snapshot(json!({
        "selector": frontend, "action": "CUSTOM", "provider": {"name": "opa"},
    }));
    assert_eq!(e.reason, "ProviderNotFound");
    assert!(e.message.contains("opa"), "{}", e.message);
}

#[test]
fn invalid_policies_say_what_and_how_they_are_enforced_meanwhile() {
    let e = decide_in_snapshot(json!({"rules": [{"ipBlocks": ["10.0.0.0/33"]}]}));
    assert!(!e.enforced);
    assert_eq!(e.reason, "Invalid");
    assert!(
        e.message.starts_with("rules[0].ipBlocks: \"10.0.0.0/33\""),
        "{}",
        e.message
    );
    assert!(e.message.contains("matches nothing"), "{}", e.message);
    let deny = decide_in_snapshot(json!({"action": "DENY", "rules": [{"paths": ["admin"]}]}));
    assert_eq!(deny.reason, "Invalid");
    assert!(
        deny.message.contains("matches anything"),
        "{}",
        deny.message
    );
}

#[test]
fn policies_outside_enrolled_namespaces_are_not_enforced() {
    let e = decide(&ap(json!({})), &MeshFacts::default());
    assert_eq!(e.reason, "NamespaceNotEnrolled");
    assert!(
        e.message.contains("kubectl label namespace shop"),
        "{}",
        e.message
    );
}

#[test]
fn config_carries_every_field_and_the_fail_safe_form_of_a_broken_policy() {
    let good = config(&ap(json!({
        "action": "AUDIT",
        "selector": {"matchLabels": {"app": "backend"}},
        "rules": [{"ipBlocks": ["10.0.0.0/8"], "ports": [8080], "hosts": ["*.shop"], "headers": [{"name": "x", "value": "*"}]}],
    })));
    assert_eq!(good.action, "AUDIT");
    assert_eq!((good.namespace.as_str(), good.name.as_str()), ("shop", "p"));
    assert_eq!(
        good.match_labels.get("app").map(String::as_str),
        Some("backend")
    );
    let r = &good.rules[0];
    assert_eq!(
        (r.ip_blocks.as_slice(), r.ports.as_slice()),
        (&["10.0.0.0/8".to_string()][..], &[8080][..])
    );
    assert_eq!(r.hosts, ["*.shop"]);
    assert_eq!(r.headers[0].value, "*");

    // An ALLOW rule whose only ip block is broken can never match: it is dropped.
    let allow = config(&ap(
        json!({"rules": [{"ipBlocks": ["office"]}, {"namespaces": ["shop"]}]}),
    ));
    assert_eq!(allow.rules.len(), 1);
    assert_eq!(allow.rules[0].namespaces, ["shop"]);
    // A DENY field with a broken value matches anything.
    let deny = config(&ap(
        json!({"action": "DENY", "rules": [{"ipBlocks": ["office"], "ports": [22]}]}),
    ));
    assert!(deny.rules[0].ip_blocks.is_empty());
    assert_eq!(deny.rules[0].ports, [22]);
}

#[test]
fn an_invalid_policy_is_told_by_an_event_once() {
    let invalid = Enforced {
        enforced: false,
        reason: INVALID,
        message: "rules[0].ipBlocks: bad".into(),
    };
    let written = |reason: &str, message: &str| crate::crd::Condition {
        type_: ENFORCED.into(),
        status: "False".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(1),
        last_transition_time: String::new(),
    };
    assert!(newly_invalid(None, &invalid));
    assert!(newly_invalid(Some(&written("Enforced", "")), &invalid));
    assert!(newly_invalid(
        Some(&written(INVALID, "rules[1].ports: 0")),
        &invalid
    ));
    assert!(!newly_invalid(
        Some(&written(INVALID, &invalid.message)),
        &invalid
    ));
    let enforced = Enforced {
        enforced: true,
        reason: "Enforced",
        message: String::new(),
    };
    assert!(!newly_invalid(None, &enforced));
}
