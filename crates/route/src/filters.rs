//! Filters, compiled, and their application to requests and responses. The caller decides the
//! order (Gateway API: a rule's filters, then the chosen backend's); within one list a filter
//! kind appears once, so the order of a list does not matter, except that a redirect answers
//! instead of forwarding.

use crate::compile::Backend;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};

/// What a list of filters (a rule's, or a backend's) does.
#[derive(Debug, Default)]
pub struct Filters {
    pub request_headers: Option<HeaderEdits>,
    pub response_headers: Option<HeaderEdits>,
    pub rewrite: Option<Rewrite>,
    /// A rule with a redirect answers it and forwards nothing.
    pub redirect: Option<Redirect>,
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("the rewritten request target {0:?} is not a valid URI")]
    Uri(String),
    #[error("the redirect location {0:?} is not a valid header value")]
    Location(String),
}

impl Filters {
    /// Request header edits and URL rewrite, on a request about to be forwarded.
    pub fn apply_to_request(&self, request: &mut http::request::Parts) -> Result<(), FilterError> {
        if let Some(edits) = &self.request_headers {
            edits.apply(&mut request.headers);
        }
        if let Some(rewrite) = &self.rewrite {
            rewrite.apply(request)?;
        }
        Ok(())
    }

    /// Response header edits, on the response going back to the client.
    pub fn apply_to_response(&self, response: &mut HeaderMap) {
        if let Some(edits) = &self.response_headers {
            edits.apply(response);
        }
    }
}

/// RequestHeaderModifier and ResponseHeaderModifier: each name is in one action only.
#[derive(Debug, Clone)]
pub struct HeaderEdits {
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
    pub(crate) remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A path modifier of a rewrite or a redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEdit {
    Full(String),
    /// `matched` is the rule's PathPrefix and `replacement` the new prefix, both without a
    /// trailing `/`.
    Prefix {
        matched: String,
        replacement: String,
    },
}

impl PathEdit {
    /// The new path for `path` (no query). ReplacePrefixMatch replaces whole path elements:
    /// Gateway API's table, e.g. `/foo/` with prefix `/foo` and replacement `/xyz` is `/xyz/`,
    /// with an empty replacement `/`.
    pub fn apply(&self, path: &str) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix {
                matched,
                replacement,
            } => {
                // The rule matched, so `path` is `matched` or `matched/...`; anything else
                // (a caller's mistake) keeps its whole path after the replacement.
                let rest = path.strip_prefix(matched.as_str()).unwrap_or(path);
                let out = format!("{replacement}{rest}");
                if out.is_empty() { "/".to_owned() } else { out }
            }
        }
    }
}

/// URLRewrite.
#[derive(Debug)]
pub struct Rewrite {
    pub(crate) hostname: Option<HeaderValue>,
    pub(crate) path: Option<PathEdit>,
}

impl Rewrite {
    /// Replaces the host (the `Host` header and, when the URI has one, its authority; the
    /// port goes with it) and the path (the query is kept).
    pub fn apply(&self, request: &mut http::request::Parts) -> Result<(), FilterError> {
        if self.hostname.is_none() && self.path.is_none() {
            return Ok(());
        }
        let mut parts = std::mem::take(&mut request.uri).into_parts();
        if let Some(host) = &self.hostname {
            if parts.authority.is_some() {
                parts.authority = Some(Authority::try_from(host.as_bytes()).map_err(|_| {
                    FilterError::Uri(String::from_utf8_lossy(host.as_bytes()).into())
                })?);
            }
            if parts.authority.is_none() || request.headers.contains_key(header::HOST) {
                request.headers.insert(header::HOST, host.clone());
            }
        }
        if let Some(edit) = &self.path {
            let (path, query) =
                split_query(parts.path_and_query.as_ref().map_or("/", |p| p.as_str()));
            let target = with_query(edit.apply(path), query);
            parts.path_and_query = Some(
                PathAndQuery::try_from(target.as_str()).map_err(|_| FilterError::Uri(target))?,
            );
        }
        request.uri = Uri::from_parts(parts).map_err(|e| FilterError::Uri(e.to_string()))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// RequestRedirect.
#[derive(Debug)]
pub struct Redirect {
    pub(crate) scheme: Option<Scheme>,
    pub(crate) hostname: Option<String>,
    pub(crate) path: Option<PathEdit>,
    pub(crate) port: Option<u16>,
    pub(crate) status: StatusCode,
}

/// The request a redirect answers, as the waypoint received it.
#[derive(Debug, Clone, Copy)]
pub struct RedirectFrom<'a> {
    pub scheme: Scheme,
    /// `:authority` or `Host`; its port is ignored.
    pub host: &'a str,
    /// The Service port the request came to (Gateway API's "listener port").
    pub port: u16,
    pub path_and_query: &'a str,
}

impl Redirect {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` header: the scheme, host and path the filter sets, the request's
    /// otherwise; the port the filter sets, else the new scheme's well-known port when it sets
    /// a scheme, else the Service port; a port that is the scheme's default is left out. The
    /// query is kept.
    pub fn location(&self, from: &RedirectFrom<'_>) -> Result<HeaderValue, FilterError> {
        let scheme = self.scheme.unwrap_or(from.scheme);
        let host = self
            .hostname
            .as_deref()
            .unwrap_or_else(|| crate::host_without_port(from.host));
        let port = self
            .port
            .or(self.scheme.map(Scheme::default_port))
            .unwrap_or(from.port);
        let (path, query) = split_query(from.path_and_query);
        let path = match &self.path {
            Some(edit) => edit.apply(path),
            None => path.to_owned(),
        };
        let location = if port == scheme.default_port() {
            format!("{}://{host}{}", scheme.as_str(), with_query(path, query))
        } else {
            format!(
                "{}://{host}:{port}{}",
                scheme.as_str(),
                with_query(path, query)
            )
        };
        HeaderValue::try_from(location.as_str()).map_err(|_| FilterError::Location(location))
    }
}

/// RequestMirror: a copy of the request goes to `backend` too; its response is ignored.
#[derive(Debug)]
pub struct Mirror {
    pub backend: Backend,
    /// Share of requests mirrored, in millionths.
    pub fraction_ppm: u32,
}

impl Mirror {
    /// Whether this request is mirrored, given a uniformly random `draw`.
    pub fn mirrors(&self, draw: u32) -> bool {
        crate::scale(draw, 1_000_000) < u64::from(self.fraction_ppm)
    }
}

fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}
