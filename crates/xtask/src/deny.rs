//! `cargo deny check` (deny.toml): licenses, bans (one version of each crate), sources, and
//! RustSec advisories when their database can be had.

use crate::cmd::{self, cargo, cargo_tool};
use anyhow::Result;
use std::process::Command;

const CARGO_DENY_VERSION: &str = "0.20.2";

pub fn run() -> Result<()> {
    let deny = cargo_tool("cargo-deny", CARGO_DENY_VERSION)?;
    // The checks run `--offline`, reading the whole dependency graph from the local registry:
    // every crate of the lockfile must be there, other platforms' too (windows-sys, ...), which
    // a build on this machine never downloads. crates.io is reachable where github.com is not.
    cmd::run(&mut cargo(["fetch", "--locked"]))?;
    let check = |args: &[&str]| {
        let mut command = Command::new(&deny);
        command
            .arg("deny")
            .args(args)
            .current_dir(cmd::workspace_root());
        cmd::run(&mut command)
    };
    // The advisory database is a git repository on github.com; `fetch` updates the copy
    // under $CARGO_HOME/advisory-dbs. Without it (no internet but the registries), a copy
    // fetched earlier still serves; with none at all, advisories are skipped, loudly.
    let fetched = check(&["fetch", "db"]).is_ok();
    if fetched || advisory_db_cached() {
        check(&["--offline", "check"])
    } else {
        eprintln!(
            "\n!!!!! the RustSec advisory database could not be fetched and none is cached: \
             advisories are not checked (docs/fuzzing.md says how to provide one) !!!!!\n"
        );
        check(&["--offline", "check", "licenses", "bans", "sources"])
    }
}

/// Whether an advisory database was fetched on this machine before.
fn advisory_db_cached() -> bool {
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(
        || std::env::home_dir().unwrap_or_default().join(".cargo"),
        std::path::PathBuf::from,
    );
    std::fs::read_dir(cargo_home.join("advisory-dbs"))
        .is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().join(".git").exists())))
}
