//! Each command against the apiserver. What they compute lives in [`crate::waypoint`] and
//! [`crate::health`]; here are the reads and writes, and what they print.

use crate::args::{Command, Global, Output, WaypointRef};
use crate::client::{Connection, describe, is_status};
use crate::health::{self, Check, Report};
use crate::output::{self, OutputError};
use crate::table;
use crate::waypoint::{
    self, FIELD_MANAGER, NameError, Progress, WAYPOINT_CLASS, Waypoint, gateway_resource,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, TypeMeta};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use std::time::Duration;

/// Port of the node tunnel's admin endpoint (`/config_dump`).
pub const TUNNEL_ADMIN_PORT: u16 = 15000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{what}: {}", describe(error))]
    Kube { what: String, error: kube::Error },
    #[error(
        "the Gateway API is not installed (no gateways.gateway.networking.k8s.io v1 CRD): install ambit (helm install ambit charts/ambit), which brings it"
    )]
    NoGatewayApi,
    #[error(
        "server-side apply conflict on Gateway {namespace}/{name}: {message}; another field manager owns those fields: rerun with --force-conflicts to take them over"
    )]
    Conflict {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "service account {service_account} in namespace {namespace} already has waypoint {existing}: delete it first (kubectl ambit waypoint delete -n {namespace} {existing}) or apply with --name {existing}"
    )]
    AlreadyServed {
        namespace: String,
        service_account: String,
        existing: String,
    },
    #[error("waypoint {0} not found in namespace {1}")]
    NotFound(String, String),
    #[error(
        "Gateway {namespace}/{name} is of class {class:?}, not a waypoint ({WAYPOINT_CLASS}): use kubectl for other Gateways"
    )]
    NotAWaypoint {
        namespace: String,
        name: String,
        class: String,
    },
    #[error("no waypoint serves service account {0} in namespace {1}")]
    NoWaypointFor(String, String),
    #[error("waypoint {namespace}/{name} was not programmed: {condition}")]
    Rejected {
        namespace: String,
        name: String,
        condition: Box<waypoint::Condition>,
    },
    #[error("the watch on Gateway {namespace}/{name} ended before it was Programmed")]
    WatchEnded { namespace: String, name: String },
    #[error("waypoint {namespace}/{name} was deleted while waiting for it")]
    DeletedWhileWaiting { namespace: String, name: String },
    #[error("timed out after {}s waiting for waypoint {namespace}/{name} to be Programmed: {last}", timeout.as_secs_f32())]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
        last: String,
    },
    #[error("node {0} not found (kubectl get nodes lists them)")]
    NoNode(String),
    #[error(
        "no ambit-node pod on node {node} in namespace {namespace} (label {selector}): is ambit installed there (kubectl ambit status), or does the DaemonSet skip that node?",
        selector = health::NODE_POD_SELECTOR
    )]
    NoNodePod { node: String, namespace: String },
    #[error("ambit-node pod {namespace}/{pod} on node {node} is {phase}, not Running")]
    NodePodNotRunning {
        namespace: String,
        pod: String,
        node: String,
        phase: String,
    },
    #[error(
        "fetching /config_dump from {namespace}/{pod} port {TUNNEL_ADMIN_PORT} through the apiserver's pod proxy: {}; the tunnel's admin port must listen on the pod IP for the apiserver to reach it",
        describe(error)
    )]
    Dump {
        namespace: String,
        pod: String,
        error: kube::Error,
    },
    #[error("/config_dump of {pod} is not JSON: {error}")]
    DumpNotJson {
        pod: String,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl Error {
    /// The apiserver was not reached at all (as opposed to answering with an error).
    pub fn is_transport(&self) -> bool {
        match self {
            Error::Kube { error, .. } | Error::Dump { error, .. } => {
                matches!(error, kube::Error::HyperError(_) | kube::Error::Service(_))
            }
            _ => false,
        }
    }
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |error| Error::Kube { what, error }
}

/// Gateway lists and applies: a 404 can only mean the resource type is missing (the
/// apiserver answers a bare `404 page not found` for an unknown group).
fn gateway_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |error| {
        if is_status(&error, 404) {
            Error::NoGatewayApi
        } else {
            Error::Kube { what, error }
        }
    }
}

/// What a command printed, and whether it counts as success (exit code 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            success: true,
        }
    }
}

/// Runs one command. `note` gets progress and hints meant for stderr.
pub async fn run(
    conn: &Connection,
    global: &Global,
    command: &Command,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    match command {
        Command::Help(topic) => Ok(Outcome::ok(crate::args::usage(*topic))),
        Command::WaypointApply {
            service_account,
            name,
            wait,
            timeout,
            force_conflicts,
        } => {
            let apply = Apply {
                service_account,
                name: name.as_deref(),
                wait: *wait,
                timeout: *timeout,
                force_conflicts: *force_conflicts,
            };
            waypoint_apply(conn, global.output, &apply, note).await
        }
        Command::WaypointList { all_namespaces } => {
            waypoint_list(conn, global.output, *all_namespaces, note).await
        }
        Command::WaypointDelete(r) => waypoint_delete(conn, r).await,
        Command::WaypointStatus(r) => waypoint_status(conn, global.output, r).await,
        Command::Status => status(conn, global, note).await,
        Command::ConfigDump { node } => config_dump(conn, global, node).await,
    }
}

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

fn render<T: Serialize>(output: Output, value: &T, text: String) -> Result<String, Error> {
    Ok(match output {
        Output::Default => text,
        Output::Json => output::json(value)?,
        Output::Yaml => output::yaml(value)?,
    })
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
struct Apply<'a> {
    service_account: &'a str,
    name: Option<&'a str>,
    wait: bool,
    timeout: Duration,
    force_conflicts: bool,
}

async fn waypoint_apply(
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

async fn waypoint_list(
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

async fn waypoint_delete(conn: &Connection, r: &WaypointRef) -> Result<Outcome, Error> {
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

/// `waypoint status`: the Gateway's view and its Deployment's readiness.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WaypointStatus {
    waypoint: Waypoint,
    deployment: Option<Readiness>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Readiness {
    name: String,
    replicas: i32,
    ready_replicas: i32,
}

impl WaypointStatus {
    fn render(&self) -> String {
        let w = &self.waypoint;
        let mut out = format!(
            "Waypoint:        {}/{}\nService account: {}\nAddresses:       {}\n\n",
            w.namespace,
            w.name,
            w.service_account.as_deref().unwrap_or("-"),
            if w.addresses.is_empty() {
                "-".into()
            } else {
                w.addresses.join(", ")
            },
        );
        if w.conditions.is_empty() {
            out.push_str(
                "Conditions:      none yet (is ambit-controller running? kubectl ambit status)\n",
            );
        } else {
            let rows: Vec<Vec<&str>> = w
                .conditions
                .iter()
                .map(|c| {
                    vec![
                        c.type_.as_str(),
                        c.status.as_str(),
                        c.reason.as_str(),
                        c.message.as_str(),
                    ]
                })
                .collect();
            out.push_str(&table::render(
                &["CONDITION", "STATUS", "REASON", "MESSAGE"],
                &rows,
            ));
        }
        out.push('\n');
        match &self.deployment {
            Some(d) => out.push_str(&format!(
                "Deployment:      {}/{} {}/{} ready\n",
                w.namespace, d.name, d.ready_replicas, d.replicas
            )),
            None => out.push_str(&format!(
                "Deployment:      {}/{} not found (the controller creates it once the Gateway is Accepted)\n",
                w.namespace, w.name
            )),
        }
        out
    }
}

async fn waypoint_status(
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
        let report = WaypointStatus {
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

async fn status(
    conn: &Connection,
    global: &Global,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let ns = global.ambit_namespace.as_str();
    let client = &conn.client;
    let controller = async {
        match Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(health::CONTROLLER_DEPLOYMENT)
            .await
        {
            Ok(d) => health::controller(ns, d.as_ref()),
            Err(e) => Check::unreadable("controller", &describe(&e)),
        }
    };
    let node = async {
        let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get_opt(health::NODE_DAEMONSET)
            .await;
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(health::NODE_POD_SELECTOR))
            .await;
        match (ds, pods) {
            (Ok(ds), Ok(pods)) => health::node(ns, ds.as_ref(), &pods.items),
            (Err(e), _) | (_, Err(e)) => Check::unreadable("node", &describe(&e)),
        }
    };
    let crds = async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut found = Vec::new();
        for name in health::CRDS {
            match api.get_opt(name).await {
                Ok(c) => found.push(c),
                Err(e) => return Check::unreadable("crds", &describe(&e)),
            }
        }
        health::crds(&found)
    };
    let class = async {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &waypoint::gateway_class_resource());
        match api.get_opt(WAYPOINT_CLASS).await {
            Ok(c) => health::gateway_class(WAYPOINT_CLASS, c.as_ref()),
            // No GatewayClass CRD: the crds check says so; here the class is simply absent.
            Err(e) if is_status(&e, 404) => health::gateway_class(WAYPOINT_CLASS, None),
            Err(e) => Check::unreadable("gatewayclass", &describe(&e)),
        }
    };
    let enrolled = enrolled_namespaces(client);
    let (controller, node, crds, class, enrolled) =
        tokio::join!(controller, node, crds, class, enrolled);
    let report = Report::new(ns, vec![controller, node, crds, class], enrolled);
    if !report.healthy {
        if report.looks_uninstalled() {
            note(&format!(
                "ambit does not look installed in namespace {ns}: helm install ambit charts/ambit -n {ns} --create-namespace (or pass --ambit-namespace)"
            ));
        } else {
            note("ambit is not healthy: see the UNHEALTHY parts above");
        }
    }
    let text = render(global.output, &report, report.render())?;
    Ok(Outcome {
        stdout: text,
        success: report.healthy,
    })
}

async fn enrolled_namespaces(client: &kube::Client) -> Result<Vec<health::Enrolled>, String> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().labels(health::ENROLLED_SELECTOR))
        .await
        .map_err(|e| describe(&e))?;
    let mut names: Vec<String> = namespaces
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    let counts = names.iter().map(|ns| async move {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| format!("pods of {ns}: {}", describe(&e)))?;
        Ok(health::enrolled(
            ns,
            pods.items.iter().map(|p| p.metadata.labels.as_ref()),
        ))
    });
    futures::future::join_all(counts)
        .await
        .into_iter()
        .collect()
}

/// The pod to ask on a node: a running one if there is one.
pub fn pick_node_pod(pods: &[Pod]) -> Option<&Pod> {
    let running = |p: &&Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    };
    pods.iter().find(running).or_else(|| pods.first())
}

/// The apiserver's pod proxy to the tunnel's admin endpoint.
pub fn config_dump_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{TUNNEL_ADMIN_PORT}/proxy/config_dump")
}

async fn config_dump(conn: &Connection, global: &Global, node: &str) -> Result<Outcome, Error> {
    let ns = global.ambit_namespace.as_str();
    let client = &conn.client;
    if Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .map_err(kube_error(format!("reading node {node}")))?
        .is_none()
    {
        return Err(Error::NoNode(node.into()));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels(health::NODE_POD_SELECTOR)
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .map_err(kube_error(format!("listing ambit-node pods in {ns}")))?;
    let pod = pick_node_pod(&pods.items).ok_or_else(|| Error::NoNodePod {
        node: node.into(),
        namespace: ns.into(),
    })?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if phase != "Running" {
        return Err(Error::NodePodNotRunning {
            namespace: ns.into(),
            pod: pod_name,
            node: node.into(),
            phase,
        });
    }
    let request = http::Request::get(config_dump_path(ns, &pod_name))
        .body(Vec::new())
        .map_err(|e| Error::Dump {
            namespace: ns.into(),
            pod: pod_name.clone(),
            error: kube::Error::HttpError(e),
        })?;
    let text = client
        .request_text(request)
        .await
        .map_err(|error| Error::Dump {
            namespace: ns.into(),
            pod: pod_name.clone(),
            error,
        })?;
    let dump: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| Error::DumpNotJson {
            pod: pod_name.clone(),
            error,
        })?;
    let text = match global.output {
        Output::Default | Output::Json => output::json(&dump)?,
        Output::Yaml => output::yaml(&dump)?,
    };
    Ok(Outcome::ok(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_running_pod_is_asked() {
        let pod = |name: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"phase": phase}}))
                .unwrap()
        };
        let pods = [pod("old", "Failed"), pod("new", "Running")];
        assert_eq!(
            pick_node_pod(&pods).unwrap().metadata.name.as_deref(),
            Some("new")
        );
        assert_eq!(
            pick_node_pod(&pods[..1]).unwrap().metadata.name.as_deref(),
            Some("old")
        );
        assert!(pick_node_pod(&[]).is_none());
        assert_eq!(
            config_dump_path("ambit-system", "ambit-node-x"),
            "/api/v1/namespaces/ambit-system/pods/ambit-node-x:15000/proxy/config_dump"
        );
    }

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

    #[test]
    fn status_text_shows_conditions_and_deployment() {
        let mut g = waypoint::gateway("shop", "waypoint-back", "back");
        g["status"] = json!({"addresses": [{"value": "10.96.0.9"}], "conditions": [
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "applied"}]});
        let w = Waypoint::from_object(&serde_json::from_value(g).unwrap());
        let s = WaypointStatus {
            waypoint: w.clone(),
            deployment: Some(Readiness {
                name: "waypoint-back".into(),
                replicas: 1,
                ready_replicas: 1,
            }),
        };
        let text = s.render();
        assert!(
            text.contains("Programmed   True     Programmed   applied"),
            "{text}"
        );
        assert!(
            text.contains("Deployment:      shop/waypoint-back 1/1 ready"),
            "{text}"
        );
        assert!(text.contains("10.96.0.9"), "{text}");
        let none = WaypointStatus {
            waypoint: w,
            deployment: None,
        };
        assert!(none.render().contains("not found"));
    }
}
