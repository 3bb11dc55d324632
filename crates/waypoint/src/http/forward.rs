//! The innermost service: the request, made ready for the next hop (RFC 9110 §7.6.1: hop-by-hop
//! headers removed, the URI in the form the upstream protocol wants, `:authority` kept), sent
//! to the chosen endpoint; upstream failures become 503/502 (gRPC UNAVAILABLE); a gRPC
//! deadline (`grpc-timeout`) bounds the wait for the response; HTTP/1.1 upgrades (WebSocket)
//! are spliced through.

use super::upstream::{UpstreamError, Upstreams};
use super::{
    Downstream, GrpcCode, Picked, Request, Response, ResponseFuture, authority, is_grpc,
    local_response,
};
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

/// Hop-by-hop headers besides those `Connection` names.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers; keeps `Upgrade` (and `Connection: upgrade`) when
/// `keep_upgrade`, and `TE: trailers` (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade = keep_upgrade
        .then(|| headers.get(UPGRADE).cloned())
        .flatten();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    headers.remove(TE);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A request transfer coding other than `chunked` (RFC 9112 §6.1: a server answers 501 to
/// codings it does not understand). The body was de-chunked on the way in and `Transfer-Encoding`
/// is hop-by-hop, so forwarding would silently drop a coding such as `gzip` from the body.
pub fn unsupported_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.eq_ignore_ascii_case("chunked"))
        .map(str::to_owned)
}

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn is_upgrade(request: &Request) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(UPGRADE)
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Rewrites the request for its upstream protocol; says whether it is an HTTP/1.1 upgrade
/// (its `Upgrade` header kept).
pub fn prepare(request: &mut Request, h2: bool, fallback_authority: &str) -> Result<bool, String> {
    let upgrade = !h2 && is_upgrade(request);
    let authority = authority(request).unwrap_or(fallback_authority).to_owned();
    strip_hop_by_hop(request.headers_mut(), upgrade);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = if h2 {
        request.headers_mut().remove(HOST);
        *request.version_mut() = Version::HTTP_2;
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
    } else {
        if !request.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
            request.headers_mut().insert(HOST, host);
        }
        *request.version_mut() = Version::HTTP_11;
        Uri::builder().path_and_query(path).build()
    };
    *request.uri_mut() = uri.map_err(|e| format!("cannot forward {authority}: {e}"))?;
    Ok(upgrade)
}

#[derive(Debug, Clone)]
pub struct Forward {
    upstreams: Arc<Upstreams>,
}

impl Forward {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Self { upstreams }
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let upstreams = self.upstreams.clone();
        Box::pin(async move { Ok(forward(&upstreams, request).await) })
    }
}

async fn forward(upstreams: &Arc<Upstreams>, mut request: Request) -> Response {
    let grpc = is_grpc(request.headers());
    let fail = |status, code, message: &str| local_response(grpc, status, code, message);
    let (Some(downstream), Some(picked)) = (
        request.extensions().get::<Downstream>().cloned(),
        request.extensions().get::<Picked>().cloned(),
    ) else {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            GrpcCode::Unavailable,
            "request without a connection or an endpoint",
        );
    };
    if let Some(coding) = unsupported_coding(request.headers()) {
        return fail(
            StatusCode::NOT_IMPLEMENTED,
            GrpcCode::Unavailable,
            &format!("transfer coding {coding:?} is not supported"),
        );
    }
    let h2 = picked.protocol.upstream_h2();
    let deadline = grpc.then(|| grpc_timeout(request.headers())).flatten();
    let upgrade = match prepare(
        &mut request,
        h2,
        &downstream.destination.authority.to_string(),
    ) {
        Ok(upgrade) => upgrade,
        Err(reason) => return fail(StatusCode::BAD_REQUEST, GrpcCode::Unavailable, &reason),
    };
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let endpoint = &picked.endpoint;
    let send = async {
        if h2 {
            upstreams.send_h2(endpoint, request).await
        } else {
            upstreams.send_h1(endpoint, request).await
        }
    };
    let sent = match deadline {
        Some(d) => match tokio::time::timeout(d, send).await {
            Ok(sent) => sent,
            Err(_) => {
                return fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    GrpcCode::DeadlineExceeded,
                    "deadline exceeded before the upstream answered",
                );
            }
        },
        None => send.await,
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(%error, endpoint = %endpoint.addr, "upstream request failed");
            let status = if error.unreachable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            return fail(status, GrpcCode::Unavailable, &upstream_message(&error));
        }
    };
    if let (Some(downstream_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
        (downstream_upgrade, response.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(downstream_upgrade, upstream_upgrade) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (
                        hyper_util::rt::TokioIo::new(down),
                        hyper_util::rt::TokioIo::new(up),
                    );
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        });
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    response.map(|body| body.boxed())
}

fn upstream_message(error: &UpstreamError) -> String {
    if error.unreachable() {
        format!("upstream unreachable: {error}")
    } else {
        format!("upstream failed: {error}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::empty;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(TE, "trailers, deflate".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h[TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }

    #[test]
    fn only_chunked_is_a_supported_request_coding() {
        let te = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(TRANSFER_ENCODING, v.parse().unwrap());
            unsupported_coding(&h)
        };
        assert_eq!(te("chunked"), None);
        assert_eq!(te("Chunked"), None);
        assert_eq!(te("gzip, chunked"), Some("gzip".into()));
        assert_eq!(unsupported_coding(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeouts_parse_strictly() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_take_the_upstream_form_and_keep_the_authority() {
        let mut r = http::Request::builder()
            .uri("/a?b=1")
            .header(HOST, "echo.shop.svc:80")
            .header(CONNECTION, "close")
            .body(empty())
            .unwrap();
        prepare(&mut r, true, "10.96.0.1:80").unwrap();
        assert_eq!(r.uri().to_string(), "http://echo.shop.svc:80/a?b=1");
        assert!(r.headers().get(HOST).is_none());
        assert!(r.headers().get(CONNECTION).is_none());

        let mut r = http::Request::builder()
            .uri("http://echo.shop.svc:80/a")
            .version(Version::HTTP_2)
            .body(empty())
            .unwrap();
        prepare(&mut r, false, "10.96.0.1:80").unwrap();
        assert_eq!(r.uri().to_string(), "/a");
        assert_eq!(r.headers()[HOST], "echo.shop.svc:80");
        assert_eq!(r.version(), Version::HTTP_11);

        let mut r = http::Request::builder().uri("/").body(empty()).unwrap();
        prepare(&mut r, false, "10.96.0.1:80").unwrap();
        assert_eq!(r.headers()[HOST], "10.96.0.1:80");
    }
}
