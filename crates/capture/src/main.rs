//! `ambit-capture`: the capture agent and chained CNI plugin.
//!
//! - As a CNI plugin (`CNI_COMMAND` set): reads the network config on stdin, see `cni`.
//! - Otherwise a command, see `--help`: `agent` (the node agent, see `agent`), and `enroll`,
//!   `release`, `check` for one pod.

use ambit_capture::agent::{self, AgentArgs};
use ambit_capture::state::{self, PodRecord};
use ambit_capture::{cni, pod, rules};
use ambit_handoff::DEFAULT_SOCKET;
use anyhow::{Result, bail};
use clap::Parser;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "ambit-capture",
    version,
    about = "ambit's capture agent and chained CNI plugin",
    after_help = "Run with CNI_COMMAND set, it is the CNI plugin: the network config on stdin."
)]
enum Cli {
    /// the node agent: installs the CNI plugin, keeps pods' capture in step with the tunnel
    Agent(AgentArgs),
    /// ask the tunnel about a pod and apply its answer (rules or none)
    Enroll {
        #[command(flatten)]
        pod: PodArgs,
        /// the pod's name
        #[arg(long)]
        name: String,
        /// the pod's namespace
        #[arg(long)]
        namespace: String,
        /// set the pod's net.ipv4.tcp_tw_reuse to 1 if it is the kernel's default (as the agent)
        #[arg(long, value_enum, default_value_t = agent::Switch::On)]
        time_wait_reuse: agent::Switch,
    },
    /// remove a pod's capture and tell the tunnel
    Release {
        #[command(flatten)]
        pod: PodArgs,
    },
    /// fail unless the capture rules are in a network namespace
    Check {
        #[arg(long)]
        netns: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PodArgs {
    /// the pod's network namespace
    #[arg(long)]
    netns: PathBuf,
    /// the pod's uid
    #[arg(long)]
    uid: String,
    /// the tunnel's handoff socket
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// where the pods' records are kept
    #[arg(long, default_value = state::DEFAULT_STATE_DIR)]
    state: PathBuf,
}

fn main() -> Result<()> {
    if std::env::var_os("CNI_COMMAND").is_some() {
        let mut config = String::new();
        std::io::stdin().read_to_string(&mut config)?;
        let invocation = cni::Invocation::from_env();
        match cni::run(&invocation, &config) {
            Ok(out) => {
                print!("{out}");
                return Ok(());
            }
            Err(e) => {
                print!("{}", e.to_json(&cni::config_version(&config)));
                std::process::exit(1);
            }
        }
    }
    match Cli::parse() {
        Cli::Agent(args) => agent::run(args.into())?,
        Cli::Enroll {
            pod: p,
            name,
            namespace,
            time_wait_reuse,
        } => {
            let record = PodRecord {
                uid: p.uid,
                name,
                namespace,
                netns: p.netns,
                captured: false,
                time_wait_reuse: false,
            };
            let sysctls = pod::Sysctls::on_node(time_wait_reuse == agent::Switch::On);
            if !pod::enroll(&p.state, &p.socket, &record, &sysctls)? {
                eprintln!(
                    "the tunnel says pod {} is not enrolled: no rules",
                    record.label()
                );
            }
        }
        Cli::Release { pod: p } => {
            let record = state::load(&p.state, &p.uid)?.unwrap_or(PodRecord {
                uid: p.uid,
                name: String::new(),
                namespace: String::new(),
                netns: p.netns.clone(),
                captured: true,
                time_wait_reuse: false,
            });
            pod::release(
                &p.state,
                &p.socket,
                &PodRecord {
                    netns: p.netns,
                    ..record
                },
                Path::new(ambit_capture::netns::DEFAULT_PROC),
            )?;
        }
        Cli::Check { netns } => {
            if !rules::installed(&netns)? {
                bail!("capture rules missing in {}", netns.display());
            }
        }
    }
    Ok(())
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
