//! ambit-controller: thin shell over the library; see `--help` (every flag has an environment
//! variable, which is how the chart sets them).

use ambit_controller::config::{Args, Config};
use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before the log: `--help` and a usage error print as clap prints them.
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::from_args(args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the apiserver")?;
    let running = ambit_controller::runtime::start(client, config).await?;
    running.wait().await;
    anyhow::bail!("a controller task ended")
}
