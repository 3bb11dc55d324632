//! Loopback fixtures for the waypoint: pods (an HBONE server standing in for the pod's node
//! tunnel, in front of an app on the pod's address), the waypoint itself from a mesh file and a
//! local CA, and clients that reach it over HBONE as a client tunnel does. Every test takes its
//! own `127.N.0.0/16` so tests run in parallel.

// Test fixtures panic on failure; each test uses a different subset of them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ambit_hbone::{
    ConnectHandler, ConnectRequest, Dialer, H2Stream, HbonePool, HboneServer, PendingTunnel,
    PoolKey, PoolSettings, ServerSettings, TunnelHeaders, forward_to_target,
};
use ambit_identity::testing::TestPki;
use ambit_identity::{CertificateHandle, SpiffeId, server_config};
use ambit_waypoint::run::Running;
use ambit_waypoint::{Args, Config};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub type TestBody = BoxBody<Bytes, Infallible>;

pub fn body(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

pub const NS: &str = "shop";
pub const SERVED_SA: &str = "back";
pub const WAYPOINT_SA: &str = "waypoint-back";

/// `127.net.0.host`.
pub fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, net, 0, host])
}

/// Mesh YAML, items of `workloads:`: pods `back-1` to `back-N` of `shop/back` (uids `b1`...),
/// on `127.net.0.11` and up, each on its own node.
pub fn back_pods(net: u8, pods: u8) -> String {
    (1..=pods)
        .map(|n| {
            let host = 10 + n;
            format!(
                "  - {{uid: b{n}, name: back-{n}, namespace: shop, serviceAccount: back, node: n{n}, ips: [\"127.{net}.0.{host}\"], labels: {{app: back}}}}\n"
            )
        })
        .collect()
}

/// Mesh YAML, an item of `services:`: Service `back` (VIP `10.96.net.1`) in front of
/// [`back_pods`]: port 80 is HTTP and 81 gRPC (to the app's 8080), 70 TCP (to the echo's 7000).
pub fn back_service(net: u8, pods: u8) -> String {
    let endpoints: Vec<String> = (1..=pods).map(|n| format!("b{n}")).collect();
    let endpoints = endpoints.join(", ");
    format!(
        r#"  - name: back
    namespace: shop
    vips: ["10.96.{net}.1"]
    ports:
      - {{port: 80, targetPort: 8080, name: http}}
      - {{port: 81, targetPort: 8080, name: grpc}}
      - {{port: 70, targetPort: 7000, name: tcp-echo}}
    endpoints: [{endpoints}]
"#
    )
}

/// The identities that reached a pod's tunnel.
pub type Seen = Arc<Mutex<Vec<SpiffeId>>>;

#[derive(Clone)]
struct PodTunnel {
    seen: Seen,
}

impl ConnectHandler for PodTunnel {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl std::future::Future<Output = ()> + Send + 'static + use<> {
        self.seen.lock().unwrap().push(request.peer.clone());
        async move {
            let _ = forward_to_target(request.target, tunnel).await;
        }
    }

    /// As the node tunnel does: a waypoint carries many clients' traffic, so only the total
    /// bounds it, not one client's share.
    fn tunnel_share(&self, peer: &SpiffeId, share: usize) -> usize {
        if peer.service_account() == WAYPOINT_SA {
            usize::MAX
        } else {
            share
        }
    }
}

/// A pod at `ip` running as `sa`: its "node tunnel" on `ip:15008` (presenting `sa`'s
/// identity, recording who connects) and the echo app on `ip:8080` (HTTP/1.1 and h2c) and
/// `ip:7000` (TCP echo). Returns who reached the tunnel.
pub async fn pod(pki: &TestPki, ip: IpAddr, sa: &str, name: &'static str) -> Seen {
    let seen = Seen::default();
    pod_tunnel(pki, ip, sa, seen.clone()).await;
    serve_http(ip, move |r| app(r, name)).await;
    tcp_echo(ip).await;
    seen
}

/// The pod's "node tunnel" on `ip:15008`, presenting `sa`'s identity; who connects goes to
/// `seen`.
pub async fn pod_tunnel(pki: &TestPki, ip: IpAddr, sa: &str, seen: Seen) {
    let trust = pki.bundle();
    let tls = server_config(pki.handle(NS, sa), &trust).unwrap();
    let listener = TcpListener::bind(SocketAddr::new(ip, 15008)).await.unwrap();
    let server = HboneServer::new(tls, &trust, ServerSettings::default(), PodTunnel { seen });
    tokio::spawn(server.serve(listener));
}

/// A TCP echo on `ip:7000`.
async fn tcp_echo(ip: IpAddr) {
    let tcp = TcpListener::bind(SocketAddr::new(ip, 7000)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// An app on `ip:8080` (HTTP/1.1, with upgrades, and h2c) answering with `handle`.
async fn serve_http<F, Fut>(ip: IpAddr, handle: F)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<hyper::Response<TestBody>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::new(ip, 8080)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(handle.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

/// A request's whole body; empty if it could not be read.
async fn read_body(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// The echo app: `NAME METHOD PATH` and what it saw in `x-seen-*` headers; gRPC-shaped
/// requests get the body back with `grpc-status: 0` in trailers; `/slow` waits 2 s; an
/// `Upgrade` request is switched and echoed.
async fn app(
    mut request: hyper::Request<Incoming>,
    name: &'static str,
) -> Result<hyper::Response<TestBody>, Infallible> {
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let header = |n: &str| {
        request
            .headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if request.headers().contains_key(hyper::header::UPGRADE) {
        let protocol = header("upgrade");
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let response = hyper::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(body(""))
            .unwrap();
        return Ok(response);
    }
    let grpc = header("content-type").starts_with("application/grpc");
    let seen = [
        ("x-seen-traceparent", header("traceparent")),
        ("x-seen-tracestate", header("tracestate")),
        ("x-seen-host", header("host")),
        ("x-seen-connection", header("connection")),
        ("x-seen-te", header("te")),
        ("x-seen-version", format!("{:?}", request.version())),
        ("x-seen-authorization", header("authorization")),
        ("x-seen-jwt-sub", header("x-jwt-sub")),
        ("x-seen-ext-authz", header("x-ext-authz-check-result")),
        (
            "x-seen-ext-authz-received",
            header("x-ext-authz-check-received"),
        ),
        (
            "x-seen-query",
            request.uri().query().unwrap_or("").to_owned(),
        ),
    ];
    let line = format!("{name} {} {}", request.method(), request.uri().path());
    let payload = read_body(request.into_body()).await;
    let mut response = hyper::Response::builder();
    for (k, v) in seen {
        response = response.header(k, v);
    }
    if grpc {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(hyper::body::Frame::data(payload)),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]);
        return Ok(response
            .header("content-type", "application/grpc")
            .body(http_body_util::StreamBody::new(frames).boxed())
            .unwrap());
    }
    Ok(response.body(body(line)).unwrap())
}

/// A waypoint for `shop/back` serving `mesh` (YAML), listening on `127.net.0.1`.
pub async fn waypoint(pki: &TestPki, net: u8, mesh: &str) -> Running {
    waypoint_for(pki, net, mesh, (SERVED_SA, WAYPOINT_SA)).await
}

/// A waypoint for `shop/SERVED` running as `shop/OWN` (`accounts`), serving `mesh` (YAML),
/// listening on `127.net.0.1`.
pub async fn waypoint_for(pki: &TestPki, net: u8, mesh: &str, accounts: (&str, &str)) -> Running {
    waypoint_with(pki, net, mesh, accounts, &[]).await
}

/// [`waypoint_for`] with `extra` flags.
pub async fn waypoint_with(
    pki: &TestPki,
    net: u8,
    mesh: &str,
    accounts: (&str, &str),
    extra: &[&str],
) -> Running {
    let dir =
        std::env::temp_dir().join(format!("ambit-waypoint-test-{}-{net}", std::process::id()));
    let mut flags = standalone_flags(pki, &dir, net, mesh, [0; 4], accounts);
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let args =
        Args::try_parse_from(["ambit-waypoint".to_owned()].into_iter().chain(flags)).unwrap();
    ambit_waypoint::run::start(Config::from_args(args).unwrap())
        .await
        .unwrap()
}

/// The flags of a standalone waypoint for `shop/SERVED` running as `shop/OWN` (`accounts`):
/// `mesh` (YAML) and the local CA written into `dir`; HBONE, admin, metrics and readiness on
/// `ports` of `127.net.0.1`.
fn standalone_flags(
    pki: &TestPki,
    dir: &Path,
    net: u8,
    mesh: &str,
    ports: [u16; 4],
    (served, own): (&str, &str),
) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let material = pki.ca.to_material();
    let file = |name: &str, text: &str| -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let at = |port: u16| SocketAddr::new(ip(net, 1), port).to_string();
    let [listen, admin, metrics, readiness] = ports;
    [
        ("--namespace", NS.to_owned()),
        ("--for-service-account", served.to_owned()),
        ("--service-account", own.to_owned()),
        ("--mesh", file("mesh.yaml", mesh)),
        ("--ca-cert", file("ca.crt", &material.certificate_pem)),
        ("--ca-key", file("ca.key", &material.key_pem)),
        ("--listen", at(listen)),
        ("--admin", at(admin)),
        ("--metrics", at(metrics)),
        ("--readiness", at(readiness)),
        ("--drain-secs", "1".to_owned()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// A client tunnel of `shop/SA`.
pub struct Client {
    pub pool: HbonePool,
    pub key: PoolKey,
}

impl Client {
    /// Connects as `ns/sa` to the waypoint at `waypoint`, expecting the waypoint's identity.
    pub fn new(pki: &TestPki, ns: &str, sa: &str, waypoint: SocketAddr) -> Self {
        let local = pki.id(ns, sa);
        let identities: HashMap<SpiffeId, CertificateHandle> =
            HashMap::from([(local.clone(), pki.handle(ns, sa))]);
        let pool = HbonePool::new(
            Dialer::new(pki.bundle(), PoolSettings::default()),
            Arc::new(identities),
        );
        let key = PoolKey::new(local, waypoint, vec![pki.id(NS, WAYPOINT_SA)]);
        Self { pool, key }
    }

    pub async fn tunnel(&self, target: &str) -> Result<H2Stream, ambit_hbone::HboneError> {
        self.pool
            .connect(
                &self.key,
                target.parse().unwrap(),
                &TunnelHeaders::default(),
            )
            .await
    }

    pub async fn http1(&self, target: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let stream = self.tunnel(target).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        sender
    }

    pub async fn http2(&self, target: &str) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let stream = self.tunnel(target).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }
}

pub async fn text(response: hyper::Response<Incoming>) -> (u16, hyper::HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

pub fn get(path: &str, host: &str) -> hyper::Request<TestBody> {
    request(hyper::Method::GET, path, host)
}

pub fn delete(path: &str, host: &str) -> hyper::Request<TestBody> {
    request(hyper::Method::DELETE, path, host)
}

fn request(method: hyper::Method, path: &str, host: &str) -> hyper::Request<TestBody> {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(body(""))
        .unwrap()
}

/// Polls `check` until it holds or 10 s pass.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the recording app saw of one request: its head's framing headers and its body.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub content_length: Vec<String>,
    pub transfer_encoding: Vec<String>,
    pub body: Bytes,
}

/// Every request that reached a recording app, in order.
pub type AppLog = Arc<Mutex<Vec<SeenRequest>>>;

/// Like [`pod`], but the app on `ip:8080` records every request it parses (so a test can tell
/// whether a smuggled request reached it) and answers `NAME METHOD PATH`; `ip:7000` echoes TCP.
pub async fn recording_pod(pki: &TestPki, ip: IpAddr, sa: &str, name: &'static str) -> AppLog {
    let log = AppLog::default();
    pod_tunnel(pki, ip, sa, Seen::default()).await;
    tcp_echo(ip).await;
    let recorded = log.clone();
    serve_http(ip, move |r| record(r, name, recorded.clone())).await;
    log
}

async fn record(
    request: hyper::Request<Incoming>,
    name: &'static str,
    log: AppLog,
) -> Result<hyper::Response<TestBody>, Infallible> {
    let all = |n: hyper::header::HeaderName| -> Vec<String> {
        request
            .headers()
            .get_all(n)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let content_length = all(hyper::header::CONTENT_LENGTH);
    let transfer_encoding = all(hyper::header::TRANSFER_ENCODING);
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let line = format!("{name} {method} {path}");
    let received = read_body(request.into_body()).await;
    log.lock().unwrap().push(SeenRequest {
        method,
        path,
        content_length,
        transfer_encoding,
        body: received,
    });
    Ok(hyper::Response::new(body(line)))
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident since start or the last [`ChildWaypoint::reset_peak`] (`VmHWM`).
    pub peak_kib: u64,
}

/// The real `ambit-waypoint` binary as a child process, standalone (mesh file and local CA), on
/// fixed ports of `127.net.0.1` (HBONE 15008, admin 15000, metrics 15020, readiness 15021):
/// what runs in production, so its memory is measured honestly. Killed when dropped.
pub struct ChildWaypoint {
    child: std::process::Child,
    pub net: u8,
    log: PathBuf,
}

impl ChildWaypoint {
    /// Starts it and waits until its readiness endpoint says ready; `extra` are more flags.
    pub async fn start(pki: &TestPki, net: u8, mesh: &str, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ambit-waypoint-child-{}-{net}", std::process::id()));
        let flags = standalone_flags(
            pki,
            &dir,
            net,
            mesh,
            [15008, 15000, 15020, 15021],
            (SERVED_SA, WAYPOINT_SA),
        );
        let log = dir.join("waypoint.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ambit-waypoint"))
            .args(flags)
            .args(extra)
            .env("AMBIT_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut waypoint = Self { child, net, log };
        waypoint.wait_ready().await;
        waypoint
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(self.alive(), "the waypoint exited: {}", self.log());
            if self
                .get(15021, "/healthz/ready")
                .await
                .starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waypoint was not ready in 30 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` on one of its own ports; the whole answer, or "" if it cannot be reached.
    pub async fn get(&self, port: u16, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip(self.net, 1), port))
                .await
                .ok()?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.ok()?;
            Some(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    pub fn hbone_addr(&self) -> SocketAddr {
        SocketAddr::new(ip(self.net, 1), 15008)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its stderr so far (JSON log lines), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        Memory {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Resets the peak (`VmHWM`) to the current RSS, so a later peak is the attack's; returns
    /// whether the kernel allowed it (if not, the peak includes start-up, which only
    /// overstates).
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }
}

impl Drop for ChildWaypoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
