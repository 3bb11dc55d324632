//! Waypoint Gateways: the names `waypoint apply` accepts, and how a Gateway's status reads. The
//! Gateway's shape is ambit-k8s's, the one ambit-controller validates and deploys.

use kube::api::{ApiResource, DynamicObject};
use serde::{Deserialize, Serialize};

pub use ambit_k8s::waypoint::{CONTROLLER_NAME, FOR_SERVICE_ACCOUNT, WAYPOINT_CLASS, gateway};
use ambit_k8s::waypoint::{NAME_PREFIX, SERVING_SINCE, is_dns_label};
pub const FIELD_MANAGER: &str = "kubectl-ambit";

/// Gateway API `Gateway`, v1.
pub fn gateway_resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        plural: "gateways".into(),
    }
}

/// Gateway API `GatewayClass`, v1.
pub fn gateway_class_resource() -> ApiResource {
    ApiResource {
        kind: "GatewayClass".into(),
        plural: "gatewayclasses".into(),
        ..gateway_resource()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "service account {0:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
    )]
    BadServiceAccount(String),
    #[error(
        "service account {0:?} is longer than 63 characters: the controller labels the waypoint's pods with it (ambit.dev/waypoint-for) and label values are at most 63"
    )]
    ServiceAccountTooLong(String),
    #[error(
        "waypoint name {0:?} is not valid: the waypoint's Service takes this name, so it must be a DNS label (at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit)"
    )]
    BadName(String),
    #[error("the default waypoint name {0:?} is not a valid DNS label; choose one with --name")]
    BadDefaultName(String),
    #[error(
        "--name {0:?} is the service account's own name: the controller names the waypoint's own ServiceAccount after the Gateway, so it would take over (and later delete) that ServiceAccount; choose another name"
    )]
    NameIsServiceAccount(String),
}

/// As ambit-controller checks it; plus the 63-character limit its children's labels impose.
pub fn check_service_account(sa: &str) -> Result<(), NameError> {
    let valid = !sa.is_empty()
        && sa.len() <= 253
        && sa
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && sa.starts_with(|c: char| c.is_ascii_alphanumeric())
        && sa.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(NameError::BadServiceAccount(sa.into()));
    }
    if sa.len() > 63 {
        return Err(NameError::ServiceAccountTooLong(sa.into()));
    }
    Ok(())
}

/// The Gateway name for a waypoint of `sa`: `--name`, or `waypoint-<sa>`.
pub fn waypoint_name(sa: &str, name: Option<&str>) -> Result<String, NameError> {
    check_service_account(sa)?;
    match name {
        Some(n) if n == sa => Err(NameError::NameIsServiceAccount(n.into())),
        Some(n) if is_dns_label(n) => Ok(n.into()),
        Some(n) => Err(NameError::BadName(n.into())),
        None => {
            let n = format!("{NAME_PREFIX}{sa}");
            if is_dns_label(&n) {
                Ok(n)
            } else {
                Err(NameError::BadDefaultName(n))
            }
        }
    }
}

/// `metav1.Condition`, leniently: a half-written status still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.type_, self.status)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    gateway_class_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Status {
    addresses: Vec<Address>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Address {
    value: String,
}

/// What ambit reads of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub service_account: Option<String>,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub addresses: Vec<String>,
    /// Since when its service account is bound to it (a pod of it has been Ready); `None`:
    /// not yet, the account's traffic goes as without a waypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_since: Option<String>,
}

impl Waypoint {
    pub fn from_object(obj: &DynamicObject) -> Self {
        let spec: Spec = obj
            .data
            .get("spec")
            .and_then(|s| Spec::deserialize(s).ok())
            .unwrap_or_default();
        let status: Status = obj
            .data
            .get("status")
            .and_then(|s| Status::deserialize(s).ok())
            .unwrap_or_default();
        let meta = &obj.metadata;
        let service_account = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(FOR_SERVICE_ACCOUNT))
            .or_else(|| {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(FOR_SERVICE_ACCOUNT))
            })
            .cloned();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            class: spec.gateway_class_name,
            service_account,
            generation: meta.generation,
            conditions: status.conditions,
            addresses: status.addresses.into_iter().map(|a| a.value).collect(),
            serving_since: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(SERVING_SINCE))
                .cloned(),
        }
    }

    pub fn is_waypoint(&self) -> bool {
        self.class == WAYPOINT_CLASS
    }

    /// A condition written for the current spec (`observedGeneration` not behind).
    pub fn current(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| {
            c.type_ == type_
                && match (c.observed_generation, self.generation) {
                    (Some(seen), Some(generation)) => seen >= generation,
                    _ => true,
                }
        })
    }

    /// `True`, `False`, `Unknown`, or `-` when the controller has not written it.
    pub fn programmed(&self) -> &str {
        self.current("Programmed")
            .map_or("-", |c| c.status.as_str())
    }

    /// Where `waypoint apply --wait` stands.
    pub fn progress(&self) -> Progress {
        if let Some(c) = self.current("Accepted").filter(|c| c.status == "False") {
            return Progress::Failed(c.clone());
        }
        match self.current("Programmed") {
            Some(c) if c.status == "True" => Progress::Ready(c.clone()),
            // The controller's verdict on the spec; waiting will not change it.
            Some(c) if c.status == "False" && c.reason == "Invalid" => Progress::Failed(c.clone()),
            Some(c) => Progress::Waiting(Some(c.clone())),
            None => Progress::Waiting(None),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Ready(Condition),
    Failed(Condition),
    /// The latest Programmed condition, if any.
    Waiting(Option<Condition>),
}

/// `waypoint status`: the Gateway's view and its Deployment's readiness.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub waypoint: Waypoint,
    /// `None`: the controller has not created it.
    pub deployment: Option<Readiness>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub name: String,
    pub replicas: i32,
    pub ready_replicas: i32,
}

impl StatusReport {
    pub fn render(&self) -> String {
        let w = &self.waypoint;
        let mut out = format!(
            "Waypoint:        {}/{}\nService account: {}\nAddresses:       {}\nBound:           {}\n\n",
            w.namespace,
            w.name,
            w.service_account.as_deref().unwrap_or("-"),
            if w.addresses.is_empty() {
                "-".into()
            } else {
                w.addresses.join(", ")
            },
            match &w.serving_since {
                Some(since) => format!("since {since} (its traffic goes only through the waypoint)"),
                None => "not yet: until a waypoint pod has been ready, its traffic goes direct (L4 policy only)".into(),
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
            out.push_str(&crate::table::render(
                &["CONDITION", "STATUS", "REASON", "MESSAGE"],
                &rows,
            ));
        }
        out.push('\n');
        match &self.deployment {
            Some(d) => {
                out.push_str(&format!(
                    "Deployment:      {}/{} {}/{} ready\n",
                    w.namespace, d.name, d.ready_replicas, d.replicas
                ));
                // Traffic to the service account goes only through ready waypoint pods: say so
                // when there are fewer than asked for, and where to look.
                if d.replicas == 0 && w.serving_since.is_some() {
                    out.push_str(
                        "                 scaled to 0: mesh traffic to the service account fails (closed) until it is scaled up\n",
                    );
                } else if d.ready_replicas < d.replicas {
                    out.push_str(&format!(
                        "                 not all ready: kubectl get pods -n {} -l gateway.networking.k8s.io/gateway-name={}\n",
                        w.namespace, w.name
                    ));
                }
            }
            None => out.push_str(&format!(
                "Deployment:      {}/{} not found (the controller creates it once the Gateway is Accepted)\n",
                w.namespace, w.name
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_match_what_the_controller_and_services_accept() {
        assert_eq!(waypoint_name("back", None).unwrap(), "waypoint-back");
        assert_eq!(waypoint_name("back", Some("wp")).unwrap(), "wp");
        assert_eq!(
            waypoint_name("back", Some("back")),
            Err(NameError::NameIsServiceAccount("back".into()))
        );
        assert!(matches!(
            waypoint_name("Back", None),
            Err(NameError::BadServiceAccount(_))
        ));
        assert!(matches!(
            waypoint_name("-x", None),
            Err(NameError::BadServiceAccount(_))
        ));
        assert!(matches!(
            waypoint_name(&"a".repeat(64), None),
            Err(NameError::ServiceAccountTooLong(_))
        ));
        // Dots are fine in a service account but not in a Service name.
        assert!(matches!(
            waypoint_name("api.v1", None),
            Err(NameError::BadDefaultName(_))
        ));
        assert_eq!(
            waypoint_name("api.v1", Some("api-v1-wp")).unwrap(),
            "api-v1-wp"
        );
        assert!(matches!(
            waypoint_name("a", Some("1wp")),
            Err(NameError::BadName(_))
        ));
        assert!(matches!(
            waypoint_name(&"a".repeat(60), None),
            Err(NameError::BadDefaultName(_))
        ));
    }

    #[test]
    fn the_gateway_has_the_controllers_shape() {
        let g = gateway("shop", "waypoint-back", "back");
        assert_eq!(g["spec"]["gatewayClassName"], "ambit-waypoint");
        assert_eq!(
            g["spec"]["listeners"],
            json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
        );
        assert_eq!(
            g["metadata"]["annotations"]["ambit.dev/for-service-account"],
            "back"
        );
        let w = Waypoint::from_object(&obj(g));
        assert!(w.is_waypoint());
        assert_eq!(w.service_account.as_deref(), Some("back"));
        assert_eq!(
            (w.namespace.as_str(), w.name.as_str()),
            ("shop", "waypoint-back")
        );
        assert_eq!(w.programmed(), "-");
        assert_eq!(w.progress(), Progress::Waiting(None));
    }

    fn with_status(generation: i64, conditions: serde_json::Value) -> Waypoint {
        let mut g = gateway("shop", "w", "back");
        g["metadata"]["generation"] = json!(generation);
        g["status"] = json!({"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}], "conditions": conditions});
        Waypoint::from_object(&obj(g))
    }

    #[test]
    fn progress_reads_current_conditions_only() {
        let ready = with_status(
            2,
            json!([{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok", "observedGeneration": 2}]),
        );
        assert!(matches!(ready.progress(), Progress::Ready(_)));
        assert_eq!(ready.programmed(), "True");
        assert_eq!(ready.addresses, ["10.96.0.9"]);
        // Written for an older spec: still waiting.
        let stale = with_status(
            3,
            json!([{"type": "Programmed", "status": "True", "observedGeneration": 2}]),
        );
        assert_eq!(stale.progress(), Progress::Waiting(None));
        assert_eq!(stale.programmed(), "-");
        let pending = with_status(
            1,
            json!([{"type": "Programmed", "status": "False", "reason": "Pending", "message": "waiting for the Service's cluster IP"}]),
        );
        let Progress::Waiting(Some(c)) = pending.progress() else {
            panic!()
        };
        assert_eq!(
            c.to_string(),
            "Programmed=False (Pending): waiting for the Service's cluster IP"
        );
        let invalid = with_status(
            1,
            json!([{"type": "Accepted", "status": "False", "reason": "Invalid", "message": "listener \"mesh\" is 80/HBONE"}]),
        );
        let Progress::Failed(c) = invalid.progress() else {
            panic!()
        };
        assert!(c.message.contains("80/HBONE"));
    }

    #[test]
    fn status_text_shows_conditions_and_deployment() {
        let mut g = gateway("shop", "waypoint-back", "back");
        g["status"] = json!({"addresses": [{"value": "10.96.0.9"}], "conditions": [
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "applied"}]});
        let w = Waypoint::from_object(&obj(g));
        let s = StatusReport {
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
        assert!(!text.contains("not all ready"), "{text}");
        let starting = StatusReport {
            waypoint: w.clone(),
            deployment: Some(Readiness {
                name: "waypoint-back".into(),
                replicas: 2,
                ready_replicas: 1,
            }),
        };
        let text = starting.render();
        assert!(text.contains("shop/waypoint-back 1/2 ready"), "{text}");
        assert!(
            text.contains(
                "not all ready: kubectl get pods -n shop -l gateway.networking.k8s.io/gateway-name=waypoint-back"
            ),
            "{text}"
        );
        // Not bound yet: scaled to 0, the account's traffic still goes direct.
        assert!(text.contains("Bound:           not yet"), "{text}");
        let scaled_down = |waypoint: Waypoint| StatusReport {
            waypoint,
            deployment: Some(Readiness {
                name: "waypoint-back".into(),
                replicas: 0,
                ready_replicas: 0,
            }),
        };
        let text = scaled_down(w.clone()).render();
        assert!(!text.contains("scaled to 0"), "{text}");
        let bound = Waypoint {
            serving_since: Some("2026-12-01T17:40:02Z".into()),
            ..w.clone()
        };
        let text = scaled_down(bound).render();
        assert!(
            text.contains("Bound:           since 2026-12-01T17:40:02Z"),
            "{text}"
        );
        assert!(
            text.contains("0/0 ready\n                 scaled to 0"),
            "{text}"
        );
        let none = StatusReport {
            waypoint: w,
            deployment: None,
        };
        assert!(none.render().contains("not found"));
    }
}
