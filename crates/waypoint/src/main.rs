//! `ambit-waypoint`: see `--help`. Every flag has an environment variable.

use ambit_waypoint::{Args, Config};
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_args(Args::parse())?;
    // Two threads: a waypoint gets a fraction of a node; more workers only add wakeups.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(ambit_waypoint::run::run(config))?;
    Ok(())
}
