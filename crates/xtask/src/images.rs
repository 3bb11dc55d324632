//! `cargo xtask images`: ambit's images as OCI image layouts written directly, one per binary,
//! each one uncompressed layer FROM scratch. No container engine, no base image to pull: the
//! binaries are static (glibc, `+crt-static`) and the layer holds them and the few host files
//! an image needs (docs/install.md, "Images").

use crate::cmd::{self, cargo};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The only Rust target installed here (no musl std: docs/install.md says why glibc). Named
/// explicitly so the static RUSTFLAGS reach our binaries but not build scripts or proc macros,
/// and the static builds live apart from the host's, in target/<triple>/.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// One image: `binaries` (built here) in /usr/local/bin, the first the entrypoint.
#[derive(Debug)]
pub struct Image {
    pub name: &'static str,
    binaries: &'static [&'static str],
    /// Host programs the binary runs, copied with the shared libraries they load.
    host_programs: &'static [&'static str],
    /// Host files copied as they are, to the same path.
    host_files: &'static [&'static str],
    user: Option<&'static str>,
    cmd: &'static [&'static str],
    ports: &'static [u16],
}

pub const IMAGES: &[Image] = &[
    Image {
        name: "ambit-controller",
        binaries: &["ambit-controller"],
        host_programs: &[],
        // RequestAuthentication fetches JWKS documents from public issuers with the system roots.
        host_files: &["/etc/ssl/certs/ca-certificates.crt"],
        user: Some("65532:65532"),
        cmd: &[],
        ports: &[15012, 15014],
    },
    Image {
        name: "ambit-tunnel",
        binaries: &["ambit-tunnel"],
        host_programs: &[],
        host_files: &[],
        user: None,
        cmd: &[],
        ports: &[15020, 15021],
    },
    Image {
        name: "ambit-capture",
        binaries: &["ambit-capture"],
        // Pod rules go in with `nsenter --net=<netns> nft -f -` (crates/capture/src/rules.rs).
        host_programs: &["nft", "nsenter"],
        host_files: &[],
        user: None,
        cmd: &["agent"],
        ports: &[],
    },
    Image {
        name: "ambit-waypoint",
        binaries: &["ambit-waypoint"],
        host_programs: &[],
        host_files: &[],
        user: Some("1337:1337"),
        cmd: &[],
        ports: &[15008, 15020, 15021],
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// what ships: optimized, thin LTO
    Release,
    /// quick to build (dependencies optimized, our code not): what the image test uses
    Dev,
}

/// Builds the binaries static and writes `<out>/<image>/`, an OCI image layout tagged
/// `<registry>/<image>:<tag>`, for each image; prints each one's size.
pub fn run(profile: Profile, out: &Path, registry: &str, tag: &str) -> Result<()> {
    let bins = build(profile)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for image in IMAGES {
        let dir = out.join(image.name);
        let size = write_layout(image, &bins, &dir, registry, tag)?;
        eprintln!(
            "{}: {} ({:.1} MiB)",
            image.name,
            dir.display(),
            size as f64 / f64::from(1 << 20)
        );
    }
    Ok(())
}

/// Every image's binaries in one static cargo build; returns the directory they land in.
fn build(profile: Profile) -> Result<PathBuf> {
    let mut command = cargo(["build", "--locked", "--target", TARGET]);
    let dir = match profile {
        Profile::Release => {
            // Line tables go (the profile keeps them for local debugging); symbols stay, so a
            // panic's backtrace still names its functions.
            command
                .arg("--release")
                .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
            "release"
        }
        Profile::Dev => "debug",
    };
    for bin in IMAGES.iter().flat_map(|i| i.binaries) {
        command.args(["--bin", bin]);
    }
    command.env(
        format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            TARGET.to_uppercase().replace('-', "_")
        ),
        "-C target-feature=+crt-static",
    );
    cmd::run(&mut command)?;
    Ok(cmd::workspace_root().join("target").join(TARGET).join(dir))
}

/// The image's files: path in the image (absolute) → path on this machine.
fn files(image: &Image, bins: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    for bin in image.binaries {
        files.insert(format!("/usr/local/bin/{bin}"), bins.join(bin));
    }
    for file in image.host_files {
        files.insert((*file).to_owned(), PathBuf::from(file));
    }
    for program in image.host_programs {
        let path = which(program)?;
        for lib in shared_libraries(&path)? {
            files.insert(lib.clone(), PathBuf::from(lib));
        }
        files.insert(path.display().to_string(), path);
    }
    Ok(files)
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed here"))
}

/// What the dynamic loader maps for `program` (the loader included), as `ldd` lists them.
fn shared_libraries(program: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {}: {}", program.display(), out.status);
    }
    // `libx.so.1 => /lib/.../libx.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO
    // has no path.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// The image's one layer: every file and its parent directories, owned by root, dated 0, so the
/// same inputs give the same digest.
fn layer(files: &BTreeMap<String, PathBuf>) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, source) in files {
        let rel = path.trim_start_matches('/');
        for dir in Path::new(rel).ancestors().skip(1) {
            if dir.as_os_str().is_empty() || !dirs.insert(dir.to_owned()) {
                continue;
            }
            let mut header = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut header, dir, std::io::empty())?;
        }
        let data =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        let mode = if is_executable(source)? { 0o755 } else { 0o644 };
        let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut header, rel, data.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn is_executable(path: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o111 != 0)
}

/// Writes `blob` under `dir/blobs/sha256/` and returns its OCI descriptor.
fn blob(dir: &Path, media_type: &str, blob: &[u8]) -> Result<Value> {
    let hex: String = Sha256::digest(blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(dir.join("blobs/sha256").join(&hex), blob)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": blob.len()}))
}

/// Writes `dir` as an OCI image layout holding `image`; returns the layer's size in bytes.
fn write_layout(
    image: &Image,
    bins: &Path,
    dir: &Path,
    registry: &str,
    tag: &str,
) -> Result<usize> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let layer = layer(&files(image, bins)?)?;
    // Uncompressed, so the layer's digest is also its diff ID; registries and `skopeo copy`
    // compress on the way if asked.
    let layer_desc = blob(dir, "application/vnd.oci.image.layer.v1.tar", &layer)?;
    let mut config = json!({
        "Entrypoint": [format!("/usr/local/bin/{}", image.binaries[0])],
        "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin"],
    });
    if !image.cmd.is_empty() {
        config["Cmd"] = json!(image.cmd);
    }
    if let Some(user) = image.user {
        config["User"] = json!(user);
    }
    if !image.ports.is_empty() {
        config["ExposedPorts"] = image
            .ports
            .iter()
            .map(|p| (format!("{p}/tcp"), json!({})))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let config_desc = blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;
    // The tag for `skopeo copy oci:<dir>:<tag>`, the whole name for containerd's `ctr import`.
    manifest_desc["annotations"] = json!({
        "org.opencontainers.image.ref.name": tag,
        "io.containerd.image.name": format!("{registry}/{}:{tag}", image.name),
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(layer.len())
}
