//! Hostile clients: any pod can get a certificate for its own service account, so the server's
//! bounds must hold against clients it has verified as well as ones that never finish a
//! handshake (issue 14 item 3). The tests run one at a time: one measures the process's memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure

mod support;

use ambit_hbone::{Dialer, HboneError, HboneServer, ServerBudget, ServerSettings, TunnelRefusals};
use ambit_identity::testing::TestPki;
use ambit_identity::{
    CertificateHandle, PeerIdentityError, client_config, peer_identity_error, server_config,
    server_name,
};
use bytes::Bytes;
use h2::client::SendRequest;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Held by each test for its whole run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

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
    let _alone = ONE_AT_A_TIME.lock().await;
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
    let _alone = ONE_AT_A_TIME.lock().await;
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

/// A TCP connection from `source` that never sends a byte.
async fn stall_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server has closed `stalled` (EOF or reset), within `wait`.
async fn closed_by_server(stalled: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stalled.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

const STALLED: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_handshakes_cannot_keep_a_client_out() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let settings = ServerSettings {
        // Fewer slots than stalled connections, and a timeout longer than the test's deadline:
        // without a handshake budget the flood holds every slot for the whole test.
        max_connections: 256,
        handshake_timeout: Duration::from_secs(30),
        max_handshakes: 64,
        max_handshakes_per_address: 8,
        ..Default::default()
    };
    let server = start_server_with(&pki, Forward { seen }, settings).await;
    let echo = start_echo().await;

    // Half the flood from one address: all but its 8 are closed at once.
    let one_address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut from_one = Vec::new();
    for _ in 0..STALLED / 2 {
        from_one.push(stall_from(one_address, server).await);
    }
    let mut still_open = 0;
    for stalled in &mut from_one {
        if !closed_by_server(stalled, Duration::from_millis(20)).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 8,
        "stalled handshakes left open from one address"
    );

    // The other half from 125 addresses, 8 each: within every per-address cap, over the
    // server's budget of 64, so the oldest stalled handshakes make way for new ones.
    let mut spread = Vec::new();
    for i in 0..STALLED / 2 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i / 8 + 1) as u8));
        spread.push(stall_from(source, server).await);
    }

    let started = Instant::now();
    echoes(&client(&pki, server), echo).await;
    let served_in = started.elapsed();
    eprintln!("served in {served_in:?} behind {STALLED} stalled handshakes");
    assert!(
        served_in < Duration::from_secs(2),
        "served in {served_in:?}"
    );
}

/// A socket that stops reading when told to: the client of a peer that never reads what it
/// asked for.
struct StopsReading {
    tcp: TcpStream,
    stopped: Arc<AtomicBool>,
}

impl AsyncRead for StopsReading {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stopped.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for StopsReading {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// This process's resident set, and its peak since [`reset_peak_rss`], in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// An HTTP/2 connection as `demo/<sa>` to `server` over `io`, driven in its own task.
async fn h2_as<IO>(
    pki: &TestPki,
    sa: &str,
    server: SocketAddr,
    io: IO,
    h2: &h2::client::Builder,
) -> SendRequest<Bytes>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = client_config(
        pki.handle("demo", sa),
        &pki.bundle(),
        vec![pki.id(SERVER_NS, SERVER_SA)],
    )
    .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name(server.ip()), io)
        .await
        .unwrap();
    let (send, connection) = h2.handshake::<_, Bytes>(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// A CONNECT to `target` on `send`: the server's answer and the stream, kept open while the
/// halves live.
async fn connect_raw(
    send: &mut SendRequest<Bytes>,
    target: SocketAddr,
) -> (http::StatusCode, h2::SendStream<Bytes>, h2::RecvStream) {
    std::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .unwrap();
    let request = http::Request::connect(target.to_string()).body(()).unwrap();
    let (response, stream) = send.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    (response.status(), stream, response.into_body())
}

/// A TCP app that, once a client has sent a byte, sends it data for as long as it takes it,
/// counting what it sent: a download.
async fn start_counting_source(sent: Arc<AtomicU64>) -> SocketAddr {
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1];
                if socket.read_exact(&mut request).await.is_err() {
                    return;
                }
                let chunk = vec![7u8; 16 * 1024];
                while socket.write_all(&chunk).await.is_ok() {
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

const UNREAD_STREAMS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_make_the_server_buffer_without_bound() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pki = TestPki::new("cluster.local");
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let settings = ServerSettings::default();
    let bound = settings.connection_memory_bound(UNREAD_STREAMS);
    let server = start_server_with(&pki, Forward { seen }, settings).await;
    let sent = Arc::new(AtomicU64::new(0));
    let source = start_counting_source(sent.clone()).await;

    // The attacker: the largest windows HTTP/2 allows, so only the server's own limits bound
    // what it queues for a client that does not read.
    let stopped = Arc::new(AtomicBool::new(false));
    let tcp = TcpStream::connect(server).await.unwrap();
    let io = StopsReading {
        tcp,
        stopped: stopped.clone(),
    };
    let mut h2 = h2::client::Builder::new();
    h2.initial_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32);
    let mut send = h2_as(&pki, "greedy", server, io, &h2).await;
    let mut streams = Vec::new();
    for _ in 0..UNREAD_STREAMS {
        let (status, stream, body) = connect_raw(&mut send, source).await;
        assert_eq!(status, http::StatusCode::OK);
        streams.push((stream, body));
    }
    let (baseline, _) = rss();
    reset_peak_rss();
    stopped.store(true, Ordering::Release);
    // Every stream asks for a download it will never read.
    for (stream, _) in &mut streams {
        stream.send_data(Bytes::from_static(b"?"), false).unwrap();
    }

    // The downloads stall once the server's buffers (and the kernel's) are full: wait until
    // the source has sent nothing more for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, Instant::now());
    loop {
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < deadline, "the downloads never stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Others are served meanwhile.
    echoes(&client(&pki, server), start_echo().await).await;
    let (_, peak) = rss();
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "sent {} MiB towards a client that reads nothing; RSS grew {} KiB, bound {} KiB",
        last.0 >> 20,
        grown >> 10,
        bound >> 10
    );
    assert!(
        last.0 >= (UNREAD_STREAMS * 64 * 1024) as u64,
        "the attack never got going"
    );
    // The bound is the server's; the source's and the other client's buffers come on top.
    let others = 4 * 1024 * 1024;
    assert!(
        grown <= bound + others,
        "RSS grew {} KiB, over the bound of {} KiB",
        grown >> 10,
        (bound + others) >> 10
    );
}

/// An HBONE server presenting `demo/server`, counted in `budget`.
async fn start_server_in(pki: &TestPki, budget: &ServerBudget) -> SocketAddr {
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let trust = pki.bundle();
    let tls = server_config(pki.handle(SERVER_NS, SERVER_SA), &trust).unwrap();
    let server = HboneServer::with_budget(tls, &trust, budget.clone(), Forward { seen });
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

#[tokio::test]
async fn servers_sharing_a_budget_share_its_tunnel_limit() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pki = TestPki::new("cluster.local");
    // Two pods' servers on one node.
    let budget = ServerBudget::new(ServerSettings {
        max_tunnels: 2,
        ..Default::default()
    });
    let (first, second) = (
        start_server_in(&pki, &budget).await,
        start_server_in(&pki, &budget).await,
    );
    let echo = start_echo().await;
    let (to_first, to_second) = (client(&pki, first), client(&pki, second));
    let mut held = vec![
        to_first.open(echo).await.unwrap(),
        to_first.open(echo).await.unwrap(),
    ];
    match to_second.open(echo).await {
        Err(HboneError::Refused { status, .. }) => {
            assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("a third tunnel on the node: {other:?}"),
    }
    // Counted, so an operator sees it.
    assert_eq!(
        budget.tunnel_refusals(),
        TunnelRefusals {
            peer_share: 0,
            node: 1
        }
    );
    // A closed tunnel gives its place back.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while to_second.open(echo).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed tunnel was never uncounted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 connection as `demo/<sa>` from `source`: one pod of that service account.
async fn h2_from(
    pki: &TestPki,
    sa: &str,
    source: IpAddr,
    server: SocketAddr,
) -> SendRequest<Bytes> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    h2_as(pki, sa, server, tcp, &h2::client::Builder::new()).await
}

/// Opens `attempts` tunnels to `target` on `send`; returns those the server opened (held open
/// while the returned streams live) and asserts it refused the rest with 503.
async fn open_many(
    send: &mut SendRequest<Bytes>,
    target: SocketAddr,
    attempts: usize,
) -> Vec<(h2::SendStream<Bytes>, h2::RecvStream)> {
    let mut opened = Vec::new();
    for _ in 0..attempts {
        match connect_raw(send, target).await {
            (http::StatusCode::OK, stream, body) => opened.push((stream, body)),
            (status, _, _) => assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE),
        }
    }
    opened
}

#[tokio::test]
async fn one_client_holds_at_most_its_share_of_the_tunnels() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pki = TestPki::new("cluster.local");
    const MAX_TUNNELS: usize = 12;
    const SHARE: usize = 4;
    let budget = ServerBudget::new(ServerSettings {
        max_tunnels: MAX_TUNNELS,
        max_tunnels_per_peer: SHARE,
        ..Default::default()
    });
    let server = start_server_in(&pki, &budget).await;
    let echo = start_echo().await;
    let pod = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // Two greedy pods each ask for every tunnel of the node, over two connections each: the
    // share counts the client, not its connection.
    let mut held = Vec::new();
    for sa in ["greedy-a", "greedy-b"] {
        let (mut first, mut second) = (
            h2_from(&pki, sa, pod, server).await,
            h2_from(&pki, sa, pod, server).await,
        );
        let mut opened = open_many(&mut first, echo, MAX_TUNNELS / 2).await;
        opened.extend(open_many(&mut second, echo, MAX_TUNNELS / 2).await);
        assert_eq!(opened.len(), SHARE, "tunnels opened by {sa}");
        held.push((first, opened));
    }
    assert_eq!(
        budget.tunnel_refusals(),
        TunnelRefusals {
            peer_share: 2 * (MAX_TUNNELS - SHARE) as u64,
            node: 0
        }
    );
    // A third client is still served, and so is another pod of a greedy service account (a
    // client is an identity at one address).
    echoes(&client(&pki, server), echo).await;
    let other_pod = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut same_sa_elsewhere = h2_from(&pki, "greedy-a", other_pod, server).await;
    let (status, _stream, _body) = connect_raw(&mut same_sa_elsewhere, echo).await;
    assert_eq!(status, http::StatusCode::OK, "another pod of greedy-a");

    // A closed tunnel gives its client its place back.
    let (send, opened) = &mut held[0];
    opened.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect_raw(send, echo).await.0 != http::StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the closed tunnel was never uncounted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection keeps its peer's chain for as long as it lives (to re-check it when the roots
/// change): a peer sending many certificates is refused at the handshake, on both sides.
const LONG_CHAIN: usize = 16;

/// The chain-size refusal inside a handshake error: the certificates the peer sent.
fn chain_refused(error: &HboneError) -> Option<usize> {
    let HboneError::Tls { source, .. } = error else {
        return None;
    };
    let tls = source.get_ref()?.downcast_ref::<rustls::Error>()?;
    match peer_identity_error(tls)? {
        PeerIdentityError::ChainTooLong { certificates, .. } => Some(*certificates),
        _ => None,
    }
}

/// A server presenting `certificate` that serves one connection and returns how it ended.
async fn serve_one(
    pki: &TestPki,
    certificate: CertificateHandle,
) -> (SocketAddr, JoinHandle<Result<(), HboneError>>) {
    let (seen, _requests) = tokio::sync::mpsc::unbounded_channel();
    let trust = pki.bundle();
    let tls = server_config(certificate, &trust).unwrap();
    let server = HboneServer::new(tls, &trust, ServerSettings::default(), Forward { seen });
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        server.serve_connection(tcp, peer).await
    });
    (addr, served)
}

#[tokio::test]
async fn peers_sending_long_chains_are_refused_at_the_handshake() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let pki = TestPki::new("cluster.local");
    let long = |leaf| vec![leaf; LONG_CHAIN];

    // A client: the server refuses it and says why.
    let (server, served) = serve_one(&pki, pki.handle(SERVER_NS, SERVER_SA)).await;
    // In TLS 1.3 the client's certificate follows the server's Finished: the dial may be done
    // before the refusal reaches the client, so the server's word is what counts.
    let _dialed = Dialer::new(pki.bundle(), fast_pool_settings())
        .dial(
            pki.handle_with_chain("demo", "attacker", long),
            server,
            vec![pki.id(SERVER_NS, SERVER_SA)],
        )
        .await;
    let refused = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .unwrap()
        .unwrap()
        .expect_err("the server took a long chain");
    assert_eq!(chain_refused(&refused), Some(LONG_CHAIN), "{refused}");
    assert!(
        refused.to_string().contains("at most 4 certificates"),
        "{refused}"
    );

    // A server: the pool refuses it.
    let (server, _served) =
        serve_one(&pki, pki.handle_with_chain(SERVER_NS, SERVER_SA, long)).await;
    let echo = start_echo().await;
    let refused = client(&pki, server)
        .open(echo)
        .await
        .expect_err("the pool took a long chain");
    assert_eq!(chain_refused(&refused), Some(LONG_CHAIN), "{refused}");
}
