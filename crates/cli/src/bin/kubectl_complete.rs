//! `kubectl_complete-ambit`: what kubectl runs, from `PATH`, to complete `kubectl ambit ...`
//! (see `kubectl_ambit::complete`). Prints nothing and exits 1 when it cannot tell, which
//! kubectl takes as "no candidates".

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let words: Vec<_> = std::env::args_os().skip(1).collect();
    let cwd = std::env::current_dir().ok();
    match kubectl_ambit::complete::for_kubectl(&words, cwd.as_deref()) {
        Ok(out) if std::io::stdout().write_all(out.as_bytes()).is_ok() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
