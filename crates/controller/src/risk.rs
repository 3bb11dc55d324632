//! Risk profiles (docs/risk-profiles.md): every namespace labelled `ambit.dev/risk-profile` is
//! evaluated against its profile's requirements ([`ambit_risk`]) after each new snapshot and
//! every 10 s, when its objects changed since ([`Touched`]). Every replica evaluates: in enforce
//! mode the service accounts [`ambit_risk::enforcement_targets`] names are [`Refusals`], which
//! the index turns into one DENY policy per namespace that node tunnels apply to those
//! accounts' pods (so the data plane refuses them with no code of its own), and the metrics say
//! how each namespace stands.
//! The Lease holder also writes each namespace's `RiskProfile` (status only when it changed)
//! and deletes it once the label is gone.

use crate::index::{Change, ChangeQueue, ClusterView, Stores};
use crate::metrics::Metrics;
use crate::status::{self, Verdict};
use ambit_k8s::risk_profile::{RISK_PROFILE_NAME, RiskProfileSpec, RiskProfileStatus};
use ambit_proto::config::v1 as pb;
use ambit_risk::{Enforcement, MeshSettings, NamespaceFacts, NamespaceObjects};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use ambit_k8s::risk_profile::RiskProfile;

/// The label the index puts on the workloads (never on the pods) of refused service
/// accounts; a pod's own value of it is dropped.
pub const REFUSED_LABEL: &str = "ambit.dev/risk-refused";
/// The DENY policy selecting them, in each namespace that refuses some. Not a Kubernetes
/// name (`:`), so no AuthorizationPolicy can take its place.
pub const DENY_POLICY: &str = "ambit.dev:risk-enforce";
/// The condition messages' mark on a requirement whose accounts are refused.
const REFUSED_NOTE: &str = "traffic refused (enforce)";
/// The condition type saying a namespace's labels cannot be read.
const LABELS: &str = "Labels";
/// Its reason, and the Warning Event's.
const INVALID_LABEL: &str = "InvalidLabel";
/// How long what this replica wrote is trusted over a store that does not show the object:
/// a fresh create reaches the store within a pass or two; past this, it was deleted.
const STORE_LAG: Duration = Duration::from_secs(30);
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The service accounts whose inbound traffic node tunnels refuse, by namespace: written by
/// the evaluation, read by the index (told by [`Change::Refusals`]).
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<RwLock<BTreeMap<String, BTreeSet<String>>>>);

impl Refusals {
    pub fn is_refused(&self, namespace: &str, service_account: &str) -> bool {
        self.read()
            .get(namespace)
            .is_some_and(|s| s.contains(service_account))
    }

    /// The namespaces that refuse some account.
    pub fn namespaces(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn refuses_any(&self, namespace: &str) -> bool {
        self.read().contains_key(namespace)
    }

    /// Makes `refused` (namespaces without any left out) the refusals; returns the namespaces
    /// whose refused accounts changed.
    fn replace(&self, mut refused: BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
        refused.retain(|_, s| !s.is_empty());
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let changed: BTreeSet<String> = current
            .keys()
            .chain(refused.keys())
            .filter(|ns| current.get(*ns) != refused.get(*ns))
            .cloned()
            .collect();
        if !changed.is_empty() {
            *current = refused;
        }
        changed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The DENY policy of `namespace`'s refused accounts: its one empty rule matches every
/// connection.
pub fn deny_policy(namespace: &str) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        name: DENY_POLICY.into(),
        namespace: namespace.into(),
        action: "DENY".into(),
        match_labels: [(REFUSED_LABEL.to_owned(), "true".to_owned())].into(),
        rules: vec![pb::Rule::default()],
        ..Default::default()
    }
}

/// How one labelled namespace stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub namespace: String,
    /// The labels' values, as written.
    pub profile: String,
    pub mode: String,
    /// `(type, verdict)` per requirement (or one `Labels` condition when a label is bad).
    pub conditions: Vec<(String, Verdict)>,
    /// The accounts refused: empty unless enforced.
    pub refused: BTreeSet<String>,
    /// Why the labels cannot be read (then `conditions` is the one `Labels` condition).
    pub label_error: Option<ambit_risk::LabelError>,
}

impl Evaluation {
    fn unmet(&self) -> impl Iterator<Item = &(String, Verdict)> {
        self.conditions.iter().filter(|(_, v)| !v.ok)
    }
}

/// Groups `objects` of the `wanted` namespaces by namespace.
fn by_namespace<'a, K: Resource>(
    objects: &'a [Arc<K>],
    wanted: &BTreeSet<String>,
) -> HashMap<String, Vec<&'a K>> {
    let mut out: HashMap<String, Vec<&K>> = HashMap::new();
    for o in objects {
        if let Some(ns) = o
            .meta()
            .namespace
            .as_ref()
            .filter(|ns| wanted.contains(*ns))
        {
            out.entry(ns.clone()).or_default().push(o);
        }
    }
    out
}

/// The objects of namespace `ns` in `grouped`.
fn of<'a, K>(grouped: &HashMap<String, Vec<&'a K>>, ns: &str) -> Vec<&'a K> {
    grouped.get(ns).cloned().unwrap_or_default()
}

/// The namespaces whose objects changed since the evaluation last looked: what it evaluates
/// again. Every other namespace's evaluation is a function of the same objects (and of
/// settings fixed for the controller's life), so it is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Touched {
    /// Any may have: a relist, or nothing evaluated yet.
    #[default]
    All,
    Namespaces(BTreeSet<String>),
}

impl Touched {
    pub fn none() -> Self {
        Self::Namespaces(BTreeSet::new())
    }

    /// Adds the namespace `change` touches, if the evaluation reads what changed.
    pub fn add(&mut self, change: &Change) {
        let ns = match change {
            Change::All => {
                *self = Self::All;
                return;
            }
            Change::Namespace(ns) => ns,
            Change::Pod((ns, _))
            | Change::Service((ns, _))
            | Change::Gateway((ns, _))
            | Change::Policy((ns, _))
            | Change::Route(_, (ns, _))
            | Change::RequestAuthn((ns, _))
            | Change::RateLimit((ns, _)) => ns,
            // Not read by the evaluation; the refusals are what it makes.
            Change::EndpointSlice(_)
            | Change::ReferenceGrant
            | Change::KeySets
            | Change::Refusals(_) => return,
        };
        if let Self::Namespaces(names) = self {
            names.insert(ns.clone());
        }
    }
}

/// The evaluations of every labelled namespace, kept from pass to pass.
#[derive(Debug, Default)]
pub struct Evaluations(BTreeMap<String, Evaluation>);

/// What [`Evaluations::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// How many namespaces it evaluated.
    pub evaluated: usize,
    /// Whether an evaluation changed, came or went.
    pub changed: bool,
}

impl Evaluations {
    /// Evaluates the `touched` namespaces again.
    pub fn update(
        &mut self,
        stores: &Stores,
        settings: &MeshSettings,
        touched: Touched,
    ) -> Updated {
        let namespaces = match &touched {
            Touched::All => stores.namespaces.state(),
            Touched::Namespaces(names) => names
                .iter()
                .filter_map(|ns| stores.namespaces.get(&ObjectRef::new(ns)))
                .collect(),
        };
        let labelled: Vec<Arc<Namespace>> =
            namespaces.into_iter().filter(|ns| labelled(ns)).collect();
        let evaluated = labelled.len();
        let fresh = evaluate_labelled(stores, settings, labelled);
        // What was kept of them, including those no longer labelled or gone.
        let kept: BTreeMap<String, Evaluation> = match touched {
            Touched::All => std::mem::take(&mut self.0),
            Touched::Namespaces(names) => names
                .iter()
                .filter_map(|ns| self.0.remove_entry(ns))
                .collect(),
        };
        let changed = kept != fresh;
        self.0.extend(fresh);
        Updated { evaluated, changed }
    }

    pub fn get(&self) -> &BTreeMap<String, Evaluation> {
        &self.0
    }
}

/// Whether `ns` asks for an evaluation. A namespace with only an enforcement label does too:
/// a mistyped one is said.
fn labelled(ns: &Namespace) -> bool {
    let labels = ns.labels();
    labels.contains_key(ambit_k8s::names::RISK_PROFILE_LABEL)
        || labels.contains_key(ambit_k8s::names::RISK_ENFORCEMENT_LABEL)
}

/// Every labelled namespace's evaluation, by namespace.
pub fn evaluate_all(stores: &Stores, settings: &MeshSettings) -> BTreeMap<String, Evaluation> {
    let labelled = stores
        .namespaces
        .state()
        .into_iter()
        .filter(|ns| labelled(ns))
        .collect();
    evaluate_labelled(stores, settings, labelled)
}

/// The evaluations of the `labelled` namespaces, by namespace: one read of each store.
fn evaluate_labelled(
    stores: &Stores,
    settings: &MeshSettings,
    labelled: Vec<Arc<Namespace>>,
) -> BTreeMap<String, Evaluation> {
    if labelled.is_empty() {
        return BTreeMap::new();
    }
    let wanted: BTreeSet<String> = labelled.iter().map(|ns| ns.name_any()).collect();
    let (pods, services, gateways) = (
        stores.pods.state(),
        stores.services.state(),
        stores.gateways.state(),
    );
    let (policies, authns, limits) = (
        stores.policies.state(),
        stores.request_authns.state(),
        stores.rate_limits.state(),
    );
    let (http_routes, grpc_routes) = (stores.http_routes.state(), stores.grpc_routes.state());
    let pods = by_namespace(&pods, &wanted);
    let services = by_namespace(&services, &wanted);
    let gateways = by_namespace(&gateways, &wanted);
    let policies = by_namespace(&policies, &wanted);
    let authns = by_namespace(&authns, &wanted);
    let limits = by_namespace(&limits, &wanted);
    let http_routes = by_namespace(&http_routes, &wanted);
    let grpc_routes = by_namespace(&grpc_routes, &wanted);
    labelled
        .iter()
        .filter_map(|ns| {
            let name = ns.name_any();
            let (p, s, g, ap) = (
                of(&pods, &name),
                of(&services, &name),
                of(&gateways, &name),
                of(&policies, &name),
            );
            let (ra, hr, gr, rl) = (
                of(&authns, &name),
                of(&http_routes, &name),
                of(&grpc_routes, &name),
                of(&limits, &name),
            );
            let objects = NamespaceObjects {
                namespace: ns,
                pods: &p,
                services: &s,
                gateways: &g,
                authorization_policies: &ap,
                request_authentications: &ra,
                http_routes: &hr,
                grpc_routes: &gr,
                rate_limit_policies: &rl,
            };
            evaluate(ns, &objects, settings).map(|e| (name, e))
        })
        .collect()
}

/// One namespace's evaluation; `None` when it asks for no profile (and its labels are good).
fn evaluate(
    ns: &Namespace,
    objects: &NamespaceObjects<'_>,
    settings: &MeshSettings,
) -> Option<Evaluation> {
    let label = |key: &str| ns.labels().get(key).cloned().unwrap_or_default();
    let mut evaluation = Evaluation {
        namespace: ns.name_any(),
        profile: label(ambit_k8s::names::RISK_PROFILE_LABEL),
        mode: label(ambit_k8s::names::RISK_ENFORCEMENT_LABEL),
        conditions: Vec::new(),
        refused: BTreeSet::new(),
        label_error: None,
    };
    let (profile, mode) = match ambit_risk::labels(ns) {
        Ok(Some(labels)) => labels,
        Ok(None) => return None,
        Err(e) => {
            evaluation.conditions.push((
                LABELS.into(),
                Verdict::failed(INVALID_LABEL, format!("{e}; nothing is evaluated")),
            ));
            evaluation.label_error = Some(e);
            return Some(evaluation);
        }
    };
    evaluation.mode = mode.as_str().into();
    let facts = NamespaceFacts::build(objects, settings);
    if mode == Enforcement::Enforce {
        evaluation.refused = ambit_risk::enforcement_targets(profile, &facts);
    }
    evaluation.conditions = ambit_risk::evaluate(profile, &facts)
        .into_iter()
        .map(|s| {
            let mut message = s.message;
            if let Some(fix) = s.fix {
                message = format!("{message}. Fix: {fix}");
            }
            // Only the requirement enforce mode refuses on says so: the others name accounts
            // for what they lack, which refuses nothing.
            let refused: Vec<&str> = s
                .short_accounts
                .iter()
                .filter(|sa| {
                    s.id == ambit_risk::REFUSING_REQUIREMENT && evaluation.refused.contains(*sa)
                })
                .map(String::as_str)
                .collect();
            if !refused.is_empty() {
                message = format!(
                    "{message}. {REFUSED_NOTE}: node tunnels refuse inbound traffic to {}",
                    refused.join(", ")
                );
            }
            let verdict = Verdict {
                ok: s.met,
                reason: s.reason,
                message,
            };
            (s.id.as_str().to_owned(), verdict)
        })
        .collect();
    Some(evaluation)
}

/// Inputs of the evaluation task.
#[derive(Clone)]
pub struct Context {
    pub view: ClusterView,
    /// Says which namespaces changed; told when the refusals change.
    pub changes: Arc<ChangeQueue>,
    pub settings: MeshSettings,
    pub metrics: Arc<Metrics>,
    /// Warns on a RiskProfile when accounts are newly refused.
    pub events: status::Events,
    /// The RiskProfiles (not waited for at start: without the CRD, only status is missing).
    pub profiles: Store<RiskProfile>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// What one pass leaves the next.
#[derive(Debug, Default)]
struct Kept {
    evaluations: Evaluations,
    /// What this replica wrote while leading, by namespace (cleared when it stops leading).
    written: BTreeMap<String, Written>,
}

/// Evaluates, refuses, exports, and (as Lease holder) writes status, until the snapshot or
/// leader channel closes.
pub async fn run(ctx: Context) {
    // Passes run one after the other: the lock is never waited for.
    let kept = Arc::new(tokio::sync::Mutex::new(Kept::default()));
    let view = &ctx.view;
    crate::policy::every_snapshot(view.leader.clone(), view.snapshots.clone(), |_, leading| {
        let (ctx, kept) = (ctx.clone(), kept.clone());
        async move { pass(&ctx, &mut *kept.lock().await, leading).await }
    })
    .await;
}

async fn pass(ctx: &Context, kept: &mut Kept, leading: bool) {
    let stores = &ctx.view.stores;
    let updated = kept
        .evaluations
        .update(stores, &ctx.settings, ctx.changes.take_touched());
    if updated.evaluated > 0 {
        tracing::debug!(evaluated = updated.evaluated, "risk profiles evaluated");
    }
    let evaluations = kept.evaluations.get();
    // Even when no evaluation changed: the refusals made at start came from evaluations not
    // kept here.
    for ns in refuse(&stores.refusals, evaluations) {
        ctx.changes.push(Change::Refusals(ns));
    }
    if updated.changed {
        ctx.metrics.set_risk(
            evaluations.values().flat_map(|e| {
                e.conditions
                    .iter()
                    .map(|(t, v)| ([e.namespace.clone(), e.profile.clone(), t.clone()], !v.ok))
            }),
            evaluations
                .values()
                .map(|e| (e.namespace.clone(), e.refused.len())),
        );
    }
    // The RiskProfiles' store must have listed, or every status would look new.
    if leading && futures::FutureExt::now_or_never(ctx.profiles.wait_until_ready()).is_some() {
        write_statuses(ctx, evaluations, &mut kept.written).await;
    } else if !leading {
        // Another replica writes meanwhile: what this one wrote says nothing of the objects
        // when it leads again.
        kept.written.clear();
    }
}

/// Makes the accounts `evaluations` refuse the refusals, logging a change; returns the
/// namespaces whose refused accounts changed.
pub fn refuse(refusals: &Refusals, evaluations: &BTreeMap<String, Evaluation>) -> BTreeSet<String> {
    let refused: BTreeMap<String, BTreeSet<String>> = evaluations
        .values()
        .filter(|e| !e.refused.is_empty())
        .map(|e| (e.namespace.clone(), e.refused.clone()))
        .collect();
    let changed = refusals.replace(refused.clone());
    if !changed.is_empty() {
        tracing::warn!(
            ?refused,
            "risk profiles enforced: node tunnels refuse inbound traffic to these namespaces' service accounts"
        );
    }
    changed
}

/// The status `evaluation` makes, keeping `previous` conditions' transition times.
pub fn status_of(
    evaluation: &Evaluation,
    previous: Option<&RiskProfileStatus>,
    generation: Option<i64>,
) -> RiskProfileStatus {
    let before = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let unmet = u32::try_from(evaluation.unmet().count()).unwrap_or(u32::MAX);
    let total = u32::try_from(evaluation.conditions.len()).unwrap_or(u32::MAX);
    RiskProfileStatus {
        profile: evaluation.profile.clone(),
        mode: evaluation.mode.clone(),
        met: total - unmet,
        unmet,
        refused_service_accounts: evaluation.refused.iter().cloned().collect(),
        conditions: evaluation
            .conditions
            .iter()
            .map(|(t, v)| v.condition(t, generation, status::find(before, t)))
            .collect(),
    }
}

/// What this replica last wrote of a namespace's RiskProfile: the store may lag a fresh
/// create or status write by a pass or more, and must not make it write or tell things twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub status: RiskProfileStatus,
    pub at: Instant,
}

/// What was last written of one namespace's RiskProfile, as far as this replica can tell: its
/// own write unless the store shows another object (recreated) or, past [`STORE_LAG`], none
/// (deleted); else the stored object's.
pub fn last_written<'a>(
    stored: Option<&'a RiskProfile>,
    written: Option<&'a Written>,
    now: Instant,
) -> Option<(Option<i64>, Option<&'a RiskProfileStatus>)> {
    let ours = written.filter(|w| match stored {
        Some(p) => p.uid() == w.uid,
        None => now.saturating_duration_since(w.at) < STORE_LAG,
    });
    match (ours, stored) {
        (Some(w), _) => Some((w.generation, Some(&w.status))),
        (None, Some(p)) => Some((p.meta().generation, p.status.as_ref())),
        (None, None) => None,
    }
}

/// One Event to write on a RiskProfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The Events a status change from `before` to `want` tells: accounts newly refused, refusals
/// lifted, a label newly unreadable. Told once per change, since a status is written (and this
/// asked) only when it changed.
pub fn notices(
    evaluation: &Evaluation,
    before: Option<&RiskProfileStatus>,
    want: &RiskProfileStatus,
) -> Vec<Notice> {
    let ns = &evaluation.namespace;
    let was_refused: BTreeSet<&String> = before
        .map(|s| s.refused_service_accounts.iter().collect())
        .unwrap_or_default();
    let is_refused: BTreeSet<&String> = want.refused_service_accounts.iter().collect();
    let list = |a: Vec<&&String>| a.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    let newly: Vec<_> = is_refused.difference(&was_refused).collect();
    if !newly.is_empty() {
        out.push(Notice {
            warning: true,
            reason: "TrafficRefused",
            note: format!(
                "{REFUSED_NOTE}: node tunnels refuse inbound traffic to service accounts {} until each has a Programmed waypoint of its own ({}; kubectl ambit waypoint apply -n {ns} --service-account <account>; kubectl get riskprofile -n {ns} {RISK_PROFILE_NAME} -o yaml)",
                list(newly),
                ambit_risk::REFUSING_REQUIREMENT,
            ),
        });
    }
    let lifted: Vec<_> = was_refused.difference(&is_refused).collect();
    if !lifted.is_empty() {
        out.push(Notice {
            warning: false,
            reason: "TrafficRefusalLifted",
            note: format!(
                "node tunnels no longer refuse inbound traffic to service accounts {}",
                list(lifted)
            ),
        });
    }
    let label_message = |s: Option<&RiskProfileStatus>| {
        s.and_then(|s| status::find(&s.conditions, LABELS))
            .map(|c| c.message.clone())
    };
    if let Some(e) = &evaluation.label_error
        && label_message(before) != label_message(Some(want))
    {
        out.push(Notice {
            warning: true,
            reason: INVALID_LABEL,
            note: format!(
                "label {}={:?} on namespace {ns} is not one of {}: nothing is evaluated or refused until it is",
                e.label, e.value, e.expected
            ),
        });
    }
    out
}

async fn write_statuses(
    ctx: &Context,
    evaluations: &BTreeMap<String, Evaluation>,
    written: &mut BTreeMap<String, Written>,
) {
    let existing: BTreeMap<String, Arc<RiskProfile>> = ctx
        .profiles
        .state()
        .into_iter()
        .filter(|p| p.name_any() == RISK_PROFILE_NAME)
        .map(|p| (p.namespace().unwrap_or_default(), p))
        .collect();
    for (ns, p) in &existing {
        if !evaluations.contains_key(ns) {
            delete(ctx, p).await;
        }
    }
    written.retain(|ns, _| evaluations.contains_key(ns));
    let now = Instant::now();
    for (ns, evaluation) in evaluations {
        let stored = existing.get(ns).map(|p| &**p);
        let api: Api<RiskProfile> = Api::namespaced(ctx.view.client.clone(), ns);
        let (generation, previous) = match last_written(stored, written.get(ns), now) {
            Some(last) => last,
            None => match create(&api).await {
                Ok(p) => (p.meta().generation, None),
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "creating the RiskProfile");
                    continue;
                }
            },
        };
        let want = status_of(evaluation, previous, generation);
        if previous == Some(&want) {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": RiskProfile::api_version(&()), "kind": RiskProfile::kind(&()),
            "metadata": {"name": RISK_PROFILE_NAME, "namespace": ns},
            "status": want,
        });
        let result = api
            .patch_status(RISK_PROFILE_NAME, &apply_params(), &Patch::Apply(body))
            .await;
        let object = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "writing the RiskProfile status");
                continue;
            }
        };
        tracing::info!(namespace = %ns, profile = %want.profile, mode = %want.mode, unmet = want.unmet, refused = ?want.refused_service_accounts, "risk profile status");
        let reference = object.object_ref(&());
        for n in notices(evaluation, previous, &want) {
            if n.warning {
                ctx.events
                    .warn(&reference, n.reason, "Evaluate", &n.note)
                    .await;
            } else {
                ctx.events
                    .normal(&reference, n.reason, "Evaluate", &n.note)
                    .await;
            }
        }
        written.insert(
            ns.clone(),
            Written {
                uid: object.uid(),
                generation: object.meta().generation,
                status: want,
                at: now,
            },
        );
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(crate::waypoint::FIELD_MANAGER).force()
}

/// Creates (server-side apply) the namespace's RiskProfile, without status.
async fn create(api: &Api<RiskProfile>) -> Result<RiskProfile, kube::Error> {
    let mut object = RiskProfile::new(RISK_PROFILE_NAME, RiskProfileSpec {});
    object.labels_mut().insert(
        MANAGED_BY.into(),
        crate::status::REPORTING_CONTROLLER.into(),
    );
    api.patch(RISK_PROFILE_NAME, &apply_params(), &Patch::Apply(&object))
        .await
}

/// Deletes a RiskProfile whose namespace lost its label: that one object, as listed.
async fn delete(ctx: &Context, p: &RiskProfile) {
    let ns = p.namespace().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: p.uid(),
            resource_version: p.resource_version(),
        }),
        ..Default::default()
    };
    let api: Api<RiskProfile> = Api::namespaced(ctx.view.client.clone(), &ns);
    match api.delete(RISK_PROFILE_NAME, &params).await {
        Ok(_) => tracing::info!(namespace = %ns, "risk profile label removed: RiskProfile deleted"),
        Err(e) => tracing::warn!(namespace = %ns, error = %e, "deleting the RiskProfile"),
    }
}

#[cfg(test)]
#[path = "risk_tests.rs"]
mod tests;
