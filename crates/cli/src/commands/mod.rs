//! Each command against the apiserver, one module a command group. What they compute lives in
//! [`crate::waypoint`], [`crate::health`] and [`crate::threats`]; here are the reads and writes, and what they print.

mod check;
mod config;
mod status;
mod threats;
mod waypoints;

pub use config::{CONFIG_DUMP_PATH, DumpError, TUNNEL_ADMIN_PORT, pick_node_pod};

use crate::args::{Command, Global, Output};
use crate::client::{Connection, describe, is_status};
use crate::health;
use crate::output::{self, OutputError};
use crate::waypoint::{self, NameError, WAYPOINT_CLASS};
use serde::Serialize;
use std::time::Duration;

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
        "fetching /config_dump from {namespace}/{pod} port {TUNNEL_ADMIN_PORT} through a port-forward: {error}"
    )]
    Dump {
        namespace: String,
        pod: String,
        error: config::DumpError,
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
            Error::Kube { error, .. }
            | Error::Dump {
                error: config::DumpError::PortForward(error),
                ..
            } => matches!(error, kube::Error::HyperError(_) | kube::Error::Service(_)),
            _ => false,
        }
    }
}

pub(crate) fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |error| Error::Kube { what, error }
}

/// Gateway lists and applies: a 404 can only mean the resource type is missing (the
/// apiserver answers a bare `404 page not found` for an unknown group).
pub(crate) fn gateway_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
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
    pub(crate) fn ok(stdout: String) -> Self {
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
        Command::WaypointApply {
            service_account,
            name,
            wait,
            timeout,
            force_conflicts,
        } => {
            let apply = waypoints::Apply {
                service_account,
                name: name.as_deref(),
                wait: *wait,
                timeout: *timeout,
                force_conflicts: *force_conflicts,
            };
            waypoints::apply(conn, global.output, &apply, note).await
        }
        Command::WaypointList { all_namespaces } => {
            waypoints::list(conn, global.output, *all_namespaces, note).await
        }
        Command::WaypointDelete(r) => waypoints::delete(conn, r).await,
        Command::WaypointStatus(r) => waypoints::status(conn, global.output, r).await,
        Command::Status => status::status(conn, global, note).await,
        Command::ConfigDump { node } => config::dump(conn, global, node).await,
        Command::Check(options) => check::check(conn, global, options).await,
        Command::Threats { all_namespaces } => {
            threats::threats(conn, global, *all_namespaces, note).await
        }
    }
}

pub(crate) fn render<T: Serialize>(
    output: Output,
    value: &T,
    text: String,
) -> Result<String, Error> {
    Ok(match output {
        Output::Default => text,
        Output::Json => output::json(value)?,
        Output::Yaml => output::yaml(value)?,
    })
}
