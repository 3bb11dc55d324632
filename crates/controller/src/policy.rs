//! `AuthorizationPolicy`: into the policy model, into the config stream (fail-safe when it does
//! not validate, so that one tenant's broken policy never makes a data plane refuse everyone's
//! config), and its `Enforced` status condition, which says what enforces it, or why nothing
//! enforces it as written. Only the Lease holder writes status.

use crate::crd::AuthorizationPolicy;
use crate::index::Snapshot;
use crate::status::{self, Verdict};
use ambit_policy::{Action, Condition as ClaimCondition, HeaderMatch, Policy, PolicyScope, Rule};
use ambit_proto::config::v1 as pb;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The condition type the controller writes.
pub const ENFORCED: &str = "Enforced";
/// Its reason (and the Event's) when a value cannot be evaluated.
pub const INVALID: &str = "Invalid";
/// At most one status pass this often: a busy cluster publishes many snapshots a second.
const PACE: Duration = Duration::from_secs(1);
/// A pass at least this often: edits that change no config (a policy in a namespace not
/// enrolled, one broken value replaced by another, a route's missing parent renamed to another
/// missing one) show up no other way, and a write that lost a race is retried.
const RESYNC: Duration = Duration::from_secs(10);

/// The policy as the resource says it.
pub fn model(p: &AuthorizationPolicy) -> Policy {
    let spec = &p.spec;
    Policy {
        name: p.name_any(),
        namespace: p.namespace().unwrap_or_default(),
        action: match spec.action {
            crate::crd::PolicyAction::Allow => Action::Allow,
            crate::crd::PolicyAction::Deny => Action::Deny,
            crate::crd::PolicyAction::Audit => Action::Audit,
            crate::crd::PolicyAction::Custom => Action::Custom,
        },
        provider: spec.provider.as_ref().map(|p| p.name.clone()),
        selector: spec.selector.as_ref().map(|s| PolicyScope {
            match_labels: s.match_labels.clone(),
        }),
        rules: spec
            .rules
            .iter()
            .map(|r| Rule {
                principals: r.principals.clone(),
                namespaces: r.namespaces.clone(),
                ip_blocks: r.ip_blocks.iter().map(|b| b.as_str().into()).collect(),
                ports: r.ports.clone(),
                methods: r.methods.clone(),
                paths: r.paths.clone(),
                hosts: r.hosts.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| HeaderMatch {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                request_principals: r.request_principals.clone(),
                not_request_principals: r.not_request_principals.clone(),
                when: r
                    .when
                    .iter()
                    .map(|c| ClaimCondition {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What the config stream carries for `p`: the policy as written when it validates, otherwise
/// its fail-safe form (`Policy::fail_safe`: decided as the data plane would decide the broken
/// one, but accepted by it).
pub fn config(p: &AuthorizationPolicy) -> pb::AuthorizationPolicy {
    let policy = model(p);
    let policy = match policy.validate() {
        Ok(()) => policy,
        Err(_) => policy.fail_safe(),
    };
    pb::AuthorizationPolicy {
        action: match policy.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
        .into(),
        provider: policy.provider.unwrap_or_default(),
        match_labels: policy
            .selector
            .map(|s| s.match_labels.into_iter().collect())
            .unwrap_or_default(),
        rules: policy
            .rules
            .into_iter()
            .map(|r| pb::Rule {
                principals: r.principals,
                namespaces: r.namespaces,
                ip_blocks: r.ip_blocks.iter().map(|b| b.as_str().to_owned()).collect(),
                ports: r.ports.iter().map(|p| u32::from(*p)).collect(),
                methods: r.methods,
                paths: r.paths,
                hosts: r.hosts,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| pb::HeaderMatch {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                request_principals: r.request_principals,
                not_request_principals: r.not_request_principals,
                when: r
                    .when
                    .into_iter()
                    .map(|c| pb::Condition {
                        key: c.key,
                        values: c.values,
                        not_values: c.not_values,
                    })
                    .collect(),
            })
            .collect(),
        name: policy.name,
        namespace: policy.namespace,
    }
}

/// What a status pass needs to know of the mesh, read from a snapshot.
#[derive(Debug, Default)]
pub struct MeshFacts<'a> {
    pub enrolled: BTreeSet<&'a str>,
    /// Mesh workloads (not opted out) by namespace.
    pub workloads: HashMap<&'a str, Vec<&'a pb::Workload>>,
    /// `(namespace, service account)` pairs that have a waypoint.
    pub waypoints: BTreeSet<(&'a str, &'a str)>,
    /// The external authorization providers the mesh declares.
    pub providers: BTreeSet<&'a str>,
}

impl<'a> MeshFacts<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        let mut facts = Self::default();
        for (_, entry) in snapshot.resources.iter() {
            match entry.kind() {
                Some(pb::resource::Kind::Namespace(n)) => {
                    facts.enrolled.insert(&n.name);
                }
                Some(pb::resource::Kind::Workload(w)) if !w.opted_out => {
                    facts.workloads.entry(&w.namespace).or_default().push(w);
                }
                Some(pb::resource::Kind::Waypoint(w)) => {
                    facts
                        .waypoints
                        .insert((&w.namespace, &w.for_service_account));
                }
                Some(pb::resource::Kind::ExtAuthzProvider(p)) => {
                    facts.providers.insert(&p.name);
                }
                _ => {}
            }
        }
        facts
    }
}

/// The `Enforced` condition a policy should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    pub enforced: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Decides `p`'s `Enforced` condition: `Invalid` (a value cannot be evaluated), then
/// `NamespaceNotEnrolled`, then `WaypointRequired` (L7 rules, and selected pods whose service
/// account has no waypoint), else enforced.
pub fn decide(p: &AuthorizationPolicy, facts: &MeshFacts<'_>) -> Enforced {
    let policy = model(p);
    let ns = policy.namespace.as_str();
    if let Err(e) = policy.validate() {
        let effect = match policy.action {
            Action::Deny => "a field holding a bad value matches anything (denies more)",
            Action::Custom => {
                "a field holding a bad value matches anything (asks more); without a provider it denies where it matches"
            }
            Action::Allow | Action::Audit => {
                "a bad value matches nothing, and a rule left without values is dropped"
            }
        };
        return Enforced {
            enforced: false,
            reason: INVALID,
            message: format!("{e}. Until it is fixed the policy is enforced fail-safe: {effect}"),
        };
    }
    if !facts.enrolled.contains(ns) {
        return Enforced {
            enforced: false,
            reason: "NamespaceNotEnrolled",
            message: format!(
                "namespace {ns} is not enrolled, so nothing enforces this policy (kubectl label namespace {ns} ambit.dev/dataplane-mode=ambient)"
            ),
        };
    }
    if let Some(provider) = &policy.provider
        && !facts.providers.contains(provider.as_str())
    {
        return Enforced {
            enforced: false,
            reason: "ProviderNotFound",
            message: format!(
                "no external authorization provider {provider} is declared (Helm value extAuthz.providers): waypoints deny the requests this policy matches"
            ),
        };
    }
    let custom = policy.action == Action::Custom;
    if !policy.has_l7_rules() && !custom {
        return Enforced {
            enforced: true,
            reason: "Enforced",
            message: "by the node tunnels of the selected pods, and by the waypoints of their service accounts that have one".into(),
        };
    }
    let selects = |w: &pb::Workload| {
        policy.selector.as_ref().is_none_or(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
        })
    };
    let without_waypoint: BTreeSet<&str> = facts
        .workloads
        .get(ns)
        .into_iter()
        .flatten()
        .filter(|w| selects(w))
        .map(|w| w.service_account.as_str())
        .filter(|sa| !facts.waypoints.contains(&(ns, sa)))
        .collect();
    if without_waypoint.is_empty() {
        return Enforced {
            enforced: true,
            reason: "Enforced",
            message: if custom {
                "by the waypoints of the selected pods' service accounts, asking the provider"
            } else {
                "L7 rules by the waypoints of the selected pods' service accounts"
            }
            .into(),
        };
    }
    let accounts: Vec<&str> = without_waypoint.into_iter().collect();
    if custom {
        return Enforced {
            enforced: false,
            reason: "WaypointRequired",
            message: format!(
                "a CUSTOM policy is checked by waypoints only, and the selected pods' service accounts {} have none: kubectl ambit waypoint apply -n {ns} --service-account {}. Meanwhile node tunnels deny every connection the policy may match",
                accounts.join(", "),
                accounts[0],
            ),
        };
    }
    Enforced {
        enforced: false,
        reason: "WaypointRequired",
        message: format!(
            "L7 rules (methods, paths, hosts, headers) need a waypoint, and the selected pods' service accounts {} have none: kubectl ambit waypoint apply -n {ns} --service-account {}. Meanwhile node tunnels enforce the policy at L4: an ALLOW rule with L7 fields matches nothing, a DENY rule matches on its L4 fields alone",
            accounts.join(", "),
            accounts[0],
        ),
    }
}

/// Inputs of the status writer.
#[derive(Clone)]
pub struct StatusContext {
    pub client: kube::Client,
    /// Warns on the policy (an Event) when it turns `Invalid`.
    pub events: status::Events,
    pub leader: watch::Receiver<bool>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub policies: Store<AuthorizationPolicy>,
}

impl std::fmt::Debug for StatusContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusContext").finish_non_exhaustive()
    }
}

/// Writes every policy's `Enforced` condition while this replica holds the Lease, patching
/// only the policies whose condition changed; runs until the snapshot or leader channel closes.
pub async fn run_status(ctx: StatusContext) {
    paced(ctx.leader, ctx.snapshots, |snapshot| {
        let (client, policies) = (ctx.client.clone(), ctx.policies.clone());
        let events = ctx.events.clone();
        async move { write_statuses(&client, &events, &policies, &snapshot).await }
    })
    .await;
}

/// Runs `pass` on the latest snapshot while this replica holds the Lease: after each new
/// snapshot or leadership change, at most every `PACE` and at least every `RESYNC`; returns
/// when the snapshot or leader channel closes.
pub(crate) async fn paced<F, Fut>(
    leader: watch::Receiver<bool>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut pass: F,
) where
    F: FnMut(Arc<Snapshot>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    every_snapshot(leader, snapshots, |snapshot, leading| {
        let run = leading.then(|| pass(snapshot));
        async move {
            if let Some(run) = run {
                run.await;
            }
        }
    })
    .await;
}

/// [`paced`] on every replica: `pass` is told whether this one holds the Lease.
pub(crate) async fn every_snapshot<F, Fut>(
    mut leader: watch::Receiver<bool>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut pass: F,
) where
    F: FnMut(Arc<Snapshot>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let leading = *leader.borrow_and_update();
        let snapshot = snapshots.borrow_and_update().clone();
        pass(snapshot, leading).await;
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn write_statuses(
    client: &kube::Client,
    events: &status::Events,
    policies: &Store<AuthorizationPolicy>,
    snapshot: &Snapshot,
) {
    let policies = policies.state();
    if policies.is_empty() {
        return;
    }
    let facts = MeshFacts::new(snapshot);
    for p in policies {
        let want = decide(&p, &facts);
        let previous = p
            .status
            .as_ref()
            .and_then(|s| status::find(&s.conditions, ENFORCED));
        if newly_invalid(previous, &want) {
            events
                .warn(&p.object_ref(&()), INVALID, "Validate", &want.message)
                .await;
        }
        let verdict = Verdict {
            ok: want.enforced,
            reason: want.reason,
            message: want.message,
        };
        status::apply_condition(client, &*p, previous, ENFORCED, &verdict, "policy").await;
    }
}

/// Whether `want` says `Invalid` where the condition written so far does not (or says it for
/// another reason): then the owner is also told by an Event, once, not every pass.
fn newly_invalid(previous: Option<&crate::crd::Condition>, want: &Enforced) -> bool {
    want.reason == INVALID
        && previous.is_none_or(|c| c.reason != INVALID || c.message != want.message)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
