//! `ambit-testbed up|down|status|env|agent`: see `docs/testbed.md`.

use ambit_testbed::{Config, Testbed, config};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::Instant;

const USAGE: &str = "\
usage: ambit-testbed <command> [options]

commands:
  up       start the control plane and N nodes (removes leftovers of an earlier run first)
  down     stop everything and remove every netns, process and mount it made
  status   what runs, and what the apiserver says about nodes and pods
  env      print `export KUBECONFIG=...` for this testbed
  agent    (internal) the node agent; `up` starts one per node

options:
  --name NAME       instance name, 1-8 of [a-z0-9] (default ambit)
  --id ID           instance id 1..=99, picks addresses and ports (default 1)
  --nodes N         node count for `up` (default 2)
  --image IMG=PATH  map an image (without tag) to a binary; repeatable
";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    let mut name = config::DEFAULT_NAME.to_owned();
    let mut id = config::DEFAULT_ID;
    let mut nodes = config::DEFAULT_NODES;
    let mut images = Vec::new();
    let mut state_dir: Option<PathBuf> = None;
    let mut node: Option<u8> = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--name" => name = val()?.clone(),
            "--id" => id = val()?.parse().context("--id")?,
            "--nodes" => nodes = val()?.parse().context("--nodes")?,
            "--image" => images.push(val()?.clone()),
            "--state-dir" => state_dir = Some(PathBuf::from(val()?)),
            "--node" => node = Some(val()?.parse().context("--node")?),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unknown option {a:?}\n{USAGE}"),
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMBIT_LOG").unwrap_or_else(|_| {
        // `up` polls the apiserver while it starts; kube-client logs every refused poll.
        if command == "agent" {
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

    if command == "agent" {
        let state_dir = state_dir.context("agent needs --state-dir")?;
        let node = node.context("agent needs --node")?;
        ambit_testbed::node::run_agent(&state_dir, node).await?;
        return Ok(());
    }

    let mut cfg = Config::new(&name, id)?.with_nodes(nodes)?;
    for m in images {
        let (image, path) = m
            .split_once('=')
            .with_context(|| format!("--image {m}: want IMAGE=PATH"))?;
        cfg.images.insert(image.to_owned(), PathBuf::from(path));
    }
    match command.as_str() {
        "up" => {
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
        "down" => {
            let tb = attach_or(cfg)?;
            let start = Instant::now();
            tb.down()?;
            println!(
                "down: {} cleaned up in {:.1}s",
                tb.config.name,
                start.elapsed().as_secs_f64()
            );
        }
        "status" => {
            let tb = attach_or(cfg)?;
            let st = tb.status().await;
            print!("{st}");
            if !st.is_up() {
                std::process::exit(if st.is_down() { 3 } else { 1 });
            }
        }
        "env" => {
            let tb = attach_or(cfg)?;
            println!("export KUBECONFIG={}", tb.config.kubeconfig().display());
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
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
