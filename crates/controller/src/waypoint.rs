//! The waypoint deployer: a Gateway of class `ambit-waypoint` becomes a ServiceAccount,
//! Deployment and Service (server-side apply, owned by the Gateway), and gets its status.
//! Only the Lease holder reconciles, so two replicas never fight over children or status.

use crate::crd::{Condition, Gateway, GatewayAddress, GatewayClass, GatewayStatus};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const WAYPOINT_CLASS: &str = "ambit-waypoint";
/// `spec.controllerName` of the `ambit-waypoint` GatewayClass.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint-controller";
pub const FOR_SERVICE_ACCOUNT: &str = "ambit.dev/for-service-account";
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const HBONE_PORT: i32 = 15008;
const FIELD_MANAGER: &str = "ambit-controller";

/// What is wrong with a waypoint Gateway, as its status says it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidGateway {
    #[error("a waypoint needs exactly one listener (port 15008, protocol HBONE), found {0}")]
    ListenerCount(usize),
    #[error("listener {name:?} is {port}/{protocol}; a waypoint listens on 15008/HBONE")]
    Listener {
        name: String,
        port: i32,
        protocol: String,
    },
    #[error(
        "missing the {FOR_SERVICE_ACCOUNT} annotation (or label) naming the service account this waypoint serves"
    )]
    NoServiceAccount,
    #[error("{FOR_SERVICE_ACCOUNT}={0:?} is not a valid service account name")]
    BadServiceAccount(String),
}

/// The service account a waypoint Gateway serves, or why the Gateway is invalid.
pub fn waypoint_for(gw: &Gateway) -> Result<String, InvalidGateway> {
    match gw.spec.listeners.as_slice() {
        [l] if l.port == HBONE_PORT && l.protocol == "HBONE" => {}
        [l] => {
            return Err(InvalidGateway::Listener {
                name: l.name.clone(),
                port: l.port,
                protocol: l.protocol.clone(),
            });
        }
        ls => return Err(InvalidGateway::ListenerCount(ls.len())),
    }
    let sa = gw
        .annotations()
        .get(FOR_SERVICE_ACCOUNT)
        .or_else(|| gw.labels().get(FOR_SERVICE_ACCOUNT))
        .ok_or(InvalidGateway::NoServiceAccount)?;
    let valid = !sa.is_empty()
        && sa.len() <= 253
        && sa
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && sa.starts_with(|c: char| c.is_ascii_alphanumeric())
        && sa.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(sa.clone())
    } else {
        Err(InvalidGateway::BadServiceAccount(sa.clone()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Gateway has no namespace")]
    NoNamespace,
}

#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub image: String,
    pub trust_domain: String,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// Runs the Gateway and GatewayClass controllers until their streams end.
pub async fn run(ctx: Context) {
    let classes = Controller::new(
        Api::<GatewayClass>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(reconcile_class, error_policy_class, Arc::new(ctx.clone()))
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "GatewayClass reconcile");
        }
    });
    futures::join!(classes, run_gateways(ctx));
}

fn error_policy_class(_c: Arc<GatewayClass>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "GatewayClass reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Accepts GatewayClasses naming ambit's controller.
pub async fn reconcile_class(class: Arc<GatewayClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    if class.spec.controller_name != CONTROLLER_NAME {
        return Ok(Action::await_change());
    }
    if !*ctx.leader.borrow() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let name = class.name_any();
    let previous = class
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.clone());
    let accepted = Condition {
        type_: "Accepted".into(),
        status: "True".into(),
        reason: "Accepted".into(),
        message: "handled by ambit-controller: waypoints".into(),
        observed_generation: class.metadata.generation,
        last_transition_time: previous.unwrap_or_else(now),
    };
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name},
        "status": {"conditions": [accepted]},
    });
    Api::<GatewayClass>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(Action::await_change())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn run_gateways(ctx: Context) {
    let client = ctx.client.clone();
    let gateways: Api<Gateway> = Api::all(client.clone());
    Controller::new(gateways, watcher::Config::default())
        .owns(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<ServiceAccount>::all(client),
            watcher::Config::default(),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "waypoint reconcile");
            }
        })
        .await;
}

fn error_policy(_gw: Arc<Gateway>, e: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "waypoint reconcile failed; retrying");
    ctx.metrics.reconcile("error");
    Action::requeue(Duration::from_secs(5))
}

pub async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    if gw.spec.gateway_class_name != WAYPOINT_CLASS {
        return Ok(Action::await_change());
    }
    if !*ctx.leader.borrow() {
        // Not the Lease holder: the leader applies children and status.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let ns = gw.namespace().ok_or(Error::NoNamespace)?;
    let name = gw.name_any();
    let generation = gw.metadata.generation;
    let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ns);
    let for_sa = match waypoint_for(&gw) {
        Ok(sa) => sa,
        Err(invalid) => {
            tracing::info!(namespace = %ns, gateway = %name, reason = %invalid, "invalid waypoint Gateway");
            let msg = invalid.to_string();
            let status = GatewayStatus {
                addresses: Vec::new(),
                conditions: vec![
                    condition(&gw, "Accepted", false, "Invalid", &msg, generation),
                    condition(&gw, "Programmed", false, "Invalid", &msg, generation),
                ],
            };
            apply_status(&gateways, &name, status).await?;
            ctx.metrics.reconcile("invalid");
            return Ok(Action::await_change());
        }
    };
    let owner = gw
        .controller_owner_ref(&())
        .map(|o| vec![o])
        .unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let labels = json!({GATEWAY_NAME_LABEL: name, "ambit.dev/waypoint-for": for_sa});
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
    });
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(sa))
        .await?;
    let deploy = deployment(&ns, &name, &for_sa, &ctx.image, &ctx.trust_domain, &owner);
    Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(deploy))
        .await?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": [{"name": "hbone", "port": HBONE_PORT, "targetPort": HBONE_PORT, "protocol": "TCP", "appProtocol": "hbone"}],
        },
    });
    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(svc))
        .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None");
    let accepted = condition(
        &gw,
        "Accepted",
        true,
        "Accepted",
        &format!("waypoint for service account {for_sa}"),
        generation,
    );
    let (programmed, addresses, action) = match ip {
        Some(ip) => (
            condition(
                &gw,
                "Programmed",
                true,
                "Programmed",
                &format!("Deployment, Service {name} ({ip}:15008) and ServiceAccount applied"),
                generation,
            ),
            vec![GatewayAddress {
                type_: "IPAddress".into(),
                value: ip,
            }],
            Action::requeue(Duration::from_secs(300)),
        ),
        None => (
            condition(
                &gw,
                "Programmed",
                false,
                "Pending",
                "waiting for the Service's cluster IP",
                generation,
            ),
            Vec::new(),
            Action::requeue(Duration::from_secs(2)),
        ),
    };
    apply_status(
        &gateways,
        &name,
        GatewayStatus {
            addresses,
            conditions: vec![accepted, programmed],
        },
    )
    .await?;
    ctx.metrics.reconcile("applied");
    Ok(action)
}

async fn apply_status(
    api: &Api<Gateway>,
    name: &str,
    status: GatewayStatus,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name},
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// A condition; the transition time is kept while the status does not change.
fn condition(
    gw: &Gateway,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = gw
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: previous.unwrap_or_else(|| {
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        }),
    }
}

fn deployment(
    ns: &str,
    name: &str,
    for_sa: &str,
    image: &str,
    trust_domain: &str,
    owner: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {GATEWAY_NAME_LABEL: name}, "ownerReferences": owner},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": {
                    GATEWAY_NAME_LABEL: name,
                    "ambit.dev/waypoint-for": for_sa,
                    // The waypoint speaks HBONE itself; the node tunnel must not capture it.
                    "ambit.dev/dataplane-mode": "none",
                }},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "waypoint",
                        "image": image,
                        "env": [
                            {"name": "AMBIT_WAYPOINT_FOR_SERVICE_ACCOUNT", "value": for_sa},
                            {"name": "AMBIT_TRUST_DOMAIN", "value": trust_domain},
                            {"name": "AMBIT_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        "ports": [
                            {"name": "hbone", "containerPort": HBONE_PORT},
                            {"name": "metrics", "containerPort": 15020},
                            {"name": "ready", "containerPort": 15021},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                        "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 1337, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "ambit-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true}],
                    }],
                    "volumes": [{"name": "ambit-token", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": "ambit-ca", "expirationSeconds": 3600, "path": "ambit-ca"}},
                    ]}}],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gw(v: serde_json::Value) -> Gateway {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = gw(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "w", "namespace": "n", "annotations": {FOR_SERVICE_ACCOUNT: "back"}},
            "spec": {"gatewayClassName": WAYPOINT_CLASS, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
        );
        assert_eq!(waypoint_for(&ok), Ok("back".into()));
        let mut wrong_port = ok.clone();
        wrong_port.spec.listeners[0].port = 80;
        assert!(
            waypoint_for(&wrong_port)
                .unwrap_err()
                .to_string()
                .contains("80/HBONE")
        );
        let mut none = ok.clone();
        none.spec.listeners.clear();
        assert_eq!(waypoint_for(&none), Err(InvalidGateway::ListenerCount(0)));
        let mut no_sa = ok.clone();
        no_sa.metadata.annotations = None;
        assert_eq!(waypoint_for(&no_sa), Err(InvalidGateway::NoServiceAccount));
        let mut bad_sa = ok;
        bad_sa.metadata.annotations =
            Some([(FOR_SERVICE_ACCOUNT.to_string(), "Bad_Name".to_string())].into());
        assert!(matches!(
            waypoint_for(&bad_sa),
            Err(InvalidGateway::BadServiceAccount(_))
        ));
    }
}
