//! What a Service port speaks, as Kubernetes lets it be declared: `appProtocol` when set, else
//! the port name's prefix before `-` (`http`, `http-web`, `grpc-api`, ...). The waypoint parses
//! a port as HTTP by this rule and `ambit-risk` reports which ports a waypoint would parse, so
//! both call [`declared`] and [`HttpProtocol::of`]: the two cannot drift apart.

use serde::Serialize;

/// Where a port's protocol was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeclaredBy {
    AppProtocol,
    NamePrefix,
}

/// The protocol a port declares, lowercased, and where it was read from. An empty
/// `app_protocol` counts as unset, as the mesh model carries an unset one.
pub fn declared(name: &str, app_protocol: &str) -> (String, DeclaredBy) {
    let (value, by) = if app_protocol.is_empty() {
        (
            name.split('-').next().unwrap_or_default(),
            DeclaredBy::NamePrefix,
        )
    } else {
        (app_protocol, DeclaredBy::AppProtocol)
    };
    (value.to_ascii_lowercase(), by)
}

/// The HTTP flavours a waypoint parses; any other declared protocol is TCP to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    /// HTTP/1.1, websockets included.
    Http1,
    /// HTTP/2 prior knowledge (h2c).
    Http2,
    Grpc,
}

impl HttpProtocol {
    /// The flavour of a declared protocol (as [`declared`] returns it); `None`: not HTTP.
    pub fn of(declared: &str) -> Option<Self> {
        match declared {
            "http" | "http1" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Self::Http1),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Self::Http2),
            "grpc" | "grpc-web" => Some(Self::Grpc),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_first_else_the_name_prefix_lowercased() {
        assert_eq!(
            declared("http-web", ""),
            ("http".into(), DeclaredBy::NamePrefix)
        );
        assert_eq!(
            declared("tcp", "HTTP"),
            ("http".into(), DeclaredBy::AppProtocol)
        );
        assert_eq!(declared("", ""), (String::new(), DeclaredBy::NamePrefix));
        assert_eq!(
            HttpProtocol::of("kubernetes.io/h2c"),
            Some(HttpProtocol::Http2)
        );
        assert_eq!(HttpProtocol::of("grpc-web"), Some(HttpProtocol::Grpc));
        assert_eq!(HttpProtocol::of("httpx"), None);
    }
}
