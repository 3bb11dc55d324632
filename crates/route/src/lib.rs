//! Gateway API routes (HTTPRoute, GRPCRoute) whose parents are Services, as a mesh applies
//! them (GAMMA). Pure: no I/O, no clock; randomness comes from the caller, so every decision
//! is a plain function of its arguments.
//!
//! - [`Route`] is the route as sources deliver it (mesh YAML, the controller's config stream);
//!   [`Route::compile`] checks it and compiles it once (regexes included) into a
//!   [`CompiledRoute`].
//! - A [`RouteTable`] holds the compiled routes attached to one Service port and answers
//!   [`RouteTable::lookup`] with the rule a request matched, following Gateway API's
//!   precedence rules and GAMMA's consumer routes.
//! - [`CompiledRule::choose_backend`] makes the weighted backend choice; [`Filters`] apply a
//!   rule's (and a backend's) filters to the request and response.
//!
//! Matching is on the request as given: the caller passes the path it forwards (normalized or
//! not, as it decided), and query parameters are compared undecoded.

mod compile;
mod filters;
mod model;
mod table;

pub use compile::{Backend, CompiledRoute, CompiledRule, Problem, Retry, RouteError};
pub use filters::{
    FilterError, Filters, HeaderEdits, Mirror, PathEdit, Redirect, RedirectFrom, Rewrite, Scheme,
};
pub use model::{
    GrpcMethodMatch, HeaderModifier, MatchType, NameMatch, NameValue, PathMatch, PathMatchType,
    PathModifier, RequestMirror, RequestRedirect, Route, RouteBackend, RouteFilter, RouteKind,
    RouteMatch, RouteParent, RouteRetry, RouteRule, UrlRewrite,
};
pub use table::{KindConflict, Lookup, Matched, RouteTable};

/// A request, as a route table needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's namespace (from its verified identity): its consumer routes, if it has
    /// any for this Service, replace the producer routes. `None` (unknown client): producer
    /// routes.
    pub client_namespace: Option<&'a str>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1); a port is ignored, case too.
    pub host: &'a str,
    pub method: &'a http::Method,
    /// The origin-form target: path and query. gRPC: `/package.Service/Method`.
    pub path_and_query: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl<'a> Request<'a> {
    /// The request of `parts`: its host from the URI's authority, else from `Host`.
    pub fn from_parts(client_namespace: Option<&'a str>, parts: &'a http::request::Parts) -> Self {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        Self {
            client_namespace,
            host,
            method: &parts.method,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
        }
    }
}

/// Where a request that matched a rule goes.
#[derive(Debug, Clone, Copy)]
pub enum BackendChoice<'a> {
    /// The rule names no backend: the parent Service itself.
    Parent,
    Backend(&'a Backend),
    /// The chosen backend did not resolve, or every weight is 0: answer 500 (gRPC:
    /// `UNAVAILABLE`).
    Invalid,
}

impl CompiledRule {
    /// The weighted choice of a backend for a uniformly random `draw`: backend `i` is chosen
    /// for a share `weight[i] / sum(weights)` of draws.
    pub fn choose_backend(&self, draw: u32) -> BackendChoice<'_> {
        let backends = self.backends();
        if backends.is_empty() {
            return BackendChoice::Parent;
        }
        let cumulative = self.cumulative_weights();
        let total = cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return BackendChoice::Invalid;
        }
        let point = scale(draw, total);
        let i = cumulative.partition_point(|&c| c <= point);
        match backends.get(i) {
            Some(b) if !b.invalid => BackendChoice::Backend(b),
            _ => BackendChoice::Invalid,
        }
    }
}

/// `draw` mapped uniformly onto `0..range`.
pub(crate) fn scale(draw: u32, range: u64) -> u64 {
    ((u128::from(draw) * u128::from(range)) >> 32) as u64
}

/// `host[:port]` or `[v6]:port` without the port.
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
