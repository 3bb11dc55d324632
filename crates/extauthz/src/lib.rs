//! External authorization for the waypoint: asks a provider ([`ExtAuthzProvider`], declared in
//! the mesh configuration and named by CUSTOM policies) whether a request may go on, in Envoy's
//! ext_authz v3 API — gRPC `envoy.service.auth.v3.Authorization/Check` ([`grpc`]) or its HTTP
//! variant ([`http_check`]) — and says what to do: go on with header changes, or answer the
//! provider's denial. A provider that cannot answer in its timeout leads to its failure mode:
//! denied with `status_on_error` (the default), or let through when `fail_open`.
//!
//! Connections are pooled per provider: one lazily connected HTTP/2 channel for gRPC, a hyper
//! connection pool for HTTP. [`Clients`] keeps one client per provider across config changes.

mod grpc;
mod http_check;
pub mod proto;

use ambit_policy::{ExtAuthzProtocol, ExtAuthzProvider};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A peer of the request, as the check names it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// SPIFFE id.
    pub principal: &'a str,
    pub address: SocketAddr,
}

/// What the check says about the request.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub source: Peer<'a>,
    pub destination: Peer<'a>,
    pub method: &'a http::Method,
    /// Path and query, as received.
    pub path: &'a str,
    /// `:authority` or `Host`.
    pub host: &'a str,
    pub scheme: &'a str,
    pub version: http::Version,
    pub headers: &'a HeaderMap,
    /// The body as buffered for the check (`include_request_body_in_check`), and whether it
    /// was cut short.
    pub body: Option<(&'a [u8], bool)>,
    /// The request's size in bytes, when known.
    pub size: Option<u64>,
}

/// How a header from the provider changes the request to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAction {
    /// Replace any value (add when absent).
    Set,
    /// Add a value, keeping those there.
    Append,
    /// Only when the request has none.
    AddIfAbsent,
    /// Only when the request has one.
    OverwriteIfExists,
}

/// The provider allowed the request, with these changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    pub upstream: Vec<(HeaderName, HeaderValue, HeaderAction)>,
    /// Removed from the request after `upstream` is applied.
    pub remove: Vec<HeaderName>,
    /// Added to the response to the client.
    pub downstream: Vec<(HeaderName, HeaderValue)>,
}

/// The answer sent to the client instead of the app's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

/// How a check ended, for metrics (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// The provider failed; `fail_open` let the request through.
    ErrorAllowed,
    /// The provider failed; denied with `status_on_error`.
    ErrorDenied,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::ErrorAllowed => "error_allowed",
            Self::ErrorDenied => "error_denied",
        }
    }
}

/// Why a provider gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the server: {0}")]
    Unavailable(String),
    #[error("the server failed: {0}")]
    Server(String),
    /// The server answered with an error response of its own (gRPC `error_response`), sent
    /// to the client if the failure mode denies (no status: `status_on_error`).
    #[error("the server reported an error")]
    ErrorResponse {
        status: Option<StatusCode>,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

impl CheckError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Server(_) => "server_error",
            Self::ErrorResponse { .. } => "error_response",
        }
    }
}

/// The decision, how it was reached, and the provider's failure when there was one.
#[derive(Debug)]
pub struct Checked {
    pub decision: Decision,
    pub outcome: Outcome,
    pub error: Option<CheckError>,
}

#[derive(Debug)]
enum Transport {
    Grpc(grpc::GrpcClient),
    Http(http_check::HttpClient),
}

/// The client of one provider.
#[derive(Debug)]
pub struct Client {
    provider: ExtAuthzProvider,
    transport: Transport,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("provider {name}: {service}:{port} is not a valid address: {reason}")]
    Address {
        name: String,
        service: String,
        port: u16,
        reason: String,
    },
}

impl Client {
    /// A client of `provider` (validated by the mesh model). Connects on first use; needs a
    /// tokio runtime.
    pub fn new(provider: ExtAuthzProvider) -> Result<Self, ClientError> {
        let authority = match provider.service.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]:{}", provider.service, provider.port),
            Err(_) => format!("{}:{}", provider.service, provider.port),
        };
        let bad = |reason: String| ClientError::Address {
            name: provider.name.clone(),
            service: provider.service.clone(),
            port: provider.port,
            reason,
        };
        let timeout = Duration::from_millis(provider.timeout_ms);
        let transport = match provider.protocol {
            ExtAuthzProtocol::Grpc => Transport::Grpc(
                grpc::GrpcClient::new(&authority, timeout).map_err(|e| bad(e.to_string()))?,
            ),
            ExtAuthzProtocol::Http => Transport::Http(
                http_check::HttpClient::new(&authority, timeout).map_err(|e| bad(e.to_string()))?,
            ),
        };
        Ok(Self {
            provider,
            transport,
        })
    }

    pub fn provider(&self) -> &ExtAuthzProvider {
        &self.provider
    }

    /// Asks the provider about `input`, within its timeout, and applies its failure mode.
    pub async fn check(&self, input: &CheckInput<'_>) -> Checked {
        let timeout = Duration::from_millis(self.provider.timeout_ms);
        let answer = match &self.transport {
            Transport::Grpc(c) => tokio::time::timeout(timeout, c.check(input)).await,
            Transport::Http(c) => {
                tokio::time::timeout(timeout, c.check(&self.provider, input)).await
            }
        };
        let error = match answer {
            Ok(Ok(decision)) => {
                let outcome = match decision {
                    Decision::Allow(_) => Outcome::Allowed,
                    Decision::Deny(_) => Outcome::Denied,
                };
                return Checked {
                    decision,
                    outcome,
                    error: None,
                };
            }
            Ok(Err(e)) => e,
            Err(_) => CheckError::Timeout(timeout),
        };
        if self.provider.fail_open {
            return Checked {
                decision: Decision::Allow(Allowed::default()),
                outcome: Outcome::ErrorAllowed,
                error: Some(error),
            };
        }
        let status =
            StatusCode::from_u16(self.provider.status_on_error).unwrap_or(StatusCode::FORBIDDEN);
        let denied = match &error {
            CheckError::ErrorResponse {
                status: own,
                headers,
                body,
            } => Denied {
                status: own.unwrap_or(status),
                headers: headers.clone(),
                body: body.clone(),
            },
            _ => Denied {
                status,
                headers: Vec::new(),
                body: Bytes::from_static(b"external authorization failed\n"),
            },
        };
        Checked {
            decision: Decision::Deny(denied),
            outcome: Outcome::ErrorDenied,
            error: Some(error),
        }
    }
}

impl Allowed {
    /// The provider's changes to the request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value, action) in &self.upstream {
            match action {
                HeaderAction::Set => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderAction::Append => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                HeaderAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        for name in &self.remove {
            // The request's host stays: without it the request is malformed.
            if name != http::header::HOST {
                headers.remove(name);
            }
        }
    }
}

/// One client per provider, kept while the provider's settings stay the same (so are its
/// pooled connections).
#[derive(Debug, Default)]
pub struct Clients {
    clients: RwLock<HashMap<String, Arc<Client>>>,
}

impl Clients {
    /// The client of `provider`, made when it is new or changed.
    pub fn get(&self, provider: &ExtAuthzProvider) -> Result<Arc<Client>, ClientError> {
        let read = self
            .clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = read.get(&provider.name)
            && c.provider == *provider
        {
            return Ok(c.clone());
        }
        drop(read);
        let client = Arc::new(Client::new(provider.clone())?);
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(provider.name.clone(), client.clone());
        Ok(client)
    }
}

/// `version` as ext_authz names protocols.
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Header values are bytes; the check carries strings (Envoy replaces what is not UTF-8).
fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Envoy's header telling the server its body is cut short.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

#[cfg(test)]
mod tests;
