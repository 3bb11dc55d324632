//! External authorization providers, as the mesh configuration declares them (Helm value
//! `extAuthz.providers`) and CUSTOM policies name them: where the server is, which of Envoy's
//! ext_authz v3 variants it speaks, and what goes to it and comes back. Checked once here;
//! `ambit-extauthz` (which only the waypoint links) does the calls.

use crate::matchers::is_token;
use serde::{Deserialize, Serialize};

/// The longest an operator may make a check wait.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// The most request body a check may carry (it is buffered in the waypoint's memory).
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;

/// Which API the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtAuthzProtocol {
    /// `envoy.service.auth.v3.Authorization/Check` over HTTP/2.
    Grpc,
    /// Envoy's HTTP variant: the request's method and path (under `path_prefix`) and selected
    /// headers; 2xx allows.
    Http,
}

/// Whether and how much of the request body goes into the check
/// (Envoy's `with_request_body`, Istio's `includeRequestBodyInCheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzBody {
    /// At most this many bytes are buffered and sent.
    pub max_request_bytes: u32,
    /// A larger body is cut at `max_request_bytes` and sent (with a header saying so);
    /// otherwise it is answered 413 without asking.
    #[serde(default)]
    pub allow_partial_message: bool,
}

/// One external authorization server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzProvider {
    /// What CUSTOM policies name (`provider: {name: ...}`).
    pub name: String,
    /// Host name or IP of the server (a Service's `NAME.NAMESPACE.svc.cluster.local`).
    pub service: String,
    pub port: u16,
    pub protocol: ExtAuthzProtocol,
    /// Per check, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// When the server cannot be reached, errs or times out: let the request through
    /// (otherwise it is answered `status_on_error`).
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<ExtAuthzBody>,
    /// HTTP only: prefixed to the request's path in the check request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// HTTP only: the request headers sent in the check, besides the ones always sent (Host,
    /// Method, Path, Content-Length, Authorization). Entries are lower-case names or
    /// `prefix*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    /// HTTP only: the server's response headers set on the request to the app when it allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// HTTP only: the server's response headers added to the client's response when it
    /// allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// HTTP only: the server's response headers sent to the client when it denies; empty: all
    /// of them but framing and hop-by-hop ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_status_on_error() -> u16 {
    403
}

/// What is wrong with a provider, named by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtAuthzProviderError {
    #[error("name {0:?}: expected lowercase letters, digits, '-' and '.', at most 253 characters")]
    Name(String),
    #[error("service {0:?}: expected a host name or an IP address")]
    Service(String),
    #[error("port 0 is not a port")]
    Port,
    #[error("timeoutMs {0}: expected 1..={MAX_TIMEOUT_MS}")]
    Timeout(u64),
    #[error("statusOnError {0}: expected an HTTP status 200..=599")]
    Status(u16),
    #[error("includeRequestBodyInCheck.maxRequestBytes {0}: expected 1..={MAX_REQUEST_BYTES}")]
    Body(u32),
    #[error("{field}: {value:?} is not a header name or NAME-PREFIX*")]
    Header { field: &'static str, value: String },
    #[error("pathPrefix {0:?}: expected empty or /path without '?' or '#'")]
    PathPrefix(String),
    #[error("{0} is for HTTP providers only")]
    HttpOnly(&'static str),
}

/// A provider's name: a DNS-style name, so it reads the same in YAML, labels and logs.
pub(crate) fn is_provider_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

fn is_host(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
        || (!s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

/// A header list entry: a lower-case header name, or one ending in `*` (a prefix).
fn is_header_pattern(s: &str) -> bool {
    let name = s.strip_suffix('*').unwrap_or(s);
    is_token(name) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

/// Whether header `name` (lower case, as `http` keeps names) is in `list`.
pub fn header_listed(list: &[String], name: &str) -> bool {
    list.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == p,
    })
}

impl ExtAuthzProvider {
    /// Every field checked; the first problem is returned.
    pub fn validate(&self) -> Result<(), ExtAuthzProviderError> {
        use ExtAuthzProviderError as E;
        if !is_provider_name(&self.name) {
            return Err(E::Name(self.name.clone()));
        }
        if !is_host(&self.service) {
            return Err(E::Service(self.service.clone()));
        }
        if self.port == 0 {
            return Err(E::Port);
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(E::Timeout(self.timeout_ms));
        }
        if !(200..=599).contains(&self.status_on_error) {
            return Err(E::Status(self.status_on_error));
        }
        if let Some(b) = &self.include_request_body_in_check
            && !(1..=MAX_REQUEST_BYTES).contains(&b.max_request_bytes)
        {
            return Err(E::Body(b.max_request_bytes));
        }
        let lists = [
            (
                "includeRequestHeadersInCheck",
                &self.include_request_headers_in_check,
            ),
            (
                "headersToUpstreamOnAllow",
                &self.headers_to_upstream_on_allow,
            ),
            (
                "headersToDownstreamOnAllow",
                &self.headers_to_downstream_on_allow,
            ),
            (
                "headersToDownstreamOnDeny",
                &self.headers_to_downstream_on_deny,
            ),
        ];
        for (field, list) in lists {
            if let Some(bad) = list.iter().find(|v| !is_header_pattern(v)) {
                return Err(E::Header {
                    field,
                    value: bad.clone(),
                });
            }
            if self.protocol == ExtAuthzProtocol::Grpc && !list.is_empty() {
                return Err(E::HttpOnly(field));
            }
        }
        if !self.path_prefix.is_empty() {
            let ok = self.path_prefix.starts_with('/')
                && self
                    .path_prefix
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
            if !ok {
                return Err(E::PathPrefix(self.path_prefix.clone()));
            }
            if self.protocol == ExtAuthzProtocol::Grpc {
                return Err(E::HttpOnly("pathPrefix"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(yaml: &str) -> ExtAuthzProvider {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_shape() {
        let p = parse(
            "{name: authz, service: authz.sec.svc.cluster.local, port: 9000, protocol: grpc}",
        );
        assert_eq!(p.timeout_ms, 1000);
        assert_eq!(p.status_on_error, 403);
        assert!(!p.fail_open && p.include_request_body_in_check.is_none());
        assert_eq!(p.validate(), Ok(()));
        let p = parse(
            "{name: h, service: 127.0.0.1, port: 8000, protocol: http, failOpen: true, timeoutMs: 50, \
             includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}, \
             pathPrefix: /check, includeRequestHeadersInCheck: [x-ext-authz, x-b3-*], \
             headersToUpstreamOnAllow: [x-ext-authz-check-result], headersToDownstreamOnDeny: [x-ext-authz-check-result]}",
        );
        assert_eq!(p.validate(), Ok(()));
        assert!(header_listed(
            &p.include_request_headers_in_check,
            "x-b3-traceid"
        ));
        assert!(!header_listed(
            &p.include_request_headers_in_check,
            "x-ext-authz-other"
        ));
        let again: ExtAuthzProvider =
            serde_saphyr::from_str(&serde_saphyr::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
        assert!(
            serde_saphyr::from_str::<ExtAuthzProvider>(
                "{name: a, service: b, port: 1, protocol: tcp}"
            )
            .is_err()
        );
        assert!(
            serde_saphyr::from_str::<ExtAuthzProvider>(
                "{name: a, service: b, port: 1, protocol: grpc, failClosed: true}"
            )
            .is_err()
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = parse("{name: a, service: b.c, port: 1, protocol: http}");
        let bad = |f: fn(&mut ExtAuthzProvider)| {
            let mut p = base.clone();
            f(&mut p);
            p.validate().unwrap_err().to_string()
        };
        assert!(bad(|p| p.name = "Authz".into()).starts_with("name"));
        assert!(bad(|p| p.service = "http://x".into()).starts_with("service"));
        assert!(bad(|p| p.port = 0).starts_with("port"));
        assert!(bad(|p| p.timeout_ms = 0).starts_with("timeoutMs"));
        assert!(bad(|p| p.timeout_ms = MAX_TIMEOUT_MS + 1).starts_with("timeoutMs"));
        assert!(bad(|p| p.status_on_error = 99).starts_with("statusOnError"));
        assert!(
            bad(|p| p.include_request_body_in_check = Some(ExtAuthzBody {
                max_request_bytes: MAX_REQUEST_BYTES + 1,
                allow_partial_message: false
            }))
            .starts_with("includeRequestBodyInCheck")
        );
        assert!(
            bad(|p| p.headers_to_upstream_on_allow = vec!["X-Up".into()])
                .starts_with("headersToUpstreamOnAllow")
        );
        assert!(bad(|p| p.path_prefix = "check".into()).starts_with("pathPrefix"));
        assert_eq!(
            bad(|p| {
                p.protocol = ExtAuthzProtocol::Grpc;
                p.headers_to_downstream_on_deny = vec!["x".into()];
            }),
            "headersToDownstreamOnDeny is for HTTP providers only"
        );
    }
}
