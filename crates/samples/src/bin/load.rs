//! `ambit-load ADDR --rate N --seconds S [--timeout SECS] [--max-in-flight M] [--keep-alive C]`
//!
//! Starts N requests a second to ADDR for S seconds (one line and its echo from
//! `ambit-echo-server`; each on a new connection, or with `--keep-alive C` in sequence on C
//! kept-alive connections), then prints one JSON report on stdout: requests, succeeded,
//! failed, the first failures with their time into the run, latency quantiles. Exits 0 whatever
//! the counts: judging them is the caller's job.

use anyhow::{Context, Result, bail};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut plan = ambit_samples::load::LoadPlan {
        addr: String::new(),
        rate: 0,
        duration: Duration::ZERO,
        timeout: Duration::from_secs(5),
        max_in_flight: 1024,
        connections: ambit_samples::load::Connections::PerRequest,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rate" => plan.rate = value()?.parse().context("--rate")?,
            "--seconds" => {
                plan.duration = Duration::from_secs(value()?.parse().context("--seconds")?)
            }
            "--timeout" => {
                plan.timeout = Duration::from_secs(value()?.parse().context("--timeout")?)
            }
            "--max-in-flight" => {
                plan.max_in_flight = value()?.parse().context("--max-in-flight")?
            }
            "--keep-alive" => {
                plan.connections = ambit_samples::load::Connections::KeepAlive(
                    value()?.parse().context("--keep-alive")?,
                )
            }
            _ if plan.addr.is_empty() => plan.addr = a,
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    if plan.addr.is_empty() || plan.rate == 0 || plan.duration.is_zero() {
        bail!(
            "usage: ambit-load ADDR --rate N --seconds S [--timeout SECS] [--max-in-flight M] [--keep-alive C]"
        );
    }
    let mut report = ambit_samples::load::run(&plan).await;
    println!("{}", report.to_json(plan.connections));
    Ok(())
}
