//! `cargo xtask test`: the README's test command and exactly what CI runs.

use crate::cmd::{self, cargo};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    // Dependencies: licenses, one version of each crate, sources, advisories (deny.toml).
    crate::deny::run()?;
    // Tier 3 (end to end over the testbed) needs etcd, Kubernetes, helm and the CNI plugins.
    crate::testbed::setup_for_tests()?;
    // Tier 1 (unit) and tier 2 (loopback integration over real TLS) live in each crate's tests;
    // tier 3 in crates/testbed/tests and tests/.
    let totals = run_counting(&mut cargo(["test", "--workspace", "--locked"]))?;
    // cargo prints one summary per test binary, the last often a doc-test run of zero tests;
    // this line is the whole suite's.
    println!(
        "\nambit: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || totals.passed == 0 {
        bail!("the test suite did not pass");
    }
    // Fuzzing: every target for a bounded time (6 targets x 20 s); a crash fails the run and
    // its input becomes a regression test (docs/fuzzing.md).
    crate::fuzz::run(None, crate::fuzz::SECONDS_IN_TESTS)?;
    // Tier 4: Gateway API's own conformance suite (MESH-HTTP, MESH-GRPC), unmodified, on a
    // testbed of its own; what it leaves out and why is in docs/conformance/README.md.
    if crate::testbed::is_root() {
        crate::conformance::run_for_tests()?;
    } else {
        eprintln!("\n!!!!! not root: Gateway API's conformance suite is skipped !!!!!\n");
    }
    Ok(())
}

/// Test counts summed over every `test result:` line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add_summary(&mut self, line: &str) {
        let Some(summary) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let count = |label: &str| -> u64 {
            summary
                .split(';')
                .find_map(|part| {
                    let part = part
                        .trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ");
                    part.strip_suffix(label)?.trim().parse().ok()
                })
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
        self.ignored += count(" ignored");
    }
}

/// Runs `command` with its output passed through, adding up its test summaries.
fn run_counting(command: &mut Command) -> Result<Totals> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("\n==> {shown}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {shown}"))?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add_summary(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "\nambit: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
        bail!("{shown} failed with {status}");
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_summary_line_and_ignores_the_rest() {
        let mut totals = Totals::default();
        for line in [
            "test result: ok. 7 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.04s",
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "running 7 tests",
            "test a_b_c ... ok",
        ] {
            totals.add_summary(line);
        }
        assert_eq!(
            totals,
            Totals {
                passed: 10,
                failed: 1,
                ignored: 2
            }
        );
    }
}
