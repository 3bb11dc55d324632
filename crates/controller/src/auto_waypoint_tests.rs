#![allow(clippy::unwrap_used)]
use super::*;
use crate::index::testing::*;
use crate::index::{Change, Index};

fn auto_ns(name: &str) -> k8s_openapi::api::core::v1::Namespace {
    let mut n = ns(name, true);
    n.metadata
        .labels
        .get_or_insert_default()
        .insert(WAYPOINT_LABEL.into(), WAYPOINT_AUTO.into());
    n
}

/// `shop` (auto): `back` behind Service `back`, `front` and `db` with no Service; `plain`
/// (enrolled, not auto) the same `back`.
fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.apply(auto_ns("shop"));
    c.apply(ns("plain", true));
    // Pod uids are `uid-<name>`: names unique across namespaces.
    for (ns, name, sa, ip) in [
        ("shop", "back", "back", "10.0.0.1"),
        ("shop", "front", "front", "10.0.0.2"),
        ("shop", "db", "db", "10.0.0.3"),
        ("plain", "plain-back", "back", "10.0.0.4"),
    ] {
        c.apply(pod(ns, name, sa, "n1", ip));
    }
    for (ns, pod) in [("shop", "back"), ("plain", "plain-back")] {
        c.apply(service(ns, "back", "10.96.0.1", 80));
        c.apply(slice(ns, "back", &[pod]));
    }
    c
}

fn wanted_now(c: &Cluster) -> BTreeSet<Account> {
    let snapshot = Index::new(c.stores(), "cluster.local")
        .update([Change::All])
        .unwrap();
    wanted(&snapshot, &c.stores())
}

fn account(ns: &str, sa: &str) -> Account {
    (ns.into(), sa.into())
}

#[test]
fn route_parents_and_l7_policies_want_waypoints_in_auto_namespaces_only() {
    let mut c = cluster();
    assert!(wanted_now(&c).is_empty(), "nothing asks for L7 yet");
    c.apply(http_route(
        "shop",
        "r",
        &["shop/back"],
        &[("shop/back", 80, 1)],
    ));
    c.apply(http_route(
        "plain",
        "r",
        &["plain/back"],
        &[("plain/back", 80, 1)],
    ));
    assert_eq!(wanted_now(&c), BTreeSet::from([account("shop", "back")]));

    // An opted-out pod's account needs none.
    let mut opted_out = pod("shop", "batch", "batch", "n1", "10.0.0.5");
    opted_out
        .metadata
        .labels
        .get_or_insert_default()
        .insert(crate::index::DATAPLANE_MODE_LABEL.into(), "none".into());
    c.apply(opted_out);
    c.apply(service("shop", "batch", "10.96.0.2", 80));
    c.apply(slice("shop", "batch", &["batch"]));
    c.apply(http_route(
        "shop",
        "b",
        &["shop/batch"],
        &[("shop/batch", 80, 1)],
    ));
    assert_eq!(wanted_now(&c), BTreeSet::from([account("shop", "back")]));

    // An L4-only policy needs no waypoint; one with paths does, for the pods it selects.
    c.apply(policy("shop", "l4", "front"));
    assert_eq!(wanted_now(&c), BTreeSet::from([account("shop", "back")]));
    let mut l7 = policy("shop", "l7", "db");
    l7.spec.rules[0].paths = vec!["/admin".into()];
    c.apply(l7);
    let mut custom = policy("shop", "custom", "front");
    custom.spec.action = PolicyAction::Custom;
    custom.spec.provider = Some(crate::crd::ProviderRef {
        name: "authz".into(),
    });
    c.apply(custom);
    assert_eq!(
        wanted_now(&c),
        BTreeSet::from([
            account("shop", "back"),
            account("shop", "db"),
            account("shop", "front")
        ])
    );
}

#[test]
fn a_rate_limit_on_a_service_wants_its_waypoint() {
    let mut c = cluster();
    let limit: crate::ratelimit::RateLimitPolicy = obj(serde_json::json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"namespace": "shop", "name": "l"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "back"}],
                 "local": {"requests": 1, "unit": "Second"}},
    }));
    c.apply(limit);
    assert_eq!(wanted_now(&c), BTreeSet::from([account("shop", "back")]));
}

fn auto_gateway(ns: &str, sa: &str) -> Arc<Gateway> {
    let mut gw = gateway(ns, &format!("waypoint-{sa}"), sa).unwrap();
    gw.metadata.uid = Some(format!("uid-{sa}"));
    gw.metadata.resource_version = Some("7".into());
    Arc::new(gw)
}

#[test]
fn plan_creates_what_is_missing_and_deletes_only_its_own() {
    let wanted = BTreeSet::from([account("shop", "back"), account("shop", "front")]);
    // `front` has an explicit waypoint; `db` an automatic one it no longer needs; `ops` an
    // explicit one nobody asks for.
    let gateways = vec![
        Arc::new(waypoint("shop", "front-wp", "front")),
        auto_gateway("shop", "db"),
        Arc::new(waypoint("shop", "ops-wp", "ops")),
    ];
    let p = plan(&wanted, &gateways);
    assert_eq!(
        p.create,
        [(account("shop", "back"), "waypoint-back".to_string())]
    );
    assert_eq!(
        p.delete,
        [(
            "shop".to_string(),
            "waypoint-db".to_string(),
            Some("uid-db".to_string()),
            Some("7".to_string())
        )]
    );
}

#[test]
fn an_explicit_waypoint_wins_over_an_automatic_one() {
    let wanted = BTreeSet::from([account("shop", "back")]);
    let gateways = vec![
        auto_gateway("shop", "back"),
        Arc::new(waypoint("shop", "mine", "back")),
    ];
    let p = plan(&wanted, &gateways);
    assert!(p.create.is_empty());
    assert_eq!(p.delete.len(), 1);
    assert_eq!(p.delete[0].1, "waypoint-back");
    // Alone, the automatic one stays.
    assert_eq!(plan(&wanted, &gateways[..1]), Plan::default());
}

#[test]
fn an_account_whose_waypoint_name_is_no_dns_label_gets_none() {
    let wanted = BTreeSet::from([account("shop", "svc.account")]);
    assert!(plan(&wanted, &[]).create.is_empty());
}
