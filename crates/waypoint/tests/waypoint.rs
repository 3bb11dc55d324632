//! The waypoint on loopback, over real TLS: a client tunnel's HBONE in, HTTP/1.1, HTTP/2, gRPC
//! and TCP through the layers, HBONE out to pods as the waypoint's own identity.

mod support;

use ambit_identity::testing::TestPki;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two ready pods of `shop/back` behind Service `back` (VIP 10.96.N.1), one of another
/// account, and policies denying `DELETE /admin/*` and gRPC method `Secret` on the HTTP port
/// (scoped to it: on a TCP port an L7 DENY rule cannot be checked and denies everything) and
/// the `intruder` account everywhere.
fn mesh(net: u8) -> String {
    format!(
        r#"
workloads:
{back_pods}  - {{uid: f1, name: front-1, namespace: shop, serviceAccount: front, node: n1, ips: ["127.{net}.0.21"]}}
services:
{back_service}  - name: front
    namespace: shop
    vips: ["10.96.{net}.2"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [f1]
policies:
  - name: no-admin-delete
    namespace: shop
    action: Deny
    rules: [{{ports: [8080], methods: [DELETE], paths: ["/admin/*"]}}]
  - name: no-secret
    namespace: shop
    action: Deny
    rules: [{{ports: [8080], paths: ["/echo.Echo/Secret"]}}]
  - name: no-intruder
    namespace: shop
    action: Deny
    rules: [{{principals: ["spiffe://cluster.local/ns/shop/sa/intruder"]}}]
"#,
        back_pods = back_pods(net, 2),
        back_service = back_service(net, 2),
    )
}

/// The waypoint serving [`mesh`] on `127.net.0.1`, and the two pods of `back` behind it.
struct Loopback {
    net: u8,
    pki: TestPki,
    waypoint: ambit_waypoint::run::Running,
    /// Who reached the tunnels of `back-1` and `back-2`.
    seen: [Seen; 2],
}

impl Loopback {
    async fn start(net: u8) -> Self {
        let pki = TestPki::new("cluster.local");
        let seen = [
            pod(&pki, ip(net, 11), "back", "back-1").await,
            pod(&pki, ip(net, 12), "back", "back-2").await,
        ];
        let waypoint = waypoint(&pki, net, &mesh(net)).await;
        Self {
            net,
            pki,
            waypoint,
            seen,
        }
    }

    /// A client tunnel of `shop/sa` to the waypoint.
    fn client(&self, sa: &str) -> Client {
        Client::new(&self.pki, NS, sa, self.waypoint.hbone_addr)
    }

    /// Service `back` on `port`.
    fn back(&self, port: u16) -> String {
        format!("10.96.{}.1:{port}", self.net)
    }
}

#[tokio::test]
async fn http1_reaches_both_pods_as_the_waypoint_with_telemetry() {
    let lo = Loopback::start(31).await;
    assert!(lo.waypoint.shared.ready());
    let client = lo.client("front");
    let mut http = client.http1(&lo.back(80)).await;
    let mut apps = std::collections::BTreeSet::new();
    // One keep-alive connection: the waypoint balances its requests over both pods.
    for _ in 0..20 {
        let mut request = get("/hello", "back.shop.svc:80");
        request
            .headers_mut()
            .insert("connection", "keep-alive, x-hop".parse().unwrap());
        request
            .headers_mut()
            .insert("x-hop", "secret".parse().unwrap());
        let (status, headers, body) = text(http.send_request(request).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with(" GET /hello"), "{body}");
        apps.insert(body.split(' ').next().unwrap().to_owned());
        assert_eq!(
            headers["x-seen-host"], "back.shop.svc:80",
            "the authority is kept"
        );
        assert_eq!(
            headers["x-seen-connection"], "",
            "hop-by-hop headers are not forwarded"
        );
        let traceparent = headers["x-seen-traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-") && traceparent.len() == 55,
            "{traceparent}"
        );
    }
    assert_eq!(apps.len(), 2, "both endpoints served: {apps:?}");
    let waypoint_id = lo.pki.id("shop", "waypoint-back");
    for seen in &lo.seen {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|id| *id == waypoint_id), "{seen:?}");
    }
    // A traceparent from the client is continued, not replaced.
    let mut request = get("/", "back");
    request.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let (_, headers, _) = text(http.send_request(request).await.unwrap()).await;
    let seen = headers["x-seen-traceparent"].to_str().unwrap();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(!seen.contains("00f067aa0ba902b7"), "{seen}");
    let shared = lo.waypoint.shared.clone();
    eventually("the request metrics", || {
        shared.metrics.render(None).contains(
            r#"ambit_waypoint_requests_total{source_identity="spiffe://cluster.local/ns/shop/sa/front",destination_identity="spiffe://cluster.local/ns/shop/sa/back",destination_service="back.shop",method="GET",response_code="200",grpc_status=""} 21"#,
        )
    })
    .await;
}

#[tokio::test]
async fn l7_deny_refuses_one_request_and_serves_the_next_on_the_same_connection() {
    let lo = Loopback::start(32).await;
    let client = lo.client("front");
    let mut http = client.http1(&lo.back(80)).await;
    let denied = delete("/admin/users/1", "back");
    let (status, _, body) = text(http.send_request(denied).await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(body.contains("shop/no-admin-delete"), "{body}");
    for path in ["/", "/admin/users/1"] {
        let (status, _, body) = text(http.send_request(get(path, "back")).await.unwrap()).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    // A pod addressed directly is under the same policy.
    let mut direct = client.http1(&format!("127.{}.0.11:8080", lo.net)).await;
    let denied = delete("/admin/x", "back");
    let (status, _, body) = text(direct.send_request(denied).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = text(direct.send_request(get("/", "back")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /"));
    // An L4 rule on the client's identity: the waypoint sees the real client.
    let intruder = lo.client("intruder");
    let mut http = intruder.http1(&lo.back(80)).await;
    let (status, _, body) = text(http.send_request(get("/", "back")).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no-intruder"), "{body}");
}

#[tokio::test]
async fn grpc_over_http2_keeps_trailers_and_denies_with_permission_denied() {
    let lo = Loopback::start(33).await;
    let client = lo.client("front");
    let mut h2 = client.http2(&lo.back(81)).await;
    let call = |method: &str, timeout: Option<&str>| {
        let mut b = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://back.shop.svc:81/echo.Echo/{method}"))
            .version(hyper::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(support::body(&b"\0\0\0\0\x03abc"[..])).unwrap()
    };
    let response = h2.send_request(call("Say", None)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-seen-version"], "HTTP/2.0");
    assert_eq!(response.headers()["x-seen-te"], "trailers");
    let collected = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03abc");

    let response = h2.send_request(call("Secret", None)).await.unwrap();
    assert_eq!(response.status(), 200, "gRPC errors ride on HTTP 200");
    assert_eq!(response.headers()["grpc-status"], "7");
    assert!(
        response.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("no-secret")
    );

    let shared = lo.waypoint.shared.clone();
    eventually("gRPC status in metrics", || {
        let text = shared.metrics.render(None);
        text.contains(r#"method="POST",response_code="200",grpc_status="0"} 1"#)
            && text.contains(r#"method="POST",response_code="200",grpc_status="7"} 1"#)
    })
    .await;
}

#[tokio::test]
async fn grpc_deadlines_are_enforced() {
    let lo = Loopback::start(34).await;
    let client = lo.client("front");
    let mut h2 = client.http2(&lo.back(81)).await;
    let request = hyper::Request::builder()
        .method("POST")
        .uri("http://back:81/slow")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "100m")
        .body(support::body(""))
        .unwrap();
    let started = std::time::Instant::now();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "4");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn http2_prior_knowledge_on_an_http_port_is_served() {
    let lo = Loopback::start(35).await;
    let client = lo.client("front");
    let mut h2 = client.http2(&lo.back(80)).await;
    let request = hyper::Request::builder()
        .uri("http://back.shop.svc/h2")
        .body(support::body(""))
        .unwrap();
    let (status, headers, body) = text(h2.send_request(request).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    // An `http` port goes upstream as HTTP/1.1 with the client's authority as Host.
    assert_eq!(headers["x-seen-version"], "HTTP/1.1");
    assert_eq!(headers["x-seen-host"], "back.shop.svc");
}

#[tokio::test]
async fn upgrades_are_spliced_through() {
    let lo = Loopback::start(36).await;
    let client = lo.client("front");
    let mut http = client.http1(&lo.back(80)).await;
    let request = hyper::Request::builder()
        .uri("/ws")
        .header("host", "back")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(support::body(""))
        .unwrap();
    let response = http.send_request(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn tcp_is_forwarded_under_l4_policy() {
    let lo = Loopback::start(37).await;
    let client = lo.client("front");
    let mut stream = client.tunnel(&lo.back(70)).await.unwrap();
    stream.write_all(b"raw bytes").await.unwrap();
    let mut buf = [0u8; 9];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"raw bytes");
    let intruder = lo.client("intruder");
    let refused = intruder.tunnel(&lo.back(70)).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
}

#[tokio::test]
async fn destinations_of_other_accounts_are_refused() {
    let lo = Loopback::start(38).await;
    let client = lo.client("front");
    for other in [
        format!("10.96.{}.2:80", lo.net),     // another account's Service
        format!("127.{}.0.21:8080", lo.net),  // another account's pod
        "192.0.2.1:443".to_owned(),           // outside the mesh
        format!("127.{}.0.11:15008", lo.net), // the pod's tunnel port
    ] {
        let refused = client.tunnel(&other).await.unwrap_err();
        assert!(refused.to_string().contains("401"), "{other}: {refused}");
    }
    let shared = lo.waypoint.shared.clone();
    eventually("refusals counted", || {
        shared
            .metrics
            .render(None)
            .contains(r#"result="not_served"} 4"#)
    })
    .await;
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_mesh_is_refused() {
    let lo = Loopback::start(39).await;
    let other = TestPki::new("cluster.local");
    let client = Client::new(&other, "shop", "front", lo.waypoint.hbone_addr);
    assert!(client.tunnel(&lo.back(80)).await.is_err());
}

#[tokio::test]
async fn draining_refuses_new_tunnels_and_fails_readiness() {
    let lo = Loopback::start(40).await;
    let shared = lo.waypoint.shared.clone();
    let client = lo.client("front");
    let vip = lo.back(80);
    let mut http = client.http1(&vip).await;
    let (status, _, _) = text(http.send_request(get("/", "back")).await.unwrap()).await;
    assert_eq!(status, 200);
    let drained = tokio::spawn(lo.waypoint.drain());
    eventually("draining", || !shared.ready()).await;
    assert!(client.tunnel(&vip).await.is_err());
    drained.await.unwrap();
}
