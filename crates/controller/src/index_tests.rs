#![allow(clippy::unwrap_used)]
use super::testing::*;
use super::*;

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.resources.keys().map(|k| &**k).collect()
}

fn workload(snapshot: &Snapshot, name: &str) -> pb::Workload {
    match snapshot.resources[name].kind() {
        Some(pb::resource::Kind::Workload(w)) => w.clone(),
        _ => panic!("{name} is not a workload"),
    }
}

fn built(cluster: &Cluster) -> Snapshot {
    Index::new(cluster.stores(), "cluster.local")
        .update([Change::All])
        .unwrap()
}

#[test]
fn pods_of_enrolled_namespaces_are_workloads() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(ns("other", false));
    let mut opted_out = pod("shop", "c", "sa", "n1", "10.0.0.3");
    opted_out
        .metadata
        .labels
        .get_or_insert_default()
        .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
    let mut deleting = pod("shop", "d", "sa", "n1", "10.0.0.4");
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    let mut starting = pod("shop", "e", "sa", "n1", "10.0.0.5");
    starting.status = None;
    for p in [
        pod("shop", "a", "sa", "n1", "10.0.0.1"),
        pod("other", "b", "sa", "n1", "10.0.0.2"),
        opted_out,
        deleting,
        starting,
    ] {
        c.apply(p);
    }
    let snap = built(&c);
    assert_eq!(
        names(&snap),
        [
            "namespace/shop",
            "workload/uid-a",
            "workload/uid-c",
            "workload/uid-e"
        ]
    );
    let a = workload(&snap, "workload/uid-a");
    assert_eq!(a.identity, "spiffe://cluster.local/ns/shop/sa/sa");
    assert_eq!(a.ips, ["10.0.0.1"]);
    assert!(!a.opted_out);
    assert!(!a.not_ready);
    assert!(workload(&snap, "workload/uid-c").opted_out);
    // Scheduled, no addresses yet: listed so its tunnel knows to capture it, not ready.
    let e = workload(&snap, "workload/uid-e");
    assert!(e.ips.is_empty() && e.not_ready);
}

#[test]
fn readiness_is_the_pods_ready_condition() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(with_ready(pod("shop", "a", "sa", "n1", "10.0.0.1"), false));
    let mut no_conditions = pod("shop", "b", "sa", "n1", "10.0.0.2");
    if let Some(s) = no_conditions.status.as_mut() {
        s.conditions = None;
    }
    c.apply(no_conditions);
    let mut index = Index::new(c.stores(), "cluster.local");
    let first = index.update([Change::All]).unwrap();
    assert!(workload(&first, "workload/uid-a").not_ready);
    assert!(workload(&first, "workload/uid-b").not_ready);
    // Ready: one targeted update changes that workload alone.
    let ch = c.apply(with_ready(pod("shop", "a", "sa", "n1", "10.0.0.1"), true));
    let next = index.update([ch]).unwrap();
    assert!(!workload(&next, "workload/uid-a").not_ready);
    assert_eq!(
        next.changed_since(&first)
            .iter()
            .map(|k| &**k)
            .collect::<Vec<_>>(),
        ["workload/uid-a"]
    );
    // Not ready again (a failing probe): the endpoint is withdrawn, the workload stays.
    let ch = c.apply(with_ready(pod("shop", "a", "sa", "n1", "10.0.0.1"), false));
    let last = index.update([ch]).unwrap();
    assert!(workload(&last, "workload/uid-a").not_ready);
    assert_eq!(last.resources.len(), next.resources.len());
}

#[test]
fn services_waypoints_and_membership() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    c.apply(service("shop", "web", "10.96.0.1", 80));
    c.apply(slice("shop", "web", &["a"]));
    // Neither bound nor given an address before a pod of it has been ready.
    c.apply(new_waypoint("shop", "front-wp", "front"));
    c.apply(service("shop", "front-wp", "10.96.0.2", 15008));
    let snap = built(&c);
    assert_eq!(workload(&snap, "workload/uid-a").waypoint, "");
    match snap.resources["waypoint/shop/front-wp"].kind() {
        Some(pb::resource::Kind::Waypoint(w)) => assert!(w.vips.is_empty(), "{w:?}"),
        other => panic!("{other:?}"),
    }
    c.apply(waypoint("shop", "front-wp", "front"));
    let snap = built(&c);
    let a = workload(&snap, "workload/uid-a");
    assert_eq!(a.waypoint, "shop/front-wp");
    assert_eq!(a.services["shop/web"].ports, BTreeMap::from([(80, 8080)]));
    match snap.resources["waypoint/shop/front-wp"].kind() {
        Some(pb::resource::Kind::Waypoint(w)) => {
            assert_eq!(w.vips, ["10.96.0.2"]);
            assert_eq!(w.identity, "spiffe://cluster.local/ns/shop/sa/front-wp");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn versions_are_stable_and_content_based() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    let v1 = built(&c).resources["workload/uid-a"].clone();
    assert_eq!(v1, built(&c).resources["workload/uid-a"]);
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.9"));
    let v2 = &built(&c).resources["workload/uid-a"];
    assert_ne!(v1.version, v2.version);
    // What is sent is the resource, version included.
    let sent = pb::Resource::decode(v2.encoded.clone()).unwrap();
    assert_eq!(&sent, &*v2.resource);
    assert_eq!(sent.version, format!("{:016x}", v2.version));
}

#[test]
fn one_pod_event_changes_one_workload_and_shares_the_rest() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    for i in 0..10 {
        c.apply(pod(
            "shop",
            &format!("p{i}"),
            "sa",
            "n1",
            &format!("10.0.0.{i}"),
        ));
    }
    let mut index = Index::new(c.stores(), "cluster.local");
    let first = index.update([Change::All]).unwrap();
    assert_eq!(first.generation, 1);
    // Nothing changed: nothing published.
    assert!(index.update([Change::All]).is_none());
    let change = c.apply(pod("shop", "p3", "sa", "n1", "10.0.1.3"));
    assert_eq!(change, Change::Pod(("shop".into(), "p3".into())));
    let next = index.update([change]).unwrap();
    assert_eq!(next.generation, 2);
    assert_eq!(
        next.changed_since(&first)
            .iter()
            .map(|k| &**k)
            .collect::<Vec<_>>(),
        ["workload/uid-p3"]
    );
    assert!(Arc::ptr_eq(
        &first.resources["workload/uid-p1"].resource,
        &next.resources["workload/uid-p1"].resource
    ));
    // A session two generations behind gets the union of both generations' names, and one
    // further behind than the history a comparison of the whole snapshots.
    let ch = c.apply(pod("shop", "p4", "sa", "n1", "10.0.1.4"));
    let third = index.update([ch]).unwrap();
    let names = |s: &BTreeSet<Name>| s.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(&third.changed_since(&first)),
        ["workload/uid-p3", "workload/uid-p4"]
    );
    let forgotten = Snapshot {
        recent_changes: Vec::new(),
        ..third.clone()
    };
    assert_eq!(
        names(&forgotten.changed_since(&first)),
        ["workload/uid-p3", "workload/uid-p4"]
    );
    assert!(third.changed_since(&third).is_empty());
}

/// Every targeted update must leave the index exactly where a full rebuild would.
#[test]
fn targeted_updates_equal_a_rebuild() {
    let mut c = Cluster::new();
    let mut index = Index::new(c.stores(), "cluster.local");
    let mut prev = index.update([Change::All]).unwrap();
    let mut step = |c: &mut Cluster, what: &str, change: Change| {
        let got = index.update([change]).unwrap_or_else(|| prev.clone());
        let want = built(c);
        assert_eq!(got.resources, want.resources, "after {what}");
        let differing: BTreeSet<&str> = got
            .resources
            .keys()
            .chain(prev.resources.keys())
            .filter(|k| got.resources.get(*k) != prev.resources.get(*k))
            .map(|k| &**k)
            .collect();
        let changed = got.changed_since(&prev);
        let changed: BTreeSet<&str> = changed.iter().map(|k| &**k).collect();
        assert_eq!(changed, differing, "changed names after {what}");
        prev = got;
    };
    let ch = c.apply(ns("shop", true));
    step(&mut c, "namespace", ch);
    let ch = c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    step(&mut c, "pod a", ch);
    let ch = c.apply(slice("shop", "web", &["a", "b"]));
    step(&mut c, "slice before its service and pod b", ch);
    let ch = c.apply(service("shop", "web", "10.96.0.1", 80));
    step(&mut c, "service", ch);
    let ch = c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    step(&mut c, "pod b, already listed", ch);
    let ch = c.apply(with_ready(
        pod("shop", "b", "back", "n2", "10.0.0.2"),
        false,
    ));
    step(&mut c, "pod b not ready", ch);
    let ch = c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    step(&mut c, "pod b ready again", ch);
    let ch = c.apply(service("shop", "web", "10.96.0.1", 81));
    step(&mut c, "service port change", ch);
    let ch = c.apply(slice("shop", "web", &["b"]));
    step(&mut c, "a leaves the slice", ch);
    let ch = c.apply(policy("shop", "back-only", "back"));
    step(&mut c, "policy", ch);
    let ch = c.apply(http_route(
        "shop",
        "r",
        &["shop/web"],
        &[("shop/web", 81, 1), ("other/api", 80, 1)],
    ));
    step(&mut c, "route", ch);
    let ch = c.apply(service("other", "api", "10.96.0.5", 80));
    step(&mut c, "a backend service appears", ch);
    let ch = c.apply(grant("other", "shop"));
    step(&mut c, "grant", ch);
    let ch = c.delete(grant("other", "shop"));
    step(&mut c, "grant deleted", ch);
    let mut recreated = pod("shop", "b", "back", "n2", "10.0.0.7");
    recreated.metadata.uid = Some("uid-b2".into());
    let ch = c.apply(recreated);
    step(&mut c, "pod b recreated with a new uid", ch);
    let ch = c.delete(slice("shop", "web", &["b"]));
    step(&mut c, "slice deleted", ch);
    let ch = c.delete(pod("shop", "a", "front", "n1", "10.0.0.1"));
    step(&mut c, "pod a deleted", ch);
    let ch = c.delete(policy("shop", "back-only", "back"));
    step(&mut c, "policy deleted", ch);
    let ch = c.delete(service("shop", "web", "10.96.0.1", 81));
    step(&mut c, "service deleted", ch);
    let ch = c.delete(http_route("shop", "r", &[], &[]));
    step(&mut c, "route deleted", ch);
    let ch = c.apply(ns("shop", false));
    step(&mut c, "namespace unenrolled", ch);
    assert!(prev.resources.is_empty());
}

#[test]
fn routes_follow_their_services() {
    let mut c = Cluster::new();
    c.apply(service("shop", "web", "10.96.0.1", 80));
    let mut index = Index::new(c.stores(), "cluster.local");
    index.update([Change::All]);
    let route = |snapshot: &Snapshot| match snapshot
        .resources
        .get("httproute/shop/r")
        .and_then(Entry::kind)
    {
        Some(pb::resource::Kind::Route(r)) => Some(r.clone()),
        _ => None,
    };
    let snap = index
        .update([c.apply(http_route(
            "shop",
            "r",
            &["shop/web"],
            &[("shop/api", 8080, 1)],
        ))])
        .unwrap();
    let r = route(&snap).unwrap();
    assert!(r.rules[0].backends[0].invalid, "no such backend yet");
    assert_eq!(r.created_unix_ms, 1_767_323_045_000);
    let snap = index
        .update([c.apply(service("shop", "api", "10.96.0.2", 8080))])
        .unwrap();
    assert!(!route(&snap).unwrap().rules[0].backends[0].invalid);
    let snap = index
        .update([c.delete(service("shop", "web", "10.96.0.1", 80))])
        .unwrap();
    assert_eq!(route(&snap), None, "its only parent is gone");
    assert!(
        index
            .update([c.delete(service("shop", "api", "10.96.0.2", 8080))])
            .is_none(),
        "nothing refers to it any more"
    );
}

#[test]
fn trimmed_pods_index_the_same() {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    let mut p = pod("shop", "a", "front", "n1", "10.0.0.1");
    p.metadata.annotations = Some([("big".to_string(), "x".repeat(1000))].into());
    p.spec.as_mut().unwrap().containers = vec![Default::default()];
    // Conditions besides Ready are dropped, Ready is kept (without its timestamps).
    let status = p.status.as_mut().unwrap();
    status.conditions.as_mut().unwrap().insert(
        0,
        obj(serde_json::json!({"type": "PodScheduled", "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z"})),
    );
    status.conditions.as_mut().unwrap()[1].last_transition_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    c.apply(p.clone());
    let full = built(&c);
    assert!(!workload(&full, "workload/uid-a").not_ready);
    p.trim();
    assert!(p.metadata.annotations.is_none() && p.spec.as_ref().unwrap().containers.is_empty());
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    let conditions = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        (conditions[0].type_.as_str(), conditions[0].status.as_str()),
        ("Ready", "True")
    );
    assert!(conditions[0].last_transition_time.is_none());
    c.apply(p);
    assert_eq!(built(&c).resources, full.resources);
}

#[tokio::test]
async fn queued_changes_are_a_set_and_wait_for_nothing() {
    let queue = ChangeQueue::default();
    let a = Change::Pod(("shop".into(), "a".into()));
    for _ in 0..3 {
        queue.push(a.clone());
    }
    queue.push(Change::All);
    assert_eq!(queue.take().await, [Change::All, a]);
    // Nothing waiting: `take` waits for the next push.
    let later = Change::Policy(("shop".into(), "p".into()));
    let taken = async { queue.take().await };
    let pushed = async { queue.push(later.clone()) };
    let (taken, ()) = tokio::join!(taken, pushed);
    assert_eq!(taken, [later]);
}

/// IP reuse: a pod whose status still shows an address (not yet updated) and the new pod the
/// address went to. Data planes refuse two workloads with one IP, so the newest holds it, the
/// same whether built at once or event by event, and gets it back when the other goes.
#[test]
fn a_reused_ip_is_held_by_the_newest_pod_only() {
    let created = |mut p: Pod, second: i64| {
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
        ));
        p
    };
    let ips = |s: &Snapshot, name: &str| workload(s, name).ips;
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    let stale = created(pod("shop", "stale", "sa", "n1", "10.0.0.9"), 100);
    c.apply(stale.clone());
    let mut index = Index::new(c.stores(), "cluster.local");
    let first = index.update([Change::All]).unwrap();
    assert_eq!(ips(&first, "workload/uid-stale"), ["10.0.0.9"]);
    let change = c.apply(created(pod("shop", "fresh", "sa", "n1", "10.0.0.9"), 200));
    let next = index.update([change]).unwrap();
    assert_eq!(ips(&next, "workload/uid-fresh"), ["10.0.0.9"]);
    assert!(ips(&next, "workload/uid-stale").is_empty());
    assert_eq!(
        next.changed_since(&first)
            .iter()
            .map(|k| &**k)
            .collect::<Vec<_>>(),
        ["workload/uid-fresh", "workload/uid-stale"]
    );
    // Built at once: the same.
    let rebuilt = built(&c);
    assert_eq!(
        rebuilt.resources["workload/uid-stale"].version,
        next.resources["workload/uid-stale"].version
    );
    assert_eq!(
        rebuilt.resources["workload/uid-fresh"].version,
        next.resources["workload/uid-fresh"].version
    );
    // The new pod goes: the other holds the address again.
    let change = c.delete(created(pod("shop", "fresh", "sa", "n1", "10.0.0.9"), 200));
    let last = index.update([change]).unwrap();
    assert_eq!(ips(&last, "workload/uid-stale"), ["10.0.0.9"]);
    assert!(!last.resources.contains_key("workload/uid-fresh"));
}
