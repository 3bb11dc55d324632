//! `ambit-capture`: the capture agent and chained CNI plugin.
//!
//! - As a CNI plugin (`CNI_COMMAND` set): reads the network config on stdin, see `cni`.
//! - `ambit-capture agent [--socket PATH] [--state DIR] [--netns-dir DIR]
//!   [--cni-bin-dir DIR --cni-conf-dir DIR [--cni-tunnel-socket PATH] [--cni-state-dir DIR]]
//!   [--daemonset NAMESPACE/NAME] [--tick-ms N] [--probe-rules on|off]`: the node agent, see
//!   `agent`.
//! - `ambit-capture enroll --netns PATH --uid UID --name NAME --namespace NS [--socket PATH] [--state DIR]`:
//!   asks the tunnel and applies its answer (rules or none).
//! - `ambit-capture release --netns PATH --uid UID [--socket PATH] [--state DIR]`
//! - `ambit-capture check --netns PATH`

use ambit_capture::state::{self, PodRecord};
use ambit_capture::{agent, cni, pod, rules};
use ambit_handoff::DEFAULT_SOCKET;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

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
    let mut args = std::env::args().skip(1);
    let command = args
        .next()
        .context("usage: ambit-capture agent|enroll|release|check ...")?;
    let mut flags = HashMap::new();
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}");
        };
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        flags.insert(name.to_owned(), value);
    }
    if command == "agent" {
        let namespace = std::env::var(agent::ENV_NAMESPACE).ok();
        let config = agent::AgentConfig::parse(&flags, namespace.as_deref())?;
        agent::run(config)?;
        return Ok(());
    }
    let get = |name: &str| {
        flags
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    };
    let socket = PathBuf::from(flags.get("socket").map_or(DEFAULT_SOCKET, String::as_str));
    let state = PathBuf::from(
        flags
            .get("state")
            .map_or(state::DEFAULT_STATE_DIR, String::as_str),
    );
    let netns = PathBuf::from(get("netns")?);
    match command.as_str() {
        "enroll" => {
            let record = PodRecord {
                uid: get("uid")?,
                name: get("name")?,
                namespace: get("namespace")?,
                netns,
                captured: false,
            };
            if !pod::enroll(&state, &socket, &record)? {
                eprintln!(
                    "the tunnel says pod {} is not enrolled: no rules",
                    record.label()
                );
            }
        }
        "release" => {
            let uid = get("uid")?;
            let record = state::load(&state, &uid)?.unwrap_or(PodRecord {
                uid,
                name: String::new(),
                namespace: String::new(),
                netns: netns.clone(),
                captured: true,
            });
            pod::release(&state, &socket, &PodRecord { netns, ..record })?;
        }
        "check" => {
            if !rules::installed(&netns)? {
                bail!("capture rules missing in {}", netns.display());
            }
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}
