//! L4 and L7 authorization per request, with the real client's identity (the destination's
//! tunnel only sees the waypoint's), against the policies of the endpoint chosen for it.
//! Denied: HTTP 403 naming the policy, gRPC PERMISSION_DENIED. AUDIT matches are logged.
//! Allowed with CUSTOM policies matching: their providers are left for `extauthz` to ask.

use super::{
    Downstream, GrpcCode, Inner, Picked, Request, Response, ResponseFuture, authority, is_grpc,
    local_response,
};
use ambit_policy::{Decision, HttpRequest, RequestAuth, Source};
use http::StatusCode;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub struct AuthzLayer;

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
}

/// Why a request is refused, or the external authorization providers to ask (if any).
pub fn check(request: &Request) -> Result<Vec<String>, String> {
    let (Some(downstream), Some(picked)) = (
        request.extensions().get::<Downstream>(),
        request.extensions().get::<Picked>(),
    ) else {
        return Err("request without a connection or an endpoint".into());
    };
    if picked.endpoint.waypoint.is_some() {
        // The backend's own waypoint applies its pods' policy.
        return Ok(Vec::new());
    }
    let Some(workload) = picked.mesh.workload_by_uid(&picked.endpoint.uid) else {
        return Err("the endpoint left the mesh".into());
    };
    let host = authority(request).unwrap_or_default();
    let verdict = picked.mesh.authorize_request(
        workload,
        picked.endpoint.addr.port(),
        &Source {
            identity: Some(downstream.peer.clone()),
            ip: downstream.peer_addr.ip(),
        },
        &HttpRequest {
            method: request.method(),
            path: request.uri().path(),
            host,
            headers: request.headers(),
            auth: request.extensions().get::<RequestAuth>(),
        },
    );
    if let Some(policy) = &verdict.audit {
        tracing::info!(target: "access", kind = "audit", policy = %policy, src_identity = %downstream.peer, method = %request.method(), path = request.uri().path(), allowed = matches!(verdict.decision, Decision::Allow), "audited request");
    }
    match verdict.decision {
        Decision::Allow => Ok(verdict.ext_authz),
        Decision::Deny(Some(policy)) => Err(format!(
            "RBAC: access denied by policy {}/{policy}",
            workload.namespace
        )),
        Decision::Deny(None) => Err("RBAC: access denied: no ALLOW policy matched".into()),
    }
}

impl<S: Inner> Service<Request> for Authz<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match check(&request) {
            Ok(providers) => {
                if !providers.is_empty() {
                    request
                        .extensions_mut()
                        .insert(super::extauthz::Ask(providers));
                }
                Box::pin(self.inner.call(request))
            }
            Err(reason) => {
                let response = local_response(
                    is_grpc(request.headers()),
                    StatusCode::FORBIDDEN,
                    GrpcCode::PermissionDenied,
                    &reason,
                );
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
