//! The tunnel's code is TR-1's attack surface: it must not link the capture agent (privileged,
//! CNI) nor a Kubernetes client. Checked on the resolved graph, so a dependency that drags either
//! in transitively fails too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_tunnel_links_neither_capture_nor_kube() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--package",
            "ambit-tunnel",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.lines().any(|l| l.starts_with("ambit-tunnel ")),
        "unexpected cargo tree output: {tree}"
    );
    let forbidden: Vec<&str> = tree
        .lines()
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or_default();
            name == "ambit-capture"
                || name == "kube"
                || name.starts_with("kube-")
                || name == "k8s-openapi"
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "ambit-tunnel depends on {forbidden:?}"
    );
}
