//! `cargo xtask <command>`: the one entry point for project chores, so the README, CI and
//! developers run exactly the same steps.

mod bench;
mod cmd;
mod conformance;
mod test;
mod testbed;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test          install what the tests need, then fmt, clippy -D warnings and every test tier
  demo          the whole mesh on the local testbed, narrated (root); leaves it up to poke around
  conformance   Gateway API's conformance suite (mesh profiles) on its own testbed (root);
                report to docs/conformance/ [--run-test NAME] [--keep]
  bench NAME    run a benchmark and write target/ambit-bench/NAME.json (names: hbone, waypoint, tunnel, controller, route)
  testbed CMD   local Kubernetes testbed: setup | up [--nodes N] | down | status | env
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["test"] => test::run(),
        ["demo"] => testbed::demo(),
        ["bench", name] => bench::run(name),
        ["conformance", rest @ ..] => conformance::run(rest),
        ["testbed", rest @ ..] => testbed::run(rest),
        ["help" | "--help" | "-h"] | [] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command {args:?}\n{USAGE}"),
    }
}
