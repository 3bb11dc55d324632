//! Status conditions the Lease holder writes: what a condition says (`Verdict`), the condition
//! it makes (its transition time kept while the status does not flip, as Kubernetes conditions
//! do), and the write of ambit's own resources' one condition (AuthorizationPolicy `Enforced`,
//! RequestAuthentication `Ready`, RateLimitPolicy `Accepted`), made only when it changed; and
//! the Warning Events that tell an object's owner what went wrong with it.

use crate::crd::Condition;
use crate::waypoint::FIELD_MANAGER;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams};
use kube::api::{ObjectMeta, PostParams};
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};

/// A condition's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub(crate) fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }

    /// As a condition of `type_` for `generation`, keeping `previous`'s transition time when
    /// the status did not change.
    pub fn condition(
        &self,
        type_: &str,
        generation: Option<i64>,
        previous: Option<&Condition>,
    ) -> Condition {
        let status = if self.ok { "True" } else { "False" };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: self.reason.into(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time: previous
                .filter(|c| c.status == status)
                .map_or_else(crate::waypoint::now, |c| c.last_transition_time.clone()),
        }
    }
}

/// The condition of `type_` among `conditions`.
pub(crate) fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The condition `type_` saying `verdict` for `generation`, unless `previous` says so already.
fn changed(
    previous: Option<&Condition>,
    type_: &str,
    verdict: &Verdict,
    generation: Option<i64>,
) -> Option<Condition> {
    let condition = verdict.condition(type_, generation, previous);
    (previous != Some(&condition)).then_some(condition)
}

/// Makes `verdict` the condition `type_` of `object`, whose current one is `previous`: unless
/// it already says so for the object's generation, applies it as the status's only condition
/// (server-side, forced, ambit's field manager) and logs the outcome as `what`'s status.
pub(crate) async fn apply_condition<K>(
    client: &kube::Client,
    object: &K,
    previous: Option<&Condition>,
    type_: &str,
    verdict: &Verdict,
    what: &str,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let Some(condition) = changed(previous, type_, verdict, object.meta().generation) else {
        return;
    };
    let (Some(ns), name) = (object.namespace(), object.name_any()) else {
        return;
    };
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": ns},
        "status": {"conditions": [condition]},
    });
    let result = Api::<K>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await;
    match result {
        Ok(_) => {
            tracing::info!(namespace = %ns, name = %name, condition = type_, ok = verdict.ok, reason = verdict.reason, "{what} status")
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "writing {what} status")
        }
    }
}

/// Writes Events (events.k8s.io/v1: Warning ones, and Normal ones saying a Warning's cause is
/// over), as `kubectl describe` and `kubectl events` show,
/// as `ambit-controller` from this replica. Each call writes its own Event: callers tell each
/// thing once (kube's `Recorder` would fold Events of one reason on one object into a series
/// that keeps the first note, hiding a later, different message).
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    instance: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// `instance`: the replica (its pod name).
    pub fn new(client: kube::Client, instance: String) -> Self {
        Self { client, instance }
    }

    /// A Warning Event on `object`; a failure to write it is logged.
    pub(crate) async fn warn(
        &self,
        object: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.write("Warning", object, reason, action, note).await;
    }

    /// A Normal Event on `object` (something wrong is over); a failure to write it is logged.
    pub(crate) async fn normal(
        &self,
        object: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.write("Normal", object, reason, action, note).await;
    }

    async fn write(
        &self,
        type_: &str,
        object: &ObjectReference,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                // As kube's Recorder names them: unique per object and instant.
                name: Some(format!(
                    "{}.{:x}",
                    object.name.as_deref().unwrap_or(REPORTING_CONTROLLER),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note.into()),
            regarding: Some(object.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(kind = ?object.kind, %namespace, name = ?object.name, reason, %error, "cannot write an event");
        }
    }
}

/// Who the controller's Events say reported them.
pub const REPORTING_CONTROLLER: &str = "ambit-controller";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_written_only_when_it_changes() {
        let want = Verdict::ok("Enforced", "m");
        let fresh = changed(None, "Enforced", &want, Some(3));
        assert!(fresh.is_some(), "no condition yet");
        let previous = Condition {
            type_: "Enforced".into(),
            status: "True".into(),
            reason: "Enforced".into(),
            message: "m".into(),
            observed_generation: Some(3),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(changed(Some(&previous), "Enforced", &want, Some(3)), None);
        let newer = changed(Some(&previous), "Enforced", &want, Some(4));
        assert_eq!(
            newer.map(|c| (c.observed_generation, c.last_transition_time)),
            Some((Some(4), previous.last_transition_time.clone())),
            "a new generation is observed; the status did not flip, so its time stays"
        );
        let other = Verdict::ok("Enforced", "n");
        assert!(changed(Some(&previous), "Enforced", &other, Some(3)).is_some());
        let flipped = changed(
            Some(&previous),
            "Enforced",
            &Verdict::failed("Invalid", "m"),
            Some(3),
        );
        assert_ne!(
            flipped.map(|c| c.last_transition_time),
            Some(previous.last_transition_time),
            "a flip is a transition"
        );
    }
}
