//! `ambit-capture`: the capture agent and chained CNI plugin.
//!
//! - As a CNI plugin (`CNI_COMMAND` set): reads the network config on stdin, see `cni`.
//! - `ambit-capture enroll --netns PATH --uid UID --name NAME --namespace NS [--socket PATH]`
//! - `ambit-capture release --netns PATH --uid UID [--socket PATH]` (opt-out / delete)
//! - `ambit-capture check --netns PATH`
//! - `ambit-capture agent [--socket PATH] [--state DIR]`: hands every remembered pod to each
//!   new tunnel instance (enroll/release keep the records; so do CNI ADD/DEL).

use ambit_capture::{DEFAULT_SOCKET, agent, cni, handoff::Request, rules};
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
        .context("usage: ambit-capture enroll|release|check|agent ...")?;
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
            .map_or(agent::DEFAULT_STATE_DIR, String::as_str),
    );
    if command == "agent" {
        agent::run(&state, &socket, std::time::Duration::from_millis(200));
    }
    let netns = PathBuf::from(get("netns")?);
    match command.as_str() {
        "enroll" => {
            let record = agent::PodRecord {
                uid: get("uid")?,
                name: get("name")?,
                namespace: get("namespace")?,
                netns: netns.clone(),
            };
            cni::enroll(
                &netns,
                &socket,
                Request::Add {
                    uid: record.uid.clone(),
                    name: record.name.clone(),
                    namespace: record.namespace.clone(),
                },
            )?;
            agent::remember(&state, &record)?;
        }
        "release" => {
            let uid = get("uid")?;
            agent::forget(&state, &uid)?;
            cni::release(&netns, &socket, &uid)?;
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
