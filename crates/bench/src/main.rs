//! `ambit-bench NAME` runs a benchmark; `ambit-bench role ...` is how a benchmark starts its own
//! child processes (servers and proxies), so each is measured as a process of its own.

mod h2load;
mod hbone;
mod measure;
mod nginx;
mod process;
mod report;
mod roles;
mod route;
mod waypoint;

use anyhow::Result;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "ambit-bench",
    about = "ambit's benchmarks (cargo xtask bench NAME runs them)"
)]
enum Cli {
    /// the tunnel's HBONE paths side by side on loopback
    Hbone {
        /// every measurement briefly, to check that it works
        #[arg(long)]
        quick: bool,
    },
    /// the waypoint against nginx and Istio's ext_authz sample
    Waypoint {
        /// every measurement briefly, to check that it works
        #[arg(long)]
        quick: bool,
    },
    /// route table lookups with 10 and 10,000 rules
    Route {
        /// a few iterations only, to check that it works
        #[arg(long)]
        quick: bool,
    },
    /// one process of a benchmark (a server or a proxy), started by the benchmark itself
    #[command(subcommand, hide = true)]
    Role(roles::Role),
}

fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Hbone { quick } => hbone::run(quick),
        Cli::Waypoint { quick } => waypoint::run(quick),
        Cli::Route { quick } => route::run(quick),
        Cli::Role(role) => roles::run(role),
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
