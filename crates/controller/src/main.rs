//! ambit-controller: thin shell over the library.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = ambit_controller::config::Config::from_env()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the apiserver")?;
    let running = ambit_controller::runtime::start(client, config).await?;
    running.wait().await;
    anyhow::bail!("a controller task ended")
}
