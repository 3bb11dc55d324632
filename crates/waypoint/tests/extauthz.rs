//! External authorization (CUSTOM policies) at the waypoint against a server no one here
//! wrote: Istio's ext_authz sample (`istio.io/istio/samples/extauthz/cmd/extauthz`, built by
//! `crates/testbed/setup.sh istio-extauthz`), run as a child process on loopback. It allows a
//! request carrying `x-ext-authz: allow` and denies one carrying anything else there; without
//! the header its gRPC check allows sources whose principal ends in `/sa/<allow_service_account>`.
//! It answers an allowed check with `x-ext-authz-check-result: allowed` and
//! `x-ext-authz-check-received` (what it was sent) for the upstream, and denies with 403, its
//! body and `x-ext-authz-check-result: denied`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_identity::testing::TestPki;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DENY_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";

/// The sample's binary, or `None` (with a loud message) when setup has not built it.
fn binary() -> Option<PathBuf> {
    let cache = std::env::var_os("AMBIT_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ambit"), PathBuf::from);
    let path = cache.join("images/istio-extauthz");
    if path.exists() {
        return Some(path);
    }
    eprintln!(
        "\n!!!!! SKIPPED: Istio's ext_authz sample is not built ({} missing): run `crates/testbed/setup.sh istio-extauthz` (cargo xtask test does) !!!!!\n",
        path.display()
    );
    None
}

/// One running sample server and its ports.
struct Server {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Server {
    /// Starts the sample on free ports; it allows the `allowed_sa` service account without the
    /// header. Its ports are read from its log.
    async fn start(binary: &PathBuf, allowed_sa: &str) -> Self {
        let mut child = Command::new(binary)
            .args([
                "-http",
                "0",
                "-grpc",
                "0",
                "-allow_service_account",
                allowed_sa,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut grpc, mut http) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while grpc.is_none() || http.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("the ext_authz sample did not say its ports within 10 s")
                .unwrap()
                .expect("the ext_authz sample exited");
            let port = || {
                line.rsplit(':')
                    .next()
                    .unwrap()
                    .trim()
                    .parse::<u16>()
                    .unwrap()
            };
            if line.contains("Starting gRPC server at") {
                grpc = Some(port());
            } else if line.contains("Starting HTTP server at") {
                http = Some(port());
            }
        }
        // Its per-request log keeps coming: drained so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            grpc: grpc.unwrap(),
            http: http.unwrap(),
        }
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap()).unwrap()
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel and never answered.
    fn freeze(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::STOP).unwrap();
    }

    fn thaw(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT).unwrap();
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `shop/back` behind the waypoint; a CUSTOM policy per path prefix, each naming a provider.
fn mesh(net: u8, live: &Server, frozen: &Server, dead: u16) -> String {
    let custom = |prefix: &str, provider: &str| {
        format!(
            "  - {{name: {provider}, namespace: shop, action: CUSTOM, provider: {provider}, rules: [{{paths: [\"/{prefix}/*\"]}}]}}\n"
        )
    };
    let policies: String = [
        ("grpc", "grpc"),
        ("http", "http"),
        ("closed", "closed"),
        ("closed-503", "closed-503"),
        ("open", "open"),
        ("slow", "slow"),
        ("slow-open", "slow-open"),
        ("nowhere", "undeclared"),
    ]
    .iter()
    .map(|(prefix, provider)| custom(prefix, provider))
    .collect();
    format!(
        r#"
workloads:
{back_pods}services:
{back_service}policies:
{policies}  - {{name: no-admin, namespace: shop, action: DENY, rules: [{{paths: ["/grpc/admin"]}}]}}
extAuthzProviders:
  - {{name: grpc, service: 127.0.0.1, port: {grpc}, protocol: grpc, timeoutMs: 2000,
      includeRequestBodyInCheck: {{maxRequestBytes: 8, allowPartialMessage: true}}}}
  - name: http
    service: 127.0.0.1
    port: {http}
    protocol: http
    timeoutMs: 2000
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
  - {{name: closed, service: 127.0.0.1, port: {dead}, protocol: grpc, timeoutMs: 1000}}
  - {{name: closed-503, service: 127.0.0.1, port: {dead}, protocol: http, statusOnError: 503}}
  - {{name: open, service: 127.0.0.1, port: {dead}, protocol: grpc, failOpen: true}}
  - {{name: slow, service: 127.0.0.1, port: {slow}, protocol: grpc, timeoutMs: 300}}
  - {{name: slow-open, service: 127.0.0.1, port: {slow}, protocol: grpc, timeoutMs: 300, failOpen: true}}
"#,
        back_pods = back_pods(net, 1),
        back_service = back_service(net, 1),
        grpc = live.grpc,
        http = live.http,
        slow = frozen.grpc,
    )
}

struct Fixture {
    net: u8,
    pki: TestPki,
    waypoint: ambit_waypoint::run::Running,
}

impl Fixture {
    async fn http(&self, sa: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        Client::new(&self.pki, NS, sa, self.waypoint.hbone_addr)
            .http1(&format!("10.96.{}.1:80", self.net))
            .await
    }

    /// `GET path` from `shop/front` with `x-ext-authz: check` (if any).
    async fn get(&self, path: &str, check: Option<&str>) -> (u16, hyper::HeaderMap, String) {
        self.get_as("front", path, check).await
    }

    async fn get_as(
        &self,
        sa: &str,
        path: &str,
        check: Option<&str>,
    ) -> (u16, hyper::HeaderMap, String) {
        let mut request = get(path, "back");
        if let Some(v) = check {
            request
                .headers_mut()
                .insert("x-ext-authz", v.parse().unwrap());
        }
        let mut http = self.http(sa).await;
        text(http.send_request(request).await.unwrap()).await
    }

    fn metrics(&self) -> String {
        self.waypoint.shared.metrics.render(None)
    }
}

#[tokio::test]
async fn a_real_ext_authz_server_decides_custom_policies() {
    let Some(binary) = binary() else { return };
    let net = 91;
    let live = Server::start(&binary, "front").await;
    let frozen = Server::start(&binary, "front").await;
    let pki = TestPki::new("cluster.local");
    pod(&pki, ip(net, 11), SERVED_SA, "back-1").await;
    let mesh = mesh(net, &live, &frozen, closed_port());
    let waypoint = waypoint(&pki, net, &mesh).await;
    let t = Fixture { net, pki, waypoint };

    // gRPC provider: allowed by header, with the server's headers reaching the app, and what
    // the server was sent (its own dump of the check) naming both SPIFFE ids.
    let (status, headers, body) = t.get("/grpc/items?page=2", Some("allow")).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /grpc/items"));
    assert_eq!(headers["x-seen-ext-authz"], "allowed");
    let received = headers["x-seen-ext-authz-received"].to_str().unwrap();
    for expected in [
        "spiffe://cluster.local/ns/shop/sa/front",
        "spiffe://cluster.local/ns/shop/sa/back",
        "/grpc/items?page=2",
        "HTTP/1.1",
        "x-ext-authz",
    ] {
        assert!(received.contains(expected), "{expected} not in {received}");
    }
    // Denied by header: the server's status, body and headers.
    let (status, headers, body) = t.get("/grpc/items", Some("deny")).await;
    assert_eq!((status, body.as_str()), (403, DENY_BODY));
    assert_eq!(headers["x-ext-authz-check-result"], "denied");
    // No header: the server decides on the source principal it was sent.
    let (status, _, _) = t.get_as("front", "/grpc/items", None).await;
    assert_eq!(status, 200, "front is the allowed service account");
    let (status, _, _) = t.get_as("other", "/grpc/items", None).await;
    assert_eq!(status, 403);
    // A DENY policy still wins over an allowing provider.
    let (status, _, body) = t.get("/grpc/admin", Some("allow")).await;
    assert_eq!(status, 403);
    assert!(body.contains("denied by policy shop/no-admin"), "{body}");
    // Paths no CUSTOM policy matches are not checked.
    let (status, _, _) = t.get("/public", Some("deny")).await;
    assert_eq!(status, 200);

    // HTTP provider: the listed header goes to the server, 2xx allows with the listed header
    // upstream, 403 denies with the server's body and listed header.
    let (status, headers, _) = t.get("/http/items", Some("allow")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-seen-ext-authz"], "allowed");
    let (status, headers, body) = t.get("/http/items", Some("no")).await;
    assert_eq!((status, body.as_str()), (403, DENY_BODY));
    assert_eq!(headers["x-ext-authz-check-result"], "denied");
    let (status, _, _) = t.get("/http/items", None).await;
    assert_eq!(
        status, 403,
        "the HTTP check knows no principal: no header, no entry"
    );

    // A stopped server: closed by default (403), or the configured status, or open.
    let (status, _, body) = t.get("/closed/x", Some("allow")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = t.get("/closed-503/x", Some("allow")).await;
    assert_eq!(status, 503);
    let (status, _, body) = t.get("/open/x", Some("deny")).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /open/x"));
    // A provider no one declared: denied.
    let (status, _, body) = t.get("/nowhere/x", Some("allow")).await;
    assert_eq!(status, 403);
    assert!(body.contains("undeclared is not configured"), "{body}");

    // A server that accepts and never answers: the timeout leads to the failure mode.
    frozen.freeze();
    let started = Instant::now();
    let (status, _, _) = t.get("/slow/x", Some("allow")).await;
    let took = started.elapsed();
    assert_eq!(status, 403);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let (status, _, _) = t.get("/slow-open/x", Some("deny")).await;
    assert_eq!(status, 200);
    frozen.thaw();

    let metrics = t.metrics();
    for series in [
        r#"ambit_waypoint_ext_authz_total{provider="grpc",result="allowed"} 2"#,
        r#"ambit_waypoint_ext_authz_total{provider="grpc",result="denied"} 2"#,
        r#"ambit_waypoint_ext_authz_total{provider="http",result="allowed"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="http",result="denied"} 2"#,
        r#"ambit_waypoint_ext_authz_total{provider="closed",result="error_denied"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="closed-503",result="error_denied"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="open",result="error_allowed"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="undeclared",result="error_denied"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="slow",result="error_denied"} 1"#,
        r#"ambit_waypoint_ext_authz_total{provider="slow-open",result="error_allowed"} 1"#,
        r#"ambit_waypoint_ext_authz_duration_seconds_count{provider="grpc"} 4"#,
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }
}

#[tokio::test]
async fn grpc_requests_and_bodies() {
    let Some(binary) = binary() else { return };
    let net = 92;
    let live = Server::start(&binary, "front").await;
    let frozen = Server::start(&binary, "front").await;
    let pki = TestPki::new("cluster.local");
    pod(&pki, ip(net, 11), SERVED_SA, "back-1").await;
    let mesh = mesh(net, &live, &frozen, closed_port());
    let waypoint = waypoint(&pki, net, &mesh).await;
    let mut h2 = Client::new(&pki, NS, "front", waypoint.hbone_addr)
        .http2(&format!("10.96.{net}.1:81"))
        .await;
    let call = |check: &str| {
        hyper::Request::builder()
            .method("POST")
            .uri("http://back/grpc/Echo")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-ext-authz", check)
            .body(body("0123456789abcdef"))
            .unwrap()
    };
    // Allowed: the app gets the whole body, the server its first 8 bytes, marked partial.
    let (status, headers, body) = text(h2.send_request(call("allow")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "0123456789abcdef"));
    let received = headers["x-seen-ext-authz-received"].to_str().unwrap();
    assert!(received.contains(r#"body:"01234567""#), "{received}");
    assert!(received.contains("x-envoy-auth-partial-body"), "{received}");
    // Denied: a gRPC status the client understands.
    let response = h2.send_request(call("deny")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(response.headers()["x-ext-authz-check-result"], "denied");
}
