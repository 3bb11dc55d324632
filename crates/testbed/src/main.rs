//! `ambit-testbed up|down|status|env|agent`: see `--help` and `docs/testbed.md`.

use ambit_testbed::{Config, Testbed, config};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "ambit-testbed",
    version,
    about = "A local Kubernetes cluster for ambit: a real control plane, nodes in network namespaces",
    after_help = "See docs/testbed.md.",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// instance name, 1-8 of [a-z0-9]
    #[arg(long, global = true, default_value = config::DEFAULT_NAME)]
    name: String,
    /// instance id 1..=99, picks addresses and ports
    #[arg(long, global = true, default_value_t = config::DEFAULT_ID)]
    id: u8,
    /// node count for `up`
    #[arg(long, global = true, default_value_t = config::DEFAULT_NODES)]
    nodes: u8,
    /// map an image (without tag) to a binary; repeatable
    #[arg(long = "image", global = true, value_name = "IMAGE=PATH", value_parser = image_path)]
    images: Vec<(String, PathBuf)>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// start the control plane and N nodes (removes leftovers of an earlier run first)
    Up,
    /// stop everything and remove every netns, process and mount it made
    Down,
    /// what runs, and what the apiserver says about nodes and pods (exit 3: down)
    Status,
    /// print `export KUBECONFIG=...` for this testbed
    Env,
    /// the node agent; `up` starts one per node
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        node: u8,
    },
}

fn image_path(s: &str) -> Result<(String, PathBuf), String> {
    let (image, path) = s.split_once('=').ok_or("want IMAGE=PATH")?;
    Ok((image.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG").unwrap_or_else(|_| {
        // `up` polls the apiserver while it starts; kube-client logs every refused poll.
        if matches!(cli.command, Cmd::Agent { .. }) {
            "info"
        } else {
            "info,kube_client=off"
        }
        .into()
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    if let Cmd::Agent { state_dir, node } = &cli.command {
        ambit_testbed::node::run_agent(state_dir, *node).await?;
        return Ok(());
    }
    let mut cfg = Config::new(&cli.name, cli.id)?.with_nodes(cli.nodes)?;
    cfg.images.extend(cli.images);
    match cli.command {
        // Answered above.
        Cmd::Agent { .. } => {}
        Cmd::Up => {
            let tb = Testbed::new(cfg)?;
            let t = &tb.tools;
            println!(
                "ambit-testbed {}: kubernetes {}, etcd {}, helm {}",
                tb.config.name, t.kubernetes_version, t.etcd_version, t.helm_version
            );
            let start = Instant::now();
            tb.up().await?;
            println!(
                "up: {} nodes Ready in {:.1}s",
                tb.config.nodes,
                start.elapsed().as_secs_f64()
            );
            println!("export KUBECONFIG={}", tb.config.kubeconfig().display());
            println!("logs: {}", tb.config.log_dir().display());
        }
        Cmd::Down => {
            let tb = attach_or(cfg)?;
            let start = Instant::now();
            tb.down()?;
            println!(
                "down: {} cleaned up in {:.1}s",
                tb.config.name,
                start.elapsed().as_secs_f64()
            );
        }
        Cmd::Status => {
            let tb = attach_or(cfg)?;
            let st = tb.status().await;
            print!("{st}");
            if !st.is_up() {
                std::process::exit(if st.is_down() { 3 } else { 1 });
            }
        }
        Cmd::Env => {
            let tb = attach_or(cfg)?;
            println!("export KUBECONFIG={}", tb.config.kubeconfig().display());
        }
    }
    Ok(())
}

/// The saved config of a running instance if there is one, else the one from the flags.
fn attach_or(cfg: Config) -> Result<Testbed> {
    match Config::load(&cfg.state_dir) {
        Ok(saved) => Ok(Testbed::new(saved)?),
        Err(_) => Ok(Testbed::new(cfg)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_declaration_is_consistent() {
        Cli::command().debug_assert();
    }
}
