#![allow(clippy::unwrap_used)]
use super::*;
use crate::index::testing::*;
use crate::index::{Change, Index};
use ambit_proto::EncodedDelta;
use prost::Message;

fn node(n: &str) -> Subscriber {
    Subscriber::Node(n.into())
}

fn visible_names(sub: &Subscriber, snapshot: &Snapshot) -> Vec<String> {
    let view = sub.view(snapshot);
    sub.visible(&view, snapshot)
        .map(|(k, _)| k.to_string())
        .collect()
}

/// The push that a full comparison of the two views gives.
fn full_diff(sub: &Subscriber, prev: &Snapshot, snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
    let (pv, v) = (sub.view(prev), sub.view(snapshot));
    let before: BTreeMap<&Name, u64> = sub
        .visible(&pv, prev)
        .map(|(k, e)| (k, e.version))
        .collect();
    let now: BTreeMap<&Name, u64> = sub
        .visible(&v, snapshot)
        .map(|(k, e)| (k, e.version))
        .collect();
    let upserts = now
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.to_string())
        .collect();
    let removals = before
        .keys()
        .filter(|k| !now.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    (upserts, removals)
}

fn names_of(push: &Push<'_>) -> (Vec<String>, Vec<String>) {
    let mut upserts: Vec<String> = push.upserts.iter().map(|(k, _)| k.to_string()).collect();
    let mut removals: Vec<String> = push.removals.iter().map(|k| k.to_string()).collect();
    upserts.sort();
    removals.sort();
    (upserts, removals)
}

fn shop() -> (Cluster, Index, Snapshot) {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    c.apply(service("shop", "back", "10.96.0.1", 80));
    c.apply(slice("shop", "back", &["b"]));
    c.apply(policy("shop", "back-only", "back"));
    let mut index = Index::new(c.stores(), "cluster.local");
    let snapshot = index.update([Change::All]).unwrap();
    (c, index, snapshot)
}

#[test]
fn nodes_see_everything_but_other_nodes_policies() {
    let (_, _, snap) = shop();
    let everything = [
        "namespace/shop",
        "service/shop/back",
        "workload/uid-a",
        "workload/uid-b",
    ];
    assert_eq!(visible_names(&node("n1"), &snap), everything);
    let mut n2 = vec!["authorizationpolicy/shop/back-only"];
    n2.extend(everything);
    assert_eq!(visible_names(&node("n2"), &snap), n2);
    assert_eq!(
        visible_names(&Subscriber::Waypoint("shop".into(), "back".into()), &snap),
        [
            "authorizationpolicy/shop/back-only",
            "service/shop/back",
            "workload/uid-b"
        ]
    );
}

#[test]
fn waypoints_and_never_node_tunnels_get_the_ext_authz_providers() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    let providers = crate::extauthz::parse(
        r#"[{"name": "authz", "service": "authz.sec.svc.cluster.local", "port": 9000, "protocol": "grpc"}]"#,
    )
    .unwrap();
    let mut index = Index::new(c.stores(), "cluster.local").with_ext_authz_providers(&providers);
    let snap = index.update([Change::All]).unwrap();
    let waypoint = Subscriber::Waypoint("shop".into(), "other".into());
    assert!(visible_names(&waypoint, &snap).contains(&"extauthzprovider/authz".to_owned()));
    assert!(
        !visible_names(&node("n2"), &snap)
            .iter()
            .any(|n| n.starts_with("extauthzprovider/"))
    );
    // Kept across every later rebuild.
    let snap = index.update([Change::All]);
    assert!(snap.is_none(), "nothing changed");
}

#[test]
fn a_resuming_client_gets_only_the_difference() {
    let (_, _, snap) = shop();
    let sub = node("n1");
    let view = sub.view(&snap);
    let mut known: BTreeMap<String, String> = sub
        .visible(&view, &snap)
        .map(|(k, e)| (k.to_string(), e.resource.version.clone()))
        .collect();
    assert!(Push::initial(&sub, &view, &snap, &known).is_empty());
    known.insert("workload/uid-a".into(), "stale".into());
    known.insert("workload/gone".into(), "1".into());
    // A policy n1 does not see: the client must drop it.
    known.insert("authorizationpolicy/shop/back-only".into(), "1".into());
    let push = Push::initial(&sub, &view, &snap, &known);
    assert_eq!(
        names_of(&push),
        (
            vec!["workload/uid-a".into()],
            vec![
                "authorizationpolicy/shop/back-only".into(),
                "workload/gone".into()
            ]
        )
    );
}

/// For every subscriber and every change, the push computed from the changed names equals a
/// comparison of the whole views.
#[test]
fn pushes_equal_full_view_diffs() {
    let (mut c, mut index, prev) = shop();
    let subscribers = [
        node("n1"),
        node("n2"),
        node("n3"),
        Subscriber::Waypoint("shop".into(), "back".into()),
        Subscriber::Waypoint("shop".into(), "front".into()),
    ];
    let mut relabeled = pod("shop", "a", "front", "n1", "10.0.0.1");
    relabeled.metadata.labels = Some([("app".to_string(), "back".to_string())].into());
    let steps: Vec<(&str, Change)> = vec![
        (
            "a remote workload moves",
            c.apply(pod("shop", "b", "back", "n2", "10.0.0.9")),
        ),
        ("a's labels now match the policy on n1", c.apply(relabeled)),
        (
            "a new pod on n3",
            c.apply(pod("shop", "c", "back", "n3", "10.0.0.3")),
        ),
        (
            "the policy goes",
            c.delete(policy("shop", "back-only", "back")),
        ),
        (
            "the service goes",
            c.delete(service("shop", "back", "10.96.0.1", 80)),
        ),
    ];
    assert_pushes_equal_diffs(&mut index, prev, &subscribers, steps);
}

/// After each step, every subscriber's next view and push equal a comparison of whole views,
/// for a session that saw every generation and for one that skipped them all. Returns the last
/// snapshot.
fn assert_pushes_equal_diffs(
    index: &mut Index,
    mut prev: Snapshot,
    subscribers: &[Subscriber],
    steps: Vec<(&str, Change)>,
) -> Snapshot {
    let first = prev.clone();
    for (what, change) in steps {
        let snap = index.update([change]).unwrap();
        for sub in subscribers {
            let pv = sub.view(&prev);
            let view = sub.next_view(&prev, &pv, &snap, &snap.changed_since(&prev));
            assert_eq!(view, sub.view(&snap), "{sub} view after {what}");
            for (from, how) in [(&prev, "after"), (&first, "skipping to")] {
                let from_view = sub.view(from);
                let push = Push::between(
                    sub,
                    (from, &from_view),
                    (&snap, &view),
                    &snap.changed_since(from),
                    &BTreeSet::new(),
                );
                assert_eq!(
                    names_of(&push),
                    full_diff(sub, from, &snap),
                    "{sub} {how} {what}"
                );
            }
        }
        prev = snap;
    }
    prev
}

/// `back`'s waypoint routes `shop/back` to `shop/api` (behind a waypoint of its own) and to
/// `other/remote`, which a ReferenceGrant lets it use only later.
fn routed() -> (Cluster, Index, Snapshot) {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(ns("other", true));
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    c.apply(pod("shop", "c", "api", "n3", "10.0.0.3"));
    c.apply(pod("other", "d", "remote", "n1", "10.0.0.4"));
    for (ns, svc, pods, ip) in [
        ("shop", "back", "b", "10.96.0.1"),
        ("shop", "api", "c", "10.96.0.2"),
        ("other", "remote", "d", "10.96.0.3"),
    ] {
        c.apply(service(ns, svc, ip, 80));
        c.apply(slice(ns, svc, &[pods]));
    }
    c.apply(waypoint("shop", "back-wp", "back"));
    c.apply(waypoint("shop", "api-wp", "api"));
    c.apply(http_route(
        "shop",
        "r",
        &["shop/back"],
        &[("shop/api", 80, 9), ("other/remote", 80, 1)],
    ));
    let mut index = Index::new(c.stores(), "cluster.local");
    let snapshot = index.update([Change::All]).unwrap();
    (c, index, snapshot)
}

#[test]
fn waypoints_see_their_routes_backends_and_next_hops() {
    let (mut c, mut index, snap) = routed();
    let back = Subscriber::Waypoint("shop".into(), "back".into());
    assert_eq!(
        visible_names(&back, &snap),
        [
            "httproute/shop/r",
            "service/shop/api",
            "service/shop/back",
            "waypoint/shop/api-wp",
            "waypoint/shop/back-wp",
            "workload/uid-b",
            "workload/uid-c",
        ],
        "other/remote is not granted: never picked, not sent"
    );
    assert!(
        !visible_names(&node("n1"), &snap).contains(&"httproute/shop/r".to_string()),
        "routes are the waypoints' business"
    );
    let front = Subscriber::Waypoint("shop".into(), "front".into());
    assert_eq!(visible_names(&front, &snap), ["workload/uid-a"]);

    let subscribers = [back.clone(), front, node("n1")];
    type Step = fn(&mut Cluster) -> Change;
    let steps: [(&str, Step); 5] = [
        ("the grant", |c| c.apply(grant("other", "shop"))),
        ("a backend pod moves", |c| {
            c.apply(pod("other", "d", "remote", "n2", "10.0.0.9"))
        }),
        ("a backend pod leaves its service", |c| {
            c.apply(slice("other", "remote", &[]))
        }),
        ("a backend service changes its port", |c| {
            c.apply(service("other", "remote", "10.96.0.3", 81))
        }),
        ("the route goes", |c| {
            c.delete(http_route("shop", "r", &[], &[]))
        }),
    ];
    let mut last = snap;
    for (what, step) in steps {
        let change = step(&mut c);
        last = assert_pushes_equal_diffs(&mut index, last, &subscribers, vec![(what, change)]);
    }
    assert_eq!(
        visible_names(&back, &last),
        [
            "service/shop/back",
            "waypoint/shop/back-wp",
            "workload/uid-b"
        ]
    );
}

#[test]
fn a_granted_backend_brings_its_service_and_workloads() {
    let (mut c, mut index, _) = routed();
    let back = Subscriber::Waypoint("shop".into(), "back".into());
    let snap = index.update([c.apply(grant("other", "shop"))]).unwrap();
    let names = visible_names(&back, &snap);
    for name in ["service/other/remote", "workload/uid-d"] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    // The backend's port is gone: the backend is invalid again, and so out of view.
    let snap = index
        .update([c.apply(service("other", "remote", "10.96.0.3", 81))])
        .unwrap();
    let names = visible_names(&back, &snap);
    assert!(
        !names.contains(&"service/other/remote".to_string()),
        "{names:?}"
    );
}

#[test]
fn nacked_names_are_sent_again() {
    let (_, _, snap) = shop();
    let sub = node("n1");
    let view = sub.view(&snap);
    let unsure: BTreeSet<Name> = ["workload/uid-a".into(), "workload/gone".into()].into();
    let push = Push::between(
        &sub,
        (&snap, &view),
        (&snap, &view),
        &BTreeSet::new(),
        &unsure,
    );
    assert_eq!(
        names_of(&push),
        (vec!["workload/uid-a".into()], vec!["workload/gone".into()])
    );
}

#[test]
fn large_pushes_go_in_parts_that_decode_as_deltas() {
    let (_, _, snap) = shop();
    let sub = node("n2");
    let view = sub.view(&snap);
    let mut push = Push::initial(&sub, &view, &snap, &BTreeMap::new());
    push.removals.push("workload/gone".into());
    push.removals.push("workload/gone-too".into());
    let total = push.upserts.len();
    let parts: Vec<EncodedDelta> = push.parts("7", 1).collect();
    assert_eq!(
        parts.len(),
        total + 2,
        "one resource or removal per part at 1 byte"
    );
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let delta = pb::Delta::decode(part.encode_to_vec().as_slice()).unwrap();
        assert_eq!(delta.nonce, "7");
        assert_eq!(delta.more, i + 1 < parts.len());
        upserts.extend(delta.upserts);
        removals.extend(delta.removals);
    }
    assert_eq!(removals, ["workload/gone", "workload/gone-too"]);
    let sent: Vec<pb::Resource> = push
        .upserts
        .iter()
        .map(|(_, e)| (*e.resource).clone())
        .collect();
    assert_eq!(upserts, sent);
    let one: Vec<EncodedDelta> = push.parts("8", 1 << 20).collect();
    assert_eq!(one.len(), 1);
    assert!(!one[0].more);
    assert_eq!(one[0].upserts.len(), total);
    assert_eq!(
        Push::default().parts("1", 1).count(),
        1,
        "an empty push is one message"
    );
}
