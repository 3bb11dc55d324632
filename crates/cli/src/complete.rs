//! Shell completion, from [`Cli::command`] by `clap_complete`'s completion engine. Two ways in:
//!
//! - `kubectl ambit completion bash|zsh|fish|...` prints a script ([`script`]) that completes
//!   `kubectl-ambit ...` typed directly by calling the program back with `COMPLETE=SHELL` set,
//!   which [`main`](../../kubectl_ambit/index.html) hands to [`clap_complete::CompleteEnv`];
//! - kubectl (1.26+) completes `kubectl ambit ...` by running `kubectl_complete-ambit` from
//!   `PATH` with the words after `kubectl ambit`, the one being completed last, and reading one
//!   candidate a line (`value<TAB>description`), then `:DIRECTIVE` ([`for_kubectl`]).

use crate::args::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_complete::env::Shells;
use std::ffi::OsString;
use std::path::Path;

/// The environment variable that turns a run of `kubectl-ambit` into a completion request.
pub const COMPLETE_VAR: &str = "COMPLETE";
const PROGRAM: &str = "kubectl-ambit";

/// The completion script of `shell` for `kubectl-ambit`. It calls `kubectl-ambit` (from `PATH`)
/// for the candidates, so it stays right across upgrades. (Not clap_complete's static scripts:
/// their bash flavour completes nothing after a command when the program's name has a hyphen,
/// clap-rs/clap#6421.)
pub fn script(shell: Shell) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let shells = Shells::builtins();
    let completer = shells
        .completer(&shell.to_string())
        .ok_or_else(|| std::io::Error::other(format!("no completer for {shell}")))?;
    completer.write_registration(COMPLETE_VAR, PROGRAM, PROGRAM, PROGRAM, &mut out)?;
    Ok(out)
}

/// Answers a completion request (`COMPLETE=SHELL kubectl-ambit -- WORDS...`, as the [`script`]
/// sends it) and exits; returns at once on any other run.
pub fn answer_shell_request() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .complete();
}

/// Cobra's `ShellCompDirectiveNoFileComp`: no file names when nothing matches.
const NO_FILE_COMPLETION: u8 = 4;

/// What `kubectl_complete-ambit WORDS... CURRENT` prints: the candidates for `CURRENT` (flags
/// only once it starts with `-`, as kubectl's own completion does), then the directive.
pub fn for_kubectl(words: &[OsString], cwd: Option<&Path>) -> std::io::Result<String> {
    let current_is_flag = words
        .last()
        .is_some_and(|w| w.to_string_lossy().starts_with('-'));
    let mut args = vec![OsString::from("kubectl-ambit")];
    args.extend_from_slice(words);
    if words.is_empty() {
        args.push(OsString::new());
    }
    let index = args.len() - 1;
    let candidates = clap_complete::engine::complete(&mut Cli::command(), args, index, cwd)?;
    let mut out = String::new();
    for c in candidates {
        let value = c.get_value().to_string_lossy();
        if value.starts_with('-') && !current_is_flag {
            continue;
        }
        out.push_str(&value);
        if let Some(help) = c.get_help() {
            out.push('\t');
            out.push_str(&help.to_string());
        }
        out.push('\n');
    }
    out.push_str(&format!(":{NO_FILE_COMPLETION}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn complete(words: &[&str]) -> Vec<String> {
        let words: Vec<OsString> = words.iter().map(OsString::from).collect();
        let out = for_kubectl(&words, None).unwrap();
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn kubectl_gets_commands_flags_and_values() {
        let top = complete(&[""]);
        for c in [
            "waypoint",
            "status",
            "config",
            "threats",
            "completion",
            ":4",
        ] {
            assert!(top.contains(&c.to_owned()), "{c}: {top:?}");
        }
        assert!(!top.iter().any(|c| c.starts_with('-')), "{top:?}");
        assert_eq!(complete(&["waypoint", "a"]), ["apply", ":4"]);
        let flags = complete(&["waypoint", "apply", "--"]);
        for f in ["--service-account", "--wait", "--timeout", "--namespace"] {
            assert!(flags.contains(&f.to_owned()), "{f}: {flags:?}");
        }
        assert_eq!(complete(&["status", "-o", ""]), ["json", "yaml", ":4"]);
    }

    #[test]
    fn scripts_call_the_program_back() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell).unwrap()).unwrap();
            assert!(text.contains("kubectl-ambit"), "{shell}: {text}");
            assert!(text.contains("COMPLETE"), "{shell}: {text}");
        }
    }
}
