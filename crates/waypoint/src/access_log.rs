//! The access log: one JSON line per request on stderr. Lines are formatted on the request's
//! thread and written by a thread of their own, many per `write(2)`, so a stalled stderr (a
//! slow log pipe) never blocks a worker thread, as a `tracing` event written in place would: a
//! full queue drops lines and counts them. Written by hand rather than as `tracing` events
//! because those were 14% of the waypoint's CPU at saturation in a benchmark profile; the
//! benchmark showed no clear gain from this alone (within its noise), the bound is the reason.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer: at a few hundred bytes each, under 2 MiB.
const QUEUE: usize = 4096;
/// Lines per write at most.
const BATCH: usize = 256;
/// How long the writer lets lines gather after writing: the queue holds this long's lines
/// up to 400,000 a second.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// One request, as its line shows it.
#[derive(Debug, Serialize)]
pub struct RequestLine<'a> {
    pub src: &'a str,
    pub src_identity: &'a str,
    pub dst_identity: &'a str,
    pub dst_service: &'a str,
    pub authority: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub version: &'a str,
    pub code: &'a str,
    pub grpc_status: &'a str,
    pub duration_ms: f64,
    /// Whether the response streamed to its end (false: the client went away, or the
    /// upstream failed mid-body).
    pub complete: bool,
    pub trace_id: &'a str,
    pub span_id: &'a str,
}

/// What every line carries besides the request.
#[derive(Serialize)]
struct Envelope<'a> {
    /// Seconds since the Unix epoch.
    ts: f64,
    target: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    request: &'a RequestLine<'a>,
}

#[derive(Debug)]
pub struct AccessLog {
    queue: Option<mpsc::SyncSender<Vec<u8>>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Writes to stderr; `enabled: false` writes nothing.
    pub fn stderr(enabled: bool) -> Self {
        let queue = enabled
            .then(|| {
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || write_batches(&rx, &mut std::io::stderr()))
                    .ok()
                    .map(|_| tx)
            })
            .flatten();
        Self {
            queue,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn request(&self, line: &RequestLine<'_>) {
        let Some(queue) = &self.queue else { return };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut bytes = Vec::with_capacity(512);
        let envelope = Envelope {
            ts,
            target: "access",
            kind: "request",
            request: line,
        };
        if serde_json::to_writer(&mut bytes, &envelope).is_err() {
            return;
        }
        bytes.push(b'\n');
        if queue.try_send(bytes).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Until every sender is gone: waits for a line, writes it with what else is queued
/// ([`BATCH`] lines per write), then lets lines gather for [`FLUSH_INTERVAL`].
fn write_batches(rx: &mpsc::Receiver<Vec<u8>>, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut write = |batch: &mut Vec<u8>| {
        if !batch.is_empty() {
            // Nowhere to report a failing stderr; the next batch tries again.
            let _ = out.write_all(batch).and_then(|()| out.flush());
            batch.clear();
        }
    };
    while let Ok(first) = rx.recv() {
        batch.extend_from_slice(&first);
        for (taken, line) in (2..).zip(rx.try_iter()) {
            batch.extend_from_slice(&line);
            if taken % BATCH == 0 {
                write(&mut batch);
            }
        }
        write(&mut batch);
        // Lines gather in the queue meanwhile rather than each waking the writer: a sender
        // wakes a writer blocked in `recv` (a futex wake and two context switches on a busy
        // core), which every request paid when the writer waited for each line.
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line() -> RequestLine<'static> {
        RequestLine {
            src: "10.0.0.1:5000",
            src_identity: "spiffe://cluster.local/ns/a/sa/client",
            dst_identity: "spiffe://cluster.local/ns/b/sa/server",
            dst_service: "echo.b",
            authority: "echo.b.svc:80",
            method: "GET",
            path: "/a\"b",
            protocol: "http",
            version: "HTTP/1.1",
            code: "200",
            grpc_status: "",
            duration_ms: 1.5,
            complete: true,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: "00f067aa0ba902b7",
        }
    }

    #[test]
    fn lines_are_json_with_kind_request_and_written_in_batches() {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let log = AccessLog {
            queue: Some(tx),
            dropped: AtomicU64::new(0),
        };
        log.request(&line());
        log.request(&line());
        drop(log);
        let mut out = Vec::new();
        write_batches(&rx, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "request");
        assert_eq!(lines[0]["path"], "/a\"b", "escaped, not cut");
        assert_eq!(
            lines[0]["src_identity"],
            "spiffe://cluster.local/ns/a/sa/client"
        );
        assert!(lines[0]["ts"].as_f64().unwrap() > 1.7e9);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = AccessLog {
            queue: Some(tx),
            dropped: AtomicU64::new(0),
        };
        for _ in 0..3 {
            log.request(&line());
        }
        assert_eq!(log.dropped(), 2);
        let off = AccessLog::stderr(false);
        off.request(&line());
        assert_eq!(off.dropped(), 0);
    }
}
