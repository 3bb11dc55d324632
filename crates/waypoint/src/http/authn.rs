//! End-user authentication (JWT) per request, under the `RequestAuthentication`s selecting the
//! endpoint's workload (`ambit-authn` does the checking). A request without a token passes
//! unauthenticated (policy decides); one with an invalid token gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` (gRPC: UNAUTHENTICATED); a valid one goes
//! on with its principal and claims ([`ambit_policy::RequestAuth`]) for `authz`, the claims
//! asked for copied into headers and the token removed unless the rule forwards it.
//!
//! It runs after `balance`: rules select workloads by their labels, and which workload serves
//! the request is known once its endpoint is picked (as for authorization). Under a retrying
//! route each attempt is authenticated again (each may reach another workload).
//!
//! The rules are compiled (key sets parsed) once per model change that touches them, not per
//! request: the compiled set is kept with the model it came from.

use super::{GrpcCode, Inner, Picked, Request, Response, ResponseFuture, is_grpc, local_response};
use crate::state::Shared;
use ambit_authn::Authenticator;
use ambit_mesh::Mesh;
use ambit_policy::Target;
use http::StatusCode;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use std::convert::Infallible;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tower::{Layer, Service};

/// The compiled rules and the model they were compiled for.
#[derive(Debug, Default)]
struct Compiled {
    current: RwLock<Option<(Weak<Mesh>, Arc<Authenticator>)>>,
}

impl Compiled {
    fn get(&self, mesh: &Arc<Mesh>) -> Arc<Authenticator> {
        let read = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((m, a)) = read.as_ref()
            && std::ptr::eq(m.as_ptr(), Arc::as_ptr(mesh))
        {
            return a.clone();
        }
        let previous = read.as_ref().map(|(_, a)| a.clone());
        drop(read);
        let wanted = &mesh.config().request_authentications;
        // Most model changes are pods and services: the rules, and their parsed keys, stay.
        let authenticator = match previous {
            Some(a) if a.source() == wanted.as_slice() => a,
            _ => {
                let (a, problems) = Authenticator::new(wanted);
                for p in problems {
                    tracing::warn!(problem = %p, "JWT rule without usable keys: its tokens are refused");
                }
                Arc::new(a)
            }
        };
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((Arc::downgrade(mesh), authenticator.clone()));
        authenticator
    }
}

#[derive(Debug, Clone)]
pub struct AuthnLayer {
    shared: Arc<Shared>,
    compiled: Arc<Compiled>,
}

impl AuthnLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            compiled: Arc::default(),
        }
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = Authn<S>;
    fn layer(&self, inner: S) -> Authn<S> {
        Authn {
            inner,
            shared: self.shared.clone(),
            compiled: self.compiled.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authn<S> {
    inner: S,
    shared: Arc<Shared>,
    compiled: Arc<Compiled>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S: Inner> Service<Request> for Authn<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Without an endpoint, authz refuses the request: nothing to authenticate for.
        let Some(picked) = request.extensions().get::<Picked>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        let Some(workload) = picked.mesh.workload_by_uid(&picked.endpoint.uid) else {
            return Box::pin(self.inner.call(request));
        };
        let authenticator = self.compiled.get(&picked.mesh);
        let rules = authenticator.rules_for(&Target {
            namespace: &workload.namespace,
            labels: &workload.labels,
            port: picked.endpoint.addr.port(),
        });
        if rules.is_empty() {
            return Box::pin(self.inner.call(request));
        }
        let (mut parts, body) = request.into_parts();
        let metrics = &self.shared.metrics;
        match rules.authenticate(&mut parts.headers, &mut parts.uri, now()) {
            Ok(None) => metrics.jwt("no_token", ""),
            Ok(Some(auth)) => {
                metrics.jwt("authenticated", "");
                parts.extensions.insert(auth);
            }
            Err(e) => {
                metrics.jwt("invalid", e.label());
                tracing::debug!(error = %e, path = parts.uri.path(), "request with an invalid token refused");
                let mut response = local_response(
                    is_grpc(&parts.headers),
                    StatusCode::UNAUTHORIZED,
                    GrpcCode::Unauthenticated,
                    &format!("Jwt verification fails: {e}"),
                );
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
                return Box::pin(async move { Ok(response) });
            }
        }
        Box::pin(self.inner.call(http::Request::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ambit_mesh::MeshConfig;
    use ambit_policy::{JwtRule, RequestAuthentication};

    fn mesh(issuers: &[&str]) -> Arc<Mesh> {
        let request_authentications = issuers
            .iter()
            .map(|iss| RequestAuthentication {
                name: "idp".into(),
                namespace: "shop".into(),
                selector: None,
                jwt_rules: vec![JwtRule {
                    issuer: (*iss).into(),
                    audiences: vec![],
                    jwks: String::new(),
                    from_headers: vec![],
                    from_params: vec![],
                    output_claim_to_headers: vec![],
                    forward_original_token: false,
                }],
            })
            .collect();
        Arc::new(
            Mesh::new(MeshConfig {
                trust_domain: "cluster.local".into(),
                request_authentications,
                ..MeshConfig::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn rules_are_compiled_once_per_change_of_the_rules() {
        let compiled = Compiled::default();
        let first = mesh(&["https://a.example"]);
        let a = compiled.get(&first);
        assert!(Arc::ptr_eq(&a, &compiled.get(&first)), "same model");
        // A new model (pods came and went) with the same rules keeps the compiled set.
        let same_rules = mesh(&["https://a.example"]);
        assert!(Arc::ptr_eq(&a, &compiled.get(&same_rules)));
        let other_rules = mesh(&["https://b.example"]);
        let b = compiled.get(&other_rules);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.source()[0].jwt_rules[0].issuer, "https://b.example");
    }
}
