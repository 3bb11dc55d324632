//! Automatic waypoints: in an enrolled namespace labelled `ambit.dev/waypoint=auto`, each
//! service account that needs L7 gets the waypoint Gateway `kubectl ambit waypoint apply` would
//! write (`waypoint-<sa>`), and loses it when it no longer needs one. A service account needs
//! L7 when a Service its pods serve is the parent of an HTTPRoute or GRPCRoute, or the target of
//! a RateLimitPolicy, or when an AuthorizationPolicy with L7 rules (or CUSTOM) or a
//! RequestAuthentication selects its pods.
//!
//! Gateways made here carry the label `ambit.dev/auto-waypoint=true`; only those are ever
//! deleted, and only the very object seen (uid and resourceVersion preconditions). They are
//! created, never applied, so a Gateway of the same name is never overwritten. An explicit
//! waypoint for the same account wins: the automatic one goes. Only the Lease holder acts.

use crate::crd::{AuthorizationPolicy, Gateway, PolicyAction};
use crate::index::{ClusterView, Snapshot, Stores};
use crate::waypoint::{FIELD_MANAGER, WAYPOINT_CLASS, waypoint_for};
use ambit_k8s::waypoint::{NAME_PREFIX, is_dns_label};
use ambit_proto::config::v1 as pb;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The namespace label that asks for automatic waypoints, and its value.
pub const WAYPOINT_LABEL: &str = "ambit.dev/waypoint";
pub const WAYPOINT_AUTO: &str = "auto";
/// The label on the Gateways made here: the only ones this module ever deletes.
pub const AUTO_GATEWAY_LABEL: &str = "ambit.dev/auto-waypoint";

/// `(namespace, service account)`.
pub type Account = (String, String);

/// What a pass does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Accounts to give a Gateway, with its name.
    pub create: Vec<(Account, String)>,
    /// Automatic Gateways to delete: `(namespace, name, uid, resourceVersion)`.
    pub delete: Vec<(String, String, Option<String>, Option<String>)>,
}

/// The accounts of auto namespaces that need L7, from the mesh as the snapshot has it (only
/// enrolled namespaces' workloads are there) and the policies in `stores`.
pub fn wanted(snapshot: &Snapshot, stores: &Stores) -> BTreeSet<Account> {
    let auto: BTreeSet<String> = stores
        .namespaces
        .state()
        .iter()
        .filter(|ns| ns.labels().get(WAYPOINT_LABEL).map(String::as_str) == Some(WAYPOINT_AUTO))
        .map(|ns| ns.name_any())
        .collect();
    if auto.is_empty() {
        return BTreeSet::new();
    }
    let workloads: Vec<&pb::Workload> = snapshot
        .of_kind("workload")
        .filter_map(|(_, e)| match e.kind() {
            // An opted-out pod's traffic never goes through a waypoint.
            Some(pb::resource::Kind::Workload(w))
                if auto.contains(&w.namespace) && !w.opted_out =>
            {
                Some(w)
            }
            _ => None,
        })
        .collect();
    // Services (`ns/name`) whose accounts need L7: route parents and rate limit targets.
    let mut services: BTreeSet<String> = BTreeSet::new();
    // Selections `(namespace, labels)` whose accounts need L7: policies and JWT rules.
    let mut selections: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for e in snapshot.resources.values() {
        match e.kind() {
            Some(pb::resource::Kind::Route(r)) => services.extend(
                r.parents
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name)),
            ),
            Some(pb::resource::Kind::RateLimit(l)) if l.target_kind == "Service" => {
                services.insert(format!("{}/{}", l.namespace, l.target_name));
            }
            Some(pb::resource::Kind::RequestAuthentication(r)) => {
                selections.push((r.namespace.clone(), r.match_labels.clone()));
            }
            _ => {}
        }
    }
    for p in stores.policies.state() {
        if needs_l7(&p) {
            let labels = p
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            selections.push((p.namespace().unwrap_or_default(), labels));
        }
    }
    workloads
        .into_iter()
        .filter(|w| {
            w.services.keys().any(|s| services.contains(s))
                || selections.iter().any(|(ns, labels)| {
                    ns == &w.namespace && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                })
        })
        .map(|w| (w.namespace.clone(), w.service_account.clone()))
        .collect()
}

/// Whether only a waypoint can enforce `p`.
fn needs_l7(p: &AuthorizationPolicy) -> bool {
    p.spec.action == PolicyAction::Custom || crate::policy::model(p).has_l7_rules()
}

fn is_auto(gw: &Gateway) -> bool {
    gw.labels().get(AUTO_GATEWAY_LABEL).map(String::as_str) == Some("true")
}

/// What to create and delete so that exactly the `wanted` accounts without an explicit
/// waypoint have an automatic one.
pub fn plan(wanted: &BTreeSet<Account>, gateways: &[Arc<Gateway>]) -> Plan {
    let waypoints: Vec<(&Gateway, Account)> = gateways
        .iter()
        .filter(|gw| gw.spec.gateway_class_name == WAYPOINT_CLASS)
        .filter_map(|gw| {
            let sa = waypoint_for(gw).ok()?;
            Some((&**gw, (gw.namespace().unwrap_or_default(), sa)))
        })
        .collect();
    let explicit: BTreeSet<&Account> = waypoints
        .iter()
        .filter(|(gw, _)| !is_auto(gw))
        .map(|(_, a)| a)
        .collect();
    let automatic: BTreeSet<&Account> = waypoints
        .iter()
        .filter(|(gw, _)| is_auto(gw))
        .map(|(_, a)| a)
        .collect();
    let mut out = Plan::default();
    for account in wanted {
        if explicit.contains(account) || automatic.contains(account) {
            continue;
        }
        let name = format!("{NAME_PREFIX}{}", account.1);
        if is_dns_label(&name) {
            out.create.push((account.clone(), name));
        } else {
            tracing::warn!(namespace = %account.0, service_account = %account.1, gateway = %name, "no automatic waypoint: its name would not be a DNS label; create one with kubectl ambit waypoint apply --name");
        }
    }
    // Automatic Gateways whose account no longer needs one, or has an explicit one, or whose
    // namespace no longer asks; and any automatic Gateway that no longer reads as a waypoint.
    for gw in gateways.iter().filter(|gw| is_auto(gw)) {
        let account = waypoint_for(gw)
            .ok()
            .map(|sa| (gw.namespace().unwrap_or_default(), sa));
        let keep = account
            .as_ref()
            .is_some_and(|a| wanted.contains(a) && !explicit.contains(a));
        if !keep {
            out.delete.push((
                gw.namespace().unwrap_or_default(),
                gw.name_any(),
                gw.metadata.uid.clone(),
                gw.metadata.resource_version.clone(),
            ));
        }
    }
    out
}

/// The Gateway `kubectl ambit waypoint apply` writes, marked as automatic.
fn gateway(namespace: &str, name: &str, sa: &str) -> Result<Gateway, serde_json::Error> {
    let mut gw = ambit_k8s::waypoint::gateway(namespace, name, sa);
    gw["metadata"]["labels"] = json!({AUTO_GATEWAY_LABEL: "true"});
    serde_json::from_value(gw)
}

/// Creates and deletes automatic waypoints while this replica holds the Lease.
pub async fn run(ctx: ClusterView) {
    crate::policy::paced(ctx.leader.clone(), ctx.snapshots.clone(), |snapshot| {
        let ctx = ctx.clone();
        async move { apply(&ctx, &snapshot).await }
    })
    .await;
}

async fn apply(ctx: &ClusterView, snapshot: &Snapshot) {
    let plan = plan(&wanted(snapshot, &ctx.stores), &ctx.stores.gateways.state());
    for ((ns, sa), name) in plan.create {
        let gw = match gateway(&ns, &name, &sa) {
            Ok(gw) => gw,
            Err(e) => {
                tracing::error!(namespace = %ns, gateway = %name, error = %e, "automatic waypoint");
                continue;
            }
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match Api::<Gateway>::namespaced(ctx.client.clone(), &ns)
            .create(&pp, &gw)
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %ns, service_account = %sa, gateway = %name, "automatic waypoint created")
            }
            // Another object holds the name: never taken over.
            Err(e) => {
                tracing::warn!(namespace = %ns, service_account = %sa, gateway = %name, error = %e, "automatic waypoint not created")
            }
        }
    }
    for (ns, name, uid, resource_version) in plan.delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version,
            }),
            ..Default::default()
        };
        match Api::<Gateway>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &dp)
            .await
        {
            Ok(_) => tracing::info!(namespace = %ns, gateway = %name, "automatic waypoint deleted"),
            // Changed since it was read (or gone): the next pass looks again.
            Err(e) => {
                tracing::warn!(namespace = %ns, gateway = %name, error = %e, "automatic waypoint not deleted")
            }
        }
    }
}

#[cfg(test)]
#[path = "auto_waypoint_tests.rs"]
mod tests;
