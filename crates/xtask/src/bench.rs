//! `cargo xtask bench NAME`: benchmarks run in release mode and print ratios against a
//! baseline measured in the same run.

use crate::cmd::{self, cargo, workspace_root};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
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
    let machine = Machine::read();
    eprintln!("{}", machine.describe());
    // Network namespaces (nft, iproute2) and the testbed's binaries: the same installer as
    // `cargo xtask test`, so a benchmark runs on a fresh machine too.
    if matches!(
        name,
        "tunnel" | "tunnel-scale" | "soak" | "controller" | "leaf-rotation"
    ) {
        crate::testbed::setup()?;
    }
    run_bench(name)?;
    machine.record(&workspace_root().join(format!("target/ambit-bench/{name}.json")))
}

fn run_bench(name: &str) -> Result<()> {
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

/// What a benchmark's figures depend on beyond the code: how many CPUs, and how an idle CPU
/// waits. On a virtual machine whose idle vCPUs halt at once (`cpuidle-haltpoll` with
/// `guest_halt_poll_ns=0`, as on the development machines), every wakeup that crosses to the
/// other vCPU is an exit to the hypervisor, which roughly doubles the tunnels' CPU per request
/// (docs/performance.md, "The machine's idle vCPUs"); the JSON keeps the setting beside the figures.
struct Machine {
    cpus: usize,
    cpuidle_driver: Option<String>,
    guest_halt_poll_ns: Option<u64>,
}

impl Machine {
    fn read() -> Self {
        let text = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpuidle_driver: text("/sys/devices/system/cpu/cpuidle/current_driver"),
            guest_halt_poll_ns: text("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
                .and_then(|t| t.parse().ok()),
        }
    }

    fn describe(&self) -> String {
        let idle = match (&self.cpuidle_driver, self.guest_halt_poll_ns) {
            (Some(driver), Some(0)) => format!(
                "idle driver {driver}, guest halt polling OFF: each cross-vCPU wakeup exits to the hypervisor"
            ),
            (Some(driver), Some(ns)) => format!("idle driver {driver}, guest halt polling {ns} ns"),
            (Some(driver), None) => format!("idle driver {driver}"),
            (None, _) => "idle driver unknown".to_owned(),
        };
        format!("machine: {} CPUs; {idle}", self.cpus)
    }

    /// Adds `"machine"` to the benchmark's JSON object at `path`.
    fn record(&self, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut report: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let Value::Object(fields) = &mut report else {
            bail!("{} is not a JSON object", path.display());
        };
        fields.insert(
            "machine".to_owned(),
            json!({
                "cpus": self.cpus,
                "cpuidle_driver": self.cpuidle_driver,
                "guest_halt_poll_ns": self.guest_halt_poll_ns,
            }),
        );
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halting_vm() -> Machine {
        Machine {
            cpus: 2,
            cpuidle_driver: Some("haltpoll".to_owned()),
            guest_halt_poll_ns: Some(0),
        }
    }

    #[test]
    fn a_machine_whose_idle_vcpus_halt_at_once_is_named_so() {
        assert!(halting_vm().describe().contains("guest halt polling OFF"));
        let polling = Machine {
            guest_halt_poll_ns: Some(200_000),
            ..halting_vm()
        };
        assert!(polling.describe().contains("guest halt polling 200000 ns"));
    }

    #[test]
    fn the_machine_is_recorded_beside_the_figures_and_they_are_kept() {
        let path =
            std::env::temp_dir().join(format!("ambit-xtask-bench-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"throughput_ratio_vs_direct": 0.21}"#).unwrap();
        halting_vm().record(&path).unwrap();
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(report["throughput_ratio_vs_direct"], json!(0.21));
        assert_eq!(report["machine"]["guest_halt_poll_ns"], json!(0));
        assert_eq!(report["machine"]["cpus"], json!(2));
    }

    #[test]
    fn a_report_that_is_not_an_object_is_an_error() {
        let path = std::env::temp_dir().join(format!(
            "ambit-xtask-bench-list-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, "[1, 2]").unwrap();
        let error = halting_vm().record(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(error.to_string().contains("not a JSON object"), "{error:#}");
    }
}
