//! The real `kubectl-ambit` and `kubectl_complete-ambit` binaries, without a cluster: exit
//! codes of usage errors and help, each command's `--help`, the completion scripts (run by a
//! real bash when there is one) and the candidates kubectl asks its plugin for. (Completion
//! through a real kubectl is in `cli.rs`, with the testbed's kubectl.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-ambit"))
        .args(args)
        // No cluster is needed to fail on usage; none is reached.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("COMPLETE")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn usage_errors_exit_2_and_name_the_culprit() {
    for (args, says) in [
        (&["waypoint", "list", "--bogus"][..], "unknown flag --bogus"),
        (&["waypoint", "apply"], "needs --service-account SA"),
        (&["status", "-o", "xml"], "expected json or yaml"),
        (&["frobnicate"], "unknown command \"frobnicate\""),
        (&["completion", "tcsh"], "\"tcsh\" is not valid"),
        (
            &["check", "--timeout", "soon"],
            "flag --timeout: \"soon\" is not valid",
        ),
    ] {
        let out = ambit(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("--help' for usage"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A command that runs, against no cluster: a failure, not a usage error.
    let out = ambit(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn every_command_has_help_on_stdout() {
    for (args, usage) in [
        (&[][..], "Usage: kubectl ambit [OPTIONS] <COMMAND>"),
        (&["--help"], "Usage: kubectl ambit [OPTIONS] <COMMAND>"),
        (&["waypoint"], "Usage: kubectl ambit waypoint"),
        (
            &["waypoint", "apply", "--help"],
            "kubectl ambit waypoint apply -n NS --service-account SA",
        ),
        (
            &["waypoint", "list", "-h"],
            "kubectl ambit waypoint list [-n NS | -A]",
        ),
        (
            &["waypoint", "delete", "--help"],
            "kubectl ambit waypoint delete -n NS (NAME | --service-account SA)",
        ),
        (
            &["waypoint", "status", "--help"],
            "kubectl ambit waypoint status -n NS",
        ),
        (&["status", "--help"], "Usage: kubectl ambit status"),
        (
            &["config", "dump", "--help"],
            "kubectl ambit config dump --node NODE",
        ),
        (&["help", "completion"], "Usage: kubectl ambit completion"),
        (
            &["threats", "--help"],
            "kubectl ambit threats [-n NS | -A] [-o json|yaml]",
        ),
        (
            &["check", "--help"],
            "kubectl ambit check [--pre] [--timeout DURATION] [--no-color]",
        ),
    ] {
        let out = ambit(args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains(usage), "{args:?}: {stdout}");
        assert!(
            stdout.contains("--kubeconfig"),
            "{args:?}: global flags listed: {stdout}"
        );
    }
}

/// An apiserver that accepts connections and never answers: `check` gives one failure within
/// its `--timeout`, not a hang, and tries nothing else.
#[test]
fn check_against_a_silent_apiserver_is_one_failure() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("https://{}", silent.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("ambit-check-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        ),
    )
    .unwrap();
    for args in [
        &["check", "--timeout", "1s"][..],
        &["check", "--pre", "--timeout=1s"],
    ] {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-ambit"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            stdout,
            format!(
                "kubernetes-api\n--------------\n\
                 [fail] can reach the apiserver: {server}/: no answer within 1s\n\
                 \x20   hint: check the kubeconfig's server and credentials (kubectl cluster-info)\n\n\
                 0 passed, 0 warnings, 1 failed\n"
            ),
            "{args:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kubectl_complete_ambit_lists_what_fits() {
    let complete = |words: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl_complete-ambit"))
            .args(words)
            .output()
            .unwrap();
        assert!(out.status.success(), "{words:?}");
        text(&out.stdout)
    };
    let out = complete(&["waypoint", ""]);
    let values: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(
        values,
        ["apply", "list", "delete", "status", "help", ":4"],
        "{out}"
    );
    let out = complete(&["-n", "shop", "waypoint", "apply", "--service-"]);
    assert!(out.starts_with("--service-account\t"), "{out}");
}

#[test]
fn completion_scripts_complete_through_the_program() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ambit(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("kubectl-ambit"), "{shell}");
    }
    let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED running the bash completion script: no bash");
        return;
    };
    // What bash does on `kubectl-ambit waypoint <TAB>`, with the program on PATH.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-ambit"))
        .parent()
        .unwrap();
    let script = r#"
        source <(kubectl-ambit completion bash)
        COMP_WORDS=(kubectl-ambit waypoint ""); COMP_CWORD=2
        _clap_complete_kubectl_ambit kubectl-ambit "" waypoint
        echo "${COMPREPLY[*]}"
    "#;
    let out = Command::new(bash)
        .args(["-c", script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("COMPLETE")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(
        stdout.starts_with("apply list delete status help"),
        "{stdout} {}",
        text(&out.stderr)
    );
}
