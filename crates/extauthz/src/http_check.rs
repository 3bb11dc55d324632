//! The HTTP variant (Envoy's `http_service`): the request's method and path (under the
//! provider's `path_prefix`) go to the server with the headers it always gets (Host, Method,
//! Path, Content-Length, Authorization), the listed ones and, when asked, the body. A 2xx
//! answer allows: the listed response headers go upstream (`headers_to_upstream_on_allow`,
//! plus `x-envoy-auth-headers-to-remove`) and to the client (`headers_to_downstream_on_allow`);
//! any other status denies with that status, the server's body and its headers (those listed
//! in `headers_to_downstream_on_deny`, or all but framing ones). Connections are pooled by
//! hyper's client.

use crate::{Allowed, CheckError, CheckInput, Decision, Denied, HeaderAction, PARTIAL_BODY};
use ambit_policy::{ExtAuthzProvider, header_listed};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The most of an answer's body the waypoint reads (it is sent to the client on a denial).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Envoy's: a comma-separated list of request headers the server wants removed.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Request headers every check carries, as Envoy's `http_service` sends them.
const ALWAYS: [HeaderName; 3] = [header::AUTHORIZATION, header::CONTENT_LENGTH, header::HOST];

#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    authority: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AddressError(String);

impl HttpClient {
    pub(crate) fn new(authority: &str, timeout: Duration) -> Result<Self, AddressError> {
        authority
            .parse::<http::uri::Authority>()
            .map_err(|e| AddressError(e.to_string()))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            authority: authority.to_owned(),
        })
    }

    pub(crate) async fn check(
        &self,
        provider: &ExtAuthzProvider,
        input: &CheckInput<'_>,
    ) -> Result<Decision, CheckError> {
        let request = self.request(provider, input)?;
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                CheckError::Unavailable(e.to_string())
            } else {
                CheckError::Server(e.to_string())
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| CheckError::Server(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(decide(provider, parts.status, &parts.headers, body))
    }

    fn request(
        &self,
        provider: &ExtAuthzProvider,
        input: &CheckInput<'_>,
    ) -> Result<Request<Full<Bytes>>, CheckError> {
        let uri = format!(
            "http://{}{}{}",
            self.authority, provider.path_prefix, input.path
        );
        let mut request = Request::builder()
            .method(Method::from_bytes(input.method.as_str().as_bytes()).unwrap_or(Method::GET))
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| CheckError::Server(format!("building the check request: {e}")))?;
        let headers = request.headers_mut();
        for (name, value) in input.headers {
            if ALWAYS.contains(name)
                || header_listed(&provider.include_request_headers_in_check, name.as_str())
            {
                headers.append(name.clone(), value.clone());
            }
        }
        // The body goes as the check's own, so its length is the check's.
        headers.remove(header::CONTENT_LENGTH);
        if let Ok(host) = HeaderValue::from_str(input.host) {
            headers.insert(header::HOST, host);
        }
        if let Some((body, partial)) = input.body {
            headers.insert(
                HeaderName::from_static(PARTIAL_BODY),
                HeaderValue::from_static(if partial { "true" } else { "false" }),
            );
            *request.body_mut() = Full::new(Bytes::copy_from_slice(body));
        }
        Ok(request)
    }
}

/// Hop-by-hop and framing headers: the waypoint's own business on the way to the client.
fn is_framing(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

fn listed(list: &[String], headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !is_framing(n) && header_listed(list, n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

pub(crate) fn decide(
    provider: &ExtAuthzProvider,
    status: http::StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Decision {
    if status.is_success() {
        return Decision::Allow(Allowed {
            upstream: listed(&provider.headers_to_upstream_on_allow, headers)
                .into_iter()
                .map(|(n, v)| (n, v, HeaderAction::Set))
                .collect(),
            remove: headers
                .get_all(HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect(),
            downstream: listed(&provider.headers_to_downstream_on_allow, headers),
        });
    }
    let headers = if provider.headers_to_downstream_on_deny.is_empty() {
        headers
            .iter()
            .filter(|(n, _)| !is_framing(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    } else {
        listed(&provider.headers_to_downstream_on_deny, headers)
    };
    Decision::Deny(Denied {
        status,
        headers,
        body,
    })
}
