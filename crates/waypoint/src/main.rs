//! `ambit-waypoint`: see `--help`. Every flag has an environment variable.

use ambit_waypoint::{Args, Config};
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    // Before the log: `--help` and a usage error print as clap prints them.
    let args = Args::parse();
    ambit_telemetry::init_logs();
    let config = Config::from_args(args)?;
    // Two threads: a waypoint gets a fraction of a node; more workers only add wakeups.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(ambit_waypoint::run::run(config))?;
    Ok(())
}
