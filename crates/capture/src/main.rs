//! `ambit-capture`: the capture agent and chained CNI plugin.
//!
//! - As a CNI plugin (`CNI_COMMAND` set): reads the network config on stdin, see `cni`.
//! - `ambit-capture enroll --netns PATH --uid UID --name NAME --namespace NS [--socket PATH]`
//! - `ambit-capture release --netns PATH --uid UID [--socket PATH]` (opt-out / delete)
//! - `ambit-capture check --netns PATH`

use ambit_capture::{DEFAULT_SOCKET, cni, handoff::Request, rules};
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
        .context("usage: ambit-capture enroll|release|check --netns PATH ...")?;
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
    let netns = PathBuf::from(get("netns")?);
    let socket = PathBuf::from(flags.get("socket").map_or(DEFAULT_SOCKET, String::as_str));
    match command.as_str() {
        "enroll" => cni::enroll(
            &netns,
            &socket,
            Request::Add {
                uid: get("uid")?,
                name: get("name")?,
                namespace: get("namespace")?,
            },
        )?,
        "release" => cni::release(&netns, &socket, &get("uid")?)?,
        "check" => {
            if !rules::installed(&netns)? {
                bail!("capture rules missing in {}", netns.display());
            }
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}
