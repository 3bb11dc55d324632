//! A steady, open-loop load: requests started at a fixed rate whatever the answers do, each one
//! line waiting for its echo. Either each request is a new TCP connection, so every request
//! crosses the mesh's connection set-up (capture, a stream on an HBONE connection, the peer's
//! policy), or requests go in sequence over a fixed pool of kept-alive connections, as most
//! real clients send them. Bounded in count (rate x duration), in concurrency and in time.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// How many failures are kept word for word.
pub const ERRORS_KEPT: usize = 5;

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub addr: String,
    /// Requests started per second.
    pub rate: u32,
    pub duration: Duration,
    /// Per request, connection to echo.
    pub timeout: Duration,
    /// Requests in flight at most; one due while the bound is reached fails at once.
    pub max_in_flight: usize,
    pub connections: Connections,
}

/// How requests reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Each request on a new connection, closed after its echo.
    PerRequest,
    /// Requests in sequence on this many kept-alive connections: a request due is taken by
    /// the next connection free (it waits, in flight, while all are busy). A connection that
    /// fails a request is closed and replaced for the next one (a reconnect).
    KeepAlive(usize),
}

impl Connections {
    fn mode(self) -> &'static str {
        match self {
            Connections::PerRequest => "new_connection",
            Connections::KeepAlive(_) => "keep_alive",
        }
    }
}

/// What a load run saw. Latencies are of successful requests only.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The first [`ERRORS_KEPT`] failures: seconds into the run and why.
    pub errors: Vec<(f64, String)>,
    latencies_us: Vec<u64>,
    pub seconds: f64,
    /// Kept-alive connections opened again after one failed.
    pub reconnects: u64,
}

impl LoadReport {
    fn record(&mut self, at: Duration, outcome: Result<Duration, String>) {
        self.requests += 1;
        match outcome {
            Ok(latency) => {
                self.succeeded += 1;
                self.latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(why) => {
                self.failed += 1;
                if self.errors.len() < ERRORS_KEPT {
                    self.errors.push((at.as_secs_f64(), why));
                }
            }
        }
    }

    /// The `q` quantile (0..=1) of successful requests' latency, in milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let last = self.latencies_us.len() - 1;
        // Nearest rank; `q` is clamped to 0..=1 and the float-to-index cast saturates.
        let rank = (q.clamp(0.0, 1.0) * last as f64).round() as usize;
        self.latencies_us[rank.min(last)] as f64 / 1000.0
    }

    pub fn to_json(&mut self, connections: Connections) -> serde_json::Value {
        let pool = match connections {
            Connections::PerRequest => None,
            Connections::KeepAlive(n) => Some(n),
        };
        serde_json::json!({
            "mode": connections.mode(),
            "connections": pool,
            "reconnects": self.reconnects,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": self.errors.iter().map(|(at, why)| serde_json::json!({"at_s": at, "error": why})).collect::<Vec<_>>(),
            "seconds": self.seconds,
            "latency_ms": {
                "p50": self.latency_ms(0.5),
                "p99": self.latency_ms(0.99),
                "max": self.latency_ms(1.0),
            },
        })
    }
}

/// Runs `plan` to the end: every request due is started on time (or failed at once when
/// `max_in_flight` are pending), then the last ones get their timeout to finish.
pub async fn run(plan: &LoadPlan) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let in_flight = Arc::new(Semaphore::new(plan.max_in_flight));
    let total = u64::from(plan.rate) * plan.duration.as_secs();
    let period = Duration::from_secs(1) / plan.rate.max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Kept-alive connections take the requests due from one queue, bounded by `in_flight`.
    let queue = match plan.connections {
        Connections::PerRequest => None,
        Connections::KeepAlive(n) => {
            let (queue, requests) = mpsc::unbounded_channel();
            let requests = Arc::new(tokio::sync::Mutex::new(requests));
            for _ in 0..n.max(1) {
                tasks.spawn(kept_alive(
                    plan.clone(),
                    requests.clone(),
                    report.clone(),
                    start,
                ));
            }
            Some(queue)
        }
    };
    for i in 0..total {
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let why = format!(
                "{} requests in flight: the client falls behind",
                plan.max_in_flight
            );
            lock(&report).record(due - start, Err(why));
            continue;
        };
        let request = Due { i, due, permit };
        match &queue {
            // The workers outlive the queue: it cannot be closed here.
            Some(queue) => drop(queue.send(request)),
            None => {
                // Reap the finished ones so the set stays as small as what is in flight.
                while tasks.try_join_next().is_some() {}
                let (addr, timeout, report) = (plan.addr.clone(), plan.timeout, report.clone());
                tasks.spawn(async move {
                    let message = request.message();
                    let outcome = crate::exchange(&addr, &message, timeout).await;
                    request.record(&report, start, &message, outcome);
                });
            }
        }
    }
    // Closing the queue lets the kept-alive connections finish what is queued, then end.
    drop(queue);
    while tasks.join_next().await.is_some() {}
    let mut report = std::mem::take(&mut *lock(&report));
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// A request started: its number, when it was due, and its place among those in flight.
struct Due {
    i: u64,
    due: Instant,
    permit: OwnedSemaphorePermit,
}

impl Due {
    fn message(&self) -> String {
        format!("load-{}\n", self.i)
    }

    /// Records the request's outcome (`reply` to `message`), giving its place back; true when
    /// it succeeded.
    fn record(
        self,
        report: &Mutex<LoadReport>,
        start: Instant,
        message: &str,
        reply: std::io::Result<String>,
    ) -> bool {
        // Latency counts from when the request was due, not when it left: a client that
        // falls behind must show in the percentiles, not hide from them.
        let outcome = match reply {
            Ok(reply) if reply.ends_with(message) => Ok(self.due.elapsed()),
            Ok(reply) => Err(format!("unexpected reply {reply:?}")),
            Err(e) => Err(e.to_string()),
        };
        let ok = outcome.is_ok();
        lock(report).record(self.due - start, outcome);
        drop(self.permit);
        ok
    }
}

/// One kept-alive connection: takes the next request due, sends it, waits for its echo, and
/// so on until the queue is closed and empty. Connects on its first request, and again after
/// a failed one.
async fn kept_alive(
    plan: LoadPlan,
    requests: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Due>>>,
    report: Arc<Mutex<LoadReport>>,
    start: Instant,
) {
    let mut connection: Option<TcpStream> = None;
    let mut connected_before = false;
    loop {
        let Some(request) = requests.lock().await.recv().await else {
            return;
        };
        let message = request.message();
        let reconnect = connection.is_none() && connected_before;
        let reply = tokio::time::timeout(plan.timeout, async {
            let stream = match &mut connection {
                Some(stream) => stream,
                None => connection.insert(TcpStream::connect(&plan.addr).await?),
            };
            crate::echo(stream, &message).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {:?}", plan.timeout),
            ))
        });
        if connection.is_some() {
            connected_before = true;
            if reconnect {
                lock(&report).reconnects += 1;
            }
        }
        if !request.record(&report, start, &message, reply) {
            // Its state is unknown (a late echo may still come): start afresh.
            connection = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking request task cannot leave counters half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn counts_every_request_and_the_first_failures() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(crate::serve(listener, "pod-a".into()));
        let mut plan = LoadPlan {
            addr: addr.clone(),
            rate: 50,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            connections: Connections::PerRequest,
        };
        let mut report = run(&plan).await;
        assert_eq!(
            (report.requests, report.succeeded, report.failed),
            (50, 50, 0)
        );
        assert!(report.latency_ms(0.5) > 0.0 && report.latency_ms(0.5) <= report.latency_ms(1.0));
        // The same requests on three kept-alive connections.
        plan.connections = Connections::KeepAlive(3);
        let mut report = run(&plan).await;
        assert_eq!(
            (report.requests, report.succeeded, report.reconnects),
            (50, 50, 0)
        );
        let json = report.to_json(plan.connections);
        assert_eq!(
            (json["mode"].as_str(), json["connections"].as_u64()),
            (Some("keep_alive"), Some(3))
        );
        server.abort();
        let _ = server.await;
        // Nobody listens any more: every request fails, the first few are kept, both ways.
        for connections in [Connections::PerRequest, Connections::KeepAlive(3)] {
            plan.connections = connections;
            let mut report = run(&plan).await;
            assert_eq!((report.requests, report.failed), (50, 50));
            assert_eq!(report.errors.len(), ERRORS_KEPT);
            assert_eq!(report.to_json(connections)["failed"], 50);
        }
        Ok(())
    }
}
