//! Running child commands with their command line echoed, failing with context.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root, so commands behave the same from any working directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// A `cargo` command run from the workspace root with the same toolchain as xtask itself.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(workspace_root());
    command
}

/// Runs `command`, echoing it first, and fails if it does not exit successfully.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("\n==> {shown}");
    let status = command
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Where downloads and tools built for the tests are kept between runs (as the testbed's Go
/// binaries): `AMBIT_CACHE_DIR`, else /var/cache/ambit.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AMBIT_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ambit"), PathBuf::from)
}

/// The binary `name` of the crate of that name at `version`, installed (from crates.io, with
/// its own lock file) into the cache on first use, so a fresh machine needs nothing else.
pub fn cargo_tool(name: &str, version: &str) -> Result<PathBuf> {
    let root = cache_dir().join(format!("{name}-{version}"));
    let binary = root.join("bin").join(name);
    if !binary.exists() {
        run(cargo(["install", "--locked", "--version", version, name, "--root"]).arg(&root))?;
    }
    Ok(binary)
}
