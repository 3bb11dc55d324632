//! Route status: for each Service parent, an entry under ambit's controller name with the
//! `Accepted` and `ResolvedRefs` conditions (Gateway API `RouteParentStatus`). Only the Lease
//! holder writes, and only routes whose entries changed. `status.parents` is an atomic list that
//! other controllers write too (for their Gateway parents): their entries are kept as read, and
//! the write carries the route's resourceVersion, so a concurrent write by anyone makes ours
//! fail (409) and the next pass redo it from the fresh object rather than drop theirs.

use crate::index::ClusterView;
use crate::route::{ACCEPTED, RESOLVED_REFS, Resolution, resolve_grpc, resolve_http};
use crate::route_crd::{GRPCRoute, HTTPRoute, RouteParentStatus, RouteStatus};
use crate::waypoint::CONTROLLER_NAME;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// The status parents a route should have, when they differ from `current`: other controllers'
/// entries as they are, then ours, one per Service parent of `resolution` (none when the route
/// has no Service parent any more). Transition times are kept for conditions whose status did
/// not change.
pub fn parents(
    current: Option<&RouteStatus>,
    resolution: &Resolution,
    generation: Option<i64>,
) -> Option<Vec<RouteParentStatus>> {
    let current = current.map(|s| s.parents.as_slice()).unwrap_or_default();
    let (ours, others): (Vec<&RouteParentStatus>, Vec<&RouteParentStatus>) = current
        .iter()
        .partition(|p| p.controller_name == CONTROLLER_NAME);
    let wanted: Vec<RouteParentStatus> = resolution
        .parents
        .iter()
        .map(|p| {
            let previous = ours.iter().find(|o| o.parent_ref == p.parent_ref);
            let condition = |type_: &str, verdict: &crate::route::Verdict| {
                let before = previous.and_then(|o| o.conditions.iter().find(|c| c.type_ == type_));
                verdict.condition(type_, generation, before)
            };
            RouteParentStatus {
                parent_ref: p.parent_ref.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![
                    condition(ACCEPTED, &p.accepted),
                    condition(RESOLVED_REFS, &resolution.resolved_refs),
                ],
            }
        })
        .collect();
    if wanted.iter().eq(ours.iter().copied()) {
        return None;
    }
    Some(others.into_iter().cloned().chain(wanted).collect())
}

/// Writes route status while this replica holds the Lease; runs until the snapshot or leader
/// channel closes.
pub async fn run(ctx: ClusterView) {
    crate::policy::paced(ctx.leader, ctx.snapshots, |_| {
        let (client, stores) = (ctx.client.clone(), ctx.stores.clone());
        async move {
            for r in stores.http_routes.state() {
                let resolution = resolve_http(&r, stores.lookup());
                write::<HTTPRoute>(&client, &r.metadata, r.status.as_ref(), &resolution).await;
            }
            for r in stores.grpc_routes.state() {
                let resolution = resolve_grpc(&r, stores.lookup());
                write::<GRPCRoute>(&client, &r.metadata, r.status.as_ref(), &resolution).await;
            }
        }
    })
    .await;
}

async fn write<K>(
    client: &kube::Client,
    meta: &ObjectMeta,
    status: Option<&RouteStatus>,
    resolution: &Resolution,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let Some(parents) = parents(status, resolution, meta.generation) else {
        return;
    };
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return;
    };
    let body = json!({
        "metadata": {"resourceVersion": meta.resource_version},
        "status": {"parents": parents},
    });
    let params = PatchParams {
        field_manager: Some(crate::waypoint::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let kind = K::kind(&());
    match Api::<K>::namespaced(client.clone(), ns)
        .patch_status(name, &params, &Patch::Merge(body))
        .await
    {
        Ok(updated) => {
            tracing::info!(kind = %kind, namespace = ns, route = name, version = ?updated.resource_version(), "route status")
        }
        // Someone wrote the route since we read it: the next pass reads it again.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(kind = %kind, namespace = ns, route = name, "route status: conflict, retrying on the next pass")
        }
        Err(e) => {
            tracing::warn!(kind = %kind, namespace = ns, route = name, error = %e, "writing route status")
        }
    }
}

#[cfg(test)]
#[path = "route_status_tests.rs"]
mod tests;
