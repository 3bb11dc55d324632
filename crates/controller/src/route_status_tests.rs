#![allow(clippy::unwrap_used)]
use super::*;
use crate::index::testing::{Cluster, http_route, obj, service};
use crate::route::resolve_http;
use serde_json::json;

fn status(parents: serde_json::Value) -> RouteStatus {
    obj(json!({ "parents": parents }))
}

#[test]
fn ours_are_written_next_to_other_controllers_entries() {
    let mut c = Cluster::new();
    c.apply(service("shop", "web", "10.96.0.1", 80));
    let mut route = http_route(
        "shop",
        "r",
        &["shop/web", "shop/gone"],
        &[("shop/missing", 80, 1)],
    );
    route
        .spec
        .parent_refs
        .push(obj(json!({"name": "edge-gateway"})));
    let resolution = resolve_http(&route, c.stores().lookup());
    let theirs = json!({
        "parentRef": {"name": "edge-gateway"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    let current = status(json!([theirs.clone()]));
    let written = parents(Some(&current), &resolution, Some(3)).unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(written[0], obj::<RouteParentStatus>(theirs));
    type Conditions = Vec<(String, String, String)>;
    let summary: Vec<(String, Conditions)> = written[1..]
        .iter()
        .map(|p| {
            assert_eq!(p.controller_name, "ambit.dev/waypoint-controller");
            assert!(
                p.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(3))
            );
            (
                p.parent_ref.name.clone(),
                p.conditions
                    .iter()
                    .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                    .collect(),
            )
        })
        .collect();
    let cond = |t: &str, s: &str, r: &str| (t.to_string(), s.to_string(), r.to_string());
    assert_eq!(
        summary,
        [
            (
                "web".to_string(),
                vec![
                    cond("Accepted", "True", "Accepted"),
                    cond("ResolvedRefs", "False", "BackendNotFound")
                ]
            ),
            (
                "gone".to_string(),
                vec![
                    cond("Accepted", "False", "NoMatchingParent"),
                    cond("ResolvedRefs", "False", "BackendNotFound")
                ]
            ),
        ]
    );

    // Written once, nothing to write again.
    let current = RouteStatus {
        parents: written.clone(),
    };
    assert_eq!(parents(Some(&current), &resolution, Some(3)), None);

    // The backend appears: ResolvedRefs flips (a new transition time), Accepted keeps its own.
    c.apply(service("shop", "missing", "10.96.0.9", 80));
    let mut aged = written.clone();
    for p in &mut aged {
        for c in &mut p.conditions {
            c.last_transition_time = "2020-01-01T00:00:00Z".into();
        }
    }
    let current = RouteStatus { parents: aged };
    let resolution = resolve_http(&route, c.stores().lookup());
    let written = parents(Some(&current), &resolution, Some(3)).unwrap();
    let web = &written[1].conditions;
    assert_eq!(
        (web[0].status.as_str(), web[0].last_transition_time.as_str()),
        ("True", "2020-01-01T00:00:00Z")
    );
    assert_eq!(web[1].status, "True");
    assert_ne!(web[1].last_transition_time, "2020-01-01T00:00:00Z");

    // No Service parent any more: ours go, theirs stay.
    route.spec.parent_refs.retain(|p| p.kind.is_none());
    let resolution = resolve_http(&route, c.stores().lookup());
    let current = RouteStatus { parents: written };
    let written = parents(Some(&current), &resolution, Some(4)).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].controller_name, "example.com/gateway");
}

#[test]
fn a_route_never_ours_is_never_written() {
    let c = Cluster::new();
    let mut route = http_route("shop", "r", &[], &[]);
    route.spec.parent_refs = vec![obj(json!({"name": "edge-gateway"}))];
    let resolution = resolve_http(&route, c.stores().lookup());
    assert_eq!(parents(None, &resolution, Some(1)), None);
}
