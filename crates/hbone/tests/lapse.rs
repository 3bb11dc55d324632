//! Certificates that end while connections live (docs/hbone.md, "Certificates that end"): a
//! connection carries new tunnels only while the certificates of its handshake are valid and
//! their roots trusted, on both sides; each case beside a connection that stays valid and is
//! kept. Real TLS on loopback, certificates a few seconds long, polled with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::{Dialer, HbonePool, HboneServer, LocalIdentities, PoolSettings, ServerSettings};
use ambit_identity::testing::TestPki;
use ambit_identity::{
    CertificateAuthority, CertificateHandle, CertificateIssuer, CertificateStore, IdentityLease,
    IssueError, LocalIssuer, RetryPolicy, SpiffeId, TrustBundle, server_config,
};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const DEADLINE: Duration = Duration::from_secs(8);
/// A leaf this short is renewed every 2 s (half-life), like an hour-long one every 30 min.
const SHORT: Duration = Duration::from_secs(4);
const LONG: Duration = Duration::from_secs(3600);
const DRAIN: Duration = Duration::from_secs(2);

/// Signs with whichever CA is current: the CA side of a root rotation.
#[derive(Clone)]
struct SwitchingIssuer(Arc<Mutex<Arc<CertificateAuthority>>>);

impl CertificateIssuer for SwitchingIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        let ca = self.0.lock().unwrap().clone();
        Ok(vec![ca.sign(csr_der, identity, LONG)?])
    }
}

/// A renewing certificate for `id` from `issuer`, as a data plane holds it.
async fn renewing<I: CertificateIssuer>(
    issuer: I,
    trust: &TrustBundle,
    id: &SpiffeId,
) -> (CertificateStore<I>, IdentityLease) {
    let store = CertificateStore::new(issuer, RetryPolicy::default()).following(trust.clone());
    let lease = store.acquire(id).await.unwrap();
    (store, lease)
}

/// An HBONE server presenting `certificate`, verifying clients against `trust`.
async fn serve(
    certificate: CertificateHandle,
    trust: &TrustBundle,
    settings: ServerSettings,
) -> SocketAddr {
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let tls = server_config(certificate, trust).unwrap();
    let server = HboneServer::new(tls, trust, settings, Forward { seen });
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

/// A pool presenting `certificate` as `demo/client`, verifying servers against `trust`.
fn pool(
    pki: &TestPki,
    certificate: CertificateHandle,
    trust: &TrustBundle,
    server: SocketAddr,
) -> Client {
    let local = pki.id("demo", "client");
    let identities: HashMap<SpiffeId, CertificateHandle> =
        HashMap::from([(local.clone(), certificate)]);
    let identities: Arc<dyn LocalIdentities> = Arc::new(identities);
    let settings = PoolSettings {
        expiry_margin: Duration::from_secs(1),
        distrust_drain: DRAIN,
        distrust_drain_jitter: 0.0,
        ..fast_pool_settings()
    };
    Client {
        pool: HbonePool::new(Dialer::new(trust.clone(), settings), identities),
        key: ambit_hbone::PoolKey::new(local, server, vec![pki.id(SERVER_NS, SERVER_SA)]),
    }
}

/// A line through a tunnel (pooled or raw) to the echo app comes back.
async fn round_trip(tunnel: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), line: &[u8]) {
    tunnel.write_all(line).await.unwrap();
    let mut got = vec![0; line.len()];
    tokio::time::timeout(DEADLINE, tunnel.read_exact(&mut got))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(got, line);
}

/// Whether `tunnel` ends (EOF or error) within `within`.
async fn ends_within(tunnel: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, tunnel.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whose certificate is the short one, seen from the side under test.
enum Short {
    /// The other side's: the server's for a pool, the client's for a server.
    Peer,
    /// Its own.
    Own,
}

/// A pooled connection reaches the end of one of its handshake's certificates (each renewed
/// at half-life): the pool retires it before, the next tunnel goes on a new connection, and
/// the open tunnel goes on. While valid, the connection is reused.
async fn next_tunnel_after_expiry(short: Short) {
    let pki = TestPki::new("cluster.local");
    let trust = pki.bundle();
    let (server_life, client_life) = match short {
        Short::Peer => (SHORT, LONG),
        Short::Own => (LONG, SHORT),
    };
    let server_id = pki.id(SERVER_NS, SERVER_SA);
    let (_s, server_cert) = renewing(
        LocalIssuer::new(pki.ca.clone(), server_life),
        &trust,
        &server_id,
    )
    .await;
    let client_id = pki.id("demo", "client");
    let (_c, client_cert) = renewing(
        LocalIssuer::new(pki.ca.clone(), client_life),
        &trust,
        &client_id,
    )
    .await;
    let server = serve(server_cert.handle(), &trust, ServerSettings::default()).await;
    let echo = start_echo().await;
    let client = pool(&pki, client_cert.handle(), &trust, server);

    let mut open = client.open(echo).await.unwrap();
    round_trip(&mut open, b"first").await;
    // At least as late as the certificate of the first handshake ends.
    let short_cert = match short {
        Short::Peer => &server_cert,
        Short::Own => &client_cert,
    };
    let first_ends = short_cert.handle().current().unwrap().not_after();
    let mut second = client.open(echo).await.unwrap();
    round_trip(&mut second, b"second").await;
    assert_eq!(client.pool.stats().dials, 1, "a valid connection is reused");

    assert!(
        eventually(DEADLINE, || client.pool.stats().connections == 0).await,
        "the connection was not retired before its certificate ended"
    );
    assert!(SystemTime::now() < first_ends, "retired only after the end");
    while SystemTime::now() <= first_ends {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut next = client.open(echo).await.unwrap();
    round_trip(&mut next, b"next").await;
    assert_eq!(client.pool.stats().dials, 2, "one new connection, no more");
    round_trip(&mut open, b"the open tunnel goes on").await;
}

#[tokio::test]
async fn the_pool_moves_off_a_connection_before_the_servers_certificate_ends() {
    next_tunnel_after_expiry(Short::Peer).await;
}

#[tokio::test]
async fn the_pool_moves_off_a_connection_before_its_own_certificate_ends() {
    next_tunnel_after_expiry(Short::Own).await;
}

/// A raw authenticated connection (no pool, so nothing retires it on the client's side).
async fn dial_raw(
    client_trust: &TrustBundle,
    certificate: CertificateHandle,
    server: SocketAddr,
    server_id: SpiffeId,
) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let (send, connection) = Dialer::new(client_trust.clone(), fast_pool_settings())
        .dial(certificate, server, vec![server_id])
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, closed)
}

/// A CONNECT on `send`: the tunnel as a byte stream if the server answered 200.
async fn connect_raw(send: &SendRequest<Bytes>, target: SocketAddr) -> Option<DuplexStream> {
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await.ok()?;
    let (response, stream) = send.send_request(request, false).ok()?;
    let response = response.await.ok()?;
    (response.status() == StatusCode::OK).then(|| raw_tunnel(stream, response.into_body()))
}

/// A raw h2 stream as a byte stream, for `round_trip`.
fn raw_tunnel(mut send: h2::SendStream<Bytes>, mut recv: h2::RecvStream) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(1024);
    let (mut read, mut write) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            if send
                .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                .is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(data)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(data.len());
            if write.write_all(&data).await.is_err() {
                return;
            }
        }
        // The stream ended or was reset: the reader sees EOF.
        let _ = write.shutdown().await;
    });
    ours
}

/// Sends CONNECTs until one is refused, and returns when; a CONNECT is refused only once the
/// connection lapsed on the server's side, never before.
async fn first_refusal(send: &SendRequest<Bytes>, echo: SocketAddr) -> SystemTime {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if connect_raw(send, echo).await.is_none() {
            return SystemTime::now();
        }
        assert!(tokio::time::Instant::now() < end, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw connection whose `short` certificate (the client's or the server's) ends in 3 s: the
/// server refuses CONNECTs on it from then on, never before, and the open tunnel goes on.
async fn server_refuses_tunnels_once_ended(short: Short) {
    let pki = TestPki::new("cluster.local");
    let trust = pki.bundle();
    let short_for =
        |id: &SpiffeId| pki.certificate_at(id, Duration::from_secs(3), SystemTime::now());
    let (server_id, client_id) = (pki.id(SERVER_NS, SERVER_SA), pki.id("demo", "client"));
    let (server_cert, client_cert) = match short {
        Short::Peer => (pki.certificate(&server_id), short_for(&client_id)),
        Short::Own => (short_for(&server_id), pki.certificate(&client_id)),
    };
    let ends = server_cert.not_after().min(client_cert.not_after());
    let server = serve(
        CertificateHandle::fixed(server_cert),
        &trust,
        ServerSettings::default(),
    )
    .await;
    let echo = start_echo().await;
    let (send, _closed) = dial_raw(
        &trust,
        CertificateHandle::fixed(client_cert),
        server,
        server_id,
    )
    .await;
    let mut open = connect_raw(&send, echo)
        .await
        .expect("a valid connection is served");
    round_trip(&mut open, b"valid").await;

    let refused = first_refusal(&send, echo).await;
    assert!(
        refused >= ends,
        "refused {:?} before the end",
        ends.duration_since(refused)
    );
    round_trip(&mut open, b"the open tunnel goes on").await;
}

#[tokio::test]
async fn the_server_refuses_tunnels_on_a_connection_whose_client_certificate_ended() {
    server_refuses_tunnels_once_ended(Short::Peer).await;
}

/// The server's own leaf of the handshake ends: a client that does not retire the connection
/// early (not a pool) is refused on it.
#[tokio::test]
async fn the_server_refuses_tunnels_on_a_connection_whose_own_certificate_ended() {
    server_refuses_tunnels_once_ended(Short::Own).await;
}

#[tokio::test]
async fn the_server_cuts_connections_whose_client_root_was_withdrawn() {
    let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
    let (old_root, new_root) = (
        old.ca.root_certificate().clone(),
        new.ca.root_certificate().clone(),
    );
    let trust = old.bundle();
    let settings = ServerSettings {
        distrust_drain: DRAIN,
        distrust_drain_jitter: 0.0,
        ..ServerSettings::default()
    };
    let server = serve(old.handle(SERVER_NS, SERVER_SA), &trust, settings).await;
    let echo = start_echo().await;
    let server_id = old.id(SERVER_NS, SERVER_SA);
    let client_trust = old.bundle();
    let (send, closed) = dial_raw(
        &client_trust,
        old.handle("demo", "client"),
        server,
        server_id.clone(),
    )
    .await;
    let mut open = connect_raw(&send, echo).await.unwrap();
    round_trip(&mut open, b"before").await;

    // A change that keeps the client's root keeps the connection.
    trust.replace([new_root.clone(), old_root]).unwrap();
    let mut kept = connect_raw(&send, echo)
        .await
        .expect("served while its root is trusted");
    round_trip(&mut kept, b"kept").await;

    trust.replace([new_root]).unwrap();
    let withdrawn = tokio::time::Instant::now();
    first_refusal(&send, echo).await;
    assert!(
        ends_within(&mut open, DRAIN + DEADLINE).await,
        "open tunnel not cut"
    );
    assert!(
        withdrawn.elapsed() >= DRAIN - Duration::from_millis(100),
        "cut before the drain"
    );
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("connection not closed")
        .unwrap();

    let (send, _closed) = dial_raw(
        &client_trust,
        new.handle("demo", "client"),
        server,
        server_id,
    )
    .await;
    let mut fresh = connect_raw(&send, echo)
        .await
        .expect("a new-root client is served");
    round_trip(&mut fresh, b"fresh").await;
}

#[tokio::test]
async fn the_pool_cuts_connections_whose_server_root_was_withdrawn() {
    let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
    let (old_root, new_root) = (
        old.ca.root_certificate().clone(),
        new.ca.root_certificate().clone(),
    );
    let server_trust = old.bundle();
    let signing = Arc::new(Mutex::new(old.ca.clone()));
    let (_store, server_cert) = renewing(
        SwitchingIssuer(signing.clone()),
        &server_trust,
        &old.id(SERVER_NS, SERVER_SA),
    )
    .await;
    let server = serve(
        server_cert.handle(),
        &server_trust,
        ServerSettings::default(),
    )
    .await;
    let echo = start_echo().await;
    let client_trust = old.bundle();
    let client = pool(&old, old.handle("demo", "client"), &client_trust, server);
    let mut open = client.open(echo).await.unwrap();
    round_trip(&mut open, b"before").await;

    // The new root signs and both are trusted: the server renews onto it; the connection
    // stays (its chain still verifies).
    *signing.lock().unwrap() = new.ca.clone();
    server_trust
        .replace([new_root.clone(), old_root.clone()])
        .unwrap();
    client_trust.replace([old_root, new_root.clone()]).unwrap();
    assert!(
        eventually(DEADLINE, || server_trust.from_signing_root(
            &server_cert.handle().current().unwrap().chain()[0]
        ))
        .await,
        "the server was not renewed onto the new root"
    );
    let mut kept = client.open(echo).await.unwrap();
    round_trip(&mut kept, b"kept").await;
    assert_eq!(
        client.pool.stats().dials,
        1,
        "a root added is no reason to reconnect"
    );

    // The client alone withdraws the old root (the server still trusts it, so this is the
    // pool's doing).
    client_trust.replace([new_root]).unwrap();
    let withdrawn = tokio::time::Instant::now();
    assert!(
        eventually(DEADLINE, || client.pool.stats().connections == 0).await,
        "the connection was not retired"
    );
    let mut next = client
        .open(echo)
        .await
        .expect("a fresh connection with the new chain");
    round_trip(&mut next, b"next").await;
    assert_eq!(client.pool.stats().dials, 2);
    assert!(
        ends_within(&mut open, DRAIN + DEADLINE).await,
        "open tunnel not cut"
    );
    assert!(
        withdrawn.elapsed() >= DRAIN - Duration::from_millis(100),
        "cut before the drain"
    );
    round_trip(&mut next, b"the new connection goes on").await;
}
