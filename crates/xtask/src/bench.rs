//! `cargo xtask bench NAME`: benchmarks run in release mode and print ratios against a
//! baseline measured in the same run.

use crate::cmd::{self, cargo, workspace_root};
use anyhow::{Result, bail};
use std::process::Command;

pub const BENCHES: &[&str] = &[
    "hbone",
    "waypoint",
    "tunnel",
    "tunnel-scale",
    "soak",
    "controller",
    "route",
    "leaf-rotation",
];

pub fn run(name: &str) -> Result<()> {
    match name {
        // In-process: hbone starts its own tunnels, route times lookups in one thread.
        "hbone" | "route" => bench_binary(name),
        // Runs ambit-waypoint as a process of its own, from the same target directory; its
        // ext_authz variant asks Istio's ext_authz sample, built (or found cached) by setup.sh.
        "waypoint" => {
            let setup = workspace_root().join("crates/testbed/setup.sh");
            cmd::run(Command::new("bash").arg(setup).arg("istio-extauthz"))?;
            cmd::run(&mut cargo([
                "build",
                "--release",
                "--locked",
                "--package",
                "ambit-waypoint",
            ]))?;
            bench_binary(name)
        }
        // The capture path needs network namespaces, which the tunnel's netns test harness
        // builds; the benchmark lives there as an ignored test (root).
        "tunnel" => ignored_test("ambit-tunnel", "netns", "bench::bench_tunnel"),
        "tunnel-scale" => ignored_test("ambit-tunnel", "netns", "scale::bench_tunnel_scale"),
        // Minutes of connections and churn through one tunnel: a test target of its own.
        "soak" => ignored_test("ambit-tunnel", "soak", "bench_soak"),
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
        // Mesh traffic across nodes while leaves rotate: the user's path on a testbed.
        "leaf-rotation" => ignored_test("ambit-e2e", "leaf_rotation", "bench_leaf_rotation"),
        _ => bail!("unknown benchmark {name:?}; known: {}", BENCHES.join(", ")),
    }
}

/// One ignored test, `test` of `package`'s test target `target`, in release mode.
fn ignored_test(package: &str, target: &str, test: &str) -> Result<()> {
    cmd::run(&mut cargo([
        "test",
        "--release",
        "--locked",
        "--package",
        package,
        "--test",
        target,
        "--",
        "--ignored",
        "--nocapture",
        "--exact",
        test,
    ]))
}

/// A benchmark of the `ambit-bench` binary.
fn bench_binary(name: &str) -> Result<()> {
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
