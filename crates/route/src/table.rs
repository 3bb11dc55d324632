//! The routes of one parent (a Service port), indexed so that finding the rule for a request
//! costs a hash lookup per host bucket plus one per path segment, whatever the number of
//! routes: exact paths are a map, prefixes a trie of path elements. Regex matches (and gRPC
//! matches that are not an exact service) are a list, scanned in precedence order, and only
//! while they could still beat what the indexed rules found.

use crate::compile::{CompiledRoute, CompiledRule, Match, PathCond, ValueCond};
use crate::model::RouteKind;
use crate::{Request, host_without_port};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

/// What a table says about a request.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// No route applies to this client (none at all, or only other namespaces' consumer
    /// routes): the request goes to the Service as if there were no routes.
    Unrouted,
    /// Routes apply, none matched: Gateway API says 404.
    NotFound,
    Matched(Matched<'a>),
}

/// The rule a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub route: &'a CompiledRoute,
    pub rule: &'a CompiledRule,
}

/// Two routes of different kinds (HTTPRoute, GRPCRoute) whose hostnames intersect, on one
/// parent and seen by the same clients: Gateway API keeps one (the older, then the first by
/// `namespace/name`) and never merges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindConflict {
    /// `namespace/name` of the route left out.
    pub route: String,
    /// `namespace/name` of the route kept.
    pub kept: String,
}

/// All routes attached to one parent Service port: the producer routes (the Service's
/// namespace), which apply to every client, and each other namespace's consumer routes, which
/// replace them for that namespace's clients (GAMMA).
#[derive(Debug)]
pub struct RouteTable {
    producer: View,
    consumers: HashMap<String, View>,
    conflicts: Vec<KindConflict>,
}

impl RouteTable {
    /// The table of a Service in `service_namespace`, from the routes attached to the port
    /// (in any order).
    pub fn new(
        service_namespace: &str,
        routes: impl IntoIterator<Item = Arc<CompiledRoute>>,
    ) -> Self {
        let mut producer = Vec::new();
        let mut consumers: HashMap<String, Vec<Arc<CompiledRoute>>> = HashMap::new();
        for r in routes {
            if r.route().namespace == service_namespace {
                producer.push(r);
            } else {
                consumers
                    .entry(r.route().namespace.clone())
                    .or_default()
                    .push(r);
            }
        }
        let mut conflicts = Vec::new();
        let producer = View::new(producer, &mut conflicts);
        let consumers = consumers
            .into_iter()
            .map(|(ns, routes)| (ns, View::new(routes, &mut conflicts)))
            .collect();
        Self {
            producer,
            consumers,
            conflicts,
        }
    }

    /// Routes left out because a route of the other kind won.
    pub fn conflicts(&self) -> &[KindConflict] {
        &self.conflicts
    }

    /// The rule for `request`: the most specific host bucket that has a matching rule wins
    /// (exact host, then wildcards longest first, then routes without hostnames), and within
    /// it Gateway API's precedence.
    pub fn lookup(&self, request: &Request<'_>) -> Lookup<'_> {
        let view = request
            .client_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.producer);
        if view.routes.is_empty() {
            return Lookup::Unrouted;
        }
        let prepared = Prepared::new(request);
        let host: &str = &prepared.host;
        let exact = view.exact_hosts.get(host);
        // `a.b.example.com` -> `.b.example.com`, `.example.com`, `.com`: longest first.
        let wildcards = host
            .match_indices('.')
            .filter_map(|(i, _)| view.wildcard_hosts.get(&host[i..]));
        for index in exact.into_iter().chain(wildcards).chain([&view.any_host]) {
            if let Some(e) = index.best(view, &prepared) {
                let route = &view.routes[e.route as usize];
                return Lookup::Matched(Matched {
                    route,
                    rule: &route.rules()[usize::from(e.rule)],
                });
            }
        }
        Lookup::NotFound
    }
}

/// One set of routes merged together (the producer routes, or one namespace's consumer
/// routes).
#[derive(Debug, Default)]
struct View {
    /// By age, then `namespace/name`: an entry's `route` indexes this.
    routes: Vec<Arc<CompiledRoute>>,
    exact_hosts: HashMap<String, Index>,
    /// By suffix with its leading dot: `*.example.com` is `.example.com`.
    wildcard_hosts: HashMap<String, Index>,
    any_host: Index,
}

impl View {
    fn new(mut routes: Vec<Arc<CompiledRoute>>, conflicts: &mut Vec<KindConflict>) -> Self {
        routes.sort_by(|a, b| {
            let (a, b) = (a.route(), b.route());
            (a.created_unix_ms, &a.namespace, &a.name).cmp(&(
                b.created_unix_ms,
                &b.namespace,
                &b.name,
            ))
        });
        let routes = keep_one_kind(routes, conflicts);
        let mut view = View::default();
        for (order, route) in routes.iter().enumerate() {
            let order = u32::try_from(order).unwrap_or(u32::MAX);
            let kind = route.route().kind;
            if route.hostnames.is_empty() {
                view.any_host.add(kind, route, order);
            }
            for h in &route.hostnames {
                let index = match h.strip_prefix('*') {
                    Some(suffix) => view.wildcard_hosts.entry(suffix.to_owned()).or_default(),
                    None => view.exact_hosts.entry(h.clone()).or_default(),
                };
                index.add(kind, route, order);
            }
        }
        view.any_host.sort();
        view.exact_hosts.values_mut().for_each(Index::sort);
        view.wildcard_hosts.values_mut().for_each(Index::sort);
        view.routes = routes;
        view
    }
}

/// Routes in precedence order; a route whose hostnames intersect those of an earlier route of
/// the other kind is left out.
fn keep_one_kind(
    routes: Vec<Arc<CompiledRoute>>,
    conflicts: &mut Vec<KindConflict>,
) -> Vec<Arc<CompiledRoute>> {
    let first = routes.first().map(|r| r.route().kind);
    if routes.iter().all(|r| Some(r.route().kind) == first) {
        return routes;
    }
    let mut kept: Vec<Arc<CompiledRoute>> = Vec::with_capacity(routes.len());
    for r in routes {
        let winner = kept.iter().find(|k| {
            k.route().kind != r.route().kind && hostnames_intersect(&k.hostnames, &r.hostnames)
        });
        match winner {
            Some(k) => conflicts.push(KindConflict {
                route: r.id(),
                kept: k.id(),
            }),
            None => kept.push(r),
        }
    }
    kept
}

fn hostnames_intersect(a: &[String], b: &[String]) -> bool {
    fn pair(x: &str, y: &str) -> bool {
        match (x.strip_prefix('*'), y.strip_prefix('*')) {
            (Some(sx), Some(sy)) => sx.ends_with(sy) || sy.ends_with(sx),
            (Some(s), None) => y.ends_with(s),
            (None, Some(s)) => x.ends_with(s),
            (None, None) => x == y,
        }
    }
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| pair(x, y)))
}

/// Precedence, best first: the rank the spec orders matches by (descending), then the route's
/// place (oldest, then `namespace/name`), the rule's and the match's.
type Key = (Reverse<[u32; 5]>, u32, u16, u16);

#[derive(Debug)]
struct Entry {
    key: Key,
    route: u32,
    rule: u16,
    matcher: u16,
}

/// The candidates of one host bucket.
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<String, Vec<Entry>>,
    prefixes: Node,
    linear: Vec<Entry>,
}

/// A path element of the prefix trie: the entries whose prefix ends here.
#[derive(Debug, Default)]
struct Node {
    entries: Vec<Entry>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn at(&mut self, prefix: &str) -> &mut Node {
        if prefix.is_empty() {
            return self;
        }
        prefix[1..].split('/').fold(self, |node, segment| {
            node.children.entry(segment.into()).or_default()
        })
    }

    fn sort(&mut self) {
        self.entries.sort_by_key(|a| a.key);
        self.children.values_mut().for_each(Node::sort);
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Gateway API's precedence of one match, as numbers compared largest first.
fn rank(kind: RouteKind, m: &Match) -> [u32; 5] {
    let headers = clamp(m.headers.len());
    match (&m.path, kind) {
        (PathCond::Grpc { service, method }, _) => {
            // Exact before regex before none, then characters: service, method, headers.
            let part = |c: &Option<ValueCond>| match c {
                None => (0, 0),
                Some(c) => (if c.is_exact() { 2 } else { 1 }, clamp(c.len())),
            };
            let (sc, sl) = part(service);
            let (mc, ml) = part(method);
            [sc, sl, mc, ml, headers]
        }
        (path, _) => {
            // Exact, then prefixes longest first, then regexes (their order is left to
            // implementations: longest pattern first, as Istio does).
            let (class, len) = match path {
                PathCond::Exact(p) => (3, p.len()),
                PathCond::Prefix(p) => (2, p.len()),
                PathCond::Regex(_, len) => (1, *len),
                PathCond::Grpc { .. } => (0, 0),
            };
            [
                class,
                clamp(len),
                u32::from(m.method.is_some()),
                headers,
                clamp(m.query.len()),
            ]
        }
    }
}

impl Index {
    fn add(&mut self, kind: RouteKind, route: &CompiledRoute, order: u32) {
        for rule in route.rules() {
            for (j, m) in rule.matches.iter().enumerate() {
                let rule_index = u16::try_from(rule.index()).unwrap_or(u16::MAX);
                let matcher = u16::try_from(j).unwrap_or(u16::MAX);
                let entry = Entry {
                    key: (Reverse(rank(kind, m)), order, rule_index, matcher),
                    route: order,
                    rule: rule_index,
                    matcher,
                };
                match &m.path {
                    PathCond::Exact(p) => self.exact.entry(p.clone()).or_default().push(entry),
                    PathCond::Prefix(p) => self.prefixes.at(p).entries.push(entry),
                    PathCond::Grpc {
                        service: Some(ValueCond::Exact(s)),
                        method: Some(ValueCond::Exact(m)),
                    } => self
                        .exact
                        .entry(format!("/{s}/{m}"))
                        .or_default()
                        .push(entry),
                    PathCond::Grpc {
                        service: Some(ValueCond::Exact(s)),
                        method: None,
                    } => self.prefixes.at(&format!("/{s}")).entries.push(entry),
                    PathCond::Grpc {
                        service: None,
                        method: None,
                    } => self.prefixes.entries.push(entry),
                    PathCond::Regex(..) | PathCond::Grpc { .. } => self.linear.push(entry),
                }
            }
        }
    }

    fn sort(&mut self) {
        self.exact
            .values_mut()
            .for_each(|v| v.sort_by_key(|a| a.key));
        self.prefixes.sort();
        self.linear.sort_by_key(|a| a.key);
    }

    /// The best matching entry, if any.
    fn best<'a>(&'a self, view: &View, request: &Prepared<'_>) -> Option<&'a Entry> {
        let mut best: Option<&Entry> = None;
        // The first entry of a sorted list that matches, if it beats `best`.
        let consider = |list: &'a [Entry], best: &mut Option<&'a Entry>| {
            for e in list {
                if best.is_some_and(|b| b.key <= e.key) {
                    return;
                }
                let route = &view.routes[e.route as usize];
                let m = &route.rules()[usize::from(e.rule)].matches[usize::from(e.matcher)];
                if request.matches(m) {
                    *best = Some(e);
                    return;
                }
            }
        };
        if let Some(list) = self.exact.get(request.path) {
            consider(list, &mut best);
        }
        // Root to leaf: each node's entries are considered once, and only while they could
        // beat what was found (a deeper HTTP prefix always does).
        let mut node = &self.prefixes;
        consider(&node.entries, &mut best);
        let segments = request.path.strip_prefix('/').unwrap_or(request.path);
        for segment in segments.split('/') {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    consider(&node.entries, &mut best);
                }
                None => break,
            }
        }
        consider(&self.linear, &mut best);
        best
    }
}

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// A request, with what matching needs computed once.
struct Prepared<'a> {
    request: &'a Request<'a>,
    /// Lowercase, without port.
    host: Cow<'a, str>,
    path: &'a str,
    query: Option<&'a str>,
    params: OnceCell<Vec<(&'a str, &'a str)>>,
    /// `/service/method`, when the path has that shape.
    grpc: Option<(&'a str, &'a str)>,
}

impl<'a> Prepared<'a> {
    fn new(request: &'a Request<'a>) -> Self {
        let (path, query) = match request.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (request.path_and_query, None),
        };
        let grpc = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
        Self {
            request,
            host: lowercase(host_without_port(request.host)),
            path,
            query,
            params: OnceCell::new(),
            grpc,
        }
    }

    /// The first value of query parameter `name` (Gateway API's recommendation for repeats).
    fn param(&self, name: &str) -> Option<&'a str> {
        let params = self.params.get_or_init(|| {
            self.query
                .map(|q| {
                    q.split('&')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                        .collect()
                })
                .unwrap_or_default()
        });
        params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn matches(&self, m: &Match) -> bool {
        let path_ok = match &m.path {
            PathCond::Exact(p) => self.path == p,
            PathCond::Prefix(p) => self
                .path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathCond::Regex(r, _) => r.is_match(self.path),
            PathCond::Grpc {
                service: None,
                method: None,
            } => true,
            PathCond::Grpc { service, method } => self.grpc.is_some_and(|(s, me)| {
                service.as_ref().is_none_or(|c| c.matches(s))
                    && method.as_ref().is_none_or(|c| c.matches(me))
            }),
        };
        path_ok
            && m.method
                .as_ref()
                .is_none_or(|method| method == self.request.method)
            && m.headers.iter().all(|(name, cond)| {
                self.request
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|v| std::str::from_utf8(v.as_bytes()).is_ok_and(|v| cond.matches(v)))
            })
            && m.query
                .iter()
                .all(|(name, cond)| self.param(name).is_some_and(|v| cond.matches(v)))
    }
}
