//! HTTPRoute and GRPCRoute with Service parents (Gateway API GAMMA) into the config's `Route`,
//! and the status each route gets. A route is ours when a parent is a core `Service`; a parent
//! is accepted when that Service, and the port it names, exist. Backends resolve to Services of
//! the route's namespace, or of another one whose ReferenceGrant lets the route's kind and
//! namespace refer to them; one that does not resolve stays in its rule, marked invalid, so the
//! requests that pick it are answered 500 as the spec says rather than sent elsewhere. A value
//! ambit does not implement (a filter type, a match type) rejects the whole route: it is not
//! delivered, and its status says why. Pure apart from reading the stores.

use crate::index::ObjectKey;
use crate::route_crd::{
    BackendObjectReference, BackendRef, GRPCRoute, GRPCRouteMatch, GRPCRouteRule, HTTPRoute,
    HTTPRouteMatch, HTTPRouteRetry, HTTPRouteRule, HTTPRouteTimeouts, NameMatch, ParentReference,
    PathModifier, ReferenceGrant, RouteFilter,
};
use ambit_proto::config::v1 as pb;
use k8s_openapi::api::core::v1::Service;
use kube::api::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::BTreeSet;
use std::sync::Arc;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Condition types and reasons of route status (Gateway API `RouteConditionType`/`Reason`).
pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
const NO_MATCHING_PARENT: &str = "NoMatchingParent";
const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
const REF_NOT_PERMITTED: &str = "RefNotPermitted";
const INVALID_KIND: &str = "InvalidKind";
const BACKEND_NOT_FOUND: &str = "BackendNotFound";
/// Retries when a route's `retry` names codes but no attempts (the spec leaves it to us).
const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
const MILLION: u64 = 1_000_000;

/// Which Gateway API route kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }

    /// The config resource name of route `key`: `httproute/<ns>/<name>` or
    /// `grpcroute/<ns>/<name>`.
    pub fn resource_name(self, key: &ObjectKey) -> String {
        let prefix = match self {
            Self::Http => "httproute",
            Self::Grpc => "grpcroute",
        };
        format!("{prefix}/{}/{}", key.0, key.1)
    }
}

/// What resolving a route reads of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub services: &'a Store<Service>,
    pub grants: &'a Store<ReferenceGrant>,
}

impl Lookup<'_> {
    fn service(&self, key: &ObjectKey) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(&key.1).within(&key.0))
    }

    /// Whether a ReferenceGrant in `to.0` lets `kind` routes of `from_ns` refer to Service `to`.
    fn permits(&self, kind: RouteKind, from_ns: &str, to: &ObjectKey) -> bool {
        self.grants.state().iter().any(|g| {
            g.metadata.namespace.as_deref() == Some(to.0.as_str())
                && g.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == kind.kind() && f.namespace == from_ns
                })
                && g.spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == to.1)
                })
        })
    }
}

pub use crate::status::Verdict;

/// A parent of ours (a Service) and whether it accepted the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentVerdict {
    pub parent_ref: ParentReference,
    pub accepted: Verdict,
}

/// A route, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// What waypoints get: none when no parent accepted the route.
    pub route: Option<pb::Route>,
    /// One per Service parent, in the route's order; empty: the route is not ours.
    pub parents: Vec<ParentVerdict>,
    pub resolved_refs: Verdict,
    /// Every Service the route names (parents, backends, mirrors), found or not: a change to
    /// one of them may change the resolution.
    pub services: BTreeSet<ObjectKey>,
}

/// A rule of either kind, its matches already converted.
struct RuleIn<'a> {
    name: Option<&'a str>,
    matches: Vec<pb::RouteMatch>,
    filters: &'a [RouteFilter],
    backends: &'a [BackendRef],
    timeouts: Option<&'a HTTPRouteTimeouts>,
    retry: Option<&'a HTTPRouteRetry>,
}

/// What is wrong with a route, gathered in one pass.
#[derive(Default)]
struct Problems {
    /// Values ambit does not implement: the route is rejected.
    unsupported: Vec<String>,
    /// References that did not resolve: (reason, what).
    refs: Vec<(&'static str, String)>,
}

pub fn resolve_http(route: &HTTPRoute, lookup: Lookup<'_>) -> Resolution {
    let spec = &route.spec;
    resolve(
        RouteKind::Http,
        &route.metadata,
        &spec.parent_refs,
        &spec.hostnames,
        &spec.rules,
        lookup,
    )
}

pub fn resolve_grpc(route: &GRPCRoute, lookup: Lookup<'_>) -> Resolution {
    let spec = &route.spec;
    resolve(
        RouteKind::Grpc,
        &route.metadata,
        &spec.parent_refs,
        &spec.hostnames,
        &spec.rules,
        lookup,
    )
}

/// A rule of an HTTPRoute or a GRPCRoute: the fields both kinds have, and its own matches.
trait RouteRule {
    type Match;
    /// The rule with its matches left to convert, and those matches.
    fn parts(&self) -> (RuleIn<'_>, &[Self::Match]);
    /// `m`, match `j` of rule `i`, converted; what ambit does not implement is noted.
    fn convert(m: &Self::Match, i: usize, j: usize, problems: &mut Problems) -> pb::RouteMatch;
}

impl RouteRule for HTTPRouteRule {
    type Match = HTTPRouteMatch;
    fn parts(&self) -> (RuleIn<'_>, &[HTTPRouteMatch]) {
        let rule = RuleIn {
            name: self.name.as_deref(),
            matches: Vec::new(),
            filters: &self.filters,
            backends: &self.backend_refs,
            timeouts: self.timeouts.as_ref(),
            retry: self.retry.as_ref(),
        };
        (rule, &self.matches)
    }
    fn convert(m: &HTTPRouteMatch, i: usize, j: usize, problems: &mut Problems) -> pb::RouteMatch {
        pb::RouteMatch {
            path: m.path.as_ref().map(|p| pb::StringMatch {
                r#type: one_of(
                    p.type_.as_deref().unwrap_or("PathPrefix"),
                    &["Exact", "PathPrefix", "RegularExpression"],
                    || format!("rules[{i}].matches[{j}].path.type"),
                    problems,
                ),
                value: p.value.clone().unwrap_or_else(|| "/".into()),
            }),
            headers: name_matches(
                &m.headers,
                || format!("rules[{i}].matches[{j}].headers"),
                problems,
            ),
            query_params: name_matches(
                &m.query_params,
                || format!("rules[{i}].matches[{j}].queryParams"),
                problems,
            ),
            method: m.method.clone().unwrap_or_default(),
            grpc_service: None,
            grpc_method: None,
        }
    }
}

impl RouteRule for GRPCRouteRule {
    type Match = GRPCRouteMatch;
    fn parts(&self) -> (RuleIn<'_>, &[GRPCRouteMatch]) {
        let rule = RuleIn {
            name: self.name.as_deref(),
            matches: Vec::new(),
            filters: &self.filters,
            backends: &self.backend_refs,
            timeouts: None,
            retry: None,
        };
        (rule, &self.matches)
    }
    fn convert(m: &GRPCRouteMatch, i: usize, j: usize, problems: &mut Problems) -> pb::RouteMatch {
        let method = m.method.as_ref().map(|mm| {
            let type_ = one_of(
                mm.type_.as_deref().unwrap_or("Exact"),
                &["Exact", "RegularExpression"],
                || format!("rules[{i}].matches[{j}].method.type"),
                problems,
            );
            let of = |v: &Option<String>| pb::StringMatch {
                r#type: type_.clone(),
                value: v.clone().unwrap_or_default(),
            };
            (of(&mm.service), of(&mm.method))
        });
        let (grpc_service, grpc_method) = method.unzip();
        pb::RouteMatch {
            headers: name_matches(
                &m.headers,
                || format!("rules[{i}].matches[{j}].headers"),
                problems,
            ),
            grpc_service,
            grpc_method,
            ..Default::default()
        }
    }
}

/// `value` when it is one of `known`; otherwise noted as unsupported at `at`.
fn one_of(
    value: &str,
    known: &[&str],
    at: impl FnOnce() -> String,
    problems: &mut Problems,
) -> String {
    if !known.contains(&value) {
        problems.unsupported.push(format!(
            "{}: {value:?} is not one of {}",
            at(),
            known.join(", ")
        ));
    }
    value.to_owned()
}

fn name_matches(
    matches: &[NameMatch],
    at: impl Fn() -> String,
    problems: &mut Problems,
) -> Vec<pb::NameMatch> {
    matches
        .iter()
        .map(|m| pb::NameMatch {
            name: m.name.clone(),
            r#type: one_of(
                m.type_.as_deref().unwrap_or("Exact"),
                &["Exact", "RegularExpression"],
                || format!("{}[{}].type", at(), m.name),
                problems,
            ),
            value: m.value.clone(),
        })
        .collect()
}

/// A parent reference that names a Service: its `(namespace, name)`.
fn service_parent(p: &ParentReference, route_ns: &str) -> Option<ObjectKey> {
    (p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service")).then(|| {
        (
            p.namespace.clone().unwrap_or_else(|| route_ns.to_owned()),
            p.name.clone(),
        )
    })
}

/// The parent's port (0: every port), or why the Service does not accept the route.
fn parent_port(p: &ParentReference, key: &ObjectKey, lookup: Lookup<'_>) -> Result<u32, String> {
    let (ns, name) = key;
    let svc = lookup
        .service(key)
        .ok_or_else(|| format!("Service {ns}/{name} does not exist"))?;
    let wanted = match (&p.section_name, p.port) {
        (None, None) => return Ok(0),
        (Some(s), Some(n)) => format!("named {s:?} with number {n}"),
        (Some(s), None) => format!("named {s:?}"),
        (None, Some(n)) => format!("{n}"),
    };
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|sp| {
            p.section_name
                .as_deref()
                .is_none_or(|s| sp.name.as_deref() == Some(s))
                && p.port.is_none_or(|n| n == sp.port)
        })
        .and_then(|sp| u32::try_from(sp.port).ok())
        .ok_or_else(|| format!("Service {ns}/{name} has no port {wanted}"))
}

fn resolve<R: RouteRule>(
    kind: RouteKind,
    meta: &ObjectMeta,
    parent_refs: &[ParentReference],
    hostnames: &[String],
    rules: &[R],
    lookup: Lookup<'_>,
) -> Resolution {
    let mut problems = Problems::default();
    let rules: Vec<RuleIn<'_>> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (mut rule, matches) = r.parts();
            rule.matches = matches
                .iter()
                .enumerate()
                .map(|(j, m)| R::convert(m, i, j, &mut problems))
                .collect();
            rule
        })
        .collect();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let mut services = BTreeSet::new();
    let mut parents = Vec::new();
    let mut accepted_parents = Vec::new();
    let mut parent_services = BTreeSet::new();
    for p in parent_refs {
        let Some(key) = service_parent(p, &namespace) else {
            continue;
        };
        services.insert(key.clone());
        parent_services.insert(key.clone());
        let verdict = match parent_port(p, &key, lookup) {
            Ok(port) => {
                accepted_parents.push(pb::RouteParent {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    port,
                });
                Verdict::ok(ACCEPTED, "accepted by ambit: its waypoints route it")
            }
            Err(why) => Verdict::failed(NO_MATCHING_PARENT, why),
        };
        parents.push(ParentVerdict {
            parent_ref: p.clone(),
            accepted: verdict,
        });
    }
    let placeholder = accepted_parents.first().map(|p| {
        let port = match p.port {
            0 => lookup
                .service(&(p.namespace.clone(), p.name.clone()))
                .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|sp| sp.port))
                .and_then(|port| u32::try_from(port).ok())
                .unwrap_or(0),
            port => port,
        };
        pb::RouteBackend {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            port,
            weight: 1,
            invalid: true,
            ..Default::default()
        }
    });
    let mut resolver = Resolver {
        kind,
        namespace: &namespace,
        parents: &parent_services,
        lookup,
        problems: &mut problems,
        services: &mut services,
        placeholder,
    };
    let rules: Vec<pb::RouteRule> = rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| resolver.rule(i, r))
        .collect();
    if !problems.unsupported.is_empty() {
        let why = format!(
            "not implemented by ambit, so the route is not applied: {}",
            problems.unsupported.join("; ")
        );
        for p in &mut parents {
            if p.accepted.ok {
                p.accepted = Verdict::failed(UNSUPPORTED_VALUE, why.clone());
            }
        }
        accepted_parents.clear();
    }
    let resolved_refs = match problems.refs.first() {
        None => Verdict::ok(RESOLVED_REFS, "all references resolved"),
        Some((reason, _)) => Verdict::failed(
            reason,
            format!(
                "{}; requests to these answer 500",
                problems
                    .refs
                    .iter()
                    .map(|(_, what)| what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    };
    let mut route = (!accepted_parents.is_empty()).then(|| pb::Route {
        name,
        namespace,
        kind: kind.kind().into(),
        parents: accepted_parents,
        hostnames: hostnames.to_vec(),
        rules,
        created_unix_ms: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond()),
    });
    // The waypoints compile what they get (regexes and their size, header names and values,
    // paths, rewrites) and leave out a route that does not compile: check it the same way
    // here, so its status says so instead of `Accepted`.
    if let Some(why) = route.as_ref().and_then(|r| compile_error(kind, r)) {
        for p in &mut parents {
            if p.accepted.ok {
                p.accepted = Verdict::failed(UNSUPPORTED_VALUE, why.clone());
            }
        }
        route = None;
    }
    Resolution {
        route,
        parents,
        resolved_refs,
        services,
    }
}

/// Why the waypoints would leave `route` out, if they would.
fn compile_error(kind: RouteKind, route: &pb::Route) -> Option<String> {
    let name = format!("{}/{}/{}", kind.kind(), route.namespace, route.name);
    let model = match ambit_controller_client::route_model(&name, route) {
        Ok(model) => model,
        Err(error) => return Some(error.to_string()),
    };
    model
        .compile()
        .err()
        .map(|error| format!("the waypoints cannot apply it: {error}"))
}

/// Resolves the rules of one route.
struct Resolver<'a, 'p> {
    kind: RouteKind,
    namespace: &'a str,
    /// The route's Service parents: a consumer route may send to its parent Service in another
    /// namespace without a ReferenceGrant (GAMMA).
    parents: &'a BTreeSet<ObjectKey>,
    lookup: Lookup<'a>,
    problems: &'p mut Problems,
    services: &'p mut BTreeSet<ObjectKey>,
    /// An invalid backend standing for the first accepted parent: the data plane checks the
    /// names and port of every backend, even of one it never dials, so an unresolved backend
    /// without a Service name and port of its own is sent as this one (its status message
    /// names the real reference).
    placeholder: Option<pb::RouteBackend>,
}

impl Resolver<'_, '_> {
    fn rule(&mut self, i: usize, r: RuleIn<'_>) -> pb::RouteRule {
        let at = format!("rules[{i}]");
        let (filters, fails) = self.filters(r.filters, &format!("{at}.filters"));
        let mut backends: Vec<pb::RouteBackend> = r
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let at = format!("{at}.backendRefs[{j}]");
                let mut backend = self.backend(&b.object, &at);
                backend.weight = b.weight.map_or(1, |w| u32::try_from(w).unwrap_or(0));
                let (filters, backend_fails) = self.filters(&b.filters, &format!("{at}.filters"));
                backend.filters = filters;
                backend.invalid |= backend_fails;
                backend
            })
            .collect();
        // An ExtensionRef filter cannot be skipped: the rule's requests are answered 500.
        if fails {
            for b in &mut backends {
                b.invalid = true;
            }
            if backends.is_empty() {
                backends.extend(self.placeholder.clone());
            }
        }
        let timeouts = r.timeouts.cloned().unwrap_or_default();
        pb::RouteRule {
            name: r.name.unwrap_or_default().to_owned(),
            matches: r.matches,
            filters,
            backends,
            request_timeout_ms: self.duration(timeouts.request.as_deref(), || {
                format!("{at}.timeouts.request")
            }),
            backend_request_timeout_ms: self.duration(timeouts.backend_request.as_deref(), || {
                format!("{at}.timeouts.backendRequest")
            }),
            retry: r.retry.map(|retry| pb::RouteRetry {
                codes: retry
                    .codes
                    .iter()
                    .filter_map(|c| u32::try_from(*c).ok())
                    .collect(),
                attempts: retry
                    .attempts
                    .map_or(DEFAULT_RETRY_ATTEMPTS, |a| u32::try_from(a).unwrap_or(0)),
                backoff_ms: self
                    .duration(retry.backoff.as_deref(), || format!("{at}.retry.backoff")),
            }),
        }
    }

    fn duration(&mut self, value: Option<&str>, at: impl FnOnce() -> String) -> u64 {
        let Some(value) = value else { return 0 };
        match duration_ms(value) {
            Some(ms) => ms,
            None => {
                self.problems.unsupported.push(format!(
                    "{}: {value:?} is not a Gateway API duration (like 10s, 500ms, 1m30s)",
                    at()
                ));
                0
            }
        }
    }

    /// The filters ambit applies, and whether one that cannot be skipped is not implemented
    /// (an ExtensionRef): then the requests they would process are answered 500.
    fn filters(&mut self, filters: &[RouteFilter], at: &str) -> (Vec<pb::RouteFilter>, bool) {
        let mut fails = false;
        let mut out = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let at = format!("{at}[{i}]");
            use pb::route_filter::Kind;
            let kind = match (f.type_.as_str(), self.kind) {
                ("RequestHeaderModifier", _) => f
                    .request_header_modifier
                    .as_ref()
                    .map(|m| Kind::RequestHeaderModifier(header_modifier(m))),
                ("ResponseHeaderModifier", _) => f
                    .response_header_modifier
                    .as_ref()
                    .map(|m| Kind::ResponseHeaderModifier(header_modifier(m))),
                ("URLRewrite", RouteKind::Http) => f.url_rewrite.as_ref().map(|u| {
                    Kind::UrlRewrite(pb::UrlRewrite {
                        hostname: u.hostname.clone().unwrap_or_default(),
                        path: u.path.as_ref().map(|p| self.path_modifier(p, &at)),
                    })
                }),
                ("RequestRedirect", RouteKind::Http) => f.request_redirect.as_ref().map(|r| {
                    Kind::RequestRedirect(pb::RequestRedirect {
                        scheme: r.scheme.clone().unwrap_or_default(),
                        hostname: r.hostname.clone().unwrap_or_default(),
                        path: r.path.as_ref().map(|p| self.path_modifier(p, &at)),
                        port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                        status_code: r
                            .status_code
                            .and_then(|c| u32::try_from(c).ok())
                            .unwrap_or(0),
                    })
                }),
                ("RequestMirror", _) => match f.request_mirror.as_ref() {
                    Some(m) => {
                        let fraction_ppm = match (m.percent, &m.fraction) {
                            (Some(p), _) => u64::try_from(p).unwrap_or(0) * 10_000,
                            (None, Some(f)) => {
                                let d = u64::try_from(f.denominator.unwrap_or(100))
                                    .unwrap_or(0)
                                    .max(1);
                                u64::try_from(f.numerator).unwrap_or(0) * MILLION / d
                            }
                            (None, None) => MILLION,
                        };
                        // 0 on the wire means "all": mirroring none is no filter at all.
                        if fraction_ppm == 0 {
                            continue;
                        }
                        Some(Kind::RequestMirror(pb::RequestMirror {
                            backend: Some(self.backend(
                                &m.backend_ref,
                                &format!("{at}.requestMirror.backendRef"),
                            )),
                            fraction_ppm: u32::try_from(fraction_ppm.min(MILLION)).unwrap_or(0),
                        }))
                    }
                    None => None,
                },
                ("ExtensionRef", _) => {
                    self.problems.refs.push((
                        INVALID_KIND,
                        format!("{at}: ExtensionRef filters are not supported by ambit"),
                    ));
                    fails = true;
                    continue;
                }
                (other, _) => {
                    self.problems.unsupported.push(format!(
                        "{at}: filter type {other:?} in a {}",
                        self.kind.kind()
                    ));
                    continue;
                }
            };
            match kind {
                Some(kind) => out.push(pb::RouteFilter { kind: Some(kind) }),
                None => self.problems.unsupported.push(format!(
                    "{at}: filter type {:?} without its settings",
                    f.type_
                )),
            }
        }
        (out, fails)
    }

    fn path_modifier(&mut self, p: &PathModifier, at: &str) -> pb::PathModifier {
        let value = match p.type_.as_str() {
            "ReplaceFullPath" => p.replace_full_path.clone(),
            "ReplacePrefixMatch" => p.replace_prefix_match.clone(),
            other => {
                self.problems
                    .unsupported
                    .push(format!("{at}: path modifier type {other:?}"));
                None
            }
        };
        pb::PathModifier {
            r#type: p.type_.clone(),
            value: value.unwrap_or_default(),
        }
    }

    /// A backend Service, resolved; weight and filters are the caller's.
    fn backend(&mut self, b: &BackendObjectReference, at: &str) -> pb::RouteBackend {
        let ns = b
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.to_owned());
        let mut out = pb::RouteBackend {
            namespace: ns.clone(),
            name: b.name.clone(),
            port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            ..Default::default()
        };
        let (group, kind) = (
            b.group.as_deref().unwrap_or(""),
            b.kind.as_deref().unwrap_or("Service"),
        );
        let problem = if !group.is_empty() || kind != "Service" {
            Some((
                INVALID_KIND,
                format!("{at}: {kind}.{group} is not a Service (group \"\", kind Service)"),
            ))
        } else {
            let key = (ns, b.name.clone());
            self.services.insert(key.clone());
            self.service_problem(&key, b.port, at)
        };
        if let Some(p) = problem {
            self.problems.refs.push(p);
            let compiles = out.port != 0
                && ambit_identity::is_kubernetes_name(&out.namespace)
                && ambit_identity::is_kubernetes_name(&out.name);
            if let (false, Some(stand_in)) = (compiles, &self.placeholder) {
                out.namespace.clone_from(&stand_in.namespace);
                out.name.clone_from(&stand_in.name);
                out.port = stand_in.port;
            }
            out.invalid = true;
        }
        out
    }

    fn service_problem(
        &self,
        key: &ObjectKey,
        port: Option<i32>,
        at: &str,
    ) -> Option<(&'static str, String)> {
        let (ns, name) = key;
        if ns != self.namespace
            && !self.parents.contains(key)
            && !self.lookup.permits(self.kind, self.namespace, key)
        {
            return Some((
                REF_NOT_PERMITTED,
                format!(
                    "{at}: Service {ns}/{name} is in another namespace and no ReferenceGrant in {ns} lets {}s of {} refer to it",
                    self.kind.kind(),
                    self.namespace
                ),
            ));
        }
        let Some(svc) = self.lookup.service(key) else {
            return Some((
                BACKEND_NOT_FOUND,
                format!("{at}: Service {ns}/{name} does not exist"),
            ));
        };
        let Some(port) = port else {
            return Some((
                BACKEND_NOT_FOUND,
                format!("{at}: a Service backend needs a port"),
            ));
        };
        let has_port = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .any(|p| p.port == port);
        (!has_port).then(|| {
            (
                BACKEND_NOT_FOUND,
                format!("{at}: Service {ns}/{name} has no port {port}"),
            )
        })
    }
}

fn header_modifier(m: &crate::route_crd::HeaderModifier) -> pb::HeaderModifier {
    let pairs = |hs: &[crate::route_crd::Header]| {
        hs.iter()
            .map(|h| pb::NameValue {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

/// A Gateway API duration (GEP-2257: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`) in milliseconds.
pub fn duration_ms(s: &str) -> Option<u64> {
    let mut rest = s.as_bytes();
    let (mut total, mut parts) = (0u64, 0);
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = match rest {
            [b'm', b's', ..] => (1, 2),
            [b'h', ..] => (3_600_000, 1),
            [b'm', ..] => (60_000, 1),
            [b's', ..] => (1_000, 1),
            _ => return None,
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
