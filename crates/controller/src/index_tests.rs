#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn ns(name: &str, enrolled: bool) -> Arc<Namespace> {
    let labels = if enrolled {
        json!({DATAPLANE_MODE_LABEL: "ambient"})
    } else {
        json!({})
    };
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

fn pod(ns: &str, name: &str, sa: &str, node: &str, ip: &str) -> Arc<Pod> {
    obj(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": {"app": sa}},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
}

fn names<K: AsRef<str>, V>(view: &BTreeMap<K, V>) -> Vec<&str> {
    view.keys().map(AsRef::as_ref).collect()
}

#[test]
fn pods_of_enrolled_namespaces_are_workloads() {
    let namespaces = [ns("shop", true), ns("other", false)];
    let mut opted_out = (*pod("shop", "c", "sa", "n1", "10.0.0.3")).clone();
    opted_out
        .metadata
        .labels
        .get_or_insert_default()
        .insert(DATAPLANE_MODE_LABEL.to_string(), "none".to_string());
    let mut deleting = (*pod("shop", "d", "sa", "n1", "10.0.0.4")).clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    let mut starting = (*pod("shop", "e", "sa", "n1", "10.0.0.5")).clone();
    starting.status = None;
    let pods = [
        pod("shop", "a", "sa", "n1", "10.0.0.1"),
        pod("other", "b", "sa", "n1", "10.0.0.2"),
        Arc::new(opted_out),
        Arc::new(deleting),
        Arc::new(starting),
    ];
    let snap = build(
        &Inputs {
            namespaces: &namespaces,
            pods: &pods,
            ..Default::default()
        },
        "cluster.local",
    );
    assert_eq!(
        names(&snap.resources),
        [
            "namespace/shop",
            "workload/uid-a",
            "workload/uid-c",
            "workload/uid-e"
        ]
    );
    let workload = |name: &str| match &snap.resources[name].resource.kind {
        Some(pb::resource::Kind::Workload(w)) => w.clone(),
        _ => panic!("{name} is not a workload"),
    };
    let a = workload("workload/uid-a");
    assert_eq!(a.identity, "spiffe://cluster.local/ns/shop/sa/sa");
    assert_eq!(a.ips, ["10.0.0.1"]);
    assert!(!a.opted_out);
    assert!(workload("workload/uid-c").opted_out);
    // Scheduled, no addresses yet: listed so its tunnel knows to capture it.
    assert!(workload("workload/uid-e").ips.is_empty());
}

#[test]
fn views_and_diffs() {
    let namespaces = [ns("shop", true)];
    let pods = [
        pod("shop", "a", "front", "n1", "10.0.0.1"),
        pod("shop", "b", "back", "n2", "10.0.0.2"),
    ];
    let policies: [Arc<AuthorizationPolicy>; 1] = [obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "back-only"},
        "spec": {"selector": {"matchLabels": {"app": "back"}}, "rules": [{"principals": ["spiffe://cluster.local/ns/shop/sa/front"]}]},
    }))];
    let snap = build(
        &Inputs {
            namespaces: &namespaces,
            pods: &pods,
            policies: &policies,
            ..Default::default()
        },
        "cluster.local",
    );
    // Both nodes see all workloads; only n2 (which runs `back`) gets the policy.
    let n1 = snap.view(&Subscriber::Node("n1".into()));
    let n2 = snap.view(&Subscriber::Node("n2".into()));
    assert_eq!(
        names(&n1),
        ["namespace/shop", "workload/uid-a", "workload/uid-b"]
    );
    assert_eq!(
        names(&n2),
        [
            "authorizationpolicy/shop/back-only",
            "namespace/shop",
            "workload/uid-a",
            "workload/uid-b"
        ]
    );
    let wp = snap.view(&Subscriber::Waypoint("shop".into(), "back".into()));
    assert_eq!(
        names(&wp),
        ["authorizationpolicy/shop/back-only", "workload/uid-b"]
    );

    // A client holding n1's view with one stale version and one extra name.
    let mut have: BTreeMap<String, String> = n1
        .iter()
        .map(|(k, e)| (k.to_string(), e.version.clone()))
        .collect();
    assert!(diff(&have, &n1).upserts.is_empty() && diff(&have, &n1).removals.is_empty());
    have.insert("workload/uid-a".into(), "stale".into());
    have.insert("workload/gone".into(), "1".into());
    let d = diff(&have, &n1);
    assert_eq!(
        d.upserts
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["workload/uid-a"]
    );
    assert_eq!(d.removals, ["workload/gone"]);
}

#[test]
fn versions_are_stable_and_content_based() {
    let namespaces = [ns("shop", true)];
    let pods = [pod("shop", "a", "front", "n1", "10.0.0.1")];
    let inputs = Inputs {
        namespaces: &namespaces,
        pods: &pods,
        ..Default::default()
    };
    let v1 = build(&inputs, "cluster.local").resources["workload/uid-a"]
        .version
        .clone();
    assert_eq!(
        v1,
        build(&inputs, "cluster.local").resources["workload/uid-a"].version
    );
    let pods2 = [pod("shop", "a", "front", "n1", "10.0.0.9")];
    let inputs2 = Inputs {
        namespaces: &namespaces,
        pods: &pods2,
        ..Default::default()
    };
    assert_ne!(
        v1,
        build(&inputs2, "cluster.local").resources["workload/uid-a"].version
    );
}

#[test]
fn incremental_deltas_match_full_diffs() {
    let namespaces = [ns("shop", true)];
    let pods1 = [
        pod("shop", "a", "front", "n1", "10.0.0.1"),
        pod("shop", "b", "back", "n2", "10.0.0.2"),
    ];
    let pods2 = [
        pod("shop", "a", "front", "n1", "10.0.0.1"),
        pod("shop", "b", "back", "n2", "10.0.0.9"),
    ];
    let s1 = build(
        &Inputs {
            namespaces: &namespaces,
            pods: &pods1,
            ..Default::default()
        },
        "cluster.local",
    );
    let mut s2 = build(
        &Inputs {
            namespaces: &namespaces,
            pods: &pods2,
            ..Default::default()
        },
        "cluster.local",
    );
    s2.generation = s1.generation + 1;
    s2.changed = Arc::new(changed_names(&s1.resources, &s2.resources));
    assert_eq!(s2.changed.iter().collect::<Vec<_>>(), ["workload/uid-b"]);

    let n1 = Subscriber::Node("n1".into());
    let mut have = BTreeMap::new();
    s1.delta_for(&n1, &mut have);
    let mut full_have = have.clone();
    let full = s2.delta_for(&n1, &mut full_have);
    let inc = s2
        .incremental_delta(&s1, &n1, &mut have)
        .expect("node 1's own workloads did not change");
    assert_eq!(inc, full);
    assert_eq!(have, full_have);
    // Node 2's own workload changed: policies it sees may change, so a full diff.
    let n2 = Subscriber::Node("n2".into());
    let mut have2 = BTreeMap::new();
    s1.delta_for(&n2, &mut have2);
    assert!(s2.incremental_delta(&s1, &n2, &mut have2).is_none());
    // A skipped generation: full diff.
    let mut s3 = s2.clone();
    s3.generation += 1;
    assert!(s3.incremental_delta(&s1, &n1, &mut have).is_none());
}
