//! Authenticated but hostile clients: any pod can get a certificate for its own service
//! account, so the server's bounds must hold against clients it has verified (issue 14 item 3).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::{Dialer, HboneError, ServerSettings};
use ambit_identity::testing::TestPki;
use bytes::Bytes;
use h2::client::SendRequest;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A raw authenticated connection as `demo/<sa>`, kept open and idle while this lives.
struct Held {
    _send: SendRequest<Bytes>,
    /// Ends when the server closes the connection.
    closed: JoinHandle<()>,
}

/// Dials as `demo/<sa>` and returns the connection once the server has answered a PING on it,
/// `Ok(None)` if it closed the connection instead.
async fn hold(
    dialer: &Dialer,
    pki: &TestPki,
    server: SocketAddr,
    sa: &str,
) -> Result<Option<Held>, HboneError> {
    let (send, mut connection) = dialer
        .dial(
            pki.handle("demo", sa),
            server,
            vec![pki.id(SERVER_NS, SERVER_SA)],
        )
        .await?;
    let mut ping = connection
        .ping_pong()
        .expect("a new connection has its ping");
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    let served = tokio::time::timeout(Duration::from_secs(5), ping.ping(h2::Ping::opaque())).await;
    Ok(matches!(served, Ok(Ok(_))).then_some(Held {
        _send: send,
        closed,
    }))
}

/// Bytes through a tunnel to the echo app come back.
async fn echoes(client: &Client, echo: SocketAddr) {
    let mut tunnel = tokio::time::timeout(Duration::from_secs(5), client.open(echo))
        .await
        .expect("a tunnel within 5 s")
        .expect("a tunnel");
    tunnel.write_all(b"still served").await.unwrap();
    let mut back = [0u8; 12];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still served");
}

/// One pod opening thousands of idle authenticated connections.
const ATTACK: usize = 5_000;
const PER_PEER: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_one_peer_are_capped_and_others_are_still_served() {
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let settings = ServerSettings {
        max_connections: 64,
        max_connections_per_peer: PER_PEER,
        ..Default::default()
    };
    let server = start_server_with(&pki, Forward { seen }, settings).await;
    let echo = start_echo().await;
    // A dial that does not get through the server's accept (every slot taken) gives up soon.
    let attacker = Dialer::new(
        pki.bundle(),
        ambit_hbone::PoolSettings {
            connect_timeout: Duration::from_millis(500),
            ..fast_pool_settings()
        },
    );
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..ATTACK {
        match hold(&attacker, &pki, server, "attacker").await {
            Ok(Some(connection)) => held.push(connection),
            // The server stopped accepting: the attacker holds every slot.
            Err(HboneError::HandshakeTimeout { .. }) => break,
            // Closed by the server during or right after the handshake.
            Ok(None) | Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{ATTACK} attempts in {:?}: {} connections held, {refused} refused",
        started.elapsed(),
        held.len()
    );
    assert_eq!(
        held.len(),
        PER_PEER,
        "one pod held {} connections",
        held.len()
    );
    assert_eq!(refused, ATTACK - PER_PEER);

    // Others are served meanwhile, and the attacker's own connections still are.
    echoes(&client(&pki, server), echo).await;
    assert!(held.iter().all(|h| !h.closed.is_finished()));
    // Closing its connections gives the attacker its share back.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(_again)) = hold(&attacker, &pki, server, "attacker").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker's closed connections were never uncounted"
        );
    }
}

#[tokio::test]
async fn a_connection_without_tunnels_is_closed_after_the_idle_timeout() {
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let idle_timeout = Duration::from_millis(300);
    let settings = ServerSettings {
        idle_timeout,
        ..Default::default()
    };
    let server = start_server_with(&pki, Forward { seen }, settings).await;
    let echo = start_echo().await;
    let dialer = Dialer::new(pki.bundle(), fast_pool_settings());

    // A connection carrying a tunnel outlives the idle timeout.
    let busy = client(&pki, server);
    let mut tunnel = busy.open(echo).await.unwrap();
    let dialed = Instant::now();
    let idle = hold(&dialer, &pki, server, "idler")
        .await
        .unwrap()
        .expect("served at first");
    tokio::time::timeout(Duration::from_secs(5), idle.closed)
        .await
        .expect("an idle connection was never closed")
        .unwrap();
    assert!(
        dialed.elapsed() >= idle_timeout,
        "closed before its idle timeout"
    );
    tunnel.write_all(b"busy").await.unwrap();
    let mut back = [0u8; 4];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(
        &back, b"busy",
        "the connection with a tunnel was closed too"
    );
}
