//! `cargo xtask <command>`: the one entry point for project chores, so the README, CI and
//! developers run exactly the same steps.

mod bench;
mod cmd;
mod conformance;
mod deny;
mod fuzz;
mod images;
mod test;
mod testbed;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "Project chores")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Debug, Subcommand)]
enum Chore {
    /// install what the tests need, then fmt, clippy -D warnings and every test tier
    Test,
    /// fuzz one target (else each in turn) from its seed corpus; a crash's input is saved
    /// under fuzz/regressions/ (docs/fuzzing.md)
    Fuzz {
        /// e.g. spiffe_id (fuzz/fuzz_targets/ lists them)
        target: Option<String>,
        #[arg(long, default_value_t = 60, value_name = "N")]
        seconds: u64,
    },
    /// ambit's images as OCI image layouts, static binaries FROM scratch, without a container
    /// engine: target/ambit-images/<image>/ (docs/install.md, "Images")
    Images {
        #[arg(long, value_enum, default_value = "release")]
        profile: images::Profile,
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// each image is tagged <registry>/<image>:<tag> (charts/ambit's image.registry, image.tag)
        #[arg(long, default_value = "ghcr.io/ambit")]
        registry: String,
        #[arg(long, default_value = "dev")]
        tag: String,
    },
    /// the whole mesh on the local testbed, narrated (root); leaves it up to poke around
    Demo,
    /// Gateway API's conformance suite (mesh profiles) on its own testbed (root); report to
    /// docs/conformance/
    Conformance {
        /// only this test (its ShortName, e.g. MeshBasic); its report goes to
        /// target/ambit-conformance/, not docs/conformance/
        #[arg(long, value_name = "NAME")]
        run_test: Option<String>,
        /// leave the testbed up afterwards with the suite's echo apps
        /// (KUBECONFIG=/run/ambit-testbed/conform/kubeconfig)
        #[arg(long)]
        keep: bool,
    },
    /// run a benchmark and write target/ambit-bench/NAME.json
    Bench {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bench::BENCHES))]
        name: String,
    },
    /// local Kubernetes testbed; the options after the command go to ambit-testbed
    /// (`--nodes N`, `--name NAME --id ID`: `cargo xtask testbed up --help`)
    Testbed {
        #[arg(value_parser = ["setup", "up", "down", "status", "env"])]
        command: String,
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "OPTIONS"
        )]
        options: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Chore::Test => test::run(),
        Chore::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Chore::Demo => testbed::demo(),
        Chore::Images {
            profile,
            out,
            registry,
            tag,
        } => images::run(
            profile,
            &out.unwrap_or_else(|| cmd::workspace_root().join("target/ambit-images")),
            &registry,
            &tag,
        ),
        Chore::Bench { name } => bench::run(&name),
        Chore::Conformance { run_test, keep } => conformance::run(run_test.as_deref(), keep),
        Chore::Testbed { command, options } => testbed::run(&command, &options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_declaration_is_consistent() {
        Cli::command().debug_assert();
    }
}
