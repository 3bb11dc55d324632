//! The waypoint deployer: a Gateway of class `ambit-waypoint` becomes a ServiceAccount,
//! Deployment and Service (server-side apply, owned by the Gateway), and gets its status.
//! Only the Lease holder reconciles, so two replicas never fight over children or status.

use crate::crd::{Condition, Gateway, GatewayAddress, GatewayClass, GatewayStatus};
use crate::index::{DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The mark of a waypoint that has served, which binds its service account to it.
///
/// Binding is what makes tunnels send the account's traffic through the waypoint and refuse
/// any that bypasses it, so binding a waypoint that has never served would refuse the
/// account's traffic until its first pod is ready (an outage on every waypoint creation).
/// Until the mark, the account's traffic flows as it did without a waypoint (direct, with L4
/// policy). Once marked, no later state of the pods unbinds it (scaled to zero or crashing:
/// refused, never around the waypoint; TR-10). The mark is an annotation, not a status
/// condition: every reconcile rewrites the Gateway's status in whole (a forced apply of its
/// conditions), so a condition would have to be carried through every status write, and any
/// status writer (or a status wipe) dropping it would unbind the account; metadata is written
/// by this one patch only. Deleting the Gateway (or the annotation) starts over.
pub use ambit_k8s::waypoint::SERVING_SINCE;
pub use ambit_k8s::waypoint::{
    CONTROLLER_NAME, FOR_SERVICE_ACCOUNT, GATEWAY_NAME_LABEL, WAYPOINT_CLASS,
};
/// Label on a waypoint's children and pods naming the service account it serves.
pub const WAYPOINT_FOR_LABEL: &str = "ambit.dev/waypoint-for";
pub const HBONE_PORT: i32 = ambit_k8s::waypoint::HBONE_PORT as i32;
/// The waypoint's metrics (`/metrics`) and readiness (`/healthz/ready`) ports.
pub const METRICS_PORT: i32 = 15020;
pub const READINESS_PORT: i32 = 15021;
/// The waypoint's user: non-root, the same as Istio's proxies (1337), so nothing else on the
/// pod runs as it.
pub const WAYPOINT_UID: i64 = 1337;
/// Where the waypoint finds the root certificate, mounted from ConfigMap `ambit-root-cert`.
pub const ROOT_CERT_DIR: &str = "/var/run/ambit/root";
/// The projected service-account token (audience `ambit-ca`) for the config stream and CA.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The waypoint drains for 5 s on SIGTERM; kubelet kills it after this.
const TERMINATION_GRACE_SECS: i64 = 10;
/// The one field manager of the controller's server-side applies (also policy status).
pub(crate) const FIELD_MANAGER: &str = "ambit-controller";

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
    if ambit_identity::is_kubernetes_name(sa) {
        Ok(sa.clone())
    } else {
        Err(InvalidGateway::BadServiceAccount(sa.clone()))
    }
}

/// Whether `gw`'s service account is bound to it (see [`SERVING_SINCE`]).
///
/// A Gateway that a controller before the mark existed already programmed (`Programmed=True`,
/// which this controller writes only once the mark is on) counts as serving too: a controller
/// upgraded in place must not unbind its accounts until its first reconcile, which marks it.
pub fn is_serving(gw: &Gateway) -> bool {
    gw.annotations().contains_key(SERVING_SINCE)
        || gw.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
        })
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
    /// What every waypoint Deployment is made of, but its Gateway.
    pub waypoint: WaypointSettings,
    /// The mesh roots, whose bundle is published in each waypoint namespace's `ambit-root-cert`.
    pub roots: crate::root::MeshRoots,
    /// The install's anchor (`ca::install_owner`): the root ConfigMaps it publishes in
    /// waypoint namespaces go with the install, not with one Gateway (several Gateways may
    /// share a namespace and its ConfigMap).
    pub install_owner: Option<OwnerReference>,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
}

/// The controller's settings every waypoint pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointSettings {
    pub image: String,
    /// `HOST:PORT` of the controller's gRPC (config stream and CA).
    pub controller_address: String,
    /// The controller's SPIFFE id, which the waypoint expects of the controller's certificate.
    pub controller_identity: String,
    /// Span export (the chart's `tracing.otlp`); `None`: off.
    pub tracing: Option<WaypointTracing>,
}

/// Where waypoints export their spans, as the controller's config validated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointTracing {
    /// The collector's OTLP/gRPC URL.
    pub endpoint: String,
    /// The sampling ratio, 0..=1, as written.
    pub sampling: String,
    /// What of a request's path the spans carry.
    pub url_path: ambit_telemetry::otlp_settings::UrlPath,
}

impl WaypointTracing {
    /// The waypoint's variables, after OpenTelemetry's: each waypoint is a service of its own,
    /// named `NAME.NAMESPACE` after its Gateway.
    fn env(&self, ns: &str, name: &str) -> [serde_json::Value; 4] {
        use ambit_telemetry::otlp_settings::{
            ENV_ENDPOINT, ENV_SAMPLER_ARG, ENV_SERVICE_NAME, ENV_URL_PATH,
        };
        [
            json!({"name": ENV_ENDPOINT, "value": self.endpoint}),
            json!({"name": ENV_SAMPLER_ARG, "value": self.sampling}),
            json!({"name": ENV_SERVICE_NAME, "value": format!("{name}.{ns}")}),
            json!({"name": ENV_URL_PATH, "value": self.url_path.as_str()}),
        ]
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("waypoint", &self.waypoint)
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
    futures::join!(classes, keep_class(ctx.clone()), run_gateways(ctx));
}

/// Keeps the `ambit-waypoint` GatewayClass in existence: applied when this replica starts
/// watching and finds it missing, and again whenever it is deleted. The controller makes it,
/// not the chart, because a first `helm install` that also brings the Gateway API CRDs
/// cannot create an object of a kind whose CRD is not served yet. It is owned by the install's
/// anchor (`ca::install_owner`), so it goes with the install. Any replica may apply it: the
/// apply is the same from each, and not forced, so a class of that name with another
/// `controllerName` (its owner's) is never taken over; the conflict is logged.
async fn keep_class(ctx: Context) {
    let api = Api::<GatewayClass>::all(ctx.client.clone());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={WAYPOINT_CLASS}"));
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), by_name).default_backoff());
    let mut present = false;
    while let Some(event) = events.next().await {
        let missing = match event {
            Ok(watcher::Event::Init) => {
                present = false;
                false
            }
            Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => {
                present = true;
                false
            }
            Ok(watcher::Event::InitDone) => !present,
            Ok(watcher::Event::Delete(_)) => {
                present = false;
                true
            }
            Err(error) => {
                tracing::warn!(%error, class = WAYPOINT_CLASS, "watching the waypoint GatewayClass (are the Gateway API CRDs installed?)");
                false
            }
        };
        if missing {
            apply_class(&api, ctx.install_owner.as_ref()).await;
        }
    }
}

/// Applies the `ambit-waypoint` GatewayClass, retrying until it is applied or refused.
async fn apply_class(api: &Api<GatewayClass>, owner: Option<&OwnerReference>) {
    let body = class(owner);
    loop {
        match api
            .patch(
                WAYPOINT_CLASS,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(class = WAYPOINT_CLASS, "GatewayClass applied");
                return;
            }
            // Another manager's value (a class of that name for another controller): ours
            // is not forced on it.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                tracing::error!(class = WAYPOINT_CLASS, error = %e, "GatewayClass not applied: a class of that name exists for another controller; waypoint Gateways will not be handled");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, class = WAYPOINT_CLASS, "applying the GatewayClass; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// The `ambit-waypoint` GatewayClass.
fn class(owner: Option<&OwnerReference>) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {
            "name": WAYPOINT_CLASS,
            "labels": {"app.kubernetes.io/part-of": "ambit", "app.kubernetes.io/managed-by": "ambit-controller"},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "controllerName": CONTROLLER_NAME,
            "description": "ambit waypoints, one per service account",
        },
    })
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

pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn run_gateways(ctx: Context) {
    let client = ctx.client.clone();
    let gateways: Api<Gateway> = Api::all(client.clone());
    let controller = Controller::new(gateways, watcher::Config::default());
    let store = controller.store();
    // A root ConfigMap edited or deleted in a waypoint namespace is put back at once: a new
    // waypoint pod cannot start without it. Only that name is watched (RBAC allows no other).
    let root_configmaps =
        watcher::Config::default().fields(&format!("metadata.name={}", crate::ca::ROOT_CONFIGMAP));
    controller
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            root_configmaps,
            move |cm| {
                let ns = cm.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|gw| {
                        gw.namespace() == ns && gw.spec.gateway_class_name == WAYPOINT_CLASS
                    })
                    .map(|gw| ObjectRef::from_obj(&*gw))
                    .collect::<Vec<_>>()
            },
        )
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
    let claims = claims_on_names(&ctx.client, &ns, &name, gw.uid().as_deref()).await?;
    let (foreign, going): (Vec<_>, Vec<_>) = claims
        .into_iter()
        .partition(|(_, claim)| *claim == Claim::Foreign);
    if !foreign.is_empty() {
        let taken: Vec<String> = foreign.into_iter().map(|(object, _)| object).collect();
        let msg = format!(
            "{} already exist{} and {} not owned by this Gateway; a waypoint's ServiceAccount, Deployment and Service take its Gateway's name, and ambit never takes over another object: rename the Gateway",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "is" } else { "are" },
        );
        tracing::warn!(namespace = %ns, gateway = %name, reason = %msg, "waypoint Gateway refused");
        let status = GatewayStatus {
            addresses: Vec::new(),
            conditions: vec![
                condition(&gw, "Accepted", false, NAME_CONFLICT, &msg, generation),
                condition(&gw, "Programmed", false, NAME_CONFLICT, &msg, generation),
            ],
        };
        apply_status(&gateways, &name, status).await?;
        ctx.metrics.reconcile("conflict");
        // The other object may go away or be renamed: look again now and then.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    if !going.is_empty() {
        // A Gateway of this name was deleted and its children are being deleted: applying
        // over them now would be undone by their deletion. Wait it out (seconds, at most a
        // finalizer's time) instead of refusing a user who re-created a waypoint.
        let going: Vec<String> = going.into_iter().map(|(object, _)| object).collect();
        let msg = format!(
            "waiting for the previous waypoint's {} to be deleted (its Gateway of the same name was deleted)",
            going.join(", ")
        );
        let status = GatewayStatus {
            addresses: Vec::new(),
            conditions: vec![
                condition(
                    &gw,
                    "Accepted",
                    true,
                    "Accepted",
                    &format!("waypoint for service account {for_sa}"),
                    generation,
                ),
                condition(&gw, "Programmed", false, "Pending", &msg, generation),
            ],
        };
        apply_status(&gateways, &name, status).await?;
        ctx.metrics.reconcile("pending");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let owner = gw
        .controller_owner_ref(&())
        .map(|o| vec![o])
        .unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    // Before the Deployment: its pods mount it and cannot start without it.
    crate::ca::publish_root(
        &ctx.client,
        &ns,
        &ctx.roots.bundle_pem(),
        ctx.install_owner.as_ref(),
    )
    .await?;
    let labels = json!({GATEWAY_NAME_LABEL: name, WAYPOINT_FOR_LABEL: for_sa});
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
    });
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(sa))
        .await?;
    let deploy = deployment(&ns, &name, &for_sa, &ctx.waypoint, &owner);
    let deploy = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &pp, &Patch::Apply(deploy))
        .await?;
    let ready_pods = deploy.status.and_then(|s| s.ready_replicas).unwrap_or(0);
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
    let serving = is_serving(&gw);
    // Reachable: a pod is ready and its Service lists it (the Service's proxies route by the
    // EndpointSlices, which follow pod readiness a moment later; binding before would refuse
    // the account's traffic for that moment).
    let reachable = !serving
        && ip.is_some()
        && ready_pods > 0
        && has_ready_endpoint(&ctx.client, &ns, &name).await?;
    let unmarked = !gw.annotations().contains_key(SERVING_SINCE);
    if unmarked && (serving || reachable) {
        mark_serving(&gateways, &gw).await?;
        tracing::info!(namespace = %ns, gateway = %name, service_account = %for_sa, "waypoint ready: its service account is bound to it from now on");
    }
    let addresses = ip
        .iter()
        .map(|ip| GatewayAddress {
            type_: "IPAddress".into(),
            value: ip.clone(),
        })
        .collect();
    let (programmed, action) = match (ip, serving || reachable) {
        (None, _) => (
            condition(
                &gw,
                "Programmed",
                false,
                "Pending",
                "waiting for the Service's cluster IP",
                generation,
            ),
            Action::requeue(Duration::from_secs(2)),
        ),
        // The Deployment's status changes bring the next reconcile (`owns`); its Service's
        // EndpointSlices are not watched: a ready pod not listed yet is looked at again soon.
        (Some(_), false) => (
            condition(
                &gw,
                "Programmed",
                false,
                "Pending",
                &format!(
                    "waiting for a ready waypoint pod: until one has been ready, service account {for_sa}'s traffic goes as without a waypoint (direct, L4 policy only)"
                ),
                generation,
            ),
            Action::requeue(Duration::from_secs(if ready_pods > 0 { 1 } else { 30 })),
        ),
        (Some(ip), true) => (
            condition(
                &gw,
                "Programmed",
                true,
                "Programmed",
                &if ready_pods > 0 {
                    format!(
                        "Deployment, Service {name} ({ip}:15008) and ServiceAccount applied; service account {for_sa} is bound to this waypoint"
                    )
                } else {
                    format!(
                        "Deployment, Service {name} ({ip}:15008) and ServiceAccount applied; service account {for_sa} is bound to this waypoint, which has no ready pod: its traffic is refused until one is"
                    )
                },
                generation,
            ),
            Action::requeue(Duration::from_secs(300)),
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

/// Reason of a waypoint Gateway refused because its children's names are taken.
pub const NAME_CONFLICT: &str = "NameConflict";

/// Whether `meta` is controlled by the object with `uid` (`None`: an object not created yet
/// controls nothing).
fn controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
    })
}

/// Why an existing object named like a waypoint's child keeps the waypoint from applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Not a waypoint's child: an app's ServiceAccount (whose identity the waypoint would then
    /// hold), Deployment or Service. Never taken over.
    Foreign,
    /// The child of a deleted Gateway of the same name, being deleted.
    PreviousWaypointGoing,
}

/// The claim `meta` puts on a waypoint child's name for the Gateway `name` with `uid`; `None`
/// when the Gateway may apply over it: its own child, or the child of a deleted Gateway of the
/// same name that garbage collection has not reached yet (kube-controller-manager takes up to
/// its discovery resync after an install). Applying over the latter replaces its owner
/// reference (server-side apply keys them by uid), so a waypoint deleted and re-created keeps
/// serving instead of being refused as a name conflict.
fn claim(meta: &ObjectMeta, name: &str, uid: Option<&str>) -> Option<Claim> {
    if controlled_by(meta, uid) {
        return None;
    }
    let previous_waypoint = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_NAME_LABEL))
        .is_some_and(|n| n == name)
        && meta.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && o.kind == "Gateway"
                && o.api_version.starts_with("gateway.networking.k8s.io/")
                && o.name == name
                && Some(o.uid.as_str()) != uid
        });
    match (previous_waypoint, meta.deletion_timestamp.is_some()) {
        (false, _) => Some(Claim::Foreign),
        (true, true) => Some(Claim::PreviousWaypointGoing),
        (true, false) => None,
    }
}

/// The waypoint's children named `name` in `ns` that exist and keep the Gateway with
/// `gateway_uid` from applying them, with why ([`claim`]). Looked up by a name field selector:
/// the controller may list these kinds, not get them.
async fn claims_on_names(
    client: &kube::Client,
    ns: &str,
    name: &str,
    gateway_uid: Option<&str>,
) -> Result<Vec<(String, Claim)>, kube::Error> {
    async fn claimed<K>(
        client: &kube::Client,
        ns: &str,
        name: &str,
        gateway_uid: Option<&str>,
    ) -> Result<Option<(String, Claim)>, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        Ok(Api::<K>::namespaced(client.clone(), ns)
            .list(&by_name)
            .await?
            .items
            .iter()
            .find_map(|o| claim(o.meta(), name, gateway_uid))
            .map(|c| (format!("{} {ns}/{name}", K::kind(&())), c)))
    }
    Ok([
        claimed::<ServiceAccount>(client, ns, name, gateway_uid).await?,
        claimed::<Deployment>(client, ns, name, gateway_uid).await?,
        claimed::<Service>(client, ns, name, gateway_uid).await?,
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// Whether an EndpointSlice of Service `ns/name` lists a ready endpoint (`ready` unset reads as
/// ready, as the API says).
async fn has_ready_endpoint(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    let of_service = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    Ok(Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&of_service)
        .await?
        .items
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false)))
}

/// Puts [`SERVING_SINCE`] on `gw`. A merge patch of that one annotation: it leaves every
/// other field to whoever wrote it (`kubectl ambit waypoint apply`'s server-side apply keeps
/// owning the rest). The patch carries the uid read, which an update cannot change, so a
/// Gateway deleted and re-created meanwhile is not marked for its predecessor's pod.
async fn mark_serving(api: &Api<Gateway>, gw: &Gateway) -> Result<(), kube::Error> {
    let body = json!({"metadata": {"uid": gw.uid(), "annotations": {SERVING_SINCE: now()}}});
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&gw.name_any(), &pp, &Patch::Merge(body)).await?;
    Ok(())
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
        last_transition_time: previous.unwrap_or_else(now),
    }
}

/// The waypoint's Deployment. `replicas` is left out: it defaults to 1 and stays whatever
/// `kubectl scale` or an autoscaler sets (a forced apply of it would undo every scale).
fn deployment(
    ns: &str,
    name: &str,
    for_sa: &str,
    settings: &WaypointSettings,
    owner: &[OwnerReference],
) -> serde_json::Value {
    let root_cert = format!("{ROOT_CERT_DIR}/root.crt");
    let token = format!("{TOKEN_DIR}/{}", ambit_proto::TOKEN_AUDIENCE);
    let mut env = vec![
        json!({"name": "AMBIT_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "AMBIT_WAYPOINT_FOR_SERVICE_ACCOUNT", "value": for_sa}),
        json!({"name": "AMBIT_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}),
        json!({"name": "AMBIT_CONTROLLER", "value": settings.controller_address}),
        json!({"name": "AMBIT_CONTROLLER_IDENTITY", "value": settings.controller_identity}),
        json!({"name": "AMBIT_ROOT_CERT", "value": root_cert}),
        json!({"name": "AMBIT_TOKEN", "value": token}),
        json!({"name": "AMBIT_LOG", "value": "info"}),
        // As the node tunnel's (charts/ambit, docs/tunnel.md "Memory allocator"): glibc keeps
        // up to 1 MiB free at the top of a heap instead of trimming past 128 KiB, so the
        // data path's freed buffers do not cost a brk and fresh pages every few reads.
        json!({"name": "GLIBC_TUNABLES", "value": "glibc.malloc.trim_threshold=1048576"}),
    ];
    if let Some(tracing) = &settings.tracing {
        env.extend(tracing.env(ns, name));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {GATEWAY_NAME_LABEL: name}, "ownerReferences": owner},
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": {
                    GATEWAY_NAME_LABEL: name,
                    WAYPOINT_FOR_LABEL: for_sa,
                    // The waypoint speaks HBONE itself; the node tunnel must not capture it.
                    DATAPLANE_MODE_LABEL: DATAPLANE_MODE_NONE,
                }},
                "spec": {
                    "serviceAccountName": name,
                    // It talks to the controller only, with its ambit-ca token; no API access.
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECS,
                    // Pod-level user and fsGroup: kubelet gives the projected token file to
                    // them, so the non-root waypoint can read it.
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": WAYPOINT_UID,
                        "runAsGroup": WAYPOINT_UID,
                        "fsGroup": WAYPOINT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "waypoint",
                        "image": settings.image,
                        "env": env,
                        // Admin and config dump stay on 127.0.0.1:15000, not a container port.
                        "ports": [
                            {"name": "hbone", "containerPort": HBONE_PORT, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                            {"name": "ready", "containerPort": READINESS_PORT, "protocol": "TCP"},
                        ],
                        // 200 once it holds its certificate and its first config. No liveness
                        // probe on it: a waypoint keeps serving its last good config while
                        // the controller is away, and must not be restarted for that.
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz/ready", "port": READINESS_PORT},
                            "periodSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "32Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "privileged": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": WAYPOINT_UID,
                            "runAsGroup": WAYPOINT_UID,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "ambit-token", "mountPath": TOKEN_DIR, "readOnly": true},
                            {"name": "ambit-root-cert", "mountPath": ROOT_CERT_DIR, "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "ambit-token", "projected": {"sources": [
                            {"serviceAccountToken": {"audience": ambit_proto::TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": ambit_proto::TOKEN_AUDIENCE}},
                        ]}},
                        {"name": "ambit-root-cert", "configMap": {
                            "name": crate::ca::ROOT_CONFIGMAP,
                            "items": [{"key": "root.crt", "path": "root.crt"}],
                        }},
                    ],
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

    fn settings() -> WaypointSettings {
        WaypointSettings {
            image: "registry/ambit-waypoint:v1".into(),
            controller_address: "ambit-controller.ambit-system.svc:15012".into(),
            controller_identity: "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller"
                .into(),
            tracing: None,
        }
    }

    /// The waypoint container's variables, `<fieldPath>` for those from the pod.
    fn env(deployment: &serde_json::Value) -> Vec<(String, String)> {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = match e.get("value") {
                    Some(v) => v.as_str().unwrap().to_owned(),
                    None => format!(
                        "<{}>",
                        e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()
                    ),
                };
                (e["name"].as_str().unwrap().to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn tracing_reaches_the_waypoint_the_opentelemetry_way() {
        let mut s = settings();
        s.tracing = Some(WaypointTracing {
            endpoint: "https://otel.observability:4317".into(),
            sampling: "0.1".into(),
            url_path: ambit_telemetry::otlp_settings::UrlPath::None,
        });
        let d = deployment("shop", "waypoint-back", "back", &s, &[]);
        let otel: Vec<(String, String)> = env(&d)
            .into_iter()
            .filter(|(k, _)| k.starts_with("OTEL_") || k.contains("OTLP"))
            .collect();
        let want = [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://otel.observability:4317",
            ),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_SERVICE_NAME", "waypoint-back.shop"),
            ("AMBIT_OTLP_URL_PATH", "none"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(otel, want);
        let off = deployment("shop", "waypoint-back", "back", &settings(), &[]);
        assert!(
            !env(&off)
                .iter()
                .any(|(k, _)| k.starts_with("OTEL_") || k.contains("OTLP"))
        );
    }

    fn child(labels: serde_json::Value, owners: serde_json::Value, deleting: bool) -> ObjectMeta {
        let mut meta =
            json!({"name": "waypoint-back", "labels": labels, "ownerReferences": owners});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-12-01T20:00:00Z");
        }
        serde_json::from_value(meta).unwrap()
    }

    fn gateway_owner(name: &str, uid: &str) -> serde_json::Value {
        json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true}])
    }

    #[test]
    fn only_a_deleted_same_named_gateways_children_are_applied_over() {
        let ours = json!({GATEWAY_NAME_LABEL: "waypoint-back"});
        let name = "waypoint-back";
        // Its own child.
        let own = child(ours.clone(), gateway_owner(name, "new"), false);
        assert_eq!(claim(&own, name, Some("new")), None);
        // The previous Gateway's, not yet reached by garbage collection: adopted.
        let previous = child(ours.clone(), gateway_owner(name, "old"), false);
        assert_eq!(claim(&previous, name, Some("new")), None);
        // ... being deleted: waited for.
        let going = child(ours.clone(), gateway_owner(name, "old"), true);
        assert_eq!(
            claim(&going, name, Some("new")),
            Some(Claim::PreviousWaypointGoing)
        );
        // An app's objects, and anything merely looking like a waypoint's, are never taken.
        let app = child(json!({"app": "back"}), json!([]), false);
        assert_eq!(claim(&app, name, Some("new")), Some(Claim::Foreign));
        let unlabelled = child(json!({}), gateway_owner(name, "old"), false);
        assert_eq!(claim(&unlabelled, name, Some("new")), Some(Claim::Foreign));
        let other_gateway = child(ours.clone(), gateway_owner("other", "old"), false);
        assert_eq!(
            claim(&other_gateway, name, Some("new")),
            Some(Claim::Foreign)
        );
        let mut not_controller = gateway_owner(name, "old");
        not_controller[0]["controller"] = json!(false);
        let not_controlled = child(ours.clone(), not_controller, false);
        assert_eq!(
            claim(&not_controlled, name, Some("new")),
            Some(Claim::Foreign)
        );
        let mut deployment_owner = gateway_owner(name, "old");
        deployment_owner[0]["kind"] = json!("Deployment");
        deployment_owner[0]["apiVersion"] = json!("apps/v1");
        let owned_otherwise = child(ours, deployment_owner, false);
        assert_eq!(
            claim(&owned_otherwise, name, Some("new")),
            Some(Claim::Foreign)
        );
    }

    #[test]
    fn the_deployment_is_production_shaped() {
        let d = deployment("shop", "waypoint-back", "back", &settings(), &[]);
        // Every field is a real Deployment field: a typo would not survive the round trip.
        let typed: Deployment = serde_json::from_value(d.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), d);
        // Scaling is the user's: the controller does not apply replicas.
        assert!(d["spec"].get("replicas").is_none());

        let template = &d["spec"]["template"];
        let labels = &template["metadata"]["labels"];
        assert_eq!(labels[GATEWAY_NAME_LABEL], "waypoint-back");
        assert_eq!(labels[WAYPOINT_FOR_LABEL], "back");
        assert_eq!(labels["ambit.dev/dataplane-mode"], "none");
        let pod = &template["spec"];
        assert_eq!(pod["serviceAccountName"], "waypoint-back");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["terminationGracePeriodSeconds"], 10);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 1337);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );

        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry/ambit-waypoint:v1");
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], 1337);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "50m", "memory": "32Mi"})
        );
        assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
        let ports: Vec<(&str, i64)> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["containerPort"].as_i64().unwrap(),
                )
            })
            .collect();
        // The admin port (15000) stays on loopback: not a container port.
        assert_eq!(
            ports,
            [("hbone", 15008), ("metrics", 15020), ("ready", 15021)]
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/healthz/ready", "port": 15021})
        );
        assert!(c.get("livenessProbe").is_none());

        // Exactly the variables the waypoint reads.
        let env = env(&d);
        let want = [
            ("AMBIT_NAMESPACE", "<metadata.namespace>"),
            ("AMBIT_WAYPOINT_FOR_SERVICE_ACCOUNT", "back"),
            ("AMBIT_SERVICE_ACCOUNT", "<spec.serviceAccountName>"),
            (
                "AMBIT_CONTROLLER",
                "ambit-controller.ambit-system.svc:15012",
            ),
            (
                "AMBIT_CONTROLLER_IDENTITY",
                "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller",
            ),
            ("AMBIT_ROOT_CERT", "/var/run/ambit/root/root.crt"),
            ("AMBIT_TOKEN", "/var/run/secrets/tokens/ambit-ca"),
            ("AMBIT_LOG", "info"),
            ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(env, want);

        // The files those variables name are mounted from the right volumes.
        let mounts: Vec<(&str, &str)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["readOnly"], true);
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("ambit-token", "/var/run/secrets/tokens"),
                ("ambit-root-cert", "/var/run/ambit/root")
            ]
        );
        let volumes = pod["volumes"].as_array().unwrap();
        assert_eq!(
            volumes[0]["projected"]["sources"][0]["serviceAccountToken"],
            json!({"audience": "ambit-ca", "expirationSeconds": 3600, "path": "ambit-ca"})
        );
        assert_eq!(
            volumes[1]["configMap"],
            json!({"name": "ambit-root-cert", "items": [{"key": "root.crt", "path": "root.crt"}]})
        );
    }

    #[test]
    fn only_objects_the_gateway_controls_are_its_own() {
        let meta = |owners: serde_json::Value| -> ObjectMeta {
            serde_json::from_value(json!({"name": "w", "ownerReferences": owners})).unwrap()
        };
        let owner = |uid: &str, controller: bool| json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "w", "uid": uid, "controller": controller});
        assert!(controlled_by(&meta(json!([owner("g1", true)])), Some("g1")));
        // An app's object of the same name: no owner, another owner, or ours but not as
        // controller.
        assert!(!controlled_by(&meta(json!([])), Some("g1")));
        assert!(!controlled_by(
            &meta(json!([owner("g2", true)])),
            Some("g1")
        ));
        assert!(!controlled_by(
            &meta(json!([owner("g1", false)])),
            Some("g1")
        ));
        assert!(!controlled_by(&meta(json!([owner("g1", true)])), None));
    }

    #[test]
    fn serving_is_the_mark_or_an_earlier_controllers_programmed() {
        let base = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "w", "namespace": "n"},
            "spec": {"gatewayClassName": WAYPOINT_CLASS, "listeners": []}});
        let programmed = |status: &str| {
            let mut v = base.clone();
            v["status"] = json!({"conditions": [{"type": "Programmed", "status": status, "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
            gw(v)
        };
        assert!(!is_serving(&gw(base.clone())));
        assert!(!is_serving(&programmed("False")));
        assert!(is_serving(&programmed("True")));
        let mut marked = base.clone();
        marked["metadata"]["annotations"] = json!({SERVING_SINCE: "2026-01-01T00:00:00Z"});
        assert!(is_serving(&gw(marked)));
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
