#![allow(clippy::unwrap_used)]
use super::*;
use crate::index::testing::{Cluster, obj, pod, waypoint};
use crate::index::{Change, Index, Snapshot};
use ambit_k8s::names::{DATAPLANE_MODE_LABEL, RISK_ENFORCEMENT_LABEL, RISK_PROFILE_LABEL};
use serde_json::json;

fn settings() -> MeshSettings {
    MeshSettings {
        leaf_lifetime_seconds: Some(3600),
        tunnel_mode: Some(ambit_risk::TunnelMode::Strict),
        ext_authz_providers: Some(Vec::new()),
    }
}

/// Namespace `shop`, enrolled, with the risk labels given.
fn shop(labels: &[(&str, &str)]) -> Namespace {
    let mut all = serde_json::Map::new();
    all.insert(DATAPLANE_MODE_LABEL.into(), "ambient".into());
    for (k, v) in labels {
        all.insert((*k).into(), (*v).into());
    }
    obj(json!({"metadata": {"name": "shop", "labels": all}}))
}

/// `shop` with an HTTP server `echo` (its own service account) behind a Service, and a
/// client `front` serving no HTTP.
fn cluster(labels: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new();
    c.apply(shop(labels));
    c.apply(pod("shop", "echo-1", "echo", "n1", "10.0.0.1"));
    c.apply(pod("shop", "front-1", "front", "n1", "10.0.0.2"));
    c.apply::<k8s_openapi::api::core::v1::Service>(obj(json!({
        "metadata": {"namespace": "shop", "name": "echo"},
        "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })));
    c
}

fn high_enforced() -> Cluster {
    cluster(&[
        (RISK_PROFILE_LABEL, "high"),
        (RISK_ENFORCEMENT_LABEL, "enforce"),
    ])
}

fn condition<'a>(e: &'a Evaluation, id: &str) -> &'a Verdict {
    &e.conditions.iter().find(|(t, _)| t == id).unwrap().1
}

/// The waypoint of `echo`, Programmed as the controller marks it.
fn programmed_waypoint() -> crate::crd::Gateway {
    let mut gw = waypoint("shop", "waypoint-echo", "echo");
    gw.status = Some(obj(
        json!({"conditions": [{"type": "Programmed", "status": "True",
        "reason": "Programmed", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    ));
    gw
}

#[test]
fn enforce_refuses_an_http_account_without_a_waypoint_until_it_has_one() {
    let mut c = high_enforced();
    let all = evaluate_all(&c.stores(), &settings());
    let e = &all["shop"];
    assert_eq!((e.profile.as_str(), e.mode.as_str()), ("high", "enforce"));
    assert_eq!(e.refused, BTreeSet::from(["echo".to_owned()]));
    let waypoint = condition(e, "MEDIUM-REQ1");
    assert!(!waypoint.ok);
    assert_eq!(waypoint.reason, "WaypointMissing");
    assert!(
        waypoint
            .message
            .contains("Fix: kubectl ambit waypoint apply -n shop --service-account echo")
            && waypoint.message.contains(REFUSED_NOTE),
        "{}",
        waypoint.message
    );
    // What does not name a refused account says nothing of refusals.
    assert!(!condition(e, "LOW-REQ1").message.contains(REFUSED_NOTE));
    assert!(condition(e, "LOW-REQ1").ok);

    c.apply(programmed_waypoint());
    let all = evaluate_all(&c.stores(), &settings());
    let e = &all["shop"];
    assert!(e.refused.is_empty(), "{:?}", e.refused);
    assert!(condition(e, "MEDIUM-REQ1").ok);
    assert!(!condition(e, "HIGH-REQ1").ok, "no CUSTOM policy yet");
    assert!(
        e.unmet().all(|(_, v)| !v.message.contains(REFUSED_NOTE)),
        "{e:?}"
    );
}

#[test]
fn a_waypoint_pod_as_the_controller_keeps_it_is_no_application() {
    let mut c = high_enforced();
    c.apply(programmed_waypoint());
    // As the waypoint's Deployment makes it, out of the mesh, and trimmed as the reflector
    // stores it.
    let mut wp: k8s_openapi::api::core::v1::Pod = obj(json!({
        "metadata": {"namespace": "shop", "name": "waypoint-echo-5d9f-x2", "uid": "uid-wp",
            "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint-echo",
                DATAPLANE_MODE_LABEL: "none"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "waypoint-echo-5d9f",
                    "uid": "rs", "controller": true},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "cm"}]},
        "spec": {"nodeName": "n1", "serviceAccountName": "waypoint-echo", "containers": []},
    }));
    crate::index::Watched::trim(&mut wp);
    assert_eq!(wp.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    c.apply(wp);
    let all = evaluate_all(&c.stores(), &settings());
    let e = &all["shop"];
    assert!(e.refused.is_empty(), "{e:?}");
    assert!(condition(e, "LOW-REQ1").ok, "{e:?}");
    assert!(condition(e, "MEDIUM-REQ1").ok, "{e:?}");
}

#[test]
fn report_mode_refuses_nothing_and_bad_labels_are_said() {
    let c = cluster(&[(RISK_PROFILE_LABEL, "high")]);
    let e = &evaluate_all(&c.stores(), &settings())["shop"];
    assert_eq!(e.mode, "report");
    assert!(e.refused.is_empty());
    assert!(!condition(e, "MEDIUM-REQ1").ok);
    assert_eq!(e.conditions.len(), 9, "high holds every requirement");

    let c = cluster(&[(RISK_PROFILE_LABEL, "High")]);
    let e = &evaluate_all(&c.stores(), &settings())["shop"];
    assert_eq!(e.conditions.len(), 1);
    let (t, v) = &e.conditions[0];
    assert_eq!(
        (t.as_str(), v.ok, v.reason),
        (LABELS, false, "InvalidLabel")
    );
    assert!(v.message.contains("\"High\""), "{}", v.message);
    assert!(e.refused.is_empty());

    let c = cluster(&[]);
    assert!(evaluate_all(&c.stores(), &settings()).is_empty());
}

/// What `evaluations` refuse made the refusals, as a pass does, which changes `shop`'s: the
/// index's next snapshot.
fn shop_refusals(
    stores: &Stores,
    index: &mut Index,
    evaluations: &BTreeMap<String, Evaluation>,
) -> Snapshot {
    let changed = refuse(&stores.refusals, evaluations);
    assert_eq!(changed, ["shop".to_owned()].into());
    index
        .update(changed.into_iter().map(Change::Refusals))
        .unwrap()
}

#[test]
fn refused_workloads_are_labelled_and_denied_by_the_index() {
    let mut c = high_enforced();
    // A pod cannot refuse itself, nor escape: the label is the controller's.
    let mut front = pod("shop", "front-1", "front", "n1", "10.0.0.2");
    front
        .metadata
        .labels
        .get_or_insert_default()
        .insert(REFUSED_LABEL.into(), "true".into());
    c.apply(front);
    let stores = c.stores();
    let mut index = Index::new(stores.clone(), "cluster.local");
    index.update([Change::All]);
    let labelled =
        |snap: &Snapshot, uid: &str| match snap.resources[&*format!("workload/{uid}")].kind() {
            Some(pb::resource::Kind::Workload(w)) => w.labels.contains_key(REFUSED_LABEL),
            other => panic!("{other:?}"),
        };
    let deny = format!("authorizationpolicy/shop/{DENY_POLICY}");

    let snap = shop_refusals(&stores, &mut index, &evaluate_all(&stores, &settings()));
    assert!(labelled(&snap, "uid-echo-1"));
    assert!(!labelled(&snap, "uid-front-1"));
    let Some(pb::resource::Kind::AuthorizationPolicy(p)) = snap.resources[&*deny].kind() else {
        panic!("no {deny}");
    };
    assert_eq!(*p, deny_policy("shop"));
    assert_eq!(p.match_labels[REFUSED_LABEL], "true");

    // The same refusals again change nothing.
    assert!(refuse(&stores.refusals, &evaluate_all(&stores, &settings())).is_empty());

    let snap = shop_refusals(&stores, &mut index, &BTreeMap::new());
    assert!(!labelled(&snap, "uid-echo-1"));
    assert!(!snap.resources.contains_key(&*deny));
}

#[test]
fn a_refused_pod_cannot_opt_out_of_its_refusal() {
    let mut c = high_enforced();
    let mut echo = pod("shop", "echo-1", "echo", "n1", "10.0.0.1");
    echo.metadata
        .labels
        .get_or_insert_default()
        .insert(DATAPLANE_MODE_LABEL.into(), "none".into());
    c.apply(echo);
    let stores = c.stores();
    let mut index = Index::new(stores.clone(), "cluster.local");
    index.update([Change::All]);
    let opted_out = |snap: &Snapshot| match snap.resources["workload/uid-echo-1"].kind() {
        Some(pb::resource::Kind::Workload(w)) => w.opted_out,
        other => panic!("{other:?}"),
    };

    let snap = shop_refusals(&stores, &mut index, &evaluate_all(&stores, &settings()));
    assert!(!opted_out(&snap), "a refused pod stayed opted out");

    // Once no longer refused, its own choice holds again.
    let snap = shop_refusals(&stores, &mut index, &BTreeMap::new());
    assert!(opted_out(&snap));
}

#[test]
fn status_counts_and_keeps_transition_times() {
    let c = high_enforced();
    let e = evaluate_all(&c.stores(), &settings())
        .remove("shop")
        .unwrap();
    let first = status_of(&e, None, Some(1));
    assert_eq!(first.met + first.unmet, 9);
    assert_eq!(usize::try_from(first.unmet).unwrap(), e.unmet().count());
    assert_eq!(first.refused_service_accounts, ["echo"]);
    let mut aged = first.clone();
    for c in &mut aged.conditions {
        c.last_transition_time = "2026-01-01T00:00:00Z".into();
    }
    // Nothing flipped: the written status is kept as is, so nothing is written.
    assert_eq!(status_of(&e, Some(&aged), Some(1)), aged);
}

#[test]
fn only_the_refusing_requirement_says_traffic_is_refused() {
    let c = high_enforced();
    let e = &evaluate_all(&c.stores(), &settings())["shop"];
    assert_eq!(e.refused, BTreeSet::from(["echo".to_owned()]));
    let mut naming_echo = 0;
    for (id, v) in &e.conditions {
        if id == ambit_risk::REFUSING_REQUIREMENT.as_str() {
            assert!(v.message.contains(REFUSED_NOTE), "{v:?}");
        } else {
            naming_echo += usize::from(v.message.contains("echo: "));
            assert!(!v.message.contains(REFUSED_NOTE), "{id}: {v:?}");
        }
    }
    assert!(naming_echo >= 2, "other requirements name echo too: {e:?}");
}

fn object(uid: &str, status: Option<RiskProfileStatus>) -> RiskProfile {
    let mut p = RiskProfile::new(RISK_PROFILE_NAME, RiskProfileSpec {});
    p.metadata.namespace = Some("shop".into());
    p.metadata.uid = Some(uid.into());
    p.metadata.generation = Some(1);
    p.status = status;
    p
}

#[test]
fn what_this_replica_wrote_holds_while_the_store_lags_and_events_are_told_once() {
    let e = evaluate_all(&high_enforced().stores(), &settings())
        .remove("shop")
        .unwrap();
    let first = status_of(&e, None, Some(1));
    let notes = notices(&e, None, &first);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].warning && notes[0].reason == "TrafficRefused");
    assert!(
        notes[0]
            .note
            .contains("echo until each has a Programmed waypoint of its own (MEDIUM-REQ1"),
        "{}",
        notes[0].note
    );
    let now = Instant::now();
    let w = Written {
        uid: Some("u1".into()),
        generation: Some(1),
        status: first.clone(),
        at: now,
    };
    // Freshly created: the store shows no object yet, or the one without our status.
    for stored in [None, Some(object("u1", None))] {
        let (generation, previous) = last_written(stored.as_ref(), Some(&w), now).unwrap();
        let want = status_of(&e, previous, generation);
        assert_eq!(previous, Some(&want), "written twice");
    }
    // Deleted (long unseen) or recreated by someone else: the store is what counts.
    assert_eq!(last_written(None, Some(&w), now + STORE_LAG), None);
    let other = object("u2", None);
    assert_eq!(
        last_written(Some(&other), Some(&w), now),
        Some((Some(1), None))
    );
    // Nothing changed: nothing told.
    assert!(notices(&e, Some(&first), &first).is_empty());
}

#[test]
fn a_lifted_refusal_is_told_as_a_normal_event() {
    let mut c = high_enforced();
    let refused = status_of(
        &evaluate_all(&c.stores(), &settings())["shop"],
        None,
        Some(1),
    );
    c.apply(programmed_waypoint());
    let e = &evaluate_all(&c.stores(), &settings())["shop"];
    let lifted = status_of(e, Some(&refused), Some(1));
    let notes = notices(e, Some(&refused), &lifted);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        (notes[0].warning, notes[0].reason),
        (false, "TrafficRefusalLifted")
    );
    assert!(notes[0].note.contains("echo"), "{}", notes[0].note);
}

#[test]
fn a_mistyped_enforcement_label_is_a_warning_once() {
    // With or without a profile label.
    for labels in [
        vec![
            (RISK_PROFILE_LABEL, "high"),
            (RISK_ENFORCEMENT_LABEL, "Enforce"),
        ],
        vec![(RISK_ENFORCEMENT_LABEL, "Enforce")],
    ] {
        let e = &evaluate_all(&cluster(&labels).stores(), &settings())["shop"];
        assert!(e.refused.is_empty());
        let err = e.label_error.as_ref().unwrap();
        assert_eq!(
            (err.label, err.value.as_str()),
            (RISK_ENFORCEMENT_LABEL, "Enforce")
        );
        let want = status_of(e, None, Some(1));
        let notes = notices(e, None, &want);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].warning, notes[0].reason), (true, INVALID_LABEL));
        assert!(
            notes[0]
                .note
                .contains("ambit.dev/risk-enforcement=\"Enforce\"")
                && notes[0].note.contains("report, enforce"),
            "{}",
            notes[0].note
        );
        assert!(notices(e, Some(&want), &want).is_empty(), "told once");
    }
    // A good enforcement label alone asks for nothing.
    let c = cluster(&[(RISK_ENFORCEMENT_LABEL, "enforce")]);
    assert!(evaluate_all(&c.stores(), &settings()).is_empty());
}

#[test]
fn an_unset_tunnel_mode_is_reported_unknown_not_strict() {
    let c = cluster(&[(RISK_PROFILE_LABEL, "low")]);
    let unset = crate::config::Config::from_lookup(|_| None).unwrap();
    let e = &evaluate_all(&c.stores(), &unset.mesh_settings())["shop"];
    let v = condition(e, "LOW-REQ2");
    assert_eq!((v.ok, v.reason), (false, "ModeUnknown"), "{v:?}");
    assert!(v.message.contains("tunnel mode unknown"), "{}", v.message);
}

#[test]
fn a_pass_evaluates_only_the_namespaces_whose_objects_changed() {
    let mut c = high_enforced();
    c.apply::<Namespace>(obj(
        json!({"metadata": {"name": "bank", "labels": {RISK_PROFILE_LABEL: "low"}}}),
    ));
    let queue = ChangeQueue::default();
    let mut kept = Evaluations::default();
    let pass = |c: &Cluster, kept: &mut Evaluations| {
        kept.update(&c.stores(), &settings(), queue.take_touched())
    };
    let updated = |evaluated, changed| Updated { evaluated, changed };

    assert_eq!(
        pass(&c, &mut kept),
        updated(2, true),
        "the first pass evaluates all"
    );
    assert_eq!(pass(&c, &mut kept), updated(0, false), "nothing changed");
    // Objects of a namespace without a profile, or that no evaluation reads.
    queue.push(c.apply(pod("other", "x-1", "x", "n1", "10.0.0.9")));
    queue.push(Change::EndpointSlice(("shop".into(), "echo-abc".into())));
    assert_eq!(pass(&c, &mut kept), updated(0, false));

    queue.push(c.apply(programmed_waypoint()));
    assert_eq!(pass(&c, &mut kept), updated(1, true), "shop alone");
    let all = evaluate_all(&c.stores(), &settings());
    assert!(all["shop"].refused.is_empty());
    assert_eq!(kept.get(), &all, "as if all were evaluated");

    // The label goes: so does the evaluation, with none made.
    queue.push(c.apply(shop(&[])));
    assert_eq!(pass(&c, &mut kept), updated(0, true));
    assert_eq!(kept.get().keys().collect::<Vec<_>>(), ["bank"]);

    // A relist may have changed anything.
    queue.push(Change::All);
    assert_eq!(pass(&c, &mut kept), updated(1, false));
}

#[test]
fn a_refusal_change_updates_its_namespace_as_a_rebuild_would() {
    let c = high_enforced();
    let stores = c.stores();
    let mut index = Index::new(stores.clone(), "cluster.local");
    let mut previous = index.update([Change::All]).unwrap();
    let rebuilt = || {
        Index::new(stores.clone(), "cluster.local")
            .update([Change::All])
            .unwrap()
            .resources
    };
    let refused = evaluate_all(&stores, &settings());
    for evaluations in [refused, BTreeMap::new()] {
        let next = shop_refusals(&stores, &mut index, &evaluations);
        assert_eq!(next.resources, rebuilt());
        let changed = next.changed_since(&previous);
        assert_eq!(
            changed.iter().map(|n| &**n).collect::<Vec<_>>(),
            [
                &*format!("authorizationpolicy/shop/{DENY_POLICY}"),
                "workload/uid-echo-1"
            ]
        );
        previous = next;
    }
}
