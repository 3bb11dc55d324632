//! The head of a CONNECT request, checked: a pure function of the request, so it is fuzzed
//! (fuzz/, target `hbone_connect`) apart from the server's TLS and HTTP/2.

use crate::headers::TunnelHeaders;
use http::{Method, Request};
use std::net::SocketAddr;

/// Why a request on an HBONE connection is not a tunnel; the server answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadConnect {
    #[error("a {0} request, not CONNECT")]
    NotConnect(Method),
    #[error("the CONNECT target {0:?} is not ip:port")]
    TargetNotIpPort(String),
}

/// The target (`:authority`, which must be `ip:port`) and the pass-through headers of a
/// CONNECT request.
pub fn check_connect<B>(request: &Request<B>) -> Result<(SocketAddr, TunnelHeaders), BadConnect> {
    if request.method() != Method::CONNECT {
        return Err(BadConnect::NotConnect(request.method().clone()));
    }
    let target = request
        .uri()
        .authority()
        .and_then(|authority| authority.as_str().parse::<SocketAddr>().ok())
        .ok_or_else(|| BadConnect::TargetNotIpPort(request.uri().to_string()))?;
    Ok((target, TunnelHeaders::from_headers(request.headers())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("traceparent", "00-abc-def-01")
            .header("authorization", "secret")
            .body(())
            .unwrap()
    }

    #[test]
    fn takes_an_ip_port_target_and_the_passthrough_headers() {
        let (target, headers) = check_connect(&request(Method::CONNECT, "10.0.0.7:8080")).unwrap();
        assert_eq!(target, "10.0.0.7:8080".parse().unwrap());
        assert_eq!(headers.as_map().len(), 1);
        let (target, _) = check_connect(&request(Method::CONNECT, "[fd00::7]:80")).unwrap();
        assert_eq!(target, "[fd00::7]:80".parse().unwrap());
    }

    #[test]
    fn refuses_other_methods_and_targets_that_are_not_ip_port() {
        assert_eq!(
            check_connect(&request(Method::GET, "10.0.0.7:8080")).unwrap_err(),
            BadConnect::NotConnect(Method::GET)
        );
        for uri in ["echo.demo:80", "10.0.0.7", "/10.0.0.7:80"] {
            assert!(
                matches!(
                    check_connect(&request(Method::CONNECT, uri)),
                    Err(BadConnect::TargetNotIpPort(_))
                ),
                "{uri}"
            );
        }
    }
}
