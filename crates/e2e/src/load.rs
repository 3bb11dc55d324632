//! Steady load between mesh pods, for reliability tests and benchmarks: `ambit-load`
//! (crates/samples) runs inside a pod's network namespace, as the pod's app would, so each
//! request is captured there and crosses the tunnels like any other: one line and its echo from
//! `ambit-echo-server`, on a new connection to the target (a Service's address picks an
//! endpoint, on another node if it is there) or in sequence on a few kept-alive ones. Open loop at a fixed rate, bounded in count (rate x
//! duration), in requests in flight and in time; it reports its counts, its first failures and
//! latency when done.

use crate::Testbed;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// A request not answered within this long fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond this many pending requests a due one fails at once (the client is behind).
pub const MAX_IN_FLIGHT: usize = 1024;

/// What `ambit-load` reported.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The first failures: seconds into the run and why.
    pub errors: Vec<String>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Kept-alive connections opened again after one failed.
    pub reconnects: u64,
    /// The whole report as printed, for a benchmark's JSON.
    pub json: serde_json::Value,
}

impl LoadReport {
    fn parse(stdout: &str) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("ambit-load printed no report: {stdout:?}"))?;
        let count = |key: &str| {
            json[key]
                .as_u64()
                .with_context(|| format!("no {key} in {json}"))
        };
        let ms = |q: &str| json["latency_ms"][q].as_f64().unwrap_or_default();
        Ok(Self {
            requests: count("requests")?,
            succeeded: count("succeeded")?,
            failed: count("failed")?,
            errors: json["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("at {}s: {}", e["at_s"], e["error"]))
                .collect(),
            p50_ms: ms("p50"),
            p99_ms: ms("p99"),
            max_ms: ms("max"),
            reconnects: json["reconnects"].as_u64().unwrap_or_default(),
            json,
        })
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} ok, {} failed, {} reconnects; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.requests,
            self.succeeded,
            self.failed,
            self.reconnects,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A load running in the background; [`SteadyLoad::finish`] collects its report.
#[derive(Debug)]
pub struct SteadyLoad {
    child: Child,
    deadline: Instant,
}

impl SteadyLoad {
    /// Starts `rate` requests a second from inside `from` to `to` for `duration`, each on a new
    /// connection.
    pub fn start(
        tb: &Testbed,
        from: &Pod,
        to: SocketAddr,
        rate: u32,
        duration: Duration,
    ) -> Result<Self> {
        Self::start_with(tb, from, to, rate, duration, None)
    }

    /// As [`SteadyLoad::start`]; with `keep_alive` `Some(n)`, the requests go in sequence on
    /// `n` kept-alive connections instead (`ambit-load --keep-alive`).
    pub fn start_with(
        tb: &Testbed,
        from: &Pod,
        to: SocketAddr,
        rate: u32,
        duration: Duration,
        keep_alive: Option<usize>,
    ) -> Result<Self> {
        let program = tb
            .binary("ambit-load")
            .context("ambit-load is not built (crates/samples)")?;
        let mut args = vec![
            to.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            duration.as_secs().to_string(),
            "--timeout".into(),
            REQUEST_TIMEOUT.as_secs().to_string(),
            "--max-in-flight".into(),
            MAX_IN_FLIGHT.to_string(),
        ];
        if let Some(n) = keep_alive {
            args.extend(["--keep-alive".into(), n.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = tb
            .pod_exec(from, &program.display().to_string(), &args)
            .context("the load's pod has no netns")?
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ambit-load")?;
        Ok(Self {
            child,
            // The last requests get their timeout; the margin is for a busy machine.
            deadline: Instant::now() + duration + REQUEST_TIMEOUT + Duration::from_secs(30),
        })
    }

    /// Waits for the load to end (killed past its deadline) and reads its report.
    pub async fn finish(mut self) -> Result<LoadReport> {
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("ambit-load ran past its deadline and was killed");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The report is one short line, left in the pipe when the process exited.
        let status = self.child.wait()?;
        let mut stdout = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout)?;
        }
        if !status.success() {
            bail!("ambit-load failed ({status})");
        }
        LoadReport::parse(&stdout)
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        // A test that fails while the load runs leaves no load behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
