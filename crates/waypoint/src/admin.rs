//! The waypoint's own endpoints, on hyper: readiness (`/healthz/ready`), Prometheus metrics
//! (`/metrics`) and the config dump (`/config_dump`, on loopback by default: it shows the
//! whole view, though never a key).

use crate::state::Shared;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    Readiness,
    Metrics,
    Admin,
}

fn respond(status: StatusCode, content_type: &str, body: String) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

pub fn route(
    shared: &Shared,
    endpoints: Endpoints,
    method: &Method,
    path: &str,
) -> http::Response<Full<Bytes>> {
    if method != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match (endpoints, path) {
        (Endpoints::Readiness, "/healthz/ready") => {
            if shared.ready() {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else if shared.draining() {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if !shared.synced() {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no config from the controller yet\n".into(),
                )
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no certificate yet\n".into(),
                )
            }
        }
        (Endpoints::Metrics, "/metrics" | "/stats/prometheus") => {
            shared
                .metrics
                .access_log_dropped(shared.access_log.dropped());
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.render(shared.stream().as_ref()),
            )
        }
        (Endpoints::Admin, "/config_dump") => {
            let mesh = shared.mesh();
            let body = serde_json::json!({
                "servedAccount": {"namespace": shared.namespace, "serviceAccount": shared.for_service_account},
                "identity": shared.identity.to_string(),
                "ready": shared.ready(),
                "controller": shared.stream().map(|s| ambit_controller_client::source::stream_json(&s)),
                "mesh": mesh.config(),
            });
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `endpoints` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, endpoints: Endpoints) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let response = route(&shared, endpoints, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
