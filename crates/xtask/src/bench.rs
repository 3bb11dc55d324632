//! `cargo xtask bench NAME`: benchmarks run in release mode and print ratios against a
//! baseline measured in the same run.

use crate::cmd::{self, cargo};
use anyhow::{Result, bail};

const BENCHES: &[&str] = &["hbone", "tunnel", "controller"];

pub fn run(name: &str) -> Result<()> {
    match name {
        "hbone" => cmd::run(&mut cargo([
            "run",
            "--release",
            "--locked",
            "--package",
            "ambit-bench",
            "--",
            name,
        ])),
        // The capture path needs network namespaces, which the tunnel's netns test harness
        // builds; the benchmark lives there as an ignored test (root).
        "tunnel" => cmd::run(&mut cargo([
            "test",
            "--release",
            "--locked",
            "--package",
            "ambit-tunnel",
            "--test",
            "netns",
            "--",
            "--ignored",
            "--nocapture",
            "--exact",
            "bench::bench_tunnel",
        ])),
        // Needs a real apiserver with 10,000 pods: an ignored test over the testbed (root).
        "controller" => cmd::run(&mut cargo([
            "test",
            "--release",
            "--locked",
            "--package",
            "ambit-controller",
            "--test",
            "scale_bench",
            "--",
            "--ignored",
            "--nocapture",
        ])),
        _ => bail!("unknown benchmark {name:?}; known: {}", BENCHES.join(", ")),
    }
}
