//! The HTTP load tool: h2load (Debian `nghttp2-client`), HTTP/1.1 keep-alive or HTTP/2 prior
//! knowledge, run for a bounded time at full speed or at a fixed rate, pinned to a CPU set.

use crate::process::{Process, command};
use anyhow::{Context, Result, bail, ensure};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request at a time per connection.
    Http1,
    /// HTTP/2 prior knowledge (h2c), several streams per connection.
    H2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2 => "h2",
        }
    }
}

/// One h2load run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub protocol: Protocol,
    pub connections: u32,
    /// Requests in flight per connection (HTTP/2 streams; HTTP/1.1 is always 1).
    pub streams: u32,
    pub duration: Duration,
    /// Requests per second of each connection, evenly spaced (see [`paced`]); full speed
    /// when `None`.
    pub rate_per_connection: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests completed, all answered 2xx.
    pub ok: u64,
    pub rps: f64,
    /// Per-request latencies (h2load's log: from the start to the end of each response).
    pub latencies: Vec<Duration>,
}

/// Runs `load` against `url` from `cpus`, each request with `headers` (`name: value`), calling
/// `during` about every 200 ms while it runs (to sample the processes under test). Fails if any
/// request failed or was not a 2xx.
pub fn run(
    url: &str,
    headers: &[String],
    load: &Load,
    cpus: &str,
    log_file: &Path,
    mut during: impl FnMut() -> Result<()>,
) -> Result<Outcome> {
    // h2load appends to its log: without this, a run would read every earlier run's
    // latencies too, and after a saturation run its own would drown in those.
    match std::fs::remove_file(log_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", log_file.display()));
        }
        _ => {}
    }
    let mut h2load = command("h2load", Some(cpus));
    h2load
        .args(["--threads", "1"])
        .arg(format!("--clients={}", load.connections))
        .arg(format!("--max-concurrent-streams={}", load.streams))
        .arg("--log-file")
        .arg(log_file)
        .args(headers.iter().flat_map(|h| ["--header", h.as_str()]))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if load.protocol == Protocol::Http1 {
        h2load.arg("--h1");
    }
    match load.rate_per_connection {
        Some(rate) => {
            let script = log_file.with_extension("timing");
            std::fs::write(&script, paced(url, rate, load.duration))
                .with_context(|| format!("writing {}", script.display()))?;
            h2load.arg("--timing-script-file").arg(script);
        }
        None => {
            h2load.arg(format!("--duration={}ms", load.duration.as_millis()));
        }
    }
    let mut process = Process::spawn("h2load", &mut h2load)?;
    // Output is small (a summary), so the pipes cannot fill while it runs.
    let output = loop {
        if let Some(output) = process.finish_if_exited()? {
            break output;
        }
        during()?;
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "h2load {url} failed ({}): {text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = Summary::parse(&text).with_context(|| format!("h2load output: {text}"))?;
    ensure!(
        summary.failed == 0 && summary.not_ok == 0 && summary.succeeded > 0,
        "h2load {url}: {} succeeded, {} failed, {} answers not 2xx\n{text}",
        summary.succeeded,
        summary.failed,
        summary.not_ok
    );
    let latencies = read_latencies(log_file)?;
    ensure!(
        latencies.len() as u64 == summary.succeeded,
        "h2load's log {} holds {} requests, its summary says {} succeeded",
        log_file.display(),
        latencies.len(),
        summary.succeeded
    );
    Ok(Outcome {
        ok: summary.succeeded,
        rps: summary.rps,
        latencies,
    })
}

/// h2load's timing script for `rate` requests per second over `duration`, one request each
/// `1 / rate`: each line is an offset from the start (ms) and the URL.
///
/// Not `--rps`: h2load wakes its rate timer at most every 10 ms (`max(0.01, 1 / rps)`) and
/// then sends every request due at once, so 1,000 rps arrives as bursts of 10. Each burst
/// queues in the proxies and the last of it waits for the nine before: over HTTP/2 (all ten
/// in flight together) the latency measured the burst's queue rather than the path, and over
/// HTTP/1.1 the ten went back to back, each timed from when it was sent, not when it was due.
/// A timing script schedules each request on its own timer. libev rounds each wait up to
/// the next millisecond, so at 1,000 rps requests leave ~1.2 ms apart (~800 rps, reported as
/// achieved); each run reports what it achieved.
fn paced(url: &str, rate: u32, duration: Duration) -> String {
    let interval_ms = 1e3 / f64::from(rate.max(1));
    let requests = (duration.as_secs_f64() * f64::from(rate)).ceil().max(1.0) as u64;
    (0..requests)
        .map(|i| format!("{:.3}\t{url}\n", i as f64 * interval_ms))
        .collect()
}

/// What the summary h2load prints says.
#[derive(Debug, PartialEq)]
struct Summary {
    rps: f64,
    succeeded: u64,
    failed: u64,
    /// Answers other than 2xx.
    not_ok: u64,
}

impl Summary {
    fn parse(text: &str) -> Result<Self> {
        // "finished in 5.00s, 12345.60 req/s, 13.20MB/s"
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("finished in "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|v| v.strip_suffix(" req/s"))
            .and_then(|v| v.parse().ok())
            .context("no req/s")?;
        // "requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 1 errored, 0 timeout"
        let count = |line: &str, what: &str| -> Result<u64> {
            let line = text
                .lines()
                .find(|l| l.starts_with(line))
                .with_context(|| format!("no {line:?} line"))?;
            line.split([':', ','])
                .find_map(|part| part.trim().strip_suffix(what))
                .and_then(|n| n.trim().parse().ok())
                .with_context(|| format!("no {what:?} in {line:?}"))
        };
        Ok(Self {
            rps,
            succeeded: count("requests:", " succeeded")?,
            failed: count("requests:", " failed")?,
            not_ok: ["3xx", "4xx", "5xx"]
                .iter()
                .map(|class| count("status codes:", &format!(" {class}")))
                .sum::<Result<u64>>()?,
        })
    }
}

/// h2load's `--log-file`: one line per request, tab-separated: start (µs since the epoch),
/// status, microseconds until the end of the response.
fn read_latencies(path: &Path) -> Result<Vec<Duration>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading h2load's log {}", path.display()))?;
    let mut latencies = Vec::new();
    for line in text.lines() {
        let Some(us) = line.split('\t').nth(2).and_then(|v| v.trim().parse().ok()) else {
            bail!("bad line in h2load's log: {line:?}");
        };
        latencies.push(Duration::from_micros(us));
    }
    ensure!(!latencies.is_empty(), "h2load logged no request");
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_summary() {
        let text = "starting benchmark...\n\
            finished in 5.00s, 12345.60 req/s, 13.20MB/s\n\
            requests: 61728 total, 61730 started, 61728 done, 61727 succeeded, 1 failed, 1 errored, 0 timeout\n\
            status codes: 61727 2xx, 0 3xx, 0 4xx, 1 5xx\n";
        assert_eq!(
            Summary::parse(text).unwrap(),
            Summary {
                rps: 12345.6,
                succeeded: 61727,
                failed: 1,
                not_ok: 1
            }
        );
        assert!(Summary::parse("finished in 1s").is_err());
    }

    /// An HTTP/1.1 keep-alive server answering every request `200 ok`; its port.
    fn ok_server() -> u16 {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if writer.write_all(answer).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        port
    }

    /// Each run's latencies are its own: h2load appends to its log file, so a second run
    /// into the same file read both runs' before `run` removed it first.
    #[test]
    fn each_run_reads_only_its_own_latencies() {
        if command("h2load", None).arg("--version").output().is_err() {
            eprintln!(
                "\n!!!!! SKIPPED each_run_reads_only_its_own_latencies: no h2load (apt-get install nghttp2-client) !!!!!\n"
            );
            return;
        }
        let url = format!("http://127.0.0.1:{}/", ok_server());
        let log =
            std::env::temp_dir().join(format!("ambit-h2load-test-{}.log", std::process::id()));
        let load = Load {
            protocol: Protocol::Http1,
            connections: 1,
            streams: 1,
            duration: Duration::from_millis(300),
            rate_per_connection: Some(200),
        };
        for _ in 0..2 {
            let outcome = run(&url, &[], &load, "0", &log, || Ok(())).unwrap();
            assert!(outcome.ok > 10, "{outcome:?}");
            assert_eq!(outcome.latencies.len() as u64, outcome.ok);
        }
        let _ = std::fs::remove_file(&log);
    }
}
