//! `cargo xtask test`: the README's test command and exactly what CI runs.

use crate::cmd::{self, cargo};
use anyhow::Result;

pub fn run() -> Result<()> {
    cmd::run(&mut cargo(["fmt", "--all", "--check"]))?;
    cmd::run(&mut cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Tier 3 (end to end over the testbed) needs etcd, Kubernetes, helm and the CNI plugins.
    crate::testbed::setup_for_tests()?;
    // Tier 1 (unit) and tier 2 (loopback integration over real TLS) live in each crate's tests;
    // tier 3 in crates/testbed/tests and tests/.
    cmd::run(&mut cargo(["test", "--workspace", "--locked"]))?;
    Ok(())
}
