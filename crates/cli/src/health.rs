//! `kubectl ambit status`: whether each part of ambit is healthy, computed from the objects
//! alone (no IO here), and which namespaces are enrolled.

use crate::table;
use crate::waypoint::{CONTROLLER_NAME, Condition};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};

pub const CONTROLLER_DEPLOYMENT: &str = "ambit-controller";
pub const NODE_DAEMONSET: &str = "ambit-node";
/// Label of the node DaemonSet's pods.
pub const NODE_POD_SELECTOR: &str = "app.kubernetes.io/name=ambit-node";
pub use ambit_k8s::names::{
    DATAPLANE_MODE_LABEL as DATAPLANE_MODE, DATAPLANE_MODE_NONE as OPTED_OUT, ENROLLED_SELECTOR,
};
/// The CRDs ambit's parts read.
pub const CRDS: [&str; 3] = [
    "authorizationpolicies.ambit.dev",
    "gateways.gateway.networking.k8s.io",
    "gatewayclasses.gateway.networking.k8s.io",
];

/// One part's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub part: String,
    pub healthy: bool,
    pub detail: String,
    /// What is wrong, one line each (say, one per pod not ready).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Check {
    fn new(part: &str, healthy: bool, detail: String) -> Self {
        Self {
            part: part.into(),
            healthy,
            detail,
            problems: Vec::new(),
        }
    }

    /// A part whose object is missing (`looks_uninstalled` reads the `not found` prefix).
    fn missing(part: &str, what: &str, ns: &str) -> Self {
        Self::new(part, false, format!("not found: {what} in namespace {ns}"))
    }

    /// A part that could not be read at all.
    pub fn unreadable(part: &str, error: &str) -> Self {
        Self::new(part, false, format!("cannot read: {error}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    pub namespace: String,
    pub pods: usize,
    pub opted_out: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub healthy: bool,
    pub ambit_namespace: String,
    pub checks: Vec<Check>,
    pub enrolled: Vec<Enrolled>,
    /// Why listing enrolled namespaces failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled_error: Option<String>,
}

impl Report {
    pub fn new(
        ambit_namespace: &str,
        checks: Vec<Check>,
        enrolled: Result<Vec<Enrolled>, String>,
    ) -> Self {
        let (enrolled, enrolled_error) = match enrolled {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Self {
            healthy: checks.iter().all(|c| c.healthy) && enrolled_error.is_none(),
            ambit_namespace: ambit_namespace.into(),
            checks,
            enrolled,
            enrolled_error,
        }
    }

    /// Neither the controller nor the node DaemonSet exists: ambit is not installed there.
    pub fn looks_uninstalled(&self) -> bool {
        self.checks
            .iter()
            .filter(|c| c.part == "controller" || c.part == "node")
            .all(|c| c.detail.starts_with("not found"))
    }

    /// The readable form: a table of parts, then one of enrolled namespaces.
    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .checks
            .iter()
            .flat_map(|c| {
                let first = vec![
                    c.part.clone(),
                    if c.healthy { "ok" } else { "UNHEALTHY" }.into(),
                    c.detail.clone(),
                ];
                std::iter::once(first).chain(
                    c.problems
                        .iter()
                        .map(|p| vec![String::new(), String::new(), format!("- {p}")]),
                )
            })
            .collect();
        let mut out = table::render(&["PART", "STATUS", "DETAIL"], &rows);
        out.push('\n');
        if let Some(e) = &self.enrolled_error {
            out.push_str(&format!("enrolled namespaces: cannot read: {e}\n"));
        } else if self.enrolled.is_empty() {
            out.push_str(&format!(
                "No namespace is enrolled (kubectl label namespace NS {ENROLLED_SELECTOR}).\n"
            ));
        } else {
            let rows: Vec<Vec<String>> = self
                .enrolled
                .iter()
                .map(|e| {
                    vec![
                        e.namespace.clone(),
                        e.pods.to_string(),
                        e.opted_out.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table::render(
                &["ENROLLED NAMESPACE", "PODS", "OPTED OUT"],
                &rows,
            ));
        }
        out
    }
}

/// Every replica of the controller Deployment ready.
pub fn controller(ns: &str, deployment: Option<&Deployment>) -> Check {
    let part = "controller";
    let Some(d) = deployment else {
        return Check::missing(part, &format!("Deployment {CONTROLLER_DEPLOYMENT}"), ns);
    };
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    Check::new(
        part,
        desired > 0 && ready >= desired,
        format!("{ready}/{desired} ready (Deployment {ns}/{CONTROLLER_DEPLOYMENT})"),
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a pod is not ready, as far as its status says.
fn pod_problem(p: &Pod) -> String {
    let name = p.metadata.name.as_deref().unwrap_or("?");
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("(unscheduled)");
    let status = p.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let waiting: Vec<String> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| !c.ready)
        .map(|c| {
            let why = c
                .state
                .as_ref()
                .and_then(|st| {
                    st.waiting
                        .as_ref()
                        .and_then(|w| w.reason.clone())
                        .or_else(|| {
                            st.terminated.as_ref().map(|t| {
                                t.reason
                                    .clone()
                                    .unwrap_or_else(|| format!("exited {}", t.exit_code))
                            })
                        })
                })
                .unwrap_or_else(|| "not ready".into());
            let restarts = if c.restart_count > 0 {
                format!(", {} restarts", c.restart_count)
            } else {
                String::new()
            };
            format!("{} {why}{restarts}", c.name)
        })
        .collect();
    let detail = if waiting.is_empty() {
        String::new()
    } else {
        format!("; {}", waiting.join(", "))
    };
    format!("node {node}: pod {name} not ready ({phase}{detail})")
}

/// The node DaemonSet: a ready pod on every node it should run on.
pub fn node(ns: &str, daemonset: Option<&DaemonSet>, pods: &[Pod]) -> Check {
    let part = "node";
    let Some(ds) = daemonset else {
        return Check::missing(part, &format!("DaemonSet {NODE_DAEMONSET}"), ns);
    };
    let (desired, ready) = ds
        .status
        .as_ref()
        .map_or((0, 0), |s| (s.desired_number_scheduled, s.number_ready));
    let mut problems: Vec<String> = pods
        .iter()
        .filter(|p| !pod_ready(p))
        .map(pod_problem)
        .collect();
    problems.sort();
    let mut check = Check::new(
        part,
        desired > 0 && ready >= desired && problems.is_empty(),
        format!("{ready}/{desired} nodes ready (DaemonSet {ns}/{NODE_DAEMONSET})"),
    );
    if desired == 0 {
        check
            .problems
            .push("no node is scheduled to run it (node selector, taints?)".into());
    }
    check.problems.extend(problems);
    check
}

fn crd_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Each of [`CRDS`] present and established; `found` in the same order.
pub fn crds(found: &[Option<CustomResourceDefinition>]) -> Check {
    let mut problems = Vec::new();
    for (name, crd) in CRDS.iter().zip(found) {
        match crd {
            None => problems.push(format!("{name} missing")),
            Some(c) if !crd_established(c) => problems.push(format!("{name} not established")),
            Some(_) => {}
        }
    }
    let present = CRDS.len() - problems.len();
    let mut check = Check::new(
        "crds",
        problems.is_empty(),
        format!("{present}/{} established", CRDS.len()),
    );
    check.problems = problems;
    check
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ClassSpec {
    controller_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClassStatus {
    conditions: Vec<Condition>,
}

/// The `ambit-waypoint` GatewayClass names ambit's controller and is Accepted.
pub fn gateway_class(name: &str, class: Option<&DynamicObject>) -> Check {
    let part = "gatewayclass";
    let Some(class) = class else {
        return Check::new(part, false, format!("not found: GatewayClass {name}"));
    };
    let spec = class
        .data
        .get("spec")
        .and_then(|s| ClassSpec::deserialize(s).ok())
        .unwrap_or_default();
    if spec.controller_name != CONTROLLER_NAME {
        return Check::new(
            part,
            false,
            format!(
                "GatewayClass {name} names controller {:?}, not {CONTROLLER_NAME}",
                spec.controller_name
            ),
        );
    }
    let status = class
        .data
        .get("status")
        .and_then(|s| ClassStatus::deserialize(s).ok())
        .unwrap_or_default();
    match status.conditions.iter().find(|c| c.type_ == "Accepted") {
        Some(c) if c.status == "True" => {
            Check::new(part, true, format!("GatewayClass {name} Accepted"))
        }
        Some(c) => Check::new(part, false, format!("GatewayClass {name}: {c}")),
        None => Check::new(
            part,
            false,
            format!("GatewayClass {name} not Accepted yet: is the controller running?"),
        ),
    }
}

/// An enrolled namespace's pods (by their labels) and how many opted out.
pub fn enrolled<'a>(
    namespace: &str,
    pod_labels: impl IntoIterator<Item = Option<&'a std::collections::BTreeMap<String, String>>>,
) -> Enrolled {
    let mut pods = 0;
    let mut opted_out = 0;
    for labels in pod_labels {
        pods += 1;
        if labels
            .and_then(|l| l.get(DATAPLANE_MODE))
            .is_some_and(|m| m == OPTED_OUT)
        {
            opted_out += 1;
        }
    }
    Enrolled {
        namespace: namespace.into(),
        pods,
        opted_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn controller_ready_replicas() {
        assert!(!controller("ambit-system", None).healthy);
        assert!(
            controller("ambit-system", None)
                .detail
                .starts_with("not found")
        );
        let d = |ready: i32| -> Deployment {
            obj(
                json!({"spec": {"replicas": 2, "selector": {}, "template": {}}, "status": {"readyReplicas": ready}}),
            )
        };
        let c = controller("ambit-system", Some(&d(1)));
        assert!(!c.healthy);
        assert_eq!(
            c.detail,
            "1/2 ready (Deployment ambit-system/ambit-controller)"
        );
        assert!(controller("ambit-system", Some(&d(2))).healthy);
    }

    fn node_pod(name: &str, node: &str, ready: bool) -> Pod {
        obj(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{
                    "name": "tunnel", "ready": ready, "restartCount": if ready { 0 } else { 3 },
                    "image": "i", "imageID": "",
                    "state": if ready { json!({"running": {}}) } else { json!({"waiting": {"reason": "CrashLoopBackOff"}}) },
                }],
            },
        }))
    }

    #[test]
    fn node_names_the_pods_not_ready() {
        let ds: DaemonSet = obj(json!({"status": {
            "desiredNumberScheduled": 2, "numberReady": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0,
        }}));
        let pods = [
            node_pod("n-a", "node-1", true),
            node_pod("n-b", "node-2", false),
        ];
        let c = node("ambit-system", Some(&ds), &pods);
        assert!(!c.healthy);
        assert_eq!(
            c.detail,
            "1/2 nodes ready (DaemonSet ambit-system/ambit-node)"
        );
        assert_eq!(
            c.problems,
            ["node node-2: pod n-b not ready (Running; tunnel CrashLoopBackOff, 3 restarts)"]
        );
        let ds: DaemonSet = obj(json!({"status": {
            "desiredNumberScheduled": 1, "numberReady": 1, "currentNumberScheduled": 1, "numberMisscheduled": 0,
        }}));
        assert!(node("ambit-system", Some(&ds), &pods[..1]).healthy);
        let empty: DaemonSet = obj(json!({"status": {
            "desiredNumberScheduled": 0, "numberReady": 0, "currentNumberScheduled": 0, "numberMisscheduled": 0,
        }}));
        assert!(!node("ambit-system", Some(&empty), &[]).healthy);
        assert!(!node("ambit-system", None, &[]).healthy);
    }

    #[test]
    fn crds_present_and_established() {
        let est: CustomResourceDefinition = obj(json!({
            "metadata": {"name": "x"},
            "spec": {"group": "g", "names": {"kind": "K", "plural": "ks"}, "scope": "Namespaced", "versions": []},
            "status": {"conditions": [{"type": "Established", "status": "True"}]},
        }));
        let mut pending = est.clone();
        pending.status = None;
        let c = crds(&[Some(est.clone()), None, Some(pending)]);
        assert!(!c.healthy);
        assert_eq!(c.detail, "1/3 established");
        assert_eq!(
            c.problems,
            [
                "gateways.gateway.networking.k8s.io missing",
                "gatewayclasses.gateway.networking.k8s.io not established"
            ]
        );
        assert!(crds(&[Some(est.clone()), Some(est.clone()), Some(est)]).healthy);
    }

    #[test]
    fn gateway_class_accepted_for_our_controller() {
        let class = |controller: &str, conditions: serde_json::Value| -> DynamicObject {
            obj(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "ambit-waypoint"},
                "spec": {"controllerName": controller},
                "status": {"conditions": conditions},
            }))
        };
        let ok = class(
            CONTROLLER_NAME,
            json!([{"type": "Accepted", "status": "True"}]),
        );
        assert!(gateway_class("ambit-waypoint", Some(&ok)).healthy);
        let waiting = class(CONTROLLER_NAME, json!([]));
        assert!(
            gateway_class("ambit-waypoint", Some(&waiting))
                .detail
                .contains("not Accepted")
        );
        let other = class(
            "example.com/other",
            json!([{"type": "Accepted", "status": "True"}]),
        );
        assert!(!gateway_class("ambit-waypoint", Some(&other)).healthy);
        assert!(!gateway_class("ambit-waypoint", None).healthy);
    }

    #[test]
    fn enrollment_counts_and_rendering() {
        let out: std::collections::BTreeMap<String, String> =
            [(DATAPLANE_MODE.to_string(), "none".to_string())].into();
        let e = enrolled("demo", [None, Some(&out), Some(&Default::default())]);
        assert_eq!((e.pods, e.opted_out), (3, 1));
        let report = Report::new(
            "ambit-system",
            vec![
                controller("ambit-system", None),
                node("ambit-system", None, &[]),
            ],
            Ok(vec![e]),
        );
        assert!(!report.healthy);
        assert!(report.looks_uninstalled());
        let text = report.render();
        assert!(
            text.contains("controller   UNHEALTHY   not found"),
            "{text}"
        );
        assert!(text.contains("demo                 3      1"), "{text}");
        let none = Report::new("ambit-system", vec![], Ok(vec![]));
        assert!(none.healthy);
        assert!(none.render().contains("No namespace is enrolled"));
        assert!(!Report::new("a", vec![], Err("forbidden".into())).healthy);
    }
}
