//! The HBONE request shape and status codes: 200, 400, 401, 503, and header pass-through.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::{Dialer, HboneError, TunnelHeaders};
use ambit_identity::testing::TestPki;
use http::{HeaderValue, Method, Request, StatusCode};
use support::*;

/// Sends a raw HTTP/2 request on an authenticated connection and returns the status.
async fn raw_status(
    pki: &TestPki,
    server: std::net::SocketAddr,
    request: Request<()>,
) -> StatusCode {
    let dialer = Dialer::new(pki.bundle(), fast_pool_settings());
    let (send, connection) = dialer
        .dial(
            pki.handle("demo", "client"),
            server,
            vec![pki.id(SERVER_NS, SERVER_SA)],
        )
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, _stream) = send.send_request(request, false).unwrap();
    response.await.unwrap().status()
}

#[tokio::test]
async fn a_get_instead_of_connect_gets_400() {
    let pki = TestPki::new("cluster.local");
    let (server, mut seen) = start_forwarding_server(&pki).await;
    let request = Request::builder()
        .method(Method::GET)
        .uri("https://127.0.0.1:15008/")
        .body(())
        .unwrap();
    assert_eq!(
        raw_status(&pki, server, request).await,
        StatusCode::BAD_REQUEST
    );
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_connect_whose_authority_is_not_ip_and_port_gets_400() {
    let pki = TestPki::new("cluster.local");
    let (server, mut seen) = start_forwarding_server(&pki).await;
    for authority in ["example.com:80", "10.0.0.1", "10.0.0.1:99999"] {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap();
        assert_eq!(
            raw_status(&pki, server, request).await,
            StatusCode::BAD_REQUEST,
            "authority {authority}"
        );
    }
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_denied_tunnel_gets_401() {
    let pki = TestPki::new("cluster.local");
    let server = start_server(&pki, DenyAll).await;
    let echo = start_echo().await;
    let client = client(&pki, server);
    let err = client.open(echo).await.unwrap_err();
    assert!(
        matches!(
            err,
            HboneError::Refused {
                status: StatusCode::UNAUTHORIZED,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_target_gets_503() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    // Bind then drop: nothing listens on this port any more.
    let closed = listen().await.local_addr().unwrap();
    let client = client(&pki, server);
    let err = client.open(closed).await.unwrap_err();
    assert!(
        matches!(
            err,
            HboneError::Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tracing_headers_pass_through_and_are_never_required() {
    let pki = TestPki::new("cluster.local");
    let (server, mut seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let client = client(&pki, server);

    let _plain = client.open(echo).await.unwrap();
    assert!(seen.recv().await.unwrap().headers.is_empty());

    let mut map = http::HeaderMap::new();
    map.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    map.insert("baggage", HeaderValue::from_static("tenant=blue"));
    map.insert("forwarded", HeaderValue::from_static("for=10.1.2.3"));
    map.insert("x-not-passed", HeaderValue::from_static("dropped"));
    let headers = TunnelHeaders::from_headers(&map);
    let _traced = client
        .pool
        .connect(&client.key, echo, &headers)
        .await
        .unwrap();
    let request = seen.recv().await.unwrap();
    assert_eq!(request.headers, headers);
    assert_eq!(request.headers.as_map().len(), 3);
}

fn stall_settings() -> ambit_hbone::ServerSettings {
    ambit_hbone::ServerSettings {
        handshake_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    }
}

/// Reads until the server closes the connection; fails if it is still open at the deadline.
async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut sink),
    )
    .await;
    assert!(closed.is_ok(), "server kept a stalled connection open");
}

#[tokio::test]
async fn a_client_that_never_starts_tls_is_cut_off() {
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let server = start_server_with(&pki, Forward { seen }, stall_settings()).await;
    let socket = tokio::net::TcpStream::connect(server).await.unwrap();
    closed_by_server(socket).await;
}

#[tokio::test]
async fn a_client_that_never_sends_the_http2_preface_is_cut_off() {
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let server = start_server_with(&pki, Forward { seen }, stall_settings()).await;
    let config = ambit_identity::client_config(
        pki.handle("demo", "client"),
        &pki.bundle(),
        vec![pki.id(SERVER_NS, SERVER_SA)],
    )
    .unwrap();
    let socket = tokio::net::TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ambit_identity::server_name(server.ip()), socket)
        .await
        .expect("TLS completes; only HTTP/2 stalls");
    closed_by_server(tls).await;
}

#[tokio::test]
async fn past_its_connection_limit_the_server_waits_until_one_closes() {
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let settings = ambit_hbone::ServerSettings {
        max_connections: 1,
        ..Default::default()
    };
    let server = start_server_with(&pki, Forward { seen }, settings).await;
    let echo = start_echo().await;
    let slow_dial = ambit_hbone::PoolSettings {
        connect_timeout: std::time::Duration::from_millis(500),
        ..fast_pool_settings()
    };

    let first = client(&pki, server);
    let tunnel = first.open(echo).await.unwrap();
    let second = client_with_settings(&pki, server, slow_dial.clone());
    let err = second.open(echo).await.unwrap_err();
    assert!(matches!(err, HboneError::HandshakeTimeout { .. }), "{err}");

    // The first client goes away; its slot frees and a newcomer is served.
    drop(tunnel);
    drop(first);
    let third = client_with_settings(&pki, server, slow_dial);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match third.open(echo).await {
            Ok(_) => break,
            // Each attempt is bounded by the dial timeout; retry until the deadline.
            Err(_) if tokio::time::Instant::now() < deadline => continue,
            Err(error) => panic!("never served after the slot freed: {error}"),
        }
    }
}
