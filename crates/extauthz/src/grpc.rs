//! The gRPC variant: `envoy.service.auth.v3.Authorization/Check` over one lazily connected
//! HTTP/2 channel per provider (tonic reconnects it, and multiplexes every check on it).

use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::service::auth::v3 as auth;
use crate::{
    Allowed, CheckError, CheckInput, Decision, Denied, HeaderAction, PARTIAL_BODY, Peer, lossy,
    protocol,
};
use auth::attribute_context::{HttpRequest, Peer as PbPeer, Request};
use auth::authorization_client::AuthorizationClient;
use auth::check_response::HttpResponse;
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// gRPC `OK`.
const OK: i32 = 0;

#[derive(Debug, Clone)]
pub(crate) struct GrpcClient {
    client: AuthorizationClient<Channel>,
    timeout: Duration,
}

impl GrpcClient {
    pub(crate) fn new(authority: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{authority}"))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: AuthorizationClient::new(channel),
            timeout,
        })
    }

    pub(crate) async fn check(&self, input: &CheckInput<'_>) -> Result<Decision, CheckError> {
        let mut request = tonic::Request::new(check_request(input));
        // The server learns the deadline too (`grpc-timeout`).
        request.set_timeout(self.timeout);
        match self.client.clone().check(request).await {
            Ok(response) => decide(response.into_inner()),
            Err(status) => Err(match status.code() {
                tonic::Code::Unavailable => CheckError::Unavailable(status.message().to_owned()),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    CheckError::Timeout(self.timeout)
                }
                code => CheckError::Server(format!("{code:?}: {}", status.message())),
            }),
        }
    }
}

fn peer(p: &Peer<'_>) -> PbPeer {
    PbPeer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                protocol: core::socket_address::Protocol::Tcp.into(),
                address: p.address.ip().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                    p.address.port().into(),
                )),
            })),
        }),
        principal: p.principal.to_owned(),
    }
}

/// The check's attributes, as Envoy fills them: header names lower case (as `http` keeps
/// them), repeated headers joined with `,`.
pub(crate) fn check_request(input: &CheckInput<'_>) -> auth::CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::with_capacity(input.headers.len() + 4);
    for (name, value) in input.headers {
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&lossy(value.as_bytes()));
            })
            .or_insert_with(|| lossy(value.as_bytes()));
    }
    // HTTP/2 carries these as pseudo-headers, and servers read them from the map too.
    headers.insert(":method".into(), input.method.as_str().to_owned());
    headers.insert(":path".into(), input.path.to_owned());
    headers.insert(":authority".into(), input.host.to_owned());
    headers.insert(":scheme".into(), input.scheme.to_owned());
    let body = input.body.map(|(body, partial)| {
        headers.insert(PARTIAL_BODY.into(), partial.to_string());
        lossy(body)
    });
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(peer(&input.source)),
            destination: Some(peer(&input.destination)),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: input
                        .headers
                        .get("x-request-id")
                        .map(|v| lossy(v.as_bytes()))
                        .unwrap_or_default(),
                    method: input.method.as_str().to_owned(),
                    headers,
                    path: input.path.to_owned(),
                    host: input.host.to_owned(),
                    scheme: input.scheme.to_owned(),
                    size: input.size.and_then(|s| i64::try_from(s).ok()).unwrap_or(-1),
                    protocol: protocol(input.version).to_owned(),
                    body: body.unwrap_or_default(),
                }),
            }),
        }),
    }
}

/// A header the server sent, if it is one HTTP can carry.
fn header(option: &core::HeaderValueOption) -> Option<(HeaderName, HeaderValue, HeaderAction)> {
    use core::header_value_option::HeaderAppendAction as A;
    let h = option.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
    let value = HeaderValue::from_str(&h.value).ok()?;
    // `append` (deprecated, still what servers send) decides when present; ext_authz documents
    // it as false by default here, so a server that says nothing sets the header.
    let action = match option.append {
        Some(true) => HeaderAction::Append,
        Some(false) => HeaderAction::Set,
        None => match A::try_from(option.append_action) {
            Ok(A::AddIfAbsent) => HeaderAction::AddIfAbsent,
            Ok(A::OverwriteIfExists) => HeaderAction::OverwriteIfExists,
            Ok(A::AppendIfExistsOrAdd | A::OverwriteIfExistsOrAdd) | Err(_) => HeaderAction::Set,
        },
    };
    Some((name, value, action))
}

fn headers(options: &[core::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue)> {
    options
        .iter()
        .filter_map(header)
        .map(|(n, v, _)| (n, v))
        .collect()
}

fn status(s: Option<&crate::proto::envoy::r#type::v3::HttpStatus>) -> Option<StatusCode> {
    s.and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|c| c.as_u16() >= 200)
}

/// The server's answer: `OK` allows (with the OK response's changes), anything else denies
/// (with the denied response's status, default 403, headers and body); an error response is
/// the server failing.
pub(crate) fn decide(response: auth::CheckResponse) -> Result<Decision, CheckError> {
    let ok = response.status.as_ref().is_none_or(|s| s.code == OK);
    match response.http_response {
        Some(HttpResponse::ErrorResponse(e)) => Err(CheckError::ErrorResponse {
            status: status(e.status.as_ref()),
            headers: headers(&e.headers),
            body: Bytes::from(e.body),
        }),
        Some(HttpResponse::OkResponse(ok_response)) if ok => Ok(Decision::Allow(Allowed {
            upstream: ok_response.headers.iter().filter_map(header).collect(),
            remove: ok_response
                .headers_to_remove
                .iter()
                .filter(|n| !n.starts_with(':'))
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            downstream: headers(&ok_response.response_headers_to_add),
        })),
        _ if ok => Ok(Decision::Allow(Allowed::default())),
        Some(HttpResponse::DeniedResponse(d)) => Ok(Decision::Deny(Denied {
            status: status(d.status.as_ref()).unwrap_or(StatusCode::FORBIDDEN),
            headers: headers(&d.headers),
            body: Bytes::from(d.body),
        })),
        _ => Ok(Decision::Deny(Denied {
            status: StatusCode::FORBIDDEN,
            headers: Vec::new(),
            body: Bytes::new(),
        })),
    }
}
