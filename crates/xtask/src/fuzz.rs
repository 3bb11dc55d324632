//! `cargo xtask fuzz [TARGET] [--seconds N]`: the libFuzzer targets of fuzz/ (bodies in
//! crates/fuzz), through cargo-fuzz on the stable toolchain. docs/fuzzing.md.

use crate::cmd::{self, cargo_tool, workspace_root};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// What `cargo xtask test` gives each target.
pub const SECONDS_IN_TESTS: u64 = 20;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// The targets: one file each under fuzz/fuzz_targets/.
fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            targets.push(stem.to_owned());
        }
    }
    targets.sort();
    Ok(targets)
}

/// Builds every target and fuzzes `only` (else each in turn) for `seconds`. A crash fails the
/// run; its input is saved under fuzz/regressions/TARGET/, where `cargo test -p ambit-fuzz`
/// replays it.
pub fn run(only: Option<&str>, seconds: u64) -> Result<()> {
    let all = targets()?;
    let chosen: Vec<&String> = match only {
        Some(name) => match all.iter().find(|t| t.as_str() == name) {
            Some(t) => vec![t],
            None => bail!("no fuzz target {name:?}; the targets: {}", all.join(", ")),
        },
        None => all.iter().collect(),
    };
    let cargo_fuzz = cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)?;
    // The same versions as the workspace: its lock, which cargo completes with libfuzzer-sys.
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        fuzz_dir().join("Cargo.lock"),
    )
    .context("copying Cargo.lock into fuzz/")?;
    cmd::run(&mut fuzz_command(&cargo_fuzz, "build"))?;
    let mut crashed = Vec::new();
    for target in chosen {
        if let Err(e) = fuzz(&cargo_fuzz, target, seconds) {
            eprintln!("{e:#}");
            crashed.push(target.as_str());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes in {}: their inputs are under fuzz/regressions/ (commit them with the fix; docs/fuzzing.md)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` for fuzz/: stable rustc allowed cargo-fuzz's flags
/// (RUSTC_BOOTSTRAP), no sanitizer (the code fuzzed forbids `unsafe`; coverage is what
/// counts), built under target/fuzz with the rest of the build.
fn fuzz_command(cargo_fuzz: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(cargo_fuzz);
    command
        .args(["fuzz", subcommand, "--sanitizer", "none", "--target-dir"])
        .arg(workspace_root().join("target/fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(fuzz_dir());
    command
}

/// Fuzzes `target` for `seconds` from its seeds (fuzz/corpus/TARGET, read only) and what
/// earlier runs found (fuzz/work/TARGET, not checked in).
fn fuzz(cargo_fuzz: &Path, target: &str, seconds: u64) -> Result<()> {
    let work = fuzz_dir().join("work").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut command = fuzz_command(cargo_fuzz, "run");
    command
        .arg(target)
        .arg(&work)
        .arg(fuzz_dir().join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"));
    let outcome = cmd::run(&mut command);
    if outcome.is_err() {
        // Where cargo-fuzz has libFuzzer write the input that crashed.
        save_regressions(target, &fuzz_dir().join("artifacts").join(target))?;
    }
    outcome
}

/// Moves libFuzzer's crash inputs into fuzz/regressions/TARGET/.
fn save_regressions(target: &str, artifacts: &Path) -> Result<()> {
    let regressions = fuzz_dir().join("regressions").join(target);
    std::fs::create_dir_all(&regressions)?;
    for entry in std::fs::read_dir(artifacts)? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            let saved = regressions.join(name);
            std::fs::rename(&path, &saved)?;
            eprintln!("{target}: crash input saved as {}", saved.display());
        }
    }
    Ok(())
}
