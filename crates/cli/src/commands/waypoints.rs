//! `waypoint apply|list|delete|status`.

use super::{Error, Outcome, gateway_error, kube_error, render};
use crate::args::{Output, WaypointRef};
use crate::client::{Connection, is_status};
use crate::output;
use crate::table;
use crate::waypoint::{
    self, FIELD_MANAGER, Progress, Readiness, StatusReport, Waypoint, gateway_resource,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, TypeMeta};
use kube::runtime::{WatchStreamExt, watcher};
use std::time::Duration;

fn gateways(conn: &Connection, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(conn.client.clone(), namespace, &gateway_resource())
}

/// An object as kubectl prints it: with its type, without managed fields.
fn printable(mut obj: DynamicObject) -> DynamicObject {
    let ar = gateway_resource();
    obj.types.get_or_insert(TypeMeta {
        api_version: ar.api_version,
        kind: ar.kind,
    });
    obj.metadata.managed_fields = None;
    obj
}

/// The waypoints `api` sees (`scope` says where, for messages), sorted by namespace and name.
async fn waypoints_in(api: &Api<DynamicObject>, scope: &str) -> Result<Vec<DynamicObject>, Error> {
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(gateway_error(format!("listing Gateways in {scope}")))?;
    let mut items: Vec<DynamicObject> = list
        .items
        .into_iter()
        .filter(|o| Waypoint::from_object(o).is_waypoint())
        .collect();
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(items)
}

#[derive(Debug)]
pub(super) struct Apply<'a> {
    pub service_account: &'a str,
    pub name: Option<&'a str>,
    pub wait: bool,
    pub timeout: Duration,
    pub force_conflicts: bool,
}

pub(super) async fn apply(
    conn: &Connection,
    output: Output,
    a: &Apply<'_>,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let ns = &conn.namespace;
    let sa = a.service_account;
    let name = waypoint::waypoint_name(sa, a.name)?;
    let api = gateways(conn, ns);
    // One waypoint per service account: a second Gateway would be a second, competing proxy.
    if let Some(other) = waypoints_in(&api, &format!("namespace {ns}"))
        .await?
        .iter()
        .map(Waypoint::from_object)
        .find(|w| w.service_account.as_deref() == Some(sa) && w.name != name)
    {
        return Err(Error::AlreadyServed {
            namespace: ns.clone(),
            service_account: sa.into(),
            existing: other.name,
        });
    }
    let sas: Api<ServiceAccount> = Api::namespaced(conn.client.clone(), ns);
    if let Ok(None) = sas.get_opt(sa).await {
        note(&format!(
            "note: service account {ns}/{sa} does not exist (yet); the waypoint serves it once pods run as it"
        ));
    }
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    if a.force_conflicts {
        pp = pp.force();
    }
    let applied = api
        .patch(&name, &pp, &Patch::Apply(waypoint::gateway(ns, &name, sa)))
        .await
        .map_err(|error| {
            if is_status(&error, 409) {
                let message = match &error {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                };
                Error::Conflict {
                    namespace: ns.clone(),
                    name: name.clone(),
                    message,
                }
            } else {
                gateway_error(format!("applying Gateway {ns}/{name}"))(error)
            }
        })?;
    let applied_line = format!("waypoint {ns}/{name} applied (service account {sa})\n");
    if !a.wait {
        let text = render(output, &printable(applied.clone()), applied_line)?;
        return Ok(Outcome::ok(text));
    }
    note(&format!(
        "waypoint {ns}/{name} applied; waiting up to {}s for it to be Programmed",
        a.timeout.as_secs_f32()
    ));
    let (programmed, condition) = wait_programmed(&api, ns, &name, a.timeout, note).await?;
    let text = format!("{applied_line}waypoint {ns}/{name} ready: {condition}\n");
    Ok(Outcome::ok(render(output, &printable(programmed), text)?))
}

/// Watches the Gateway until its current Programmed condition is True; fails on the
/// controller's verdict that it is invalid, on deletion, or at the deadline.
async fn wait_programmed(
    api: &Api<DynamicObject>,
    ns: &str,
    name: &str,
    timeout: Duration,
    note: &mut dyn FnMut(&str),
) -> Result<(DynamicObject, waypoint::Condition), Error> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api.clone(), config).default_backoff();
    let mut events = std::pin::pin!(events);
    let deadline = tokio::time::sleep(timeout);
    let mut deadline = std::pin::pin!(deadline);
    let mut last: Option<waypoint::Condition> = None;
    let mut last_error: Option<String> = None;
    loop {
        let event = tokio::select! {
            _ = &mut deadline => {
                let last = match (&last, &last_error) {
                    (Some(c), _) if c.status == "Unknown" => format!("last {c}; is ambit-controller running? (kubectl ambit status)"),
                    (Some(c), _) => format!("last {c}"),
                    (None, Some(e)) => format!("watching it failed: {e}"),
                    (None, None) => "the Gateway has no Programmed condition yet: is ambit-controller running? (kubectl ambit status)".into(),
                };
                return Err(Error::Timeout { namespace: ns.into(), name: name.into(), timeout, last });
            }
            event = events.next() => event,
        };
        let obj = match event {
            None => {
                return Err(Error::WatchEnded {
                    namespace: ns.into(),
                    name: name.into(),
                });
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    note(&format!("watching Gateway {ns}/{name}: {text} (retrying)"));
                }
                last_error = Some(text);
                continue;
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                return Err(Error::DeletedWhileWaiting {
                    namespace: ns.into(),
                    name: name.into(),
                });
            }
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => o,
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
        };
        match Waypoint::from_object(&obj).progress() {
            Progress::Ready(c) => return Ok((obj, c)),
            Progress::Failed(condition) => {
                return Err(Error::Rejected {
                    namespace: ns.into(),
                    name: name.into(),
                    condition: Box::new(condition),
                });
            }
            Progress::Waiting(c) => {
                if c.is_some() && c != last {
                    if let Some(c) = &c {
                        note(&format!("waypoint {ns}/{name}: {c}"));
                    }
                    last = c;
                }
            }
        }
    }
}

pub(super) async fn list(
    conn: &Connection,
    output: Output,
    all_namespaces: bool,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let (api, scope) = if all_namespaces {
        (
            Api::all_with(conn.client.clone(), &gateway_resource()),
            "any namespace".to_string(),
        )
    } else {
        (
            gateways(conn, &conn.namespace),
            format!("namespace {}", conn.namespace),
        )
    };
    let items = waypoints_in(&api, &scope).await?;
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(Waypoint::from_object)
        .map(|w| {
            vec![
                w.namespace.clone(),
                w.name.clone(),
                w.service_account.clone().unwrap_or_else(|| "-".into()),
                w.programmed().to_owned(),
                if w.addresses.is_empty() {
                    "-".into()
                } else {
                    w.addresses.join(",")
                },
            ]
        })
        .collect();
    if rows.is_empty() && output == Output::Default {
        note(&format!("No waypoints found in {scope}."));
        return Ok(Outcome::ok(String::new()));
    }
    let text = table::render(
        &[
            "NAMESPACE",
            "NAME",
            "SERVICE ACCOUNT",
            "PROGRAMMED",
            "ADDRESS",
        ],
        &rows,
    );
    let items: Vec<DynamicObject> = items.into_iter().map(printable).collect();
    Ok(Outcome::ok(render(output, &output::list(&items), text)?))
}

/// The waypoint Gateways a reference names (a name: one; a service account: those serving it).
async fn resolve(conn: &Connection, r: &WaypointRef) -> Result<Vec<DynamicObject>, Error> {
    let ns = &conn.namespace;
    let api = gateways(conn, ns);
    match r {
        WaypointRef::Name(name) => {
            let obj = api
                .get_opt(name)
                .await
                .map_err(gateway_error(format!("reading Gateway {ns}/{name}")))?
                .ok_or_else(|| Error::NotFound(name.clone(), ns.clone()))?;
            let w = Waypoint::from_object(&obj);
            if !w.is_waypoint() {
                return Err(Error::NotAWaypoint {
                    namespace: ns.clone(),
                    name: name.clone(),
                    class: w.class,
                });
            }
            Ok(vec![obj])
        }
        WaypointRef::ServiceAccount(sa) => {
            let found: Vec<DynamicObject> = waypoints_in(&api, &format!("namespace {ns}"))
                .await?
                .into_iter()
                .filter(|o| Waypoint::from_object(o).service_account.as_deref() == Some(sa))
                .collect();
            if found.is_empty() {
                return Err(Error::NoWaypointFor(sa.clone(), ns.clone()));
            }
            Ok(found)
        }
    }
}

pub(super) async fn delete(conn: &Connection, r: &WaypointRef) -> Result<Outcome, Error> {
    let ns = &conn.namespace;
    let api = gateways(conn, ns);
    let mut text = String::new();
    for obj in resolve(conn, r).await? {
        let name = obj.metadata.name.unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            // Gone between the read and the delete: what was asked for is done.
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_error(format!("deleting Gateway {ns}/{name}"))(e)),
        }
        text.push_str(&format!("waypoint {ns}/{name} deleted\n"));
    }
    Ok(Outcome::ok(text))
}

pub(super) async fn status(
    conn: &Connection,
    output: Output,
    r: &WaypointRef,
) -> Result<Outcome, Error> {
    let ns = &conn.namespace;
    let deployments: Api<Deployment> = Api::namespaced(conn.client.clone(), ns);
    let mut text = String::new();
    let mut reports = Vec::new();
    for obj in resolve(conn, r).await? {
        let waypoint = Waypoint::from_object(&obj);
        // The controller names the waypoint's Deployment after its Gateway.
        let deployment = deployments
            .get_opt(&waypoint.name)
            .await
            .map_err(kube_error(format!(
                "reading Deployment {ns}/{}",
                waypoint.name
            )))?
            .map(|d| Readiness {
                name: waypoint.name.clone(),
                replicas: d.spec.and_then(|s| s.replicas).unwrap_or(1),
                ready_replicas: d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
            });
        let report = StatusReport {
            waypoint,
            deployment,
        };
        if !text.is_empty() {
            text.push_str("\n---\n\n");
        }
        text.push_str(&report.render());
        reports.push(report);
    }
    let text = match reports.as_slice() {
        [one] => render(output, one, text)?,
        many => render(output, &many, text)?,
    };
    Ok(Outcome::ok(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printable_objects_have_a_type_and_no_managed_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "w", "managedFields": [{"manager": "kubectl-ambit"}]},
            "spec": {},
        }))
        .unwrap();
        let v = serde_json::to_value(printable(obj)).unwrap();
        assert_eq!(v["kind"], "Gateway");
        assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
        assert!(v["metadata"].get("managedFields").is_none(), "{v}");
    }
}
