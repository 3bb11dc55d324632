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

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hbone") => hbone::run(),
        Some("waypoint") => waypoint::run(&args[1..]),
        Some("route") => route::run(&args[1..]),
        Some("role") => roles::run(&args[1..]),
        _ => bail!("usage: ambit-bench hbone|waypoint [--quick]|route [--quick]"),
    }
}
