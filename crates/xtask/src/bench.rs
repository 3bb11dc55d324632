//! `cargo xtask bench NAME`: benchmarks run in release mode and print ratios against a
//! baseline measured in the same run.

use crate::cmd::{self, cargo};
use anyhow::{Result, bail};

const BENCHES: &[&str] = &["hbone"];

pub fn run(name: &str) -> Result<()> {
    if !BENCHES.contains(&name) {
        bail!("unknown benchmark {name:?}; known: {}", BENCHES.join(", "));
    }
    cmd::run(&mut cargo([
        "run",
        "--release",
        "--locked",
        "--package",
        "ambit-bench",
        "--",
        name,
    ]))
}
