//! The data path: bytes intact both ways, half-close in each direction, many streams on one
//! pooled connection, idle eviction, and a dead peer detected and replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::{HboneServer, PoolSettings, ServerSettings, TunnelHeaders};
use ambit_identity::server_config;
use ambit_identity::testing::TestPki;
use aws_lc_rs::digest::{SHA256, digest};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// app -> outbound splice -> HBONE -> server splice -> echo app, all on loopback.
async fn echo_path(pki: &TestPki) -> (Client, std::net::SocketAddr) {
    let (server, _seen) = start_forwarding_server(pki).await;
    let echo = start_echo().await;
    let client = client(pki, server);
    let entry = start_outbound(&client, echo).await;
    (client, entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_of_random_bytes_arrive_intact_both_ways() {
    const SIZE: usize = 64 * 1024 * 1024;
    let pki = TestPki::new("cluster.local");
    let (_client, entry) = echo_path(&pki).await;
    let mut payload = vec![0u8; SIZE];
    aws_lc_rs::rand::fill(&mut payload).unwrap();
    let sent_hash = digest(&SHA256, &payload);

    let socket = TcpStream::connect(entry).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(SIZE);
    read.read_to_end(&mut received).await.unwrap();
    writer.await.unwrap();
    assert_eq!(received.len(), SIZE);
    assert_eq!(digest(&SHA256, &received).as_ref(), sent_hash.as_ref());
}

#[tokio::test]
async fn client_half_close_reaches_the_app_and_the_reply_still_flows() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    // An app that reads to EOF, then answers and closes: it only answers after our FIN.
    let app = listen().await;
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = app.accept().await.unwrap();
        let mut request = Vec::new();
        socket.read_to_end(&mut request).await.unwrap();
        socket
            .write_all(format!("got {} bytes", request.len()).as_bytes())
            .await
            .unwrap();
        socket.shutdown().await.unwrap();
    });
    let client = client(&pki, server);
    let entry = start_outbound(&client, app_addr).await;

    let mut socket = TcpStream::connect(entry).await.unwrap();
    socket.write_all(b"hello, half-closed world").await.unwrap();
    socket.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(DEADLINE, socket.read_to_string(&mut reply))
        .await
        .expect("reply after half-close")
        .unwrap();
    assert_eq!(reply, "got 24 bytes");
}

#[tokio::test]
async fn server_half_close_reaches_the_client_and_the_client_can_still_send() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    // An app that greets and half-closes at once, then reads everything the client sends.
    let app = listen().await;
    let app_addr = app.local_addr().unwrap();
    let (received_tx, received_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = app.accept().await.unwrap();
        let (mut read, mut write) = socket.into_split();
        write.write_all(b"bye from the server").await.unwrap();
        write.shutdown().await.unwrap();
        let mut request = Vec::new();
        read.read_to_end(&mut request).await.unwrap();
        let _ = received_tx.send(request);
    });
    let client = client(&pki, server);
    let entry = start_outbound(&client, app_addr).await;

    let mut socket = TcpStream::connect(entry).await.unwrap();
    let mut greeting = String::new();
    tokio::time::timeout(DEADLINE, socket.read_to_string(&mut greeting))
        .await
        .expect("EOF from the server side")
        .unwrap();
    assert_eq!(greeting, "bye from the server");
    // Our direction is still open.
    socket.write_all(b"still talking").await.unwrap();
    socket.shutdown().await.unwrap();
    let received = tokio::time::timeout(DEADLINE, received_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, b"still talking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_share_one_pooled_connection() {
    const STREAMS: usize = 100;
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let client = Arc::new(client(&pki, server));
    // Every tunnel stays open until all are established, so they are truly concurrent.
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let (client, barrier) = (client.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut tunnel = client
                .pool
                .connect(&client.key, echo, &TunnelHeaders::default())
                .await
                .unwrap();
            let message = format!("stream {i:03}").repeat(100);
            tunnel.write_all(message.as_bytes()).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            tunnel.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message.as_bytes());
            barrier.wait().await;
        }));
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    let stats = client.pool.stats();
    assert_eq!(stats.dials, 1, "{stats:?}");
    assert_eq!(stats.connections, 1, "{stats:?}");
}

#[tokio::test]
async fn a_full_connection_makes_the_pool_dial_another() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let settings = PoolSettings {
        max_streams_per_connection: 2,
        ..fast_pool_settings()
    };
    let client = client_with_settings(&pki, server, settings);
    let a = client.open(echo).await.unwrap();
    let _b = client.open(echo).await.unwrap();
    assert_eq!(client.pool.stats().dials, 1);
    let _c = client.open(echo).await.unwrap();
    assert_eq!(client.pool.stats().dials, 2);
    // A freed slot is reused rather than dialing again.
    drop(a);
    let _d = client.open(echo).await.unwrap();
    assert_eq!(client.pool.stats().dials, 2);
}

#[tokio::test]
async fn an_idle_connection_is_evicted() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let settings = PoolSettings {
        idle_timeout: Duration::from_millis(200),
        ..fast_pool_settings()
    };
    let client = client_with_settings(&pki, server, settings);
    let tunnel = client.open(echo).await.unwrap();
    assert_eq!(client.pool.stats().connections, 1);
    drop(tunnel);
    assert!(eventually(DEADLINE, || client.pool.stats().connections == 0).await);
    let _again = client.open(echo).await.unwrap();
    assert_eq!(client.pool.stats().dials, 2);
}

#[tokio::test]
async fn a_dead_peer_is_detected_and_the_pool_redials() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    let relay = Relay::start(server).await;
    let echo = start_echo().await;
    let client = client(&pki, relay.addr);

    let mut tunnel = client.open(echo).await.unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    tunnel.read_exact(&mut reply).await.unwrap();
    assert_eq!(client.pool.stats().connections, 1);

    // The peer hangs with the connection open; only keepalive can tell.
    relay.freeze_existing();
    assert!(
        eventually(DEADLINE, || client.pool.stats().connections == 0).await,
        "dead peer not detected: {:?}",
        client.pool.stats()
    );
    // The tunnel on the dead connection fails instead of hanging.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, tunnel.read(&mut buf))
        .await
        .unwrap();
    assert!(read.is_err() || read.is_ok_and(|n| n == 0));

    let mut fresh = client.open(echo).await.unwrap();
    fresh.write_all(b"pong").await.unwrap();
    fresh.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"pong");
    assert_eq!(client.pool.stats().dials, 2);
}

/// What every open tunnel carries in its task. These bounds keep idle memory per tunnel small
/// (the transport benchmark measures the whole: <= 4 KiB per idle tunneled connection).
#[tokio::test]
async fn per_tunnel_task_state_stays_small() {
    let pki = TestPki::new("cluster.local");
    let (server, _seen) = start_forwarding_server(&pki).await;
    let echo = start_echo().await;
    let client = client(&pki, server);

    let headers = TunnelHeaders::default();
    let connect = client.pool.connect(&client.key, echo, &headers);
    assert!(
        std::mem::size_of_val(&connect) <= 128,
        "pool.connect future is {} bytes: box what only setup needs",
        std::mem::size_of_val(&connect)
    );
    let tunnel = connect.await.unwrap();
    let mut socket = TcpStream::connect(echo).await.unwrap();
    let splice = ambit_hbone::splice_tcp_h2(&mut socket, tunnel);
    assert!(
        std::mem::size_of_val(&splice) <= 384,
        "splice future is {} bytes",
        std::mem::size_of_val(&splice)
    );
}

#[tokio::test]
async fn a_burst_to_a_hung_peer_shares_one_failed_dial() {
    const BURST: usize = 20;
    let pki = TestPki::new("cluster.local");
    // Accepts TCP and never answers the TLS handshake.
    let hung = listen().await;
    let hung_addr = hung.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            sockets.push(socket);
        }
    });
    let settings = PoolSettings {
        connect_timeout: Duration::from_millis(500),
        ..fast_pool_settings()
    };
    let client = Arc::new(client_with_settings(&pki, hung_addr, settings));
    let echo = start_echo().await;
    let mut tasks = Vec::new();
    for _ in 0..BURST {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.open(echo).await }));
    }
    // Serial redials would take BURST x 500 ms; shared failure takes one timeout.
    let all_failed = tokio::time::timeout(Duration::from_secs(4), async {
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
    })
    .await;
    assert!(
        all_failed.is_ok(),
        "the burst redialed the hung peer in turn"
    );
    assert_eq!(client.pool.stats().dials, 1);
    assert_eq!(client.pool.stats().connections, 0);
}

/// A node tunnel handing a pod over to a new one (docs/tunnel.md, "Upgrades"): the old server
/// stops accepting and says GOAWAY, and a new server accepts on the same listening socket. The
/// client's open tunnel goes on, and its next tunnel goes to the new server on a new connection.
#[tokio::test]
async fn a_server_going_away_moves_new_tunnels_to_its_successor() {
    let pki = TestPki::new("cluster.local");
    let echo = start_echo().await;
    let listener = listen().await.into_std().unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = |listener: std::net::TcpListener| {
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        let trust = pki.bundle();
        let tls = server_config(pki.handle(SERVER_NS, SERVER_SA), &trust).unwrap();
        let server = HboneServer::new(tls, &trust, ServerSettings::default(), Forward { seen });
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let accepting = tokio::spawn(server.clone().serve(listener));
        (server, accepting, requests)
    };
    let (old, old_accepting, _) = serve(listener.try_clone().unwrap());
    let client = client(&pki, addr);
    let entry = start_outbound(&client, echo).await;
    let round_trip = async |socket: &mut TcpStream, line: &[u8]| {
        socket.write_all(line).await.unwrap();
        let mut got = vec![0; line.len()];
        tokio::time::timeout(DEADLINE, socket.read_exact(&mut got))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!(got, line);
    };
    let mut held = TcpStream::connect(entry).await.unwrap();
    round_trip(&mut held, b"before").await;

    old_accepting.abort();
    old.go_away();
    let (_new, _new_accepting, mut at_new) = serve(listener);
    let mut next = TcpStream::connect(entry).await.unwrap();
    round_trip(&mut next, b"after").await;
    assert!(
        at_new.try_recv().is_ok(),
        "the new tunnel did not reach the new server"
    );
    assert_eq!(client.pool.stats().dials, 2);
    round_trip(&mut held, b"still").await;
}
