//! Routes on the waypoint, on loopback over real TLS: an HTTPRoute attached to Service `back`
//! sends requests to the backend Services `back-v1` (pod back-1) and `back-v2` (pod back-2) by
//! header and by weight, redirects, rewrites, answers 404 when no rule matches, and holds a
//! request to its timeout; a rate limit on `back-v1` answers 429 past its quota; mirrors get
//! request bodies up to 64 KiB without holding the request up.

mod support;

use ambit_identity::testing::TestPki;
use std::time::{Duration, Instant};
use support::*;

/// `back` (both pods) with one route; `back-v1` and `back-v2` one pod each.
fn mesh(net: u8) -> String {
    format!(
        r#"
workloads:
{back_pods}services:
{back_service}  - name: back-v1
    namespace: shop
    vips: ["10.96.{net}.11"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [b1]
  - name: back-v2
    namespace: shop
    vips: ["10.96.{net}.12"]
    ports: [{{port: 8000, targetPort: 8080, name: http}}]
    endpoints: [b2]
routes:
  - name: back
    namespace: shop
    parents: [{{namespace: shop, name: back, port: 80}}]
    rules:
      - matches: [{{headers: [{{name: x-canary, value: "yes"}}]}}]
        backends: [{{namespace: shop, name: back-v2, port: 8000}}]
      - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
        backends:
          - {{namespace: shop, name: back-v1, port: 80, weight: 90}}
          - {{namespace: shop, name: back-v2, port: 8000, weight: 10}}
      - matches: [{{path: {{type: Exact, value: /old}}}}]
        filters:
          - requestRedirect: {{path: {{type: ReplaceFullPath, value: /new}}, statusCode: 301}}
      - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
        filters:
          - urlRewrite: {{path: {{type: ReplacePrefixMatch, value: /v2}}}}
          - responseHeaderModifier: {{set: [{{name: x-route, value: api}}]}}
        backends: [{{namespace: shop, name: back-v1, port: 80}}]
      - matches: [{{path: {{type: Exact, value: /slow}}}}]
        requestTimeoutMs: 500
      - matches: [{{path: {{type: Exact, value: /gone}}}}]
        backends: [{{namespace: shop, name: nowhere, port: 80, invalid: true}}]
rateLimits:
  - name: gentle
    namespace: shop
    target: {{kind: Service, name: back-v1}}
    requests: 3
    intervalMs: 60000
"#,
        back_pods = back_pods(net, 2),
        back_service = back_service(net, 2),
    )
}

struct Routing {
    net: u8,
    pki: TestPki,
    waypoint: ambit_waypoint::run::Running,
}

impl Routing {
    async fn start(net: u8) -> Self {
        let pki = TestPki::new("cluster.local");
        pod(&pki, ip(net, 11), SERVED_SA, "back-1").await;
        pod(&pki, ip(net, 12), SERVED_SA, "back-2").await;
        let waypoint = waypoint(&pki, net, &mesh(net)).await;
        assert!(
            waypoint.shared.mesh().route_errors().is_empty(),
            "{:?}",
            waypoint.shared.mesh().route_errors()
        );
        Self { net, pki, waypoint }
    }

    async fn http(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        Client::new(&self.pki, NS, "front", self.waypoint.hbone_addr)
            .http1(&format!("10.96.{}.1:80", self.net))
            .await
    }
}

#[tokio::test]
async fn header_match_and_a_90_10_split_pick_the_backend_service() {
    let routing = Routing::start(61).await;
    let mut http = routing.http().await;
    let mut request = get("/anything", "back");
    request
        .headers_mut()
        .insert("x-canary", "yes".parse().unwrap());
    let (status, _, body) = text(http.send_request(request).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "back-2 GET /anything"));

    const REQUESTS: u32 = 1000;
    let mut to_v1 = 0;
    for _ in 0..REQUESTS {
        let (status, _, body) = text(http.send_request(get("/split", "back")).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        if body.starts_with("back-1 ") {
            to_v1 += 1;
        }
    }
    let share = f64::from(to_v1) / f64::from(REQUESTS);
    assert!(
        (0.85..=0.95).contains(&share),
        "{to_v1} of {REQUESTS} to the 90% backend"
    );
}

#[tokio::test]
async fn redirect_rewrite_not_found_and_invalid_backend() {
    let routing = Routing::start(62).await;
    let mut http = routing.http().await;

    let (status, headers, _) =
        text(http.send_request(get("/old?q=1", "back")).await.unwrap()).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "http://back/new?q=1");

    let (status, headers, body) =
        text(http.send_request(get("/api/users", "back")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /v2/users"));
    assert_eq!(headers["x-route"], "api");

    let (status, _, _) = text(http.send_request(get("/other", "back")).await.unwrap()).await;
    assert_eq!(status, 404, "routes exist and none matched");

    let (status, _, _) = text(http.send_request(get("/gone", "back")).await.unwrap()).await;
    assert_eq!(status, 500, "the chosen backend did not resolve");
}

#[tokio::test]
async fn a_request_timeout_answers_504_on_time() {
    let routing = Routing::start(63).await;
    let mut http = routing.http().await;
    // The best of three: the other tests of this file load the machine meanwhile, and a late
    // wakeup of this test is not the waypoint's.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _, _) = text(http.send_request(get("/slow", "back")).await.unwrap()).await;
        assert_eq!(status, 504);
        best = best.min(started.elapsed());
    }
    // Within 10% of the rule's 500 ms (the app would take 2 s), never before it.
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(550)).contains(&best),
        "answered after {best:?}"
    );
}

#[tokio::test]
async fn a_rate_limited_service_answers_429_past_its_quota() {
    let routing = Routing::start(64).await;
    let mut http = Client::new(&routing.pki, NS, "front", routing.waypoint.hbone_addr)
        .http1(&format!("10.96.{}.11:80", routing.net))
        .await;
    for _ in 0..3 {
        let (status, _, body) = text(http.send_request(get("/", "back-v1")).await.unwrap()).await;
        assert_eq!((status, body.as_str()), (200, "back-1 GET /"));
    }
    let (status, headers, body) = text(http.send_request(get("/", "back-v1")).await.unwrap()).await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "retry-after {retry_after}");
    // Service `back` has no limit.
    let mut http = routing.http().await;
    for _ in 0..5 {
        let (status, _, _) = text(http.send_request(get("/split", "back")).await.unwrap()).await;
        assert_eq!(status, 200);
    }
}

/// Route `back` (pod back-1) mirrors `/mirror` to `copy` (a recording pod) and to `hole` (a
/// pod whose tunnel accepts connections and never answers); `back` takes 3 requests a minute.
fn mirror_mesh(net: u8) -> String {
    format!(
        r#"
workloads:
{back_pods}  - {{uid: m1, name: copy-1, namespace: shop, serviceAccount: back, node: n2, ips: ["127.{net}.0.12"]}}
  - {{uid: h1, name: hole-1, namespace: shop, serviceAccount: back, node: n3, ips: ["127.{net}.0.13"]}}
services:
{back_service}  - name: copy
    namespace: shop
    vips: ["10.96.{net}.12"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [m1]
  - name: hole
    namespace: shop
    vips: ["10.96.{net}.13"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [h1]
routes:
  - name: back
    namespace: shop
    parents: [{{namespace: shop, name: back, port: 80}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
        filters:
          - requestMirror: {{backend: {{namespace: shop, name: copy, port: 80}}}}
          - requestMirror: {{backend: {{namespace: shop, name: hole, port: 80}}}}
rateLimits:
  - name: three
    namespace: shop
    target: {{kind: Service, name: back}}
    requests: 3
    intervalMs: 60000
"#,
        back_pods = back_pods(net, 1),
        back_service = back_service(net, 1),
    )
}

#[tokio::test]
async fn mirrors_get_bodies_up_to_64_kib_and_never_hold_the_request_up() {
    const NET: u8 = 65;
    let pki = TestPki::new("cluster.local");
    pod(&pki, ip(NET, 11), SERVED_SA, "back-1").await;
    let copies = recording_pod(&pki, ip(NET, 12), SERVED_SA, "copy-1").await;
    // A black hole where the `hole` pod's tunnel should be: TLS never starts.
    let hole = tokio::net::TcpListener::bind((ip(NET, 13), 15008))
        .await
        .unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = hole.accept().await {
            holding.lock().unwrap().push(tcp);
        }
    });
    let waypoint = waypoint(&pki, NET, &mirror_mesh(NET)).await;
    assert!(waypoint.shared.mesh().route_errors().is_empty());
    let mut http = Client::new(&pki, NS, "front", waypoint.hbone_addr)
        .http1(&format!("10.96.{NET}.1:80"))
        .await;
    let post = |path: &str, size: usize| {
        let mut request = get(path, "back");
        *request.method_mut() = hyper::Method::POST;
        *request.body_mut() = body(vec![b'm'; size]);
        request
    };

    // 10 KiB: the request is answered at once, the copy gets it whole.
    let started = Instant::now();
    let (status, _, answer) = text(
        http.send_request(post("/mirror/a", 10 * 1024))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, answer.as_str()), (200, "back-1 POST /mirror/a"));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "answered after {took:?}");
    eventually("the copy of /mirror/a", || {
        copies.lock().unwrap().len() == 1
    })
    .await;
    let copy = copies.lock().unwrap()[0].clone();
    assert_eq!(
        (copy.method.as_str(), copy.path.as_str()),
        ("POST", "/mirror/a")
    );
    assert_eq!(copy.body.len(), 10 * 1024);
    assert!(copy.body.iter().all(|&b| b == b'm'));
    eventually("the hole mirror dialed", || {
        !held.lock().unwrap().is_empty()
    })
    .await;

    // 100 KiB: answered, not mirrored (both mirrors counted as skipped).
    let (status, _, _) = text(
        http.send_request(post("/mirror/b", 100 * 1024))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = || waypoint.shared.metrics.render(None);
    eventually("the skipped mirrors counted", || {
        metrics().contains(r#"ambit_waypoint_mirrors_total{outcome="skipped"} 2"#)
    })
    .await;
    assert!(metrics().contains(r#"ambit_waypoint_mirrors_total{outcome="sent"} 2"#));

    // Without a body, as before; the next copy the recorder sees is this one. The third request
    // within `back`'s quota of three: the copies spent none of it.
    let (status, _, _) = text(http.send_request(get("/mirror/c", "back")).await.unwrap()).await;
    assert_eq!(status, 200);
    eventually("the copy of /mirror/c", || {
        copies.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(copies.lock().unwrap()[1].path, "/mirror/c");
    drop(held);
}
