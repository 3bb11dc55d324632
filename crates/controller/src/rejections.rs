//! Resources a tunnel or waypoint rejected alone (`Ack.rejected`: it could not use them and
//! applied the rest of the delta), told on the object as a Warning Event, as an invalid policy
//! is: once per object, generation and error, however many data planes report it.
//!
//! Written by the replica the data plane reported to, not only by the Lease holder: a data
//! plane streams from one replica, so only that one hears of the rejection.

use crate::index::Stores;
use crate::status::Events;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::{HashSet, VecDeque};
use tokio::sync::mpsc;

/// The Event's reason, as `kubectl describe` shows it.
pub const REJECTED: &str = "RejectedByDataPlane";
/// Reports waiting to be written; past it a report is dropped (it was logged and counted).
const QUEUE: usize = 256;
/// Objects, generations and errors told already; past it the oldest are forgotten.
const REMEMBERED: usize = 4096;
/// A data plane's error text is cut to this many bytes in the Event (its own, not trusted).
const MAX_ERROR_BYTES: usize = 512;

/// One resource a subscriber rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The config resource name (`authorizationpolicy/<ns>/<name>`, `workload/<uid>`, ...).
    pub resource: String,
    /// Who rejected it (`node/<name>`, `waypoint/<ns>/<sa>`).
    pub subscriber: String,
    pub error: String,
}

/// Where config sessions report rejections; cheap to clone.
#[derive(Debug, Clone)]
pub struct Rejections(mpsc::Sender<Rejection>);

impl Rejections {
    /// Queues `rejection` for an Event, unless the queue is full (a data plane flooding
    /// reports cannot grow the controller's memory).
    pub fn report(&self, rejection: Rejection) {
        if self.0.try_send(rejection).is_err() {
            tracing::debug!("rejection reports queued past {QUEUE}: one dropped");
        }
    }
}

/// The reporting end and the task writing the Events, which runs until every [`Rejections`]
/// is dropped.
pub fn reporter(
    events: Events,
    stores: Stores,
) -> (Rejections, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<Rejection>(QUEUE);
    let task = async move {
        let mut told = Told::default();
        while let Some(rejection) = rx.recv().await {
            let Some(target) = target_of(&rejection.resource, &stores) else {
                tracing::debug!(
                    resource = rejection.resource,
                    "a rejected resource with no object to tell it on"
                );
                continue;
            };
            if !told.first_time(&target, &rejection.error) {
                continue;
            }
            let note = note(&rejection);
            events
                .warn(&target.reference, REJECTED, "Apply", &note)
                .await;
        }
    };
    (Rejections(tx), task)
}

/// The object a config resource comes from, and its generation.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    reference: ObjectReference,
    generation: Option<i64>,
}

fn found<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Target>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let object = store.get(&ObjectRef::new(name).within(namespace))?;
    Some(Target {
        reference: object.object_ref(&()),
        generation: object.meta().generation,
    })
}

/// The object behind config resource `resource`, when the caches hold it; `None` for a
/// resource of no object (an ext_authz provider of the controller's settings) or one gone.
fn target_of(resource: &str, stores: &Stores) -> Option<Target> {
    let mut parts = resource.splitn(4, '/');
    let (kind, first) = (parts.next()?, parts.next()?);
    if kind == "workload" {
        let pod = stores
            .pods
            .state()
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() == Some(first))?;
        return Some(Target {
            reference: pod.object_ref(&()),
            generation: pod.metadata.generation,
        });
    }
    if kind == "namespace" {
        let ns = stores.namespaces.get(&ObjectRef::new(first))?;
        return Some(Target {
            reference: ns.object_ref(&()),
            generation: ns.metadata.generation,
        });
    }
    let name = parts.next()?;
    match kind {
        "service" => found(&stores.services, first, name),
        "waypoint" => found(&stores.gateways, first, name),
        "authorizationpolicy" => found(&stores.policies, first, name),
        "requestauthentication" => found(&stores.request_authns, first, name),
        "ratelimit" => found(&stores.rate_limits, first, name),
        "httproute" => found(&stores.http_routes, first, name),
        "grpcroute" => found(&stores.grpc_routes, first, name),
        _ => None,
    }
}

/// The Event's note: who rejected what, and why, the data plane's words cut to size.
fn note(rejection: &Rejection) -> String {
    let mut error = rejection.error.as_str();
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error = &error[..end];
    }
    format!(
        "{} could not use {} and left it out (the rest of its config is applied): {error}",
        rejection.subscriber, rejection.resource
    )
}

/// What was told: object (by uid, else kind and name), generation and error.
#[derive(Debug, Default)]
struct Told {
    seen: HashSet<(String, Option<i64>, String)>,
    oldest_first: VecDeque<(String, Option<i64>, String)>,
}

impl Told {
    /// Whether `error` on `target`'s generation is new; remembers it.
    fn first_time(&mut self, target: &Target, error: &str) -> bool {
        let r = &target.reference;
        let object = r.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}/{}",
                r.kind.as_deref().unwrap_or_default(),
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            )
        });
        let key = (object, target.generation, error.to_owned());
        if self.seen.contains(&key) {
            return false;
        }
        if self.oldest_first.len() >= REMEMBERED
            && let Some(oldest) = self.oldest_first.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key.clone());
        self.oldest_first.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::index::testing::{Cluster, ns, pod};

    fn policy(ns: &str, name: &str, generation: i64) -> crate::crd::AuthorizationPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": generation},
            "spec": {},
        }))
        .unwrap()
    }

    #[test]
    fn resources_are_told_on_their_objects() {
        let mut c = Cluster::new();
        c.apply(ns("shop", true));
        c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
        c.apply(policy("shop", "deny-x", 3));
        let s = c.stores();
        let t = target_of("authorizationpolicy/shop/deny-x", &s).unwrap();
        assert_eq!(t.reference.kind.as_deref(), Some("AuthorizationPolicy"));
        assert_eq!(t.reference.namespace.as_deref(), Some("shop"));
        assert_eq!(t.reference.name.as_deref(), Some("deny-x"));
        assert_eq!(t.generation, Some(3));
        let uid = s.pods.state()[0].metadata.uid.clone().unwrap();
        let t = target_of(&format!("workload/{uid}"), &s).unwrap();
        assert_eq!(
            (t.reference.kind.as_deref(), t.reference.name.as_deref()),
            (Some("Pod"), Some("a"))
        );
        let t = target_of("namespace/shop", &s).unwrap();
        assert_eq!(t.reference.kind.as_deref(), Some("Namespace"));
        for none in [
            "authorizationpolicy/shop/gone",
            "extauthzprovider/opa",
            "workload/no-such-uid",
            "nonsense",
            "",
        ] {
            assert_eq!(target_of(none, &s), None, "{none}");
        }
    }

    #[test]
    fn told_once_per_generation_and_error() {
        let mut c = Cluster::new();
        c.apply(policy("shop", "p", 1));
        let first = target_of("authorizationpolicy/shop/p", &c.stores()).unwrap();
        let mut told = Told::default();
        assert!(told.first_time(&first, "bad CIDR"));
        assert!(
            !told.first_time(&first, "bad CIDR"),
            "another node, same error"
        );
        assert!(told.first_time(&first, "another error"));
        c.apply(policy("shop", "p", 2));
        let next = target_of("authorizationpolicy/shop/p", &c.stores()).unwrap();
        assert!(told.first_time(&next, "bad CIDR"), "a new generation");
        for i in 0..REMEMBERED {
            told.first_time(&next, &i.to_string());
        }
        assert!(told.seen.len() <= REMEMBERED);
        assert!(told.first_time(&first, "bad CIDR"), "the oldest forgotten");
    }

    #[test]
    fn a_data_planes_words_are_cut_to_size() {
        let long = Rejection {
            resource: "authorizationpolicy/shop/p".into(),
            subscriber: "node/n1".into(),
            error: "é".repeat(MAX_ERROR_BYTES),
        };
        let n = note(&long);
        assert!(
            n.starts_with("node/n1 could not use authorizationpolicy/shop/p"),
            "{n}"
        );
        assert!(n.len() < MAX_ERROR_BYTES + 200, "{}", n.len());
    }
}
