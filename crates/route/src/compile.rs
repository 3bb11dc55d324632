//! Checking a route and compiling it, in one pass: what is checked is what is compiled, so a
//! route that compiles is one the table can serve without parsing anything per request.

use crate::filters::{Filters, HeaderEdits, Mirror, PathEdit, Redirect, Rewrite, Scheme};
use crate::model::{
    GrpcMethodMatch, HeaderModifier, MatchType, NameMatch, PathMatch, PathMatchType, PathModifier,
    RequestRedirect, Route, RouteBackend, RouteFilter, RouteKind, RouteMatch, RouteRule,
    UrlRewrite,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::{Regex, RegexBuilder};
use std::time::Duration;

// Gateway API's own bounds (HTTPRoute CRD), so a route the apiserver accepts compiles; they
// also bound what one tenant's route can make a waypoint hold.
const MAX_PARENTS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_RULE: usize = 64;
const MAX_MATCHES_PER_ROUTE: usize = 128;
const MAX_CONDITIONS: usize = 16;
const MAX_FILTERS: usize = 16;
const MAX_BACKENDS: usize = 16;
const MAX_WEIGHT: u32 = 1_000_000;
const MILLION: u32 = 1_000_000;
/// Regexes: the pattern text, and what the compiled program and its lazy DFA may grow to
/// (the `regex` crate's defaults are 10 MiB and 2 MiB, per regex).
const MAX_REGEX_LEN: usize = 1024;
/// A path value (HTTPPathMatch, path modifiers), as the CRD bounds it.
const MAX_PATH_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const REGEX_DFA_SIZE_LIMIT: usize = 256 * 1024;

/// What is wrong with a route, and where (`rules[1].matches[0].path`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct RouteError {
    pub at: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')")]
    Name(String),
    #[error("a route needs at least one parent Service")]
    NoParents,
    #[error("0 is not a port")]
    Port,
    #[error(
        "{0:?} is not a hostname: lowercase RFC 1123 labels, optionally after a leading \"*.\" (route hostnames only), not an IP address"
    )]
    Hostname(String),
    #[error("more than {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error(
        "{0:?} is not a path: it must start with '/', without \"//\", '?', '#', spaces or control characters, in at most 1024 bytes"
    )]
    Path(String),
    #[error("{pattern:?} is not a regular expression this proxy accepts: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("{0:?} is not an HTTP method (a token such as GET)")]
    Method(String),
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    #[error("header {name:?}: {value:?} is not a header value (no control characters)")]
    HeaderValue { name: String, value: String },
    #[error("query parameter names cannot be empty")]
    QueryName,
    #[error("a gRPC method match needs a service or a method, and exact ones contain no '/'")]
    Grpc,
    #[error("{what} is not allowed in a {kind}")]
    NotFor {
        what: &'static str,
        kind: &'static str,
    },
    #[error("only one {0} filter is allowed here")]
    Repeated(&'static str),
    #[error("RequestRedirect and URLRewrite cannot be used together")]
    RedirectAndRewrite,
    #[error("a rule with a RequestRedirect filter cannot have backends")]
    RedirectWithBackends,
    #[error("ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix one")]
    PrefixWithoutPathPrefix,
    #[error("{0:?} is named by more than one action of one header modifier")]
    HeaderTwice(String),
    #[error("scheme {0:?} is neither http nor https")]
    Scheme(String),
    #[error("status {0} is not a redirect status (301, 302, 303, 307 or 308)")]
    RedirectStatus(u16),
    #[error("fraction {0} is above 1000000 (100%)")]
    Fraction(u32),
    #[error("weight {0} is above 1000000")]
    Weight(u32),
    #[error("the backendRequest timeout is longer than the request timeout")]
    Timeouts,
    #[error("{0} is not a retriable status (400-599)")]
    RetryCode(u16),
}

fn err(at: impl Into<String>, problem: Problem) -> RouteError {
    RouteError {
        at: at.into(),
        problem,
    }
}

/// A valid route, ready for a [`crate::RouteTable`].
#[derive(Debug)]
pub struct CompiledRoute {
    route: Route,
    /// Lowercase; a wildcard keeps its leading `*.`.
    pub(crate) hostnames: Vec<String>,
    rules: Vec<CompiledRule>,
}

impl CompiledRoute {
    /// The route as it was given.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.route.namespace, self.route.name)
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }
}

/// A rule of a valid route: what a request that matched it gets.
#[derive(Debug)]
pub struct CompiledRule {
    index: usize,
    name: Option<String>,
    pub(crate) matches: Vec<Match>,
    filters: Filters,
    backends: Vec<Backend>,
    /// Running sums of the backends' weights, for the weighted choice.
    cumulative: Vec<u64>,
    request_timeout: Option<Duration>,
    backend_request_timeout: Option<Duration>,
    retry: Option<Retry>,
}

impl CompiledRule {
    /// Its place in the route's `rules`.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The rule's filters, applied before the chosen backend's own.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    /// Empty: the parent Service itself.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    pub fn backend_request_timeout(&self) -> Option<Duration> {
        self.backend_request_timeout
    }

    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref()
    }

    pub(crate) fn cumulative_weights(&self) -> &[u64] {
        &self.cumulative
    }
}

/// A resolved backend Service.
#[derive(Debug)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub weight: u32,
    /// Applied after the rule's filters, to requests sent to this backend.
    pub filters: Filters,
    /// The reference did not resolve: requests that pick it are answered 500.
    pub invalid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub codes: Vec<StatusCode>,
    pub attempts: u32,
    pub backoff: Option<Duration>,
}

/// A compiled [`RouteMatch`]: every condition must hold.
#[derive(Debug)]
pub(crate) struct Match {
    pub(crate) path: PathCond,
    pub(crate) method: Option<Method>,
    /// Deduplicated: the first entry for a name counts.
    pub(crate) headers: Vec<(HeaderName, ValueCond)>,
    pub(crate) query: Vec<(String, ValueCond)>,
}

#[derive(Debug)]
pub(crate) enum PathCond {
    Exact(String),
    /// Without its trailing `/`: `/` is the empty prefix, which every path has.
    Prefix(String),
    Regex(Regex, usize),
    /// GRPCRoute: the request path is `/service/method`.
    Grpc {
        service: Option<ValueCond>,
        method: Option<ValueCond>,
    },
}

#[derive(Debug)]
pub(crate) enum ValueCond {
    Exact(String),
    Regex(Regex, usize),
}

impl ValueCond {
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(r, _) => r.is_match(value),
        }
    }

    pub(crate) fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }

    /// The characters a precedence rule counts.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Exact(v) => v.len(),
            Self::Regex(_, len) => *len,
        }
    }
}

/// A regex that must match the whole value (Gateway API's regex matches are full matches).
pub(crate) fn full_match_regex(pattern: &str) -> Result<Regex, Problem> {
    let bad = |reason: String| Problem::Regex {
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern.len() > MAX_REGEX_LEN {
        return Err(bad(format!("longer than {MAX_REGEX_LEN} bytes")));
    }
    // Checked alone first: wrapped, `a)|(b` would parse and match unanchored.
    regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| bad(e.to_string()))?;
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// RFC 1123 hostname in lowercase; with `wildcard`, `*.` may lead. IP addresses are not
/// hostnames here (Gateway API's rule).
pub(crate) fn is_hostname(h: &str, wildcard: bool) -> bool {
    let name = match h.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => h,
    };
    name.len() <= 253
        && name.parse::<std::net::Ipv4Addr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_kubernetes_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_exact_path(p: &str) -> bool {
    p.len() <= MAX_PATH_LEN
        && p.starts_with('/')
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

fn at_most<T>(at: &str, values: &[T], what: &'static str, max: usize) -> Result<(), RouteError> {
    if values.len() > max {
        return Err(err(at, Problem::TooMany { what, max }));
    }
    Ok(())
}

fn name(at: String, value: &str) -> Result<(), RouteError> {
    if is_kubernetes_name(value) {
        Ok(())
    } else {
        Err(err(at, Problem::Name(value.to_owned())))
    }
}

impl Route {
    /// Checks every field and compiles the route. The first problem is returned, named by its
    /// place.
    pub fn compile(&self) -> Result<CompiledRoute, RouteError> {
        name("name".into(), &self.name)?;
        name("namespace".into(), &self.namespace)?;
        if self.parents.is_empty() {
            return Err(err("parents", Problem::NoParents));
        }
        at_most("parents", &self.parents, "parents", MAX_PARENTS)?;
        for (i, p) in self.parents.iter().enumerate() {
            name(format!("parents[{i}].namespace"), &p.namespace)?;
            name(format!("parents[{i}].name"), &p.name)?;
            if p.port == Some(0) {
                return Err(err(format!("parents[{i}].port"), Problem::Port));
            }
        }
        at_most("hostnames", &self.hostnames, "hostnames", MAX_HOSTNAMES)?;
        for (i, h) in self.hostnames.iter().enumerate() {
            if !is_hostname(h, true) {
                return Err(err(format!("hostnames[{i}]"), Problem::Hostname(h.clone())));
            }
        }
        at_most("rules", &self.rules, "rules", MAX_RULES)?;
        let total: usize = self.rules.iter().map(|r| r.matches.len()).sum();
        if total > MAX_MATCHES_PER_ROUTE {
            return Err(err(
                "rules",
                Problem::TooMany {
                    what: "matches in all rules",
                    max: MAX_MATCHES_PER_ROUTE,
                },
            ));
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.compile(self.kind, i))
            .collect::<Result<_, _>>()?;
        let mut hostnames = self.hostnames.clone();
        hostnames.sort();
        hostnames.dedup();
        Ok(CompiledRoute {
            route: self.clone(),
            hostnames,
            rules,
        })
    }

    /// Whether [`Route::compile`] accepts the route.
    pub fn validate(&self) -> Result<(), RouteError> {
        self.compile().map(drop)
    }
}

fn kind_name(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "HTTPRoute",
        RouteKind::Grpc => "GRPCRoute",
    }
}

impl RouteRule {
    fn compile(&self, kind: RouteKind, index: usize) -> Result<CompiledRule, RouteError> {
        let at = format!("rules[{index}]");
        if let Some(n) = &self.name {
            name(format!("{at}.name"), n)?;
        }
        at_most(
            &format!("{at}.matches"),
            &self.matches,
            "matches",
            MAX_MATCHES_PER_RULE,
        )?;
        let mut matches = self
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| m.compile(kind, &format!("{at}.matches[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if matches.is_empty() {
            // Gateway API's default: every request.
            matches.push(RouteMatch::default().compile(kind, &at)?);
        }
        // The one PathPrefix match ReplacePrefixMatch may replace, when the rule has it.
        let prefix = match matches.as_slice() {
            [
                Match {
                    path: PathCond::Prefix(p),
                    ..
                },
            ] if self.matches.len() == 1 => Some(p.as_str()),
            _ => None,
        };
        let filters = compile_filters(&self.filters, kind, prefix, &format!("{at}.filters"))?;
        at_most(
            &format!("{at}.backends"),
            &self.backends,
            "backends",
            MAX_BACKENDS,
        )?;
        if filters.redirect.is_some() && !self.backends.is_empty() {
            return Err(err(at, Problem::RedirectWithBackends));
        }
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| b.compile(kind, prefix, &format!("{at}.backends[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let cumulative = backends
            .iter()
            .scan(0u64, |sum, b| {
                *sum += u64::from(b.weight);
                Some(*sum)
            })
            .collect();
        let ms = |v: Option<u64>| v.filter(|&ms| ms > 0).map(Duration::from_millis);
        let request_timeout = ms(self.request_timeout_ms);
        let backend_request_timeout = ms(self.backend_request_timeout_ms);
        if let (Some(request), Some(backend)) = (request_timeout, backend_request_timeout)
            && backend > request
        {
            return Err(err(at, Problem::Timeouts));
        }
        let retry = match &self.retry {
            None => None,
            Some(r) => {
                let codes = r
                    .codes
                    .iter()
                    .map(|&c| {
                        StatusCode::from_u16(c)
                            .ok()
                            .filter(|s| s.is_client_error() || s.is_server_error())
                            .ok_or_else(|| err(format!("{at}.retry.codes"), Problem::RetryCode(c)))
                    })
                    .collect::<Result<_, _>>()?;
                Some(Retry {
                    codes,
                    attempts: r.attempts,
                    backoff: ms(r.backoff_ms),
                })
            }
        };
        Ok(CompiledRule {
            index,
            name: self.name.clone(),
            matches,
            filters,
            backends,
            cumulative,
            request_timeout,
            backend_request_timeout,
            retry,
        })
    }
}

impl RouteMatch {
    fn compile(&self, kind: RouteKind, at: &str) -> Result<Match, RouteError> {
        let not_for = |what| {
            err(
                at,
                Problem::NotFor {
                    what,
                    kind: kind_name(kind),
                },
            )
        };
        let path = match kind {
            RouteKind::Http => {
                if self.grpc.is_some() {
                    return Err(not_for("a gRPC method match"));
                }
                compile_path(self.path.as_ref(), &format!("{at}.path"))?
            }
            RouteKind::Grpc => {
                if self.path.is_some() {
                    return Err(not_for("a path match"));
                }
                if !self.query_params.is_empty() {
                    return Err(not_for("a query parameter match"));
                }
                if self.method.is_some() {
                    return Err(not_for("an HTTP method match"));
                }
                compile_grpc(self.grpc.as_ref(), &format!("{at}.grpc"))?
            }
        };
        let method = match &self.method {
            None => None,
            Some(m) => Some(
                Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| !m.is_empty())
                    .ok_or_else(|| err(format!("{at}.method"), Problem::Method(m.clone())))?,
            ),
        };
        at_most(
            &format!("{at}.headers"),
            &self.headers,
            "headers",
            MAX_CONDITIONS,
        )?;
        let mut headers: Vec<(HeaderName, ValueCond)> = Vec::with_capacity(self.headers.len());
        for (i, h) in self.headers.iter().enumerate() {
            let at = format!("{at}.headers[{i}]");
            let header = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| err(&at, Problem::HeaderName(h.name.clone())))?;
            let cond = value_cond(h, &at)?;
            if h.kind == MatchType::Exact && HeaderValue::from_str(&h.value).is_err() {
                return Err(err(
                    at,
                    Problem::HeaderValue {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    },
                ));
            }
            if !headers.iter().any(|(n, _)| *n == header) {
                headers.push((header, cond));
            }
        }
        at_most(
            &format!("{at}.queryParams"),
            &self.query_params,
            "query parameters",
            MAX_CONDITIONS,
        )?;
        let mut query: Vec<(String, ValueCond)> = Vec::with_capacity(self.query_params.len());
        for (i, q) in self.query_params.iter().enumerate() {
            let at = format!("{at}.queryParams[{i}]");
            if q.name.is_empty() {
                return Err(err(at, Problem::QueryName));
            }
            let cond = value_cond(q, &at)?;
            if !query.iter().any(|(n, _)| *n == q.name) {
                query.push((q.name.clone(), cond));
            }
        }
        Ok(Match {
            path,
            method,
            headers,
            query,
        })
    }
}

fn value_cond(m: &NameMatch, at: &str) -> Result<ValueCond, RouteError> {
    Ok(match m.kind {
        MatchType::Exact => ValueCond::Exact(m.value.clone()),
        MatchType::RegularExpression => ValueCond::Regex(
            full_match_regex(&m.value).map_err(|p| err(at, p))?,
            m.value.len(),
        ),
    })
}

fn compile_path(path: Option<&PathMatch>, at: &str) -> Result<PathCond, RouteError> {
    let Some(p) = path else {
        return Ok(PathCond::Prefix(String::new()));
    };
    let bad = || err(at, Problem::Path(p.value.clone()));
    Ok(match p.kind {
        PathMatchType::Exact if is_exact_path(&p.value) => PathCond::Exact(p.value.clone()),
        PathMatchType::PathPrefix if is_exact_path(&p.value) => {
            PathCond::Prefix(p.value.trim_end_matches('/').to_owned())
        }
        PathMatchType::Exact | PathMatchType::PathPrefix => return Err(bad()),
        PathMatchType::RegularExpression => PathCond::Regex(
            full_match_regex(&p.value).map_err(|e| err(at, e))?,
            p.value.len(),
        ),
    })
}

fn compile_grpc(m: Option<&GrpcMethodMatch>, at: &str) -> Result<PathCond, RouteError> {
    let Some(m) = m else {
        return Ok(PathCond::Grpc {
            service: None,
            method: None,
        });
    };
    if m.service.is_empty() && m.method.is_empty() {
        return Err(err(at, Problem::Grpc));
    }
    let cond = |value: &str| -> Result<Option<ValueCond>, RouteError> {
        if value.is_empty() {
            return Ok(None);
        }
        Ok(Some(match m.kind {
            MatchType::Exact if value.contains('/') => return Err(err(at, Problem::Grpc)),
            MatchType::Exact => ValueCond::Exact(value.to_owned()),
            MatchType::RegularExpression => ValueCond::Regex(
                full_match_regex(value).map_err(|e| err(at, e))?,
                value.len(),
            ),
        }))
    };
    Ok(PathCond::Grpc {
        service: cond(&m.service)?,
        method: cond(&m.method)?,
    })
}

impl RouteBackend {
    fn compile(
        &self,
        kind: RouteKind,
        prefix: Option<&str>,
        at: &str,
    ) -> Result<Backend, RouteError> {
        name(format!("{at}.namespace"), &self.namespace)?;
        name(format!("{at}.name"), &self.name)?;
        if self.port == 0 {
            return Err(err(format!("{at}.port"), Problem::Port));
        }
        if self.weight > MAX_WEIGHT {
            return Err(err(format!("{at}.weight"), Problem::Weight(self.weight)));
        }
        let filters = compile_filters(&self.filters, kind, prefix, &format!("{at}.filters"))?;
        Ok(Backend {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: self.port,
            weight: self.weight,
            filters,
            invalid: self.invalid,
        })
    }
}

/// A list's filters, each kind at most once (mirrors excepted). `prefix`: the rule's one
/// `PathPrefix` match, which ReplacePrefixMatch needs.
fn compile_filters(
    list: &[RouteFilter],
    kind: RouteKind,
    prefix: Option<&str>,
    at: &str,
) -> Result<Filters, RouteError> {
    at_most(at, list, "filters", MAX_FILTERS)?;
    let mut out = Filters::default();
    fn once<T>(
        slot: &mut Option<T>,
        value: T,
        what: &'static str,
        at: &str,
    ) -> Result<(), RouteError> {
        if slot.replace(value).is_some() {
            return Err(err(at, Problem::Repeated(what)));
        }
        Ok(())
    }
    for (i, f) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let http_only = |what| {
            if kind == RouteKind::Grpc {
                Err(err(
                    &at,
                    Problem::NotFor {
                        what,
                        kind: "GRPCRoute",
                    },
                ))
            } else {
                Ok(())
            }
        };
        match f {
            RouteFilter::RequestHeaderModifier(m) => once(
                &mut out.request_headers,
                header_edits(m, &at)?,
                "RequestHeaderModifier",
                &at,
            )?,
            RouteFilter::ResponseHeaderModifier(m) => once(
                &mut out.response_headers,
                header_edits(m, &at)?,
                "ResponseHeaderModifier",
                &at,
            )?,
            RouteFilter::UrlRewrite(r) => {
                http_only("a URLRewrite filter")?;
                once(
                    &mut out.rewrite,
                    rewrite(r, prefix, &at)?,
                    "URLRewrite",
                    &at,
                )?;
            }
            RouteFilter::RequestRedirect(r) => {
                http_only("a RequestRedirect filter")?;
                once(
                    &mut out.redirect,
                    redirect(r, prefix, &at)?,
                    "RequestRedirect",
                    &at,
                )?;
            }
            RouteFilter::RequestMirror(m) => {
                let fraction_ppm = m.fraction_ppm.unwrap_or(MILLION);
                if fraction_ppm > MILLION {
                    return Err(err(at, Problem::Fraction(fraction_ppm)));
                }
                if !m.backend.filters.is_empty() {
                    return Err(err(
                        at,
                        Problem::NotFor {
                            what: "a filter",
                            kind: "mirror backend",
                        },
                    ));
                }
                let backend = m.backend.compile(kind, prefix, &format!("{at}.backend"))?;
                out.mirrors.push(Mirror {
                    backend,
                    fraction_ppm,
                });
            }
        }
    }
    if out.redirect.is_some() && out.rewrite.is_some() {
        return Err(err(at, Problem::RedirectAndRewrite));
    }
    Ok(out)
}

fn header_edits(m: &HeaderModifier, at: &str) -> Result<HeaderEdits, RouteError> {
    let mut named: Vec<HeaderName> = Vec::new();
    let mut name = |n: &str| -> Result<HeaderName, RouteError> {
        let h = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| err(at, Problem::HeaderName(n.to_owned())))?;
        if named.contains(&h) {
            return Err(err(at, Problem::HeaderTwice(n.to_owned())));
        }
        named.push(h.clone());
        Ok(h)
    };
    let mut pairs = |list: &[crate::model::NameValue]| -> Result<Vec<_>, RouteError> {
        list.iter()
            .map(|nv| {
                let value = HeaderValue::from_str(&nv.value).map_err(|_| {
                    err(
                        at,
                        Problem::HeaderValue {
                            name: nv.name.clone(),
                            value: nv.value.clone(),
                        },
                    )
                })?;
                Ok((name(&nv.name)?, value))
            })
            .collect()
    };
    let set = pairs(&m.set)?;
    let add = pairs(&m.add)?;
    let remove = m.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?;
    if set.len() + add.len() > MAX_CONDITIONS * 2 {
        return Err(err(
            at,
            Problem::TooMany {
                what: "headers",
                max: MAX_CONDITIONS * 2,
            },
        ));
    }
    Ok(HeaderEdits { set, add, remove })
}

fn precise_hostname(h: &str, at: &str) -> Result<HeaderValue, RouteError> {
    if !is_hostname(h, false) {
        return Err(err(at, Problem::Hostname(h.to_owned())));
    }
    HeaderValue::from_str(h).map_err(|_| err(at, Problem::Hostname(h.to_owned())))
}

fn path_edit(m: &PathModifier, prefix: Option<&str>, at: &str) -> Result<PathEdit, RouteError> {
    match m {
        PathModifier::ReplaceFullPath(p) if is_exact_path(p) => Ok(PathEdit::Full(p.clone())),
        PathModifier::ReplaceFullPath(p) => Err(err(at, Problem::Path(p.clone()))),
        PathModifier::ReplacePrefixMatch(p) if p.is_empty() || is_exact_path(p) => {
            let matched = prefix.ok_or_else(|| err(at, Problem::PrefixWithoutPathPrefix))?;
            Ok(PathEdit::Prefix {
                matched: matched.to_owned(),
                replacement: p.trim_end_matches('/').to_owned(),
            })
        }
        PathModifier::ReplacePrefixMatch(p) => Err(err(at, Problem::Path(p.clone()))),
    }
}

fn rewrite(r: &UrlRewrite, prefix: Option<&str>, at: &str) -> Result<Rewrite, RouteError> {
    Ok(Rewrite {
        hostname: r
            .hostname
            .as_deref()
            .map(|h| precise_hostname(h, &format!("{at}.hostname")))
            .transpose()?,
        path: r
            .path
            .as_ref()
            .map(|p| path_edit(p, prefix, &format!("{at}.path")))
            .transpose()?,
    })
}

fn redirect(r: &RequestRedirect, prefix: Option<&str>, at: &str) -> Result<Redirect, RouteError> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some(Scheme::Http),
        Some("https") => Some(Scheme::Https),
        Some(other) => {
            return Err(err(
                format!("{at}.scheme"),
                Problem::Scheme(other.to_owned()),
            ));
        }
    };
    let status = match r.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(code)
            .map_err(|_| err(format!("{at}.statusCode"), Problem::RedirectStatus(code)))?,
        code => {
            return Err(err(
                format!("{at}.statusCode"),
                Problem::RedirectStatus(code),
            ));
        }
    };
    if r.port == Some(0) {
        return Err(err(format!("{at}.port"), Problem::Port));
    }
    Ok(Redirect {
        scheme,
        hostname: r
            .hostname
            .as_deref()
            .map(|h| {
                if is_hostname(h, false) {
                    Ok(h.to_owned())
                } else {
                    Err(err(
                        format!("{at}.hostname"),
                        Problem::Hostname(h.to_owned()),
                    ))
                }
            })
            .transpose()?,
        path: r
            .path
            .as_ref()
            .map(|p| path_edit(p, prefix, &format!("{at}.path")))
            .transpose()?,
        port: r.port,
        status,
    })
}
