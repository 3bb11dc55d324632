//! `cargo xtask images`: every image is a valid OCI layout whose entrypoint runs with nothing
//! else on its root, and which holds nothing its binary does not need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A blob of the layout at `dir`, checked against its digest.
fn blob(dir: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let digest = descriptor["digest"]
        .as_str()
        .context("a descriptor without digest")?;
    let hex = digest.strip_prefix("sha256:").context("not sha256")?;
    let data = std::fs::read(dir.join("blobs/sha256").join(hex))?;
    let actual: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ensure!(actual == hex, "{digest} does not match");
    ensure!(descriptor["size"] == data.len(), "{digest}: wrong size");
    Ok(data)
}

/// Unpacks the one image of the layout at `dir` into `root`; returns its config.
fn unpack(dir: &Path, root: &Path) -> Result<Value> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest: Value = serde_json::from_slice(&blob(dir, &index["manifests"][0])?)?;
    let config: Value = serde_json::from_slice(&blob(dir, &manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(layers.len() == 1, "one layer, FROM scratch");
    ensure!(config["rootfs"]["diff_ids"][0] == layers[0]["digest"]);
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    tar::Archive::new(blob(dir, &layers[0])?.as_slice()).unpack(root)?;
    Ok(config)
}

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root)?.display().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `argv` chrooted into `root` with an empty environment; returns its stdout.
fn run_in(root: &Path, argv: &[&str]) -> Result<String> {
    let out = Command::new("/usr/sbin/chroot")
        .arg(root)
        .args(argv)
        .env_clear()
        .output()?;
    ensure!(
        out.status.success(),
        "{argv:?} in {}: {}\n{}",
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn each_image_runs_from_scratch_and_holds_only_what_it_needs() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("\n!!!!! SKIPPED images test: chroot needs root. CI runs it as root. !!!!!\n");
        return Ok(());
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
    let out = tmp.join("layouts");
    // The dev profile: the release build's thin LTO takes minutes the test does not need.
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["images", "--profile", "dev", "--out"])
        .arg(&out)
        .status()?;
    ensure!(status.success(), "cargo xtask images: {status}");

    let cases: [(&str, &[&str]); 4] = [
        (
            "ambit-controller",
            &[
                "etc/ssl/certs/ca-certificates.crt",
                "usr/local/bin/ambit-controller",
            ],
        ),
        ("ambit-tunnel", &["usr/local/bin/ambit-tunnel"]),
        ("ambit-waypoint", &["usr/local/bin/ambit-waypoint"]),
        (
            "ambit-capture",
            &[
                "usr/bin/nsenter",
                "usr/local/bin/ambit-capture",
                "usr/sbin/nft",
            ],
        ),
    ];
    for (name, want) in cases {
        let root = tmp.join(name);
        let config = unpack(&out.join(name), &root)?;
        let entrypoint = config["config"]["Entrypoint"][0]
            .as_str()
            .context("entrypoint")?;
        ensure!(entrypoint == format!("/usr/local/bin/{name}"));

        // Beyond `want`, only the shared libraries nft and nsenter load (capture image).
        let (libraries, rest): (Vec<_>, Vec<_>) = files(&root)?
            .into_iter()
            .partition(|f| name == "ambit-capture" && f.contains(".so"));
        ensure!(rest == want, "{name} holds {rest:?}, wants {want:?}");
        ensure!(
            libraries.iter().all(|l| l.starts_with("lib")),
            "{libraries:?}"
        );

        // Static: the entrypoint alone on a root runs.
        let alone = tmp.join(format!("{name}-alone"));
        if alone.exists() {
            std::fs::remove_dir_all(&alone)?;
        }
        std::fs::create_dir_all(&alone)?;
        std::fs::copy(root.join(&entrypoint[1..]), alone.join(name))?;
        let help = run_in(&alone, &[&format!("/{name}"), "--help"])?;
        ensure!(help.contains("Usage:"), "{name} --help:\n{help}");
    }
    // The host programs the capture agent runs find their libraries in its image.
    let capture = tmp.join("ambit-capture");
    ensure!(run_in(&capture, &["/usr/sbin/nft", "--version"])?.starts_with("nftables"));
    ensure!(run_in(&capture, &["/usr/bin/nsenter", "--version"])?.contains("util-linux"));
    Ok(())
}
