//! The agent's reconcile decisions, as a pure function of what it sees: the pod records, the
//! tunnel's enrollment, which pods the current tunnel instance was handed, which recorded
//! netns are gone, and the addresses found in the node's netns. No I/O here; the agent
//! carries the actions out (see [`crate::agent`]).

use crate::state::PodRecord;
use ambit_handoff::Enrollment;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// What the tunnel told about enrollment this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The tunnel has the controller's view: decide from it.
    Synced(Enrollment),
    /// The tunnel answered but has no view yet: decide nothing, release nothing.
    NotSynced,
    /// The tunnel is up but gave no enrollment (an older tunnel, or an error): decide nothing,
    /// release nothing, but hand captured pods to a new tunnel instance (it lost their fds).
    Unavailable,
    /// No tunnel: nothing can be handed over.
    NoTunnel,
}

/// Why a pod is handed to the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// Captured already, not yet handed to this tunnel instance (it restarted, or a CNI ADD
    /// handed it in another process): it fails closed until then, so it goes first.
    Replay,
    /// Recorded, not captured, and the enrollment now says capture.
    Enrolled,
    /// Enrolled, never recorded (running before ambit was installed); found by its address.
    Found,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The pod's netns is gone: drop the record (and tell the tunnel if it was captured).
    Forget(PodRecord),
    /// Hand the pod to the tunnel; rules in if it answers `capture`. With [`Why::Found`] the
    /// record is new and written first.
    Capture(PodRecord, Why),
    /// Rules out, then the tunnel lets go.
    Release(PodRecord),
}

impl Action {
    fn rank(&self) -> (u8, Option<Why>) {
        match self {
            Self::Forget(_) => (0, None),
            Self::Capture(_, why) => (1, Some(*why)),
            Self::Release(_) => (2, None),
        }
    }

    pub fn record(&self) -> &PodRecord {
        match self {
            Self::Forget(r) | Self::Capture(r, _) | Self::Release(r) => r,
        }
    }
}

/// Everything one reconcile looks at.
#[derive(Debug, Default)]
pub struct Facts {
    pub records: Vec<PodRecord>,
    /// Uids whose recorded netns no longer exists.
    pub gone: HashSet<String>,
    /// Uids the current tunnel instance answered `capture` for.
    pub handed: HashSet<String>,
    /// Addresses seen in the node's netns (several netns for one address: ambiguous).
    pub netns_by_ip: HashMap<IpAddr, Vec<PathBuf>>,
}

/// The enrolled pods of the view that have no record but have addresses: the agent scans
/// the node's netns only when this is not empty.
/// The addresses the node's probes are rewritten for ([`crate::rules::set_probe_targets`]):
/// the IPv4 addresses the view gives the pods recorded as captured. A pod not captured keeps
/// seeing the node's own address; so does any pod of another node.
pub fn probe_targets(records: &[PodRecord], enrollment: &Enrollment) -> BTreeSet<Ipv4Addr> {
    let captured: HashSet<&str> = records
        .iter()
        .filter(|r| r.captured)
        .map(|r| r.uid.as_str())
        .collect();
    enrollment
        .pods
        .iter()
        .filter(|p| captured.contains(p.uid.as_str()))
        .flat_map(|p| &p.ips)
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

pub fn unrecorded<'e>(
    records: &[PodRecord],
    enrollment: &'e Enrollment,
) -> Vec<&'e ambit_handoff::EnrolledPod> {
    let known: HashSet<&str> = records.iter().map(|r| r.uid.as_str()).collect();
    enrollment
        .pods
        .iter()
        .filter(|p| !p.ips.is_empty() && !known.contains(p.uid.as_str()))
        .collect()
}

/// The actions for this tick, most urgent first, at most `limit` of them (the rest come on
/// later ticks).
pub fn plan(view: &View, facts: &Facts, limit: usize) -> Vec<Action> {
    let mut actions = Vec::new();
    for r in &facts.records {
        if facts.gone.contains(&r.uid) {
            actions.push(Action::Forget(r.clone()));
            continue;
        }
        let unhanded_capture = r.captured && !facts.handed.contains(&r.uid);
        match view {
            View::Synced(e) => {
                let should = e.captures(&r.uid, &r.namespace);
                if should && !r.captured {
                    actions.push(Action::Capture(r.clone(), Why::Enrolled));
                } else if should && unhanded_capture {
                    actions.push(Action::Capture(r.clone(), Why::Replay));
                } else if !should && r.captured {
                    actions.push(Action::Release(r.clone()));
                }
            }
            View::Unavailable if unhanded_capture => {
                actions.push(Action::Capture(r.clone(), Why::Replay));
            }
            View::Unavailable | View::NotSynced | View::NoTunnel => {}
        }
    }
    if let View::Synced(e) = view {
        let recorded: HashSet<&PathBuf> = facts.records.iter().map(|r| &r.netns).collect();
        for pod in unrecorded(&facts.records, e) {
            if let Some(netns) = find_netns(&pod.ips, &facts.netns_by_ip)
                && !recorded.contains(&netns)
            {
                actions.push(Action::Capture(
                    PodRecord {
                        uid: pod.uid.clone(),
                        name: pod.name.clone(),
                        namespace: pod.namespace.clone(),
                        netns,
                        captured: false,
                        time_wait_reuse: false,
                    },
                    Why::Found,
                ));
            }
        }
    }
    actions.sort_by(|a, b| {
        a.rank()
            .cmp(&b.rank())
            .then_with(|| a.record().uid.cmp(&b.record().uid))
    });
    actions.truncate(limit);
    actions
}

/// The one netns holding any of `ips`; none if no netns or several hold them.
fn find_netns(ips: &[IpAddr], netns_by_ip: &HashMap<IpAddr, Vec<PathBuf>>) -> Option<PathBuf> {
    let found: HashSet<&PathBuf> = ips
        .iter()
        .filter_map(|ip| netns_by_ip.get(ip))
        .flatten()
        .collect();
    let mut found = found.into_iter();
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ambit_handoff::EnrolledPod;

    #[test]
    fn probe_targets_are_the_captured_pods_ipv4_addresses() {
        let pod = |uid: &str, ips: &[&str]| EnrolledPod {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        };
        let view = Enrollment {
            synced: true,
            namespaces: vec!["demo".into()],
            pods: vec![
                pod("a", &["10.1.0.2", "fd00::2"]),
                pod("b", &["10.1.0.3"]),
                pod("c", &[]),
            ],
            opted_out: vec![],
        };
        let records = [
            rec("a", "demo", true),
            rec("b", "demo", false),
            rec("c", "demo", true),
        ];
        let targets: Vec<String> = probe_targets(&records, &view)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            targets,
            ["10.1.0.2"],
            "b is not captured, c has no address yet"
        );
    }

    fn rec(uid: &str, namespace: &str, captured: bool) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: namespace.into(),
            netns: format!("/run/netns/{uid}").into(),
            captured,
            time_wait_reuse: false,
        }
    }

    fn enrolled(uid: &str, ips: &[&str]) -> EnrolledPod {
        EnrolledPod {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "demo".into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    fn synced(namespaces: &[&str], pods: Vec<EnrolledPod>, opted_out: &[&str]) -> View {
        View::Synced(Enrollment {
            synced: true,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            pods,
            opted_out: opted_out.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn set(uids: &[&str]) -> HashSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Forget(r) => format!("forget {}", r.uid),
                Action::Capture(r, why) => format!("capture {} {why:?}", r.uid),
                Action::Release(r) => format!("release {}", r.uid),
            })
            .collect()
    }

    #[test]
    fn enrolling_a_namespace_captures_its_recorded_pods_and_only_those() {
        let records = vec![
            rec("a", "demo", false),
            rec("b", "other", false),
            rec("c", "demo", true),
        ];
        let handed = set(&["c"]);
        let facts = Facts {
            records: records.clone(),
            handed: handed.clone(),
            ..Facts::default()
        };
        let actions = plan(&synced(&["demo"], vec![], &[]), &facts, 100);
        assert_eq!(summary(&actions), ["capture a Enrolled"]);
    }

    #[test]
    fn unenrolling_and_opting_out_release() {
        let records = vec![rec("a", "demo", true), rec("b", "demo", true)];
        let handed = set(&["a", "b"]);
        let facts = Facts {
            records: records.clone(),
            handed: handed.clone(),
            ..Facts::default()
        };
        let opted = plan(&synced(&["demo"], vec![], &["b"]), &facts, 100);
        assert_eq!(summary(&opted), ["release b"]);
        let unenrolled = plan(&synced(&[], vec![], &[]), &facts, 100);
        assert_eq!(summary(&unenrolled), ["release a", "release b"]);
    }

    #[test]
    fn a_pod_listed_as_enrolled_is_captured_whatever_its_namespace_label() {
        let records = vec![rec("a", "demo", false)];
        let facts = Facts {
            records: records.clone(),
            ..Facts::default()
        };
        let actions = plan(&synced(&[], vec![enrolled("a", &[])], &[]), &facts, 100);
        assert_eq!(summary(&actions), ["capture a Enrolled"]);
    }

    #[test]
    fn not_synced_decides_nothing_and_releases_nothing() {
        let records = vec![rec("a", "demo", true), rec("b", "demo", false)];
        let facts = Facts {
            records: records.clone(),
            ..Facts::default()
        };
        assert!(plan(&View::NotSynced, &facts, 100).is_empty());
        assert!(plan(&View::NoTunnel, &facts, 100).is_empty());
        // An older tunnel without enrollment still gets captured pods replayed.
        assert_eq!(
            summary(&plan(&View::Unavailable, &facts, 100)),
            ["capture a Replay"]
        );
    }

    #[test]
    fn a_new_tunnel_instance_gets_captured_pods_again_first() {
        let records = vec![
            rec("z", "demo", true),
            rec("a", "demo", false),
            rec("g", "demo", true),
        ];
        let gone = set(&["g"]);
        let facts = Facts {
            records: records.clone(),
            gone: gone.clone(),
            ..Facts::default()
        };
        let actions = plan(&synced(&["demo"], vec![], &[]), &facts, 100);
        assert_eq!(
            summary(&actions),
            ["forget g", "capture z Replay", "capture a Enrolled"]
        );
        // Bounded work per tick: the most urgent first.
        assert_eq!(
            summary(&plan(&synced(&["demo"], vec![], &[]), &facts, 2)),
            ["forget g", "capture z Replay"]
        );
    }

    #[test]
    fn gone_netns_are_forgotten_even_without_a_view() {
        let records = vec![rec("a", "demo", true)];
        let gone = set(&["a"]);
        let facts = Facts {
            records: records.clone(),
            gone: gone.clone(),
            ..Facts::default()
        };
        assert_eq!(summary(&plan(&View::NoTunnel, &facts, 100)), ["forget a"]);
    }

    #[test]
    fn unrecorded_enrolled_pods_are_found_by_address_when_unambiguous() {
        let records = vec![rec("known", "demo", true)];
        let handed = set(&["known"]);
        let mut by_ip: HashMap<IpAddr, Vec<PathBuf>> = HashMap::new();
        by_ip.insert("10.0.0.5".parse().unwrap(), vec!["/run/netns/x".into()]);
        by_ip.insert(
            "10.0.0.6".parse().unwrap(),
            vec!["/run/netns/y1".into(), "/run/netns/y2".into()],
        );
        by_ip.insert("10.0.0.7".parse().unwrap(), vec!["/run/netns/known".into()]);
        let facts = Facts {
            records: records.clone(),
            handed: handed.clone(),
            netns_by_ip: by_ip.clone(),
            ..Facts::default()
        };
        let view = synced(
            &["demo"],
            vec![
                enrolled("known", &["10.0.0.9"]),
                enrolled("new", &["10.0.0.5", "fd00::5"]),
                enrolled("twice", &["10.0.0.6"]),
                enrolled("nowhere", &["10.0.0.8"]),
                enrolled("no-ip-yet", &[]),
                enrolled("in-a-recorded-netns", &["10.0.0.7"]),
            ],
            &[],
        );
        let View::Synced(e) = &view else {
            unreachable!()
        };
        let wanted: Vec<&str> = unrecorded(&records, e)
            .iter()
            .map(|p| p.uid.as_str())
            .collect();
        assert_eq!(wanted, ["new", "twice", "nowhere", "in-a-recorded-netns"]);
        let actions = plan(&view, &facts, 100);
        assert_eq!(summary(&actions), ["capture new Found"]);
        let found = actions[0].record();
        assert_eq!(found.netns, PathBuf::from("/run/netns/x"));
        assert_eq!(found.namespace, "demo");
        assert!(!found.captured);
        // Not synced: nobody is looked for.
        assert!(plan(&View::NotSynced, &facts, 100).is_empty());
    }
}
