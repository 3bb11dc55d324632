#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::service::auth::v3 as auth;
use auth::check_response::HttpResponse;

fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.into(),
            value: value.into(),
        }),
        append,
        append_action: action,
    }
}

fn input<'a>(headers: &'a HeaderMap, method: &'a http::Method) -> CheckInput<'a> {
    CheckInput {
        source: Peer {
            principal: "spiffe://cluster.local/ns/shop/sa/frontend",
            address: "10.1.0.2:40000".parse().unwrap(),
        },
        destination: Peer {
            principal: "spiffe://cluster.local/ns/shop/sa/backend",
            address: "10.1.0.9:8080".parse().unwrap(),
        },
        method,
        path: "/admin/users?page=2",
        host: "backend.shop.svc.cluster.local",
        scheme: "http",
        version: http::Version::HTTP_2,
        headers,
        body: Some((b"hello", true)),
        size: Some(11),
    }
}

#[test]
fn the_check_carries_what_envoy_sends() {
    let mut headers = HeaderMap::new();
    headers.append("X-Ext-Authz", "allow".parse().unwrap());
    headers.append("accept", "a".parse().unwrap());
    headers.append("accept", "b".parse().unwrap());
    headers.append("x-request-id", "r-1".parse().unwrap());
    let method = http::Method::POST;
    let request = grpc::check_request(&input(&headers, &method));
    let a = request.attributes.unwrap();
    let source = a.source.unwrap();
    assert_eq!(
        source.principal,
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    let Some(core::address::Address::SocketAddress(s)) = source.address.unwrap().address else {
        panic!("no socket address");
    };
    assert_eq!(s.address, "10.1.0.2");
    assert_eq!(
        s.port_specifier,
        Some(core::socket_address::PortSpecifier::PortValue(40000))
    );
    assert_eq!(
        a.destination.unwrap().principal,
        "spiffe://cluster.local/ns/shop/sa/backend"
    );
    let h = a.request.unwrap().http.unwrap();
    assert_eq!(
        (h.method.as_str(), h.path.as_str()),
        ("POST", "/admin/users?page=2")
    );
    assert_eq!(
        (h.host.as_str(), h.scheme.as_str()),
        ("backend.shop.svc.cluster.local", "http")
    );
    assert_eq!(
        (h.protocol.as_str(), h.size, h.id.as_str()),
        ("HTTP/2", 11, "r-1")
    );
    assert_eq!(h.headers["x-ext-authz"], "allow");
    assert_eq!(h.headers["accept"], "a,b");
    assert_eq!(h.headers[":method"], "POST");
    assert_eq!(h.headers[PARTIAL_BODY], "true");
    assert_eq!(h.body, "hello");
}

#[test]
fn grpc_ok_answers_change_the_request_as_envoy_does() {
    let response = auth::CheckResponse {
        status: Some(crate::proto::google::rpc::Status {
            code: 0,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
            headers: vec![
                option("x-set", "1", None, 0),
                option("x-append", "2", Some(true), 0),
                option("x-absent", "3", None, 1),
                option("x-only-if", "4", None, 3),
                option("bad header", "5", None, 0),
            ],
            headers_to_remove: vec!["authorization".into(), ":path".into(), "host".into()],
            response_headers_to_add: vec![option("x-down", "6", None, 0)],
        })),
    };
    let Decision::Allow(allowed) = grpc::decide(response).unwrap() else {
        panic!("not allowed");
    };
    assert_eq!(allowed.upstream.len(), 4, "the malformed header is skipped");
    let mut headers = HeaderMap::new();
    for (n, v) in [
        ("x-set", "old"),
        ("x-append", "old"),
        ("x-absent", "old"),
        ("authorization", "Bearer x"),
        ("host", "backend"),
    ] {
        headers.insert(n, v.parse().unwrap());
    }
    allowed.apply(&mut headers);
    let all = |n: &str| {
        headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-set"), ["1"]);
    assert_eq!(all("x-append"), ["old", "2"]);
    assert_eq!(all("x-absent"), ["old"]);
    assert!(all("x-only-if").is_empty());
    assert!(all("authorization").is_empty());
    assert_eq!(all("host"), ["backend"], "the host is never removed");
    assert_eq!(allowed.downstream[0].0, "x-down");
}

#[test]
fn grpc_denials_and_errors() {
    let denied = |status: Option<u32>| auth::CheckResponse {
        status: Some(crate::proto::google::rpc::Status {
            code: 7,
            message: "no".into(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
            status: status.map(|c| crate::proto::envoy::r#type::v3::HttpStatus { code: c as i32 }),
            headers: vec![option("x-reason", "header", None, 0)],
            body: "denied by test".into(),
        })),
    };
    let Decision::Deny(d) = grpc::decide(denied(None)).unwrap() else {
        panic!("not denied");
    };
    assert_eq!(d.status, StatusCode::FORBIDDEN);
    assert_eq!(d.body, "denied by test");
    assert_eq!(d.headers[0].0, "x-reason");
    let Decision::Deny(d) = grpc::decide(denied(Some(401))).unwrap() else {
        panic!("not denied");
    };
    assert_eq!(d.status, StatusCode::UNAUTHORIZED);
    // A non-OK status with an OK response still denies; OK without a response allows.
    let mixed = auth::CheckResponse {
        status: Some(crate::proto::google::rpc::Status {
            code: 7,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse::default())),
    };
    assert!(matches!(grpc::decide(mixed), Ok(Decision::Deny(_))));
    assert_eq!(
        grpc::decide(auth::CheckResponse::default()).unwrap(),
        Decision::Allow(Allowed::default())
    );
    let error = auth::CheckResponse {
        status: None,
        http_response: Some(HttpResponse::ErrorResponse(auth::DeniedHttpResponse {
            status: None,
            headers: vec![],
            body: "backend down".into(),
        })),
    };
    assert!(matches!(
        grpc::decide(error),
        Err(CheckError::ErrorResponse { status: None, .. })
    ));
}

/// An HTTP provider as the chart would declare it.
fn http_provider() -> ExtAuthzProvider {
    ExtAuthzProvider {
        name: "h".into(),
        service: "127.0.0.1".into(),
        port: 8000,
        protocol: ExtAuthzProtocol::Http,
        timeout_ms: 100,
        fail_open: false,
        status_on_error: 403,
        include_request_body_in_check: None,
        path_prefix: String::new(),
        include_request_headers_in_check: vec![],
        headers_to_upstream_on_allow: vec!["x-user".into(), "x-auth-*".into()],
        headers_to_downstream_on_allow: vec!["x-trace".into()],
        headers_to_downstream_on_deny: vec![],
    }
}

#[test]
fn http_answers() {
    let p = http_provider();
    let mut answer = HeaderMap::new();
    for (n, v) in [
        ("x-user", "alice"),
        ("x-auth-level", "2"),
        ("x-other", "no"),
        ("x-trace", "t"),
        ("content-length", "0"),
        ("x-envoy-auth-headers-to-remove", "authorization, cookie"),
    ] {
        answer.insert(n, v.parse().unwrap());
    }
    let Decision::Allow(a) = http_check::decide(&p, StatusCode::OK, &answer, Bytes::new()) else {
        panic!("not allowed");
    };
    let names: Vec<&str> = a.upstream.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["x-user", "x-auth-level"]);
    assert_eq!(a.remove, ["authorization", "cookie"]);
    assert_eq!(a.downstream.len(), 1);
    // Denied: the status, the body, and every header but framing ones (no list given).
    let d = http_check::decide(
        &p,
        StatusCode::UNAUTHORIZED,
        &answer,
        Bytes::from("go away"),
    );
    let Decision::Deny(d) = d else {
        panic!("not denied");
    };
    assert_eq!(
        (d.status, d.body.as_ref()),
        (StatusCode::UNAUTHORIZED, &b"go away"[..])
    );
    assert!(d.headers.iter().any(|(n, _)| n == "x-other"));
    assert!(!d.headers.iter().any(|(n, _)| n == "content-length"));
    let mut listed = p;
    listed.headers_to_downstream_on_deny = vec!["x-trace".into()];
    let Decision::Deny(d) =
        http_check::decide(&listed, StatusCode::FORBIDDEN, &answer, Bytes::new())
    else {
        panic!("not denied");
    };
    assert_eq!(d.headers.len(), 1);
}

#[tokio::test]
async fn a_server_that_is_not_there_fails_closed_or_open() {
    // A port nothing listens on: connecting is refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let headers = HeaderMap::new();
    let method = http::Method::GET;
    for protocol in [ExtAuthzProtocol::Grpc, ExtAuthzProtocol::Http] {
        let mut p = http_provider();
        p.protocol = protocol;
        p.port = port;
        p.headers_to_upstream_on_allow.clear();
        p.headers_to_downstream_on_allow.clear();
        p.status_on_error = 503;
        let closed = Client::new(p.clone())
            .unwrap()
            .check(&input(&headers, &method))
            .await;
        assert_eq!(closed.outcome, Outcome::ErrorDenied, "{protocol:?}");
        let Decision::Deny(d) = closed.decision else {
            panic!("not denied");
        };
        assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE);
        p.fail_open = true;
        let open = Client::new(p)
            .unwrap()
            .check(&input(&headers, &method))
            .await;
        assert_eq!(open.outcome, Outcome::ErrorAllowed);
        assert!(open.error.is_some());
    }
}

#[test]
fn clients_are_kept_while_their_provider_stays_the_same() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let clients = Clients::default();
    let p = http_provider();
    let a = clients.get(&p).unwrap();
    assert!(Arc::ptr_eq(&a, &clients.get(&p).unwrap()));
    let mut changed = p;
    changed.timeout_ms = 200;
    assert!(!Arc::ptr_eq(&a, &clients.get(&changed).unwrap()));
}
