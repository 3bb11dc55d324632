//! Routes as sources deliver them (the mesh YAML, the controller's config stream): the shape of
//! the proto `Route`, which is Gateway API's HTTPRoute and GRPCRoute with the parents and
//! backends the controller resolved. Nothing here is checked: [`Route::compile`] does that.

use serde::{Deserialize, Serialize};

/// Which Gateway API kind a route came from: it decides how requests are matched and which
/// precedence rules apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    #[default]
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

/// An HTTPRoute or GRPCRoute whose parents are Services (GAMMA). A route in another namespace
/// than a parent is a consumer route for that parent: it applies to the clients of its own
/// namespace only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub kind: RouteKind,
    pub parents: Vec<RouteParent>,
    /// Request hosts the route is limited to (`*.example.com` wildcards); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Creation time (unix milliseconds): the first tie-break between routes (oldest first).
    #[serde(default)]
    pub created_unix_ms: i64,
}

/// A Service the route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteParent {
    pub namespace: String,
    pub name: String,
    /// The Service port; none: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Gateway API's `name` (a `sectionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of; none: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// None: the parent Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RouteBackend>,
    /// `timeouts.request`; none or 0: no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// `timeouts.backendRequest`; none or 0: no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_timeout_ms: Option<u64>,
    /// None: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
}

/// All of its conditions. HTTPRoute: `path`, `headers`, `queryParams`, `method`; GRPCRoute:
/// `grpc` and `headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// None: prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Names are case-insensitive; of entries naming one header, the first counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameMatch>,
    /// Names are case-sensitive; of entries naming one parameter, the first counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NameMatch>,
    /// None: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMethodMatch>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameMatch {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    pub value: String,
}

/// GRPCRoute's `method` match, on the request path `/service/method`: empty values match any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

/// Written as a map with one key, the filter's kind: `{requestHeaderModifier: {...}}` (the
/// proto's `oneof`, Gateway API's shape without its `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FilterFields", into = "FilterFields")]
pub enum RouteFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    UrlRewrite(UrlRewrite),
    RequestRedirect(RequestRedirect),
    RequestMirror(RequestMirror),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilterFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_mirror: Option<RequestMirror>,
}

impl TryFrom<FilterFields> for RouteFilter {
    type Error = &'static str;

    fn try_from(f: FilterFields) -> Result<Self, Self::Error> {
        let mut kinds = [
            f.request_header_modifier.map(Self::RequestHeaderModifier),
            f.response_header_modifier.map(Self::ResponseHeaderModifier),
            f.url_rewrite.map(Self::UrlRewrite),
            f.request_redirect.map(Self::RequestRedirect),
            f.request_mirror.map(Self::RequestMirror),
        ]
        .into_iter()
        .flatten();
        match (kinds.next(), kinds.next()) {
            (Some(filter), None) => Ok(filter),
            _ => Err(
                "a filter has exactly one of requestHeaderModifier, responseHeaderModifier, urlRewrite, requestRedirect, requestMirror",
            ),
        }
    }
}

impl From<RouteFilter> for FilterFields {
    fn from(f: RouteFilter) -> Self {
        match f {
            RouteFilter::RequestHeaderModifier(m) => Self {
                request_header_modifier: Some(m),
                ..Self::default()
            },
            RouteFilter::ResponseHeaderModifier(m) => Self {
                response_header_modifier: Some(m),
                ..Self::default()
            },
            RouteFilter::UrlRewrite(r) => Self {
                url_rewrite: Some(r),
                ..Self::default()
            },
            RouteFilter::RequestRedirect(r) => Self {
                request_redirect: Some(r),
                ..Self::default()
            },
            RouteFilter::RequestMirror(m) => Self {
                request_mirror: Some(m),
                ..Self::default()
            },
        }
    }
}

/// Each header name may appear in one action only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the rule's `PathPrefix` match, element-wise; only with one such match.
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    /// None: keep the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// None: keep the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`; none: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// None: the scheme's well-known port when `scheme` is set, else the Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308; none: 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend: RouteBackend,
    /// Share of requests mirrored, in millionths; none: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction_ppm: Option<u32>,
}

/// A Service backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteBackend {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Filters for the requests sent to this backend only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// The reference did not resolve: a request that picks this backend is answered 500.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRetry {
    /// HTTP statuses to retry (400-599).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Attempts after the first.
    #[serde(default)]
    pub attempts: u32,
    /// Before each retry; none: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}
