//! `cargo xtask testbed setup|up|down|status|env`: the local Kubernetes testbed
//! (`crates/testbed`, docs/testbed.md).

use crate::cmd::{self, cargo, workspace_root};
use anyhow::{Result, bail};
use std::process::Command;

/// Installs (or finds cached) etcd, Kubernetes, helm and the Debian packages the testbed runs
/// on. Warm, it does no network work and takes well under a second.
pub fn setup() -> Result<()> {
    let script = workspace_root().join("crates/testbed/setup.sh");
    cmd::run(Command::new("bash").arg(script))
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The setup step of `cargo xtask test`: required as root (CI), where the e2e tier runs;
/// without root the e2e tests skip loudly, so a failed setup only warns.
pub fn setup_for_tests() -> Result<()> {
    match setup() {
        Ok(()) => Ok(()),
        Err(e) if !is_root() => {
            eprintln!(
                "\n!!!!! testbed setup failed without root ({e:#}); the end-to-end tier will skip !!!!!\n"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `cargo xtask demo`: installs what the testbed needs, then runs `ambit-demo`
/// (crates/e2e), which brings the testbed up and walks the user's path.
pub fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo needs root: it creates network namespaces and a local control plane");
    }
    setup()?;
    cmd::run(&mut cargo(["build", "--workspace", "--bins"]))?;
    cmd::run(&mut Command::new(
        workspace_root().join("target/debug/ambit-demo"),
    ))
}

/// `cargo xtask testbed COMMAND [OPTIONS]`: builds what the command needs, then runs
/// `ambit-testbed COMMAND OPTIONS`.
pub fn run(command: &str, options: &[String]) -> Result<()> {
    match command {
        "setup" => return setup(),
        "up" => {
            setup()?;
            // Every workspace binary, so each ambit image maps to a current build.
            cmd::run(&mut cargo(["build", "--workspace", "--bins"]))?;
        }
        "down" | "status" | "env" => cmd::run(&mut cargo(["build", "-p", "ambit-testbed"]))?,
        other => bail!("unknown testbed command {other:?} (setup|up|down|status|env)"),
    }
    let bin = workspace_root().join("target/debug/ambit-testbed");
    let status = Command::new(bin).arg(command).args(options).status()?;
    match status.code() {
        Some(0) => Ok(()),
        // `status` answers "down" with exit code 3: an answer, not a failure to report.
        Some(code) if command == "status" => std::process::exit(code),
        _ => bail!("ambit-testbed {command} failed with {status}"),
    }
}
