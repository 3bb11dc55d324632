//! Hostile HTTP at the waypoint (issue 11, item 7). Every attack arrives the way a real one
//! would: from an authenticated client tunnel (a valid mesh certificate) over HBONE to a Service
//! VIP of the served account, then raw HTTP/1.1 bytes or hand-built HTTP/2 frames inside the
//! tunnel. The waypoint is the real binary as a child process, so its memory is what production
//! would show: each test resets the peak resident set (`VmHWM`) before the attack and bounds
//! its growth. Each also checks that another client (its own identity and HBONE connection) is
//! served after the attack, and during it where an attack lasts.
//!
//! Nets: `127.50.0.0/16` to `127.59.0.0/16` (the in-process tests use 31 to 40).

// The attack helpers panic on failure, like the fixtures in `support`.
#![allow(clippy::unwrap_used)]

mod support;

use ambit_identity::testing::TestPki;
use h2raw::{
    CONTINUATION, Conn, DATA, END_HEADERS, END_STREAM, Event, HEADERS, RST_STREAM, frame, literal,
    request,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much the waypoint's peak resident set may grow over its size before one attack.
const MEMORY_BOUND_KIB: u64 = 16 * 1024;

/// One pod of `shop/back` behind Service `back` (VIP `10.96.N.1`): port 80 is HTTP (HTTP/1.1
/// upstream, so HTTP/2 from a client is downgraded), 81 gRPC (HTTP/2 end to end), 70 TCP.
fn mesh(net: u8) -> String {
    format!(
        "workloads:\n{}services:\n{}",
        back_pods(net, 1),
        back_service(net, 1)
    )
}

/// A waypoint under attack: the child process, the app behind it (recording what reached it),
/// and a bystander client whose requests must keep being served.
struct Attack {
    pki: TestPki,
    waypoint: ChildWaypoint,
    app: AppLog,
    bystander: Client,
    net: u8,
    /// The waypoint's memory before the attack; its peak was reset to it.
    before: Memory,
    /// One attack at a time: floods from parallel tests on 2 cores starve each other's
    /// bystanders and turn bounds checks into scheduling races.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Attack {
    async fn start(net: u8, extra: &[&str]) -> Self {
        let serial = SERIAL.lock().await;
        let pki = TestPki::new("cluster.local");
        let app = recording_pod(&pki, ip(net, 11), SERVED_SA, "back-1").await;
        let waypoint = ChildWaypoint::start(&pki, net, &mesh(net), extra).await;
        let bystander = Client::new(&pki, NS, "bystander", waypoint.hbone_addr());
        // Replaced by the baseline once warm.
        let before = waypoint.memory();
        let mut attack = Self {
            pki,
            waypoint,
            app,
            bystander,
            net,
            before,
            _serial: serial,
        };
        // Warm up (upstream pool, TLS sessions) so the baseline is a serving waypoint's size.
        attack.served("before the attack").await;
        attack.baseline();
        attack
    }

    fn vip(&self, port: u16) -> String {
        format!("10.96.{}.1:{port}", self.net)
    }

    /// The attacker: an enrolled client of the mesh, with a valid certificate of `shop/front`.
    fn attacker(&self) -> Client {
        Client::new(&self.pki, NS, "front", self.waypoint.hbone_addr())
    }

    /// A normal request of the bystander on a new tunnel, answered by the app within 5 s;
    /// returns how long it took.
    async fn served(&self, when: &str) -> Duration {
        let started = Instant::now();
        let exchange = async {
            let mut http = self.bystander.http1(&self.vip(80)).await;
            text(http.send_request(get("/normal", "back")).await.unwrap()).await
        };
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .unwrap_or_else(|_| panic!("{when}: a normal request got no answer in 5 s"));
        assert_eq!(
            (status, body.as_str()),
            (200, "back-1 GET /normal"),
            "{when}"
        );
        started.elapsed()
    }

    /// Takes the waypoint's memory now as the baseline of the next attack, and resets its peak
    /// to it.
    fn baseline(&mut self) {
        assert!(
            self.waypoint.reset_peak(),
            "cannot reset the child's peak RSS"
        );
        self.before = self.waypoint.memory();
    }

    /// The bystander is still served after the attack (`when`), and the waypoint's peak stayed
    /// within the usual bound.
    async fn survived(&mut self, when: &str, attack: &str) {
        self.served(when).await;
        self.assert_bounded(attack, MEMORY_BOUND_KIB);
    }

    /// Normal requests of the bystander, one at a time while `done` is not set (100 at most):
    /// how many were served, and the slowest.
    async fn served_until(&self, done: &AtomicBool, when: &str) -> (u32, Duration) {
        let (mut served, mut slowest) = (0, Duration::ZERO);
        while !done.load(Ordering::Acquire) && served < 100 {
            slowest = slowest.max(self.served(when).await);
            served += 1;
        }
        (served, slowest)
    }

    /// Asserts the waypoint survived and its peak stayed within `bound_kib` of the baseline;
    /// returns the growth in KiB.
    fn assert_bounded(&mut self, attack: &str, bound_kib: u64) -> u64 {
        let before = self.before;
        assert!(
            self.waypoint.alive(),
            "{attack}: the waypoint died: {}",
            self.waypoint.log()
        );
        let after = self.waypoint.memory();
        let growth = after.peak_kib.saturating_sub(before.rss_kib);
        eprintln!(
            "{attack}: RSS {} KiB before, peak {} KiB during, {} KiB after: growth {growth} KiB (bound {bound_kib} KiB)",
            before.rss_kib, after.peak_kib, after.rss_kib
        );
        assert!(
            growth <= bound_kib,
            "{attack}: the waypoint's peak RSS grew by {growth} KiB (bound {bound_kib} KiB)"
        );
        growth
    }

    /// The requests that reached the app at `path`.
    fn app_saw(&self, path: &str) -> Vec<SeenRequest> {
        self.app
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Nothing smuggled reached the app, and nothing reached it with ambiguous framing.
    fn assert_app_saw_no_smuggling(&self) {
        let app = self.app.lock().unwrap();
        for r in app.iter() {
            assert!(!r.path.contains("smuggled"), "a smuggled request: {r:?}");
            assert!(
                r.content_length.is_empty() || r.transfer_encoding.is_empty(),
                "both Content-Length and Transfer-Encoding reached the app: {r:?}"
            );
            assert!(r.content_length.len() <= 1, "two Content-Lengths: {r:?}");
        }
    }
}

/// Reads until the waypoint ends the stream (EOF or reset) or `within` passes: what came back,
/// and whether it ended.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
        // An answer this long is not one the waypoint gives to these requests.
        if answer.len() > 1 << 20 {
            break false;
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// Writes `bytes` into a new tunnel to `target` and reads until the waypoint ends it (or 5 s).
/// A failed write is not an error: the waypoint may refuse before it has read everything.
async fn raw_http1(client: &Client, target: &str, bytes: &[u8]) -> (String, bool) {
    let mut stream = client.tunnel(target).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream, Duration::from_secs(5)).await
}

/// The status of every HTTP/1.1 response in `answer`.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("\r\n")
        .filter_map(|line| line.strip_prefix("HTTP/1.1 "))
        .filter_map(|rest| rest.get(..3)?.parse().ok())
        .collect()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: back\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// RFC 9112 §6.1 either way: 400, or Transfer-Encoding wins, Content-Length is removed and
    /// the connection is closed after the response.
    BadRequestOrTeWins,
    BadRequest,
    /// At most one response, then the connection is closed.
    Closed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_smuggling_with_conflicting_lengths_never_reaches_the_app() {
    let mut attack = Attack::start(50, &[]).await;
    let attacker = attack.attacker();
    let vip = attack.vip(80);
    let n = SMUGGLED.len();
    let chunked_smuggle = format!("{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n");
    let post = |path: &str, headers: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: back\r\n{headers}\r\n{body}")
    };
    let cases = [
        (
            "/cl-te",
            post(
                "/cl-te",
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{SMUGGLED}"),
            ),
            Expect::BadRequestOrTeWins,
        ),
        (
            "/te-cl",
            post(
                "/te-cl",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &format!("{chunked_smuggle}{SMUGGLED}"),
            ),
            Expect::BadRequestOrTeWins,
        ),
        (
            "/cl-cl",
            post(
                "/cl-cl",
                &format!("Content-Length: 0\r\nContent-Length: {n}\r\n"),
                &format!("{SMUGGLED}{SMUGGLED}"),
            ),
            Expect::BadRequest,
        ),
        (
            "/cl-list",
            post(
                "/cl-list",
                &format!("Content-Length: 0, {n}\r\n"),
                &format!("{SMUGGLED}{SMUGGLED}"),
            ),
            Expect::BadRequest,
        ),
        (
            "/cl-signed",
            post("/cl-signed", "Content-Length: +0\r\n", SMUGGLED),
            Expect::BadRequest,
        ),
        (
            "/te-not-last",
            post(
                "/te-not-last",
                "Transfer-Encoding: chunked, identity\r\nContent-Length: 0\r\n",
                &chunked_smuggle,
            ),
            Expect::BadRequest,
        ),
        (
            "/te-two-lines",
            post(
                "/te-two-lines",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &chunked_smuggle,
            ),
            Expect::BadRequest,
        ),
        (
            "/te-unknown",
            post(
                "/te-unknown",
                "Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n",
                &chunked_smuggle,
            ),
            Expect::BadRequest,
        ),
        (
            "/te-space",
            post(
                "/te-space",
                "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n",
                &chunked_smuggle,
            ),
            Expect::BadRequest,
        ),
        (
            "/te-folded",
            post(
                "/te-folded",
                "Content-Length: 0\r\nTransfer-Encoding:\r\n chunked\r\n",
                &chunked_smuggle,
            ),
            Expect::BadRequest,
        ),
        (
            "/te-http10",
            format!(
                "POST /te-http10 HTTP/1.0\r\nHost: back\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggle}"
            ),
            Expect::BadRequest,
        ),
        (
            "/chunk-overflow",
            post(
                "/chunk-overflow",
                "Transfer-Encoding: chunked\r\n",
                &format!("fffffffffffffffff1\r\n{SMUGGLED}\r\n0\r\n\r\n{SMUGGLED}"),
            ),
            Expect::Closed,
        ),
    ];
    for (path, bytes, expect) in cases {
        let (answer, closed) = raw_http1(&attacker, &vip, bytes.as_bytes()).await;
        let statuses = statuses(&answer);
        let seen = attack.app_saw(path);
        assert!(closed, "{path}: the connection was left open: {answer:?}");
        match expect {
            Expect::BadRequest => {
                assert_eq!(statuses, [400], "{path}: {answer:?}");
                assert!(seen.is_empty(), "{path} reached the app: {seen:?}");
            }
            Expect::BadRequestOrTeWins if statuses == [400] => {
                assert!(seen.is_empty(), "{path} reached the app: {seen:?}");
                eprintln!("{path}: 400");
            }
            Expect::BadRequestOrTeWins => {
                assert_eq!(statuses, [200], "{path}: {answer:?}");
                assert_eq!(seen.len(), 1, "{path}: {seen:?}");
                assert!(seen[0].content_length.is_empty(), "{path}: {seen:?}");
                let body = if path == "/cl-te" { "" } else { SMUGGLED };
                assert_eq!(
                    seen[0].body,
                    body.as_bytes(),
                    "{path}: the chunked body reached the app as a body"
                );
                eprintln!("{path}: Transfer-Encoding won, Content-Length removed, closed");
            }
            Expect::Closed => {
                assert!(statuses.len() <= 1, "{path}: {answer:?}");
                eprintln!("{path}: {statuses:?}, closed");
            }
        }
    }
    attack.assert_app_saw_no_smuggling();
    attack
        .survived("after the smuggling attempts", "HTTP/1.1 smuggling")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_that_would_smuggle_when_downgraded_are_refused() {
    let mut attack = Attack::start(51, &[]).await;
    let attacker = attack.attacker();
    // Port 80 is `http`: an HTTP/2 request goes upstream as HTTP/1.1, where a header or a
    // body smuggled through HTTP/2 framing would become a second request.
    let vip = attack.vip(80);
    let with = |method: &str, path: &str, fields: &[(&str, &[u8])]| {
        let mut block = request(method, path);
        for (name, value) in fields {
            block.extend(literal(name, value));
        }
        block
    };
    // Path, header block, and the body if there is one.
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>);
    let cases: [Case; 5] = [
        // RFC 9113 §8.2.2: connection-specific fields make a request malformed.
        (
            "/h2-te",
            with("POST", "/h2-te", &[("transfer-encoding", b"chunked")]),
            Some(format!("0\r\n\r\n{SMUGGLED}").into_bytes()),
        ),
        // §8.1.1: DATA past the content-length is malformed.
        (
            "/h2-cl",
            with("POST", "/h2-cl", &[("content-length", b"0")]),
            Some(SMUGGLED.as_bytes().to_vec()),
        ),
        // §8.2.1: CR, LF and NUL are never valid in a field value.
        (
            "/h2-crlf",
            with(
                "GET",
                "/h2-crlf",
                &[(
                    "x-inject",
                    b"a\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1",
                )],
            ),
            None,
        ),
        // A request line injected through `:path`.
        (
            "/h2-path",
            with(
                "GET",
                "/h2-path HTTP/1.1\r\nHost: back\r\n\r\nGET /smuggled",
                &[],
            ),
            None,
        ),
        // A field name that HTTP/1.1 would read differently.
        (
            "/h2-name",
            with("GET", "/h2-name", &[("x: y\r\ncontent-length", b"39")]),
            None,
        ),
    ];
    for (path, block, body) in cases {
        let mut h2 = Conn::open(&attacker, &vip).await;
        let flags = if body.is_some() {
            END_HEADERS
        } else {
            END_HEADERS | END_STREAM
        };
        h2.send(&frame(HEADERS, flags, 1, &block)).await.unwrap();
        if let Some(body) = body {
            let _ = h2.send(&frame(DATA, END_STREAM, 1, &body)).await;
        }
        let outcome = h2.outcome(1).await;
        eprintln!("{path}: {outcome:?}");
        match outcome {
            Event::Reset { .. } | Event::GoAway { .. } | Event::Closed => {}
            Event::Response {
                status: Some(400), ..
            } => {}
            // The head of `/h2-cl` is valid: it may be forwarded (with an empty body) before
            // the excess DATA arrives and resets the stream.
            Event::Response { .. } if path == "/h2-cl" => {
                for seen in attack.app_saw(path) {
                    assert!(seen.body.is_empty(), "{seen:?}");
                }
            }
            other => panic!("{path}: the waypoint accepted it: {other:?}"),
        }
        if path != "/h2-cl" {
            let seen = attack.app_saw(path);
            assert!(seen.is_empty(), "{path} reached the app: {seen:?}");
        }
    }
    // A clean HTTP/2 request is served on the same port.
    let mut h2 = Conn::open(&attacker, &vip).await;
    assert_eq!(
        h2.exchange(1, &request("GET", "/h2-clean")).await,
        Event::ok(1)
    );
    attack.assert_app_saw_no_smuggling();
    attack
        .survived(
            "after the HTTP/2 smuggling attempts",
            "HTTP/2 downgrade smuggling",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http1_headers_are_answered_431() {
    let mut attack = Attack::start(52, &[]).await;
    let attacker = attack.attacker();
    let vip = attack.vip(80);
    // One field past the 64 KiB head limit, and 101 small fields (the limit is 100).
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: back\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many = format!(
        "GET /many HTTP/1.1\r\nHost: back\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-F{i}: v\r\n"))
            .collect::<String>()
    );
    for (path, bytes) in [("/big", &big), ("/many", &many)] {
        let (answer, closed) = raw_http1(&attacker, &vip, bytes.as_bytes()).await;
        assert_eq!(statuses(&answer), [431], "{path}: {answer:?}");
        assert!(closed, "{path}: left open");
    }
    // Many at once from one client: each buffers at most the head limit.
    const FLOOD: usize = 256;
    const AT_ONCE: usize = 32;
    let started = Instant::now();
    for wave in 0..FLOOD / AT_ONCE {
        let answers = futures::future::join_all(
            (0..AT_ONCE).map(|_| raw_http1(&attacker, &vip, big.as_bytes())),
        )
        .await;
        for (answer, closed) in answers {
            assert_eq!(statuses(&answer), [431], "wave {wave}: {answer:?}");
            assert!(closed);
        }
    }
    eprintln!(
        "{FLOOD} oversized heads ({AT_ONCE} at once) answered 431 in {:?}",
        started.elapsed()
    );
    for path in ["/big", "/many"] {
        assert!(attack.app_saw(path).is_empty(), "{path} reached the app");
    }
    attack
        .survived("after the oversized heads", "oversized HTTP/1.1 heads")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http2_header_lists_are_refused_and_hpack_bombs_bounded() {
    let mut attack = Attack::start(53, &[]).await;
    let attacker = attack.attacker();
    for port in [80, 81] {
        let vip = attack.vip(port);
        // 80 KiB of fields in a HEADERS and CONTINUATIONs (the limit is 64 KiB).
        let mut h2 = Conn::open(&attacker, &vip).await;
        let mut block = request("GET", "/h2-big");
        for i in 0..20 {
            block.extend(literal(&format!("x-big-{i}"), &[b'a'; 4000]));
        }
        let mut chunks = block.chunks(h2raw::MAX_FRAME).peekable();
        let mut kind = HEADERS;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS | END_STREAM
            } else {
                0
            };
            h2.send(&frame(kind, flags, 1, chunk)).await.unwrap();
            kind = CONTINUATION;
        }
        let outcome = h2.outcome(1).await;
        eprintln!("port {port}: 80 KiB header list: {outcome:?}");
        assert!(
            matches!(
                outcome,
                Event::Response {
                    status: Some(431),
                    ..
                } | Event::Reset { .. }
            ),
            "port {port}: {outcome:?}"
        );
        // Refused alone: the connection serves the next request.
        assert_eq!(
            h2.exchange(3, &request("GET", "/h2-after-big")).await,
            Event::ok(3),
            "port {port}"
        );

        // HPACK bomb: one 4 KiB field put in the decoder's table by a valid request, then
        // streams of 21 bytes that each decode to 68 KiB by referring to it 17 times.
        let mut h2 = Conn::open(&attacker, &vip).await;
        let mut block = request("GET", "/h2-bomb-seed");
        block.extend(h2raw::remembered("x-bomb", &[b'b'; 4000]));
        assert_eq!(
            h2.exchange(1, &block).await,
            Event::ok(1),
            "port {port}: the seed is within the limit"
        );
        const BOMBS: u32 = 2_000;
        let mut bomb = request("GET", "/h2-bomb");
        // Index 62: the newest entry of the dynamic table.
        bomb.extend([0xbe; 17]);
        let mut batch = Vec::new();
        for k in 0..BOMBS {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3 + 2 * k, &bomb));
        }
        let _ = h2.send(&batch).await;
        let (mut refused, mut goaway) = (0u32, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while refused < BOMBS && goaway.is_none() && Instant::now() < deadline {
            match h2.next(Duration::from_secs(5)).await {
                Some(Event::Response { status, .. }) => {
                    assert_eq!(status, Some(431), "port {port}: a bomb was served");
                    refused += 1;
                }
                Some(Event::Reset { .. }) => refused += 1,
                Some(e @ Event::GoAway { .. }) => goaway = Some(e),
                Some(Event::Closed) | None => break,
            }
        }
        eprintln!("port {port}: HPACK bomb: {refused} of {BOMBS} streams refused, {goaway:?}");
        assert!(
            refused == BOMBS || goaway.is_some(),
            "port {port}: every bomb is refused or the connection is closed"
        );
        assert!(attack.app_saw("/h2-bomb").is_empty());
    }
    assert!(attack.app_saw("/h2-big").is_empty());
    attack
        .survived("after oversized HTTP/2 headers", "oversized HTTP/2 headers")
        .await;
}

/// Opens streams and cancels them at once on one connection, `BATCH` pairs per write, until
/// the waypoint sends GOAWAY (or `limit` streams or 10 s): the GOAWAY and how many streams
/// were written.
async fn rapid_reset(h2: &mut Conn, path: &str, limit: u32) -> (Option<Event>, u32) {
    const BATCH: u32 = 100;
    let block = request("GET", path);
    let started = Instant::now();
    let mut sent = 0u32;
    while sent < limit && started.elapsed() < Duration::from_secs(10) {
        let mut batch = Vec::new();
        for k in 0..BATCH {
            let id = 1 + 2 * (sent + k);
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            batch.extend(frame(RST_STREAM, 0, id, &h2raw::CANCEL.to_be_bytes()));
        }
        if h2.send(&batch).await.is_err() {
            break;
        }
        sent += BATCH;
        while let Some(event) = h2.try_next() {
            if matches!(event, Event::GoAway { .. } | Event::Closed) {
                return (Some(event), sent);
            }
        }
    }
    (h2.goaway(Duration::from_secs(5)).await, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_and_others_are_served_meanwhile() {
    let mut attack = Attack::start(54, &[]).await;
    let attacker = attack.attacker();
    // A real attacker reconnects after each GOAWAY: this one does it 100 times per port.
    const CONNECTIONS: usize = 100;
    const STREAMS_PER_CONNECTION: u32 = 10_000;
    for port in [80, 81] {
        let done = AtomicBool::new(false);
        let path = format!("/reset-{port}");
        let vip = attack.vip(port);
        let flood = async {
            let started = Instant::now();
            let (mut written, mut processed) = (0u32, 0u32);
            for connection in 0..CONNECTIONS {
                let mut h2 = Conn::open(&attacker, &vip).await;
                let (goaway, sent) = rapid_reset(&mut h2, &path, STREAMS_PER_CONNECTION).await;
                let Some(Event::GoAway {
                    last_stream, code, ..
                }) = goaway
                else {
                    panic!(
                        "port {port}: connection {connection}: the flood was not cut after {sent} streams: {goaway:?}"
                    );
                };
                assert_eq!(code, h2raw::ENHANCE_YOUR_CALM, "port {port}");
                // Streams the waypoint took before it said GOAWAY: about its pending-accept
                // reset limit (50).
                assert!(
                    last_stream < 2 * 200,
                    "port {port}: {last_stream} streams before GOAWAY"
                );
                assert!(
                    h2.closed(Duration::from_secs(5)).await,
                    "port {port}: not closed after GOAWAY"
                );
                written += sent;
                processed += last_stream.div_ceil(2);
            }
            done.store(true, Ordering::Release);
            (written, processed, started.elapsed())
        };
        let meanwhile = attack.served_until(&done, "during a rapid reset flood");
        let ((written, processed, took), (served, slowest)) = tokio::join!(flood, meanwhile);
        let reached = attack.app_saw(&path).len();
        eprintln!(
            "port {port}: rapid reset over {CONNECTIONS} connections in {took:?}: {written} streams written, {processed} taken before GOAWAY, {reached} reached the app; meanwhile {served} normal requests, slowest {slowest:?}"
        );
        assert!(
            served > 0,
            "port {port}: no request was served during the flood"
        );
        assert!(
            slowest < Duration::from_secs(2),
            "port {port}: a normal request took {slowest:?} during the flood"
        );
    }
    attack
        .survived("after the rapid reset floods", "HTTP/2 rapid reset")
        .await;
}

#[derive(Debug, Clone, Copy)]
enum Flood {
    /// Complete small fields in every CONTINUATION: the decoded list grows past the limit.
    SmallFields,
    /// One field whose value never ends: the decoder buffers, waiting for more.
    EndlessValue,
    /// Empty CONTINUATION frames: nothing to decode, only frames.
    Empty,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_floods_close_the_connection() {
    let mut attack = Attack::start(55, &[]).await;
    let attacker = attack.attacker();
    const FRAMES: usize = 10_000;
    for port in [80, 81] {
        for flood in [Flood::SmallFields, Flood::EndlessValue, Flood::Empty] {
            let mut h2 = Conn::open(&attacker, &attack.vip(port)).await;
            let mut first = request("GET", "/continuation");
            let payload = match flood {
                Flood::SmallFields => {
                    let field = literal("x-c", b"0123456789abcdef");
                    field.repeat(h2raw::MAX_FRAME / field.len())
                }
                Flood::EndlessValue => {
                    first.extend(h2raw::endless_literal("x-endless"));
                    vec![b'e'; h2raw::MAX_FRAME]
                }
                Flood::Empty => Vec::new(),
            };
            h2.send(&frame(HEADERS, 0, 1, &first)).await.unwrap();
            let continuation = frame(CONTINUATION, 0, 1, &payload);
            let started = Instant::now();
            let mut sent = 0;
            let mut end = None;
            while sent < FRAMES && started.elapsed() < Duration::from_secs(20) {
                if h2.send(&continuation).await.is_err() {
                    break;
                }
                sent += 1;
                if let Some(event) = h2.try_next() {
                    end = Some(event);
                    break;
                }
            }
            if end.is_none() {
                end = h2.goaway(Duration::from_secs(5)).await;
            }
            let closed = h2.closed(Duration::from_secs(5)).await;
            eprintln!(
                "port {port}: {flood:?}: {sent} CONTINUATION frames written ({} KiB) before {end:?}, closed: {closed}",
                sent * continuation.len() / 1024
            );
            assert!(
                matches!(end, Some(Event::GoAway { .. })),
                "port {port}: {flood:?}: no GOAWAY after {sent} frames: {end:?}"
            );
            assert!(closed, "port {port}: {flood:?}: the connection stayed open");
        }
    }
    assert!(attack.app_saw("/continuation").is_empty());
    attack
        .survived(
            "after the CONTINUATION floods",
            "HTTP/2 CONTINUATION floods",
        )
        .await;
}

/// The header read timeout the slowloris tests give the binary (production: 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const HEADER_TIMEOUT_FLAG: [&str; 2] = ["--http-header-read-timeout-ms", "1000"];

/// Opens a tunnel to `target`, writes `prefix`, then one byte of `trickle` every 100 ms until
/// the waypoint ends the tunnel or `trickle` runs out; returns how long after the tunnel opened
/// it was ended (None if it never was) and the answer.
async fn slowloris(
    client: &Client,
    target: &str,
    prefix: &[u8],
    trickle: &[u8],
) -> (Option<Duration>, String) {
    let stream = client.tunnel(target).await.unwrap();
    let opened = Instant::now();
    let (mut read, mut write) = tokio::io::split(stream);
    let window = Duration::from_millis(100) * (trickle.len() as u32 + 1) + Duration::from_secs(1);
    let reader = tokio::spawn(async move {
        let (answer, closed) = read_until_closed(&mut read, window).await;
        (closed.then(|| opened.elapsed()), answer)
    });
    let _ = write.write_all(prefix).await;
    for byte in trickle {
        if reader.is_finished() {
            break;
        }
        // Pacing of the attack, not synchronization: the reader decides the outcome.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if write.write_all(&[*byte]).await.is_err() {
            break;
        }
    }
    let result = reader.await.unwrap();
    drop(write);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_after_the_header_read_timeout() {
    let mut attack = Attack::start(56, &HEADER_TIMEOUT_FLAG).await;
    let attacker = attack.attacker();
    let vip = attack.vip(80);
    let trickle = [b'a'; 100];
    let preface = h2raw::preface();
    let cases: [(&str, &[u8], &[u8]); 3] = [
        (
            "HTTP/1.1 headers trickled",
            b"GET /slowloris HTTP/1.1\r\nHost: back\r\nX-Slow: ",
            &trickle,
        ),
        ("nothing at all", b"", b""),
        ("the HTTP/2 preface trickled", b"", &preface[..20]),
    ];
    for (what, prefix, bytes) in cases {
        let (cut, answer) = slowloris(&attacker, &vip, prefix, bytes).await;
        eprintln!("{what}: cut after {cut:?}; answer {answer:?}");
        let cut = cut.unwrap_or_else(|| panic!("{what}: never cut"));
        assert!(
            cut >= HEADER_TIMEOUT.mul_f32(0.8) && cut < HEADER_TIMEOUT * 3,
            "{what}: cut after {cut:?}, the timeout is {HEADER_TIMEOUT:?}"
        );
    }
    // An HTTP/2 request whose HEADERS never end: GOAWAY at the timeout, and as this client
    // does not go (nor answer the GOAWAY's PING), the tunnel is cut one timeout later.
    for port in [80, 81] {
        let mut h2 = Conn::open(&attacker, &attack.vip(port)).await;
        let opened = Instant::now();
        h2.send(&frame(HEADERS, 0, 1, &request("GET", "/slow-h2")))
            .await
            .unwrap();
        let goaway = h2.goaway(HEADER_TIMEOUT * 3).await;
        let at = opened.elapsed();
        assert!(
            matches!(goaway, Some(Event::GoAway { .. })),
            "port {port}: {goaway:?}"
        );
        assert!(
            h2.closed(HEADER_TIMEOUT * 3).await,
            "port {port}: never cut"
        );
        let cut = opened.elapsed();
        eprintln!(
            "HTTP/2 HEADERS never ended (port {port}): {goaway:?} after {at:?}, cut after {cut:?}"
        );
        assert!(
            at >= HEADER_TIMEOUT.mul_f32(0.8) && at < HEADER_TIMEOUT * 2,
            "port {port}: GOAWAY after {at:?}"
        );
        assert!(cut < HEADER_TIMEOUT * 4, "port {port}: cut after {cut:?}");
    }
    // A keep-alive connection idle after its request is cut the same way.
    let mut stream = attacker.tunnel(&vip).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: back\r\n\r\n")
        .await
        .unwrap();
    let opened = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, HEADER_TIMEOUT * 3).await;
    assert_eq!(statuses(&answer), [200], "{answer:?}");
    assert!(closed, "an idle keep-alive connection was kept");
    eprintln!("idle keep-alive: cut after {:?}", opened.elapsed());

    // Many at once from one client, while another is served.
    const AT_ONCE: usize = 200;
    let done = AtomicBool::new(false);
    let flood = async {
        let cuts = futures::future::join_all((0..AT_ONCE).map(|_| {
            slowloris(
                &attacker,
                &vip,
                b"GET /slowloris HTTP/1.1\r\nHost: back\r\nX-Slow: ",
                &trickle,
            )
        }))
        .await;
        done.store(true, Ordering::Release);
        cuts
    };
    let meanwhile = attack.served_until(&done, "during a slowloris flood");
    let (cuts, (served, _)) = tokio::join!(flood, meanwhile);
    let slowest = cuts
        .iter()
        .map(|(cut, _)| cut.unwrap_or(Duration::MAX))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{AT_ONCE} slowloris tunnels at once: all cut within {slowest:?}; {served} normal requests served meanwhile"
    );
    assert!(
        slowest < HEADER_TIMEOUT * 4,
        "a slowloris tunnel was cut only after {slowest:?}"
    );
    assert!(attack.app_saw("/slowloris").is_empty());
    assert!(attack.app_saw("/slow-h2").is_empty());
    attack
        .survived("after the slowloris flood", "slowloris")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_from_one_peer_are_bounded() {
    // Long enough to open them all before the first is cut.
    let mut attack = Attack::start(57, &["--http-header-read-timeout-ms", "3000"]).await;
    let attacker = attack.attacker();
    // One client holds at most its share of the waypoint's tunnels (a pod: its identity at
    // its address); the HBONE server answers 503 past it.
    let share = ambit_hbone::ServerSettings::default().max_tunnels_per_peer;
    // Idle HTTP tunnels: each costs the waypoint a little, and each is cut after the header
    // read timeout when no request comes.
    let http_idle = share;
    let vip = attack.vip(80);
    let opened = Instant::now();
    let mut tunnels =
        futures::future::join_all((0..http_idle).map(|_| attacker.tunnel(&vip))).await;
    eprintln!(
        "{http_idle} idle HTTP tunnels opened in {:?}",
        opened.elapsed()
    );
    let peak = attack.waypoint.memory();
    let cut = futures::future::join_all(tunnels.iter_mut().map(|t| async move {
        let stream = t.as_mut().unwrap();
        read_until_closed(stream, Duration::from_secs(10)).await.1
    }))
    .await;
    let cut = cut.iter().filter(|c| **c).count();
    eprintln!(
        "{http_idle} idle HTTP tunnels: {} KiB of peak, {cut} cut within {:?}",
        peak.peak_kib.saturating_sub(attack.before.rss_kib),
        opened.elapsed()
    );
    assert_eq!(cut, http_idle, "idle HTTP tunnels were kept");
    drop(tunnels);
    attack.assert_bounded("idle HTTP tunnels", MEMORY_BOUND_KIB);

    // Idle TCP tunnels live as long as the client wants (a TCP connection may idle); what bounds
    // them is the HBONE server: the client's share of its tunnels, on one connection (whose own
    // limit, 1024 streams, is above the share).
    attack.baseline();
    let greedy = Client {
        pool: ambit_hbone::HbonePool::new(
            ambit_hbone::Dialer::new(
                attack.pki.bundle(),
                ambit_hbone::PoolSettings {
                    max_streams_per_connection: 4096,
                    ..Default::default()
                },
            ),
            std::sync::Arc::new(std::collections::HashMap::from([(
                attack.pki.id(NS, "front"),
                attack.pki.handle(NS, "front"),
            )])),
        ),
        key: attacker.key.clone(),
    };
    let tcp = attack.vip(70);
    let tcp_idle = share;
    let mut tunnels = Vec::with_capacity(tcp_idle);
    // The HTTP tunnels' places come back as the waypoint reads their resets.
    tunnels.push(
        tunnel_once_free(&greedy, &tcp)
            .await
            .expect("the closed HTTP tunnels' places never came back"),
    );
    for chunk in 0..tcp_idle.div_ceil(128) {
        let batch = 128.min(tcp_idle - tunnels.len());
        let opened = futures::future::join_all((0..batch).map(|_| greedy.tunnel(&tcp))).await;
        for t in opened {
            tunnels.push(t.unwrap_or_else(|e| panic!("tunnel in chunk {chunk}: {e}")));
        }
    }
    let extra = tokio::time::timeout(Duration::from_secs(5), greedy.tunnel(&tcp)).await;
    assert!(
        matches!(extra, Ok(Err(_))),
        "a tunnel past the client's share was not refused"
    );
    assert_eq!(greedy.pool.stats().connections, 1);
    attack
        .served(&format!("with {tcp_idle} idle TCP tunnels open"))
        .await;
    let growth = attack.assert_bounded("idle TCP tunnels", 2 * MEMORY_BOUND_KIB);
    eprintln!(
        "idle TCP tunnel: {} KiB each (with its upstream tunnel)",
        growth / tcp_idle as u64
    );
    // One closed, one more fits.
    let mut one = tunnels.pop().unwrap();
    one.shutdown().await.unwrap();
    drop(one);
    tunnel_once_free(&greedy, &tcp)
        .await
        .expect("a place freed by a closed tunnel was not reused");
}

/// A tunnel from `client` to `target`, asked again while refused for up to 10 s: a closed
/// tunnel's place comes back once the waypoint has read its end.
async fn tunnel_once_free(
    client: &Client,
    target: &str,
) -> Result<ambit_hbone::H2Stream, ambit_hbone::HboneError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.tunnel(target).await {
            Err(e) if Instant::now() < deadline => {
                eprintln!("tunnel to {target} refused, asking again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return answer,
        }
    }
}

/// Raw HTTP/2 as an attacker writes it: frames built by hand, HPACK literals without Huffman
/// coding, and just enough decoding of the answers (`:status`, RST_STREAM, GOAWAY).
mod h2raw {
    use super::Client;
    use ambit_hbone::H2Stream;
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
    use tokio::sync::mpsc;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
    pub const ACK: u8 = 0x1;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// The largest frame payload a peer must accept before its SETTINGS say more.
    pub const MAX_FRAME: usize = 16_384;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        assert!(len < 1 << 24);
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The client's start: the magic; SETTINGS that let the server keep no HPACK table for us
    /// (so a `:status` reads without one) and give big windows (so answers never wait for a
    /// WINDOW_UPDATE we would not send); the ACK of the server's SETTINGS, which a server
    /// sends first; and a big connection window.
    pub fn preface() -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut settings = Vec::new();
        for (id, value) in [(0x1u16, 0u32), (0x4, 1 << 30)] {
            settings.extend(id.to_be_bytes());
            settings.extend(value.to_be_bytes());
        }
        out.extend(frame(SETTINGS, 0, 0, &settings));
        out.extend(frame(SETTINGS, ACK, 0, &[]));
        out.extend(frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        out
    }

    /// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1).
    fn int(value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
        let max = (1usize << prefix) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        int(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }

    /// A field the server's decoder does not remember (literal without indexing, new name).
    pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x00];
        string(name.as_bytes(), &mut out);
        string(value, &mut out);
        out
    }

    /// A field the server's decoder adds to its table (literal with incremental indexing).
    pub fn remembered(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        string(name.as_bytes(), &mut out);
        string(value, &mut out);
        out
    }

    /// The start of a field whose value says it is 1 GiB long: its bytes follow in frames.
    pub fn endless_literal(name: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        string(name.as_bytes(), &mut out);
        int(1 << 30, 7, 0, &mut out);
        out
    }

    /// A request's pseudo-headers: `:method` and `:path` as literals of static names 2 and 4,
    /// `:scheme: http` (static 6), `:authority: back`.
    pub fn request(method: &str, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        int(2, 4, 0x00, &mut out);
        string(method.as_bytes(), &mut out);
        out.push(0x86);
        int(4, 4, 0x00, &mut out);
        string(path.as_bytes(), &mut out);
        int(1, 4, 0x00, &mut out);
        string(b"back", &mut out);
        out
    }

    /// The `:status` of a response's header block, from a server that keeps no HPACK table
    /// for us (see [`preface`]): the first field, indexed (static 8 to 14) or a literal of
    /// name 8, after any table size updates.
    pub fn status(block: &[u8]) -> Option<u16> {
        let mut i = 0;
        while block.get(i)? & 0xe0 == 0x20 {
            // A table size update; ours is 0, one byte.
            i += 1;
        }
        let b = block[i];
        if b & 0x80 != 0 {
            return [200, 204, 206, 304, 400, 404, 500]
                .get(usize::from(b & 0x7f).checked_sub(8)?)
                .copied();
        }
        let name = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
        if name != 8 || (b & 0xc0 != 0x40 && b & 0xe0 != 0x00) {
            return None;
        }
        let head = *block.get(i + 1)?;
        let value = block.get(i + 2..i + 2 + usize::from(head & 0x7f))?;
        let text = if head & 0x80 != 0 {
            huffman_digits(value)
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        text.parse().ok()
    }

    /// Huffman-coded digits, all a status has (RFC 7541 Appendix B: '0' to '2' are the 5-bit
    /// codes 00000 to 00010, '3' to '9' the 6-bit 011001 to 011111); stops at the padding.
    fn huffman_digits(coded: &[u8]) -> String {
        let bits = coded.len() * 8;
        let bit = |n: usize| (coded[n / 8] >> (7 - n % 8)) & 1;
        let take = |from: usize, n: usize| (from..from + n).fold(0u8, |v, k| v << 1 | bit(k));
        let mut out = String::new();
        let mut at = 0;
        while at + 5 <= bits {
            let five = take(at, 5);
            if five <= 2 {
                out.push(char::from(b'0' + five));
                at += 5;
                continue;
            }
            if at + 6 > bits {
                break;
            }
            let six = take(at, 6);
            if !(25..=31).contains(&six) {
                break;
            }
            out.push(char::from(b'0' + six - 22));
            at += 6;
        }
        out
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Event {
        Response {
            stream: u32,
            status: Option<u16>,
        },
        Reset {
            stream: u32,
            code: u32,
        },
        GoAway {
            last_stream: u32,
            code: u32,
            debug: String,
        },
        Closed,
    }

    impl Event {
        /// A `200` on `stream`.
        pub fn ok(stream: u32) -> Self {
            Self::Response {
                stream,
                status: Some(200),
            }
        }
    }

    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
        let mut head = [0u8; 9];
        r.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    fn u32_at(payload: &[u8], at: usize) -> u32 {
        payload
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn event(frame: Frame) -> Option<Event> {
        let p = &frame.payload;
        Some(match frame.kind {
            HEADERS => {
                let mut block = &p[..];
                if frame.flags & PADDED != 0 {
                    let pad = usize::from(*block.first()?);
                    block = block.get(1..block.len().checked_sub(pad)?)?;
                }
                if frame.flags & PRIORITY != 0 {
                    block = block.get(5..)?;
                }
                Event::Response {
                    stream: frame.stream,
                    status: status(block),
                }
            }
            RST_STREAM => Event::Reset {
                stream: frame.stream,
                code: u32_at(p, 0),
            },
            GOAWAY => Event::GoAway {
                last_stream: u32_at(p, 0) & 0x7fff_ffff,
                code: u32_at(p, 4),
                debug: String::from_utf8_lossy(p.get(8..).unwrap_or_default()).into_owned(),
            },
            _ => return None,
        })
    }

    /// One client HTTP/2 connection inside an HBONE tunnel: the test writes frames, a task
    /// reads the server's and reports what matters.
    pub struct Conn {
        write: WriteHalf<H2Stream>,
        events: mpsc::UnboundedReceiver<Event>,
    }

    impl Conn {
        pub async fn open(client: &Client, target: &str) -> Self {
            let stream = client.tunnel(target).await.unwrap();
            let (mut read, write) = tokio::io::split(stream);
            let (tx, events) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(frame) = read_frame(&mut read).await {
                    if let Some(event) = event(frame)
                        && tx.send(event).is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send(Event::Closed);
            });
            let mut conn = Self { write, events };
            conn.send(&preface()).await.unwrap();
            conn
        }

        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.write.write_all(bytes).await
        }

        /// The next event within `within`; None if none came.
        pub async fn next(&mut self, within: Duration) -> Option<Event> {
            tokio::time::timeout(within, self.events.recv())
                .await
                .ok()
                .flatten()
        }

        pub fn try_next(&mut self) -> Option<Event> {
            self.events.try_recv().ok()
        }

        /// Sends a request without a body (its header `block`, one HEADERS frame) on `stream`:
        /// what became of it.
        pub async fn exchange(&mut self, stream: u32, block: &[u8]) -> Event {
            self.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
                .await
                .unwrap();
            self.outcome(stream).await
        }

        /// What became of `stream` (5 s at most): its response or reset, or the connection's
        /// end when that came first.
        pub async fn outcome(&mut self, stream: u32) -> Event {
            loop {
                let event = self
                    .next(Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|| panic!("no outcome for stream {stream} in 5 s"));
                match &event {
                    Event::Response { stream: s, .. } | Event::Reset { stream: s, .. }
                        if *s == stream =>
                    {
                        return event;
                    }
                    Event::GoAway { last_stream, .. } if *last_stream < stream => return event,
                    Event::Closed => return event,
                    _ => {}
                }
            }
        }

        /// The GOAWAY (or the end) that comes within `within`, skipping other events.
        pub async fn goaway(&mut self, within: Duration) -> Option<Event> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let event = tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .ok()??;
                if matches!(event, Event::GoAway { .. } | Event::Closed) {
                    return Some(event);
                }
            }
        }

        /// Whether the server ends the connection within `within`.
        pub async fn closed(&mut self, within: Duration) -> bool {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => return false,
                    Ok(None | Some(Event::Closed)) => return true,
                    Ok(Some(_)) => {}
                }
            }
        }
    }
}
