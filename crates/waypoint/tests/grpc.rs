//! gRPC through the waypoint with real tonic clients and servers over HTTP/2, on loopback over
//! real TLS: a route's retries read the call's status (UNAVAILABLE retried, up to the attempts
//! and within the budget), the client's deadline is honoured and capped by the route's timeout,
//! and what the waypoint answers itself reaches a gRPC client as a gRPC status.

#![allow(clippy::unwrap_used)]

mod support;

use ambit_identity::testing::TestPki;
use ambit_proto::ca::v1::certificate_service_client::CertificateServiceClient;
use ambit_proto::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use ambit_proto::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use ambit_proto::config::v1::ClientMessage;
use ambit_proto::config::v1::config_service_client::ConfigServiceClient;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

const NET: u8 = 66;

/// `back` (one pod) whose gRPC port 81 has one route: the CA service's calls, retried twice
/// on UNAVAILABLE, within 1 s. Nothing else is routed.
fn mesh() -> String {
    format!(
        r#"
workloads:
{pods}services:
{service}routes:
  - name: ca
    namespace: shop
    kind: GRPCRoute
    parents: [{{namespace: shop, name: back, port: 81}}]
    rules:
      - matches: [{{grpc: {{service: ambit.ca.v1.CertificateService}}}}]
        requestTimeoutMs: 1000
        retry: {{codes: [503], attempts: 2}}
"#,
        pods = back_pods(NET, 1),
        service = back_service(NET, 1),
    )
}

/// What the app saw: calls per `identity`, and the `grpc-timeout` of the last call.
#[derive(Debug, Default, Clone)]
struct Calls {
    per_identity: Arc<Mutex<HashMap<String, u32>>>,
    last_timeout: Arc<Mutex<Option<String>>>,
}

impl Calls {
    fn of(&self, identity: &str) -> u32 {
        self.per_identity
            .lock()
            .unwrap()
            .get(identity)
            .copied()
            .unwrap_or(0)
    }
}

/// The app, by the request's `identity`: `flaky` is UNAVAILABLE twice then answers, `down` is
/// always UNAVAILABLE, `slow` answers after 5 s, anything else at once.
#[derive(Debug, Clone)]
struct App(Calls);

#[tonic::async_trait]
impl CertificateService for App {
    async fn create_certificate(
        &self,
        request: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned());
        *self.0.last_timeout.lock().unwrap() = timeout;
        let identity = request.into_inner().identity;
        let n = {
            let mut calls = self.0.per_identity.lock().unwrap();
            let n = calls.entry(identity.clone()).or_default();
            *n += 1;
            *n
        };
        match identity.as_str() {
            "flaky" if n <= 2 => return Err(Status::unavailable("warming up")),
            "down" => return Err(Status::unavailable("down")),
            "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
            _ => {}
        }
        Ok(tonic::Response::new(CreateCertificateResponse {
            chain_der: vec![identity.into_bytes()],
        }))
    }
}

/// A pod at `ip` of `shop/back` serving [`App`] with tonic on `ip:8080`.
async fn grpc_pod(pki: &TestPki, ip: IpAddr) -> Calls {
    pod_tunnel(pki, ip, SERVED_SA, Seen::default()).await;
    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 8080))
        .await
        .unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(CertificateServiceServer::new(App(calls.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    calls
}

/// A tonic channel to `back:81` through the waypoint, over HBONE as `shop/front`.
async fn channel(pki: &TestPki, waypoint: SocketAddr) -> Channel {
    let client = Arc::new(Client::new(pki, NS, "front", waypoint));
    let target = format!("10.96.{NET}.1:81");
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let stream = client.tunnel(&target).await?;
            Ok::<_, ambit_hbone::HboneError>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_static("http://back.shop:81")
        .connect_with_connector(connector)
        .await
        .unwrap()
}

/// A call with `grpc-timeout` if given.
fn call(identity: &str, grpc_timeout: Option<&str>) -> tonic::Request<CreateCertificateRequest> {
    let mut request = tonic::Request::new(CreateCertificateRequest {
        identity: identity.to_owned(),
        ..Default::default()
    });
    if let Some(timeout) = grpc_timeout {
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_calls_are_retried_on_unavailable_and_held_to_their_deadline() {
    let pki = TestPki::new("cluster.local");
    let calls = grpc_pod(&pki, ip(NET, 11)).await;
    let waypoint = waypoint(&pki, NET, &mesh()).await;
    assert!(waypoint.shared.mesh().route_errors().is_empty());
    let channel = channel(&pki, waypoint.hbone_addr).await;
    let mut ca = CertificateServiceClient::new(channel.clone());

    // UNAVAILABLE twice, then an answer: the client sees only the answer.
    let answer = ca.create_certificate(call("flaky", None)).await.unwrap();
    assert_eq!(answer.into_inner().chain_der, [b"flaky".to_vec()]);
    assert_eq!(calls.of("flaky"), 3);

    // Always UNAVAILABLE: 1 + 2 attempts, then the app's own status and message.
    let status = ca.create_certificate(call("down", None)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "down")
    );
    assert_eq!(calls.of("down"), 3);

    // The client's 300 ms deadline, shorter than the route's 1 s, is the one kept: the app is
    // told it. (tonic's client cuts the call at its deadline too, racing the waypoint; the
    // waypoint's own cut is the one below, and the retry layer's unit tests.)
    let _ = ca.create_certificate(call("slow", Some("300m"))).await;
    let told = calls.last_timeout.lock().unwrap().clone().unwrap();
    let told_ms: u64 = told.trim_end_matches('m').parse().unwrap();
    assert!(told.ends_with('m') && told_ms <= 300, "app told {told}");

    // A client allowing a minute is cut at the route's 1 s; the app was told at most 1 s.
    let started = Instant::now();
    let status = ca
        .create_certificate(call("slow", Some("1M")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.metadata().get("server").unwrap(), "ambit-waypoint");
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(1000)..Duration::from_millis(1500)).contains(&took),
        "answered after {took:?}"
    );
    let told = calls.last_timeout.lock().unwrap().clone().unwrap();
    let told_ms: u64 = told.trim_end_matches('m').parse().unwrap();
    assert!(told.ends_with('m') && told_ms <= 1000, "app told {told}");

    // A call no rule matches: the waypoint's 404 reaches the gRPC client as UNIMPLEMENTED.
    let mut config = ConfigServiceClient::new(channel);
    let status = config
        .stream(futures::stream::empty::<ClientMessage>())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unimplemented, "no route matched")
    );
}
