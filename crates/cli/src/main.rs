//! `kubectl-ambit`: the kubectl plugin for ambit (`kubectl ambit --help`). Parses the command
//! line, connects, runs the command, prints; exit 0 on success, 1 on failure or an unhealthy
//! `status`, 2 on a usage error.

use anyhow::Context as _;
use kubectl_ambit::args::{self, Request};
use kubectl_ambit::{client, commands, complete};
use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    complete::answer_shell_request();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invocation = match args::parse(argv.clone()) {
        Ok(Request::Run(i)) => i,
        Ok(Request::Completion(shell)) => {
            let script = complete::script(shell);
            return match script.and_then(|s| std::io::stdout().write_all(&s)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the completion script: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) if args::is_help(&e) => {
            print!("{}", e.render());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {}", args::usage_error(&argv, &e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(invocation)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(invocation: args::Invocation) -> anyhow::Result<bool> {
    let global = &invocation.global;
    let conn = client::connect(global)
        .await
        .context("connecting to the cluster")?;
    let mut note = |line: &str| eprintln!("{line}");
    let outcome = match commands::run(&conn, global, &invocation.command, &mut note).await {
        Ok(o) => o,
        Err(e) if e.is_transport() => {
            return Err(e)
                .with_context(|| format!("cannot reach the apiserver at {}", conn.server));
        }
        Err(e) => return Err(e.into()),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(outcome.stdout.as_bytes())?;
    stdout.flush()?;
    Ok(outcome.success)
}
