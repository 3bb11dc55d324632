//! What each subscriber sees of a [`Snapshot`], and the delta that moves it from one snapshot
//! to the next. Node views differ only in their policies, so a node's view is "everything but
//! policies" plus a small per-node set; a change costs each session the changed names, not a
//! diff of its whole view, and no session keeps a copy of its view.

use crate::index::{Entry, Name, Snapshot};
use ambit_proto::EncodedDelta;
use ambit_proto::config::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};

/// What a subscriber is, and so what it sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscriber {
    /// A node tunnel: every mesh workload, service, waypoint and enrolled namespace
    /// (outbound), and the policies of its own node's workloads (inbound).
    Node(String),
    /// A waypoint for the service account `(namespace, name)`: that account's workloads, the
    /// services selecting them, their policies, the waypoint itself, the routes attached to
    /// those services, and where the routes send: the backend Services, their workloads and
    /// those workloads' waypoints.
    Waypoint(String, String),
}

impl std::fmt::Display for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "node/{n}"),
            Self::Waypoint(ns, sa) => write!(f, "waypoint/{ns}/{sa}"),
        }
    }
}

/// The part of a subscriber's view that depends on more than each resource itself: for a
/// node, the policies applying to its workloads; for a waypoint, everything it sees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    scoped: BTreeSet<Name>,
}

fn policy_applies(p: &pb::AuthorizationPolicy, w: &pb::Workload) -> bool {
    selects(&p.namespace, &p.match_labels, w)
}

/// Whether a resource of `namespace` selecting `match_labels` applies to `w`.
fn selects(namespace: &str, match_labels: &BTreeMap<String, String>, w: &pb::Workload) -> bool {
    namespace == w.namespace && match_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
}

fn workloads(snapshot: &Snapshot) -> impl Iterator<Item = &pb::Workload> {
    snapshot
        .of_kind("workload")
        .filter_map(|(_, e)| match e.kind() {
            Some(pb::resource::Kind::Workload(w)) => Some(w),
            _ => None,
        })
}

fn routes(snapshot: &Snapshot) -> impl Iterator<Item = (&Name, &pb::Route)> {
    ["httproute", "grpcroute"].into_iter().flat_map(|kind| {
        snapshot.of_kind(kind).filter_map(|(k, e)| match e.kind() {
            Some(pb::resource::Kind::Route(r)) => Some((k, r)),
            _ => None,
        })
    })
}

/// The Services a route's rules send to (mirrors too), `<namespace>/<name>`; unresolved ones
/// are never picked and need nothing.
fn backends(route: &pb::Route) -> impl Iterator<Item = String> + '_ {
    route.rules.iter().flat_map(|rule| {
        let mirrors = rule
            .filters
            .iter()
            .chain(rule.backends.iter().flat_map(|b| &b.filters))
            .filter_map(|f| match &f.kind {
                Some(pb::route_filter::Kind::RequestMirror(m)) => m.backend.as_ref(),
                _ => None,
            });
        rule.backends
            .iter()
            .chain(mirrors)
            .filter(|b| !b.invalid)
            .map(|b| format!("{}/{}", b.namespace, b.name))
    })
}

fn policies(snapshot: &Snapshot) -> impl Iterator<Item = (&Name, &pb::AuthorizationPolicy)> {
    snapshot
        .of_kind("authorizationpolicy")
        .filter_map(|(k, e)| match e.kind() {
            Some(pb::resource::Kind::AuthorizationPolicy(p)) => Some((k, p)),
            _ => None,
        })
}

impl Subscriber {
    /// Whether `View::scoped` decides if this subscriber sees `entry` (otherwise it does).
    fn is_scoped(&self, entry: &Entry) -> bool {
        match self {
            // Routes and JWT rules are the waypoints' business: a node tunnel never sees one.
            Self::Node(_) => matches!(
                entry.kind(),
                Some(
                    pb::resource::Kind::AuthorizationPolicy(_)
                        | pb::resource::Kind::Route(_)
                        | pb::resource::Kind::RequestAuthentication(_)
                        | pb::resource::Kind::ExtAuthzProvider(_)
                        | pb::resource::Kind::RateLimit(_)
                ) | None
            ),
            Self::Waypoint(..) => true,
        }
    }

    /// Whether `view` includes `entry`, named `name`.
    fn shows(&self, view: &View, name: &str, entry: &Entry) -> bool {
        !self.is_scoped(entry) || view.scoped.contains(name)
    }

    /// Whether a change of `entry` can change which other resources this subscriber sees.
    fn reshapes(&self, entry: Option<&Entry>) -> bool {
        match (self, entry.and_then(Entry::kind)) {
            (_, None) => false,
            (Self::Node(node), Some(pb::resource::Kind::Workload(w))) => &w.node == node,
            (Self::Node(_), Some(kind)) => {
                matches!(kind, pb::resource::Kind::AuthorizationPolicy(_))
            }
            (Self::Waypoint(..), Some(_)) => true,
        }
    }

    pub fn view(&self, snapshot: &Snapshot) -> View {
        let mut scoped = BTreeSet::new();
        match self {
            Self::Node(node) => {
                // Most meshes have few policies, often none: then no workload needs a look.
                if policies(snapshot).next().is_some() {
                    let local: Vec<&pb::Workload> =
                        workloads(snapshot).filter(|w| &w.node == node).collect();
                    scoped.extend(
                        policies(snapshot)
                            .filter(|(_, p)| local.iter().any(|w| policy_applies(p, w)))
                            .map(|(k, _)| k.clone()),
                    );
                }
            }
            Self::Waypoint(ns, sa) => {
                let is_mine = |w: &pb::Workload| &w.namespace == ns && &w.service_account == sa;
                let mine: Vec<&pb::Workload> = workloads(snapshot).filter(|w| is_mine(w)).collect();
                let services: BTreeSet<String> = mine
                    .iter()
                    .flat_map(|w| w.services.keys().cloned())
                    .collect();
                let mut backend_services = BTreeSet::new();
                let mut my_routes = BTreeSet::new();
                for (k, r) in routes(snapshot) {
                    if r.parents
                        .iter()
                        .any(|p| services.contains(&format!("{}/{}", p.namespace, p.name)))
                    {
                        scoped.insert(k.clone());
                        backend_services.extend(backends(r));
                        my_routes.insert((r.kind.as_str(), r.namespace.as_str(), r.name.as_str()));
                    }
                }
                // A backend's endpoints are picked among its workloads; one behind a waypoint
                // of its own is reached through that waypoint.
                let serves_backend =
                    |w: &pb::Workload| w.services.keys().any(|s| backend_services.contains(s));
                let mut next_waypoints = BTreeSet::new();
                for (k, e) in snapshot.of_kind("workload") {
                    if let Some(pb::resource::Kind::Workload(w)) = e.kind() {
                        let backend = serves_backend(w);
                        if backend && !w.waypoint.is_empty() {
                            next_waypoints.insert(w.waypoint.as_str());
                        }
                        if backend || is_mine(w) {
                            scoped.insert(k.clone());
                        }
                    }
                }
                for (k, e) in &snapshot.resources {
                    let keep = match e.kind() {
                        Some(pb::resource::Kind::Service(s)) => {
                            let key = format!("{}/{}", s.namespace, s.name);
                            services.contains(&key) || backend_services.contains(&key)
                        }
                        Some(pb::resource::Kind::Waypoint(w)) => {
                            (&w.namespace == ns && &w.for_service_account == sa)
                                || next_waypoints
                                    .contains(format!("{}/{}", w.namespace, w.name).as_str())
                        }
                        Some(pb::resource::Kind::AuthorizationPolicy(p)) => {
                            mine.iter().any(|w| policy_applies(p, w))
                        }
                        Some(pb::resource::Kind::RequestAuthentication(r)) => mine
                            .iter()
                            .any(|w| selects(&r.namespace, &r.match_labels, w)),
                        Some(pb::resource::Kind::RateLimit(l)) => match l.target_kind.as_str() {
                            "Service" => {
                                services.contains(&format!("{}/{}", l.namespace, l.target_name))
                            }
                            kind => my_routes.contains(&(
                                kind,
                                l.namespace.as_str(),
                                l.target_name.as_str(),
                            )),
                        },
                        // Any of its policies may name any provider.
                        Some(pb::resource::Kind::ExtAuthzProvider(_)) => true,
                        Some(
                            pb::resource::Kind::Workload(_)
                            | pb::resource::Kind::Route(_)
                            | pb::resource::Kind::Namespace(_),
                        )
                        | None => false,
                    };
                    if keep {
                        scoped.insert(k.clone());
                    }
                }
            }
        }
        View { scoped }
    }

    /// The view of `snapshot`, reusing `prev`'s (the view of `prev_snapshot`) when none of
    /// the `changed` names can reshape it.
    pub fn next_view(
        &self,
        prev_snapshot: &Snapshot,
        prev: &View,
        snapshot: &Snapshot,
        changed: &BTreeSet<Name>,
    ) -> View {
        let reshaped = changed.iter().any(|k| {
            self.reshapes(prev_snapshot.resources.get(k))
                || self.reshapes(snapshot.resources.get(k))
        });
        if reshaped {
            self.view(snapshot)
        } else {
            prev.clone()
        }
    }

    fn sees<'a>(&self, view: &View, snapshot: &'a Snapshot, name: &str) -> Option<&'a Entry> {
        let entry = snapshot.resources.get(name)?;
        self.shows(view, name, entry).then_some(entry)
    }

    /// Every resource of the view, by name.
    pub fn visible<'s>(
        &self,
        view: &View,
        snapshot: &'s Snapshot,
    ) -> impl Iterator<Item = (&'s Name, &'s Entry)> {
        snapshot
            .resources
            .iter()
            .filter(|(k, e)| self.shows(view, k, e))
    }
}

/// A delta to send: upserts borrow the snapshot's entries (and their encoded bytes), so a first
/// view of 12,000 resources costs a session 12,000 references, not copies.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Push<'s> {
    pub upserts: Vec<(&'s Name, &'s Entry)>,
    pub removals: Vec<Name>,
}

impl<'s> Push<'s> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }

    /// Every name the push touches.
    pub fn into_names(self) -> Vec<Name> {
        let mut names: Vec<Name> = self.upserts.into_iter().map(|(k, _)| k.clone()).collect();
        names.extend(self.removals);
        names
    }

    /// What moves a client holding `known` (name -> version; empty on a first connect) to
    /// `view` of `snapshot`.
    pub fn initial(
        subscriber: &Subscriber,
        view: &View,
        snapshot: &'s Snapshot,
        known: &BTreeMap<String, String>,
    ) -> Self {
        let upserts = subscriber
            .visible(view, snapshot)
            .filter(|(k, e)| known.get(&***k) != Some(&e.resource.version))
            .collect();
        let removals = known
            .keys()
            .filter(|k| subscriber.sees(view, snapshot, k).is_none())
            .map(|k| Name::from(k.as_str()))
            .collect();
        Self { upserts, removals }
    }

    /// What moves a client from `prev_view` of `prev` to `view` of `snapshot`, given the names
    /// `changed` between the two. The client's copies of `unsure` names are unknown (it
    /// rejected the delta that carried them): they are sent again.
    pub fn between(
        subscriber: &Subscriber,
        (prev, prev_view): (&Snapshot, &View),
        (snapshot, view): (&'s Snapshot, &View),
        changed: &BTreeSet<Name>,
        unsure: &BTreeSet<Name>,
    ) -> Self {
        let candidates: BTreeSet<&Name> = changed
            .iter()
            .chain(&prev_view.scoped)
            .chain(&view.scoped)
            .chain(unsure)
            .collect();
        let mut push = Self::default();
        for name in candidates {
            let now = snapshot
                .resources
                .get_key_value(name)
                .filter(|(k, e)| subscriber.shows(view, k, e));
            let before = subscriber
                .sees(prev_view, prev, name)
                .filter(|_| !unsure.contains(name));
            match (now, before) {
                (Some((_, e)), Some(b)) if e.version == b.version => {}
                (Some(upsert), _) => push.upserts.push(upsert),
                (None, Some(_)) => push.removals.push(name.clone()),
                (None, None) if unsure.contains(name) => push.removals.push(name.clone()),
                (None, None) => {}
            }
        }
        push
    }

    /// The push as messages of about `part_bytes` each, built as they are taken, sharing
    /// `nonce`; all but the last say `more`. Always at least one message.
    pub fn parts<'a>(
        &'a self,
        nonce: &'a str,
        part_bytes: usize,
    ) -> impl Iterator<Item = EncodedDelta> + Send + 'a {
        let mut upserts = self
            .upserts
            .iter()
            .map(|(_, e)| e.encoded.clone())
            .peekable();
        let mut removals = self.removals.iter().peekable();
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let mut part = EncodedDelta {
                nonce: nonce.to_owned(),
                ..Default::default()
            };
            let mut size = 0;
            let fits = |size: usize, add: usize| size == 0 || size + add <= part_bytes;
            while let Some(bytes) = upserts.next_if(|b| fits(size, b.len())) {
                size += bytes.len();
                part.upserts.push(bytes);
            }
            if upserts.peek().is_none() {
                while let Some(name) = removals.next_if(|n| fits(size, n.len())) {
                    size += name.len();
                    part.removals.push(name.to_string());
                }
            }
            done = upserts.peek().is_none() && removals.peek().is_none();
            part.more = !done;
            Some(part)
        })
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
