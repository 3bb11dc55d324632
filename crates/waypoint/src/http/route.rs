//! Routing (Gateway API HTTPRoute and GRPCRoute attached to the destination Service, GAMMA):
//! the rule a request matched decides its backend Service (weighted), the filters applied on
//! the way in and out, a redirect answered here, mirrors, and the rule's timeouts and retries
//! for the layers below ([`Resilience`]).
//!
//! A mirror gets a copy of the request, body included when the body ends within 64 KiB (a copy
//! is kept as it streams to the backend); a larger body is not mirrored, and counted
//! (`ambit_waypoint_mirrors_total{outcome="skipped"}`). Mirrors run on their own: the request
//! is neither delayed nor changed by them, and their answers are dropped.
//!
//! A Service with no route for this client is served as before: its own endpoints. A Service
//! with routes answers 404 (gRPC UNIMPLEMENTED) to a request no rule matched, and 500 (gRPC
//! UNAVAILABLE) to one whose chosen backend did not resolve, as the spec says.

use super::body::tee;
use super::retry::{Resilience, RetryRule};
use super::{
    Downstream, GrpcCode, Inner, Request, Response, ResponseFuture, empty, is_grpc, local_response,
};
use crate::destination::{Protocol, Target};
use crate::state::Shared;
use ambit_mesh::Mesh;
use ambit_route::{BackendChoice, Filters, HeaderEdits, Lookup, Matched, RedirectFrom, Scheme};
use http::StatusCode;
use http::header::LOCATION;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

/// Where a routed request goes: in its extensions when a rule chose a backend other than the
/// destination itself (the balance layer picks among that Service's endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub target: Target,
    pub protocol: Protocol,
}

/// The route a request matched: in its extensions, for the layers that attach to routes
/// (rate limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRef {
    pub namespace: String,
    pub name: String,
    /// A GRPCRoute (else an HTTPRoute).
    pub grpc: bool,
}

/// The largest request body mirrored: a copy is kept while the body streams to its backend.
pub const MIRROR_MAX_BODY: usize = 64 * 1024;
/// Requests being mirrored at once, each holding its kept body: past that, mirrors are
/// skipped, so a slow mirror backend costs at most this many copies.
const MIRRORS_IN_FLIGHT: usize = 256;
/// A mirror that has not answered by then is dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RouteLayer {
    shared: Arc<Shared>,
    mirrors_in_flight: Arc<Semaphore>,
}

impl RouteLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            mirrors_in_flight: Arc::new(Semaphore::new(MIRRORS_IN_FLIGHT)),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            shared: self.shared.clone(),
            mirrors_in_flight: self.mirrors_in_flight.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    shared: Arc<Shared>,
    mirrors_in_flight: Arc<Semaphore>,
}

impl<S: Inner> Service<Request> for Route<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(downstream) = request.extensions().get::<Downstream>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        let Target::Service {
            namespace,
            name,
            port,
        } = &downstream.destination.target
        else {
            // A pod addressed directly: routes attach to Services only.
            return Box::pin(self.inner.call(request));
        };
        let mesh = self.shared.mesh();
        let Some(table) = mesh.route_table(namespace, name, *port) else {
            return Box::pin(self.inner.call(request));
        };
        let grpc = is_grpc(request.headers());
        let (mut parts, body) = request.into_parts();
        let lookup = table.lookup(&ambit_route::Request::from_parts(
            Some(downstream.peer.namespace()),
            &parts,
        ));
        let matched = match lookup {
            Lookup::Unrouted => {
                return Box::pin(self.inner.call(Request::from_parts(parts, body)));
            }
            Lookup::NotFound => {
                let response = local_response(
                    grpc,
                    StatusCode::NOT_FOUND,
                    GrpcCode::Unimplemented,
                    "no route matched",
                );
                return Box::pin(async { Ok(response) });
            }
            Lookup::Matched(matched) => matched,
        };
        let decided = match decide(&mesh, &downstream, *port, matched, &mut parts, grpc) {
            Ok(decided) => decided,
            Err(response) => return Box::pin(async { Ok(*response) }),
        };
        let mut request = Request::from_parts(parts, body);
        self.mirror(&mut request, decided.mirrors);
        request
            .extensions_mut()
            .insert(Arc::new(decided.resilience));
        // The telemetry layer, outside this one, names the route on the request's span.
        let span_route = self
            .shared
            .tracer
            .as_ref()
            .is_some_and(|t| t.names_routes())
            .then(|| decided.route.clone());
        request.extensions_mut().insert(decided.route);
        if let Some(routed) = decided.routed {
            request.extensions_mut().insert(routed);
        }
        let call = self.inner.call(request);
        let response_filters = decided.response_filters;
        Box::pin(async move {
            let mut response = call.await?;
            if let Some(edits) = response_filters {
                edits(response.headers_mut());
            }
            if let Some(route) = span_route {
                response.extensions_mut().insert(route);
            }
            Ok(response)
        })
    }
}

impl<S: Inner> Route<S> {
    /// Sends copies of `request` to `mirrors` once its body has ended, if it ended within
    /// [`MIRROR_MAX_BODY`]; their answers are dropped. The request goes on at once, its body
    /// unchanged: a mirror never delays or alters it.
    fn mirror(&self, request: &mut Request, mirrors: Vec<Routed>) {
        if mirrors.is_empty() {
            return;
        }
        let metrics = self.shared.metrics.clone();
        let Ok(in_flight) = self.mirrors_in_flight.clone().try_acquire_owned() else {
            metrics.mirrors(MirrorOutcome::Skipped, mirrors.len());
            return;
        };
        let body = std::mem::replace(request.body_mut(), empty());
        let (body, kept) = tee(body, MIRROR_MAX_BODY);
        *request.body_mut() = body;
        let head = head_of(request);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let whole = tokio::time::timeout(MIRROR_TIMEOUT, kept.whole()).await;
            let Some(kept) = whole.ok().flatten() else {
                metrics.mirrors(MirrorOutcome::Skipped, mirrors.len());
                return;
            };
            metrics.mirrors(MirrorOutcome::Sent, mirrors.len());
            let in_flight = Arc::new(in_flight);
            for to in mirrors {
                let mut copy = http::Request::from_parts(head.clone_head(), kept.body());
                copy.extensions_mut().insert(to);
                copy.extensions_mut().insert(Mirrored);
                let call = inner.clone().oneshot(copy);
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(MIRROR_TIMEOUT, call).await;
                    drop(in_flight);
                });
            }
        });
    }
}

/// A mirrored copy of a request, in its extensions: it counts against no rate limit.
#[derive(Debug, Clone, Copy)]
pub struct Mirrored;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    Sent,
    /// Its body was larger than [`MIRROR_MAX_BODY`] (or failed, or did not end within the
    /// mirror's time), or too many mirrors were in flight.
    Skipped,
}

/// What a mirror copies of a request besides its body.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    downstream: Option<Downstream>,
}

fn head_of(request: &Request) -> Head {
    Head {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
        downstream: request.extensions().get::<Downstream>().cloned(),
    }
}

impl Head {
    fn clone_head(&self) -> http::request::Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        if let Some(downstream) = &self.downstream {
            parts.extensions.insert(downstream.clone());
        }
        parts
    }
}

type ResponseEdits = Box<dyn FnOnce(&mut http::HeaderMap) + Send>;

/// What the matched rule decided for one request.
struct Decided {
    route: RouteRef,
    routed: Option<Routed>,
    resilience: Resilience,
    mirrors: Vec<Routed>,
    response_filters: Option<ResponseEdits>,
}

/// Applies the rule: a redirect or an invalid backend is answered at once (`Err`); otherwise
/// the request is rewritten for its backend.
fn decide(
    mesh: &Mesh,
    downstream: &Downstream,
    service_port: u16,
    matched: Matched<'_>,
    parts: &mut http::request::Parts,
    grpc: bool,
) -> Result<Decided, Box<Response>> {
    let rule = matched.rule;
    let filters = rule.filters();
    if let Some(redirect) = &filters.redirect {
        let host = ambit_route::Request::from_parts(None, parts).host;
        let from = RedirectFrom {
            scheme: Scheme::Http,
            host,
            port: service_port,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        };
        return Err(Box::new(match redirect.location(&from) {
            Ok(location) => {
                let mut response = http::Response::new(empty());
                *response.status_mut() = redirect.status();
                response.headers_mut().insert(LOCATION, location);
                response
            }
            Err(error) => internal(grpc, &error.to_string()),
        }));
    }
    let (routed, backend_filters) = match rule.choose_backend(fastrand::u32(..)) {
        BackendChoice::Parent => (None, None),
        BackendChoice::Backend(backend) => (
            Some(backend_target(
                mesh,
                downstream,
                &backend.namespace,
                &backend.name,
                backend.port,
            )),
            Some(&backend.filters),
        ),
        BackendChoice::Invalid => {
            return Err(Box::new(internal(grpc, "the route's backend is not valid")));
        }
    };
    for filters in std::iter::once(filters).chain(backend_filters) {
        if let Err(error) = filters.apply_to_request(parts) {
            return Err(Box::new(internal(grpc, &error.to_string())));
        }
    }
    let mirrors = std::iter::once(filters)
        .chain(backend_filters)
        .flat_map(|f| &f.mirrors)
        .filter(|m| m.mirrors(fastrand::u32(..)))
        .map(|m| {
            let b = &m.backend;
            backend_target(mesh, downstream, &b.namespace, &b.name, b.port)
        })
        .collect();
    let route = matched.route.route();
    Ok(Decided {
        route: RouteRef {
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            grpc: route.kind == ambit_route::RouteKind::Grpc,
        },
        routed,
        resilience: resilience(matched),
        mirrors,
        response_filters: response_edits(filters, backend_filters),
    })
}

fn internal(grpc: bool, message: &str) -> Response {
    local_response(
        grpc,
        StatusCode::INTERNAL_SERVER_ERROR,
        GrpcCode::Unavailable,
        message,
    )
}

/// A backend Service port, and what it speaks (its port's protocol when the model knows the
/// Service, the destination's otherwise).
fn backend_target(
    mesh: &Mesh,
    downstream: &Downstream,
    namespace: &str,
    name: &str,
    port: u16,
) -> Routed {
    let protocol = mesh
        .config()
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)
        .and_then(|s| s.ports.iter().find(|p| p.port == port))
        .map_or(downstream.destination.protocol, Protocol::of);
    Routed {
        target: Target::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        },
        protocol,
    }
}

fn resilience(matched: Matched<'_>) -> Resilience {
    let rule = matched.rule;
    Resilience {
        request_timeout: rule.request_timeout(),
        attempt_timeout: rule.backend_request_timeout(),
        retry: rule.retry().map(|r| RetryRule {
            codes: r.codes.iter().map(|c| c.as_u16()).collect(),
            attempts: r.attempts,
            backoff: r.backoff.unwrap_or_default(),
        }),
    }
}

/// The response header edits of the rule and then of the backend, if any.
fn response_edits(rule: &Filters, backend: Option<&Filters>) -> Option<ResponseEdits> {
    let edits: Vec<HeaderEdits> = std::iter::once(rule)
        .chain(backend)
        .filter_map(|f| f.response_headers.clone())
        .collect();
    if edits.is_empty() {
        return None;
    }
    Some(Box::new(move |headers: &mut http::HeaderMap| {
        for edit in &edits {
            edit.apply(headers);
        }
    }))
}

impl std::fmt::Debug for Decided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decided")
            .field("routed", &self.routed)
            .finish_non_exhaustive()
    }
}
