//! Every identity check of an HBONE handshake, each tried with a wrong identity.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::HboneError;
use ambit_identity::testing::TestPki;
use ambit_identity::{CertificateHandle, PeerIdentityError, peer_identity_error};
use std::time::{Duration, SystemTime};
use support::*;

/// Connecting must fail, and the server's handler must never see a request.
async fn assert_refused(
    client: Client,
    mut seen: tokio::sync::mpsc::UnboundedReceiver<ambit_hbone::ConnectRequest>,
) -> HboneError {
    let echo = start_echo().await;
    let err = client
        .open(echo)
        .await
        .expect_err("connection must be refused");
    assert!(
        seen.try_recv().is_err(),
        "handler saw a request from a refused peer"
    );
    err
}

#[tokio::test]
async fn a_correct_pair_connects_and_the_server_sees_the_client_identity() {
    let pki = TestPki::new("cluster.local");
    let (server, mut seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let client = client(&pki, server);
    let _tunnel = client.open(echo).await.unwrap();
    let request = seen.recv().await.unwrap();
    assert_eq!(request.peer, pki.id("demo", "client"));
    assert_eq!(request.target, echo);
}

#[tokio::test]
async fn server_refuses_a_client_certificate_from_another_ca() {
    let pki = TestPki::new("cluster.local");
    let rogue = TestPki::new("cluster.local");
    let (server, seen) = start_forwarding_server(&pki).await;
    let local = pki.id("demo", "client");
    let client = client_presenting(
        &pki,
        local.clone(),
        CertificateHandle::fixed(rogue.certificate(&local)),
        server,
    );
    let err = assert_refused(client, seen).await;
    assert!(err.to_string().contains("alert"), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain() {
    let pki = TestPki::new("cluster.local");
    let foreign = TestPki::new("evil.example");
    let (server, seen) = start_forwarding_server(&pki).await;
    let local = foreign.id("demo", "client");
    let client = client_presenting(
        &pki,
        local.clone(),
        CertificateHandle::fixed(foreign.certificate(&local)),
        server,
    );
    assert_refused(client, seen).await;
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let pki = TestPki::new("cluster.local");
    let (server, seen) = start_forwarding_server(&pki).await;
    let local = pki.id("demo", "client");
    let expired = pki.certificate_at(
        &local,
        Duration::from_secs(600),
        SystemTime::now() - Duration::from_secs(3600),
    );
    let client = client_presenting(&pki, local, CertificateHandle::fixed(expired), server);
    let err = assert_refused(client, seen).await;
    assert!(err.to_string().contains("alert"), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let pki = TestPki::new("cluster.local");
    let (server, seen) = start_forwarding_server(&pki).await;
    let client = client_presenting(
        &pki,
        pki.id("demo", "client"),
        CertificateHandle::without_certificate(),
        server,
    );
    let err = assert_refused(client, seen).await;
    assert!(err.to_string().contains("alert"), "{err}");
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_san() {
    let pki = TestPki::new("cluster.local");
    let (server, seen) = start_forwarding_server(&pki).await;
    let client = client_with(
        &pki,
        pki.id("demo", "client"),
        pki.handle("demo", "client"),
        server,
        pki.id("demo", "the-real-backend"),
        fast_pool_settings(),
    );
    let err = assert_refused(client, seen).await;
    let HboneError::Tls { source, .. } = &err else {
        panic!("expected a TLS error, got {err}");
    };
    let tls = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .expect("a rustls error inside the io error");
    assert!(
        matches!(
            peer_identity_error(tls),
            Some(PeerIdentityError::Unexpected { actual, .. }) if *actual == pki.id(SERVER_NS, SERVER_SA)
        ),
        "{tls}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let pki = TestPki::new("cluster.local");
    let rogue = TestPki::new("cluster.local");
    // The server is signed by the rogue CA but claims the expected identity.
    let (server, seen) = start_forwarding_server(&rogue).await;
    let client = client(&pki, server);
    let err = assert_refused(client, seen).await;
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");
}
