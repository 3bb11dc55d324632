//! Images are binaries: an image reference maps to an executable, by an explicit entry or by
//! its last path segment naming a binary in the bin dirs (`ghcr.io/ambit/ambit-tunnel:dev` →
//! `ambit-tunnel`, `ambit-echo-server:latest` → `ambit-echo-server`).
//!
//! An image that is more than one binary is a directory of that name instead
//! (`registry.k8s.io/gateway-api/echo-advanced:v1.5.1` → `echo-advanced/`): `entrypoint` runs
//! when the container has no `command`, `bin/` (the image's `/usr/local/bin`) goes first on the
//! container's PATH, so `command: [client]` and `kubectl exec … -- client` find the image's own
//! client, and every file under `root/` is bind-mounted read-only at its path (`root/cert.crt`
//! at `/cert.crt`).

use k8s_openapi::api::core::v1::Container;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `registry:5000/a/b:tag@sha256:…` → `registry:5000/a/b`.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// What an image runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What runs when the container has no `command`.
    pub entrypoint: PathBuf,
    /// The image's own binaries, first on the container's PATH.
    pub bin_dir: Option<PathBuf>,
    /// Files the image carries at fixed paths: (file, path in the container).
    pub files: Vec<(PathBuf, String)>,
}

impl Image {
    /// A binary, or a directory laid out as the module docs say.
    pub fn at(path: &Path) -> Option<Self> {
        if path.is_file() {
            return Some(Self {
                entrypoint: path.to_path_buf(),
                bin_dir: None,
                files: Vec::new(),
            });
        }
        let entrypoint = path.join("entrypoint");
        if !entrypoint.is_file() {
            return None;
        }
        let bin_dir = Some(path.join("bin")).filter(|d| d.is_dir());
        let mut files = Vec::new();
        collect_files(&path.join("root"), "", &mut files);
        Some(Self {
            entrypoint,
            bin_dir,
            files,
        })
    }

    fn binary(&self, name: &str) -> Option<PathBuf> {
        if let Some(p) = self
            .bin_dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
        {
            return Some(p);
        }
        (self.entrypoint.file_name().and_then(|s| s.to_str()) == Some(name))
            .then(|| self.entrypoint.clone())
    }
}

fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let inside = format!("{prefix}/{}", e.file_name().to_string_lossy());
        if path.is_dir() {
            collect_files(&path, &inside, out);
        } else {
            out.push((path, inside));
        }
    }
}

pub fn resolve(
    image: &str,
    images: &BTreeMap<String, PathBuf>,
    bin_dirs: &[PathBuf],
) -> Option<Image> {
    let repo = repository(image);
    if let Some(p) = images.get(image).or_else(|| images.get(repo)) {
        return Image::at(p);
    }
    let last = repo.rsplit('/').next()?;
    bin_dirs.iter().find_map(|d| Image::at(&d.join(last)))
}

fn which(name: &str) -> Option<PathBuf> {
    crate::sys::PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The program and argv of a container: the image's entrypoint; `command` replaces it (its
/// first word is the image's binary of that name when there is one, else a host program, so
/// `sh -c …` works) and `args` follow.
pub fn program_and_args(
    c: &Container,
    image: Option<&Image>,
) -> Result<(PathBuf, Vec<String>), String> {
    let args = c.args.clone().unwrap_or_default();
    let name = c.image.as_deref().unwrap_or_default();
    match c.command.as_deref() {
        Some([first, rest @ ..]) => {
            let base = Path::new(first)
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or(first);
            let prog = match image.and_then(|i| i.binary(base)) {
                Some(bin) => bin,
                None if first.contains('/') && Path::new(first).is_file() => PathBuf::from(first),
                None => which(base).ok_or_else(|| {
                    format!("command {first:?} is neither image {name}'s binary nor on the host")
                })?,
            };
            Ok((prog, rest.iter().cloned().chain(args).collect()))
        }
        _ => {
            let bin = image.ok_or_else(|| {
                format!("image {name} maps to no binary (and the container has no command)")
            })?;
            Ok((bin.entrypoint.clone(), args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_digests_but_not_registry_ports() {
        assert_eq!(
            repository("ghcr.io/ambit/ambit-tunnel:dev"),
            "ghcr.io/ambit/ambit-tunnel"
        );
        assert_eq!(repository("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(
            repository("localhost:5000/x:1@sha256:ab"),
            "localhost:5000/x"
        );
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn command_overrides_entrypoint() -> Result<(), String> {
        let bin = PathBuf::from("/bins/ambit-echo-server");
        let image = Image {
            entrypoint: bin.clone(),
            bin_dir: None,
            files: Vec::new(),
        };
        let c = Container {
            image: Some("ambit-echo-server:latest".into()),
            args: Some(vec!["9000".into()]),
            ..Container::default()
        };
        assert_eq!(
            program_and_args(&c, Some(&image))?,
            (bin.clone(), vec!["9000".to_owned()])
        );
        let c = Container {
            command: Some(vec!["/usr/local/bin/ambit-echo-server".into(), "1".into()]),
            ..c
        };
        assert_eq!(
            program_and_args(&c, Some(&image))?,
            (bin.clone(), vec!["1".to_owned(), "9000".to_owned()])
        );
        let c = Container {
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["true".into()]),
            ..c
        };
        let (prog, args) = program_and_args(&c, Some(&image))?;
        assert!(prog.ends_with("sh"));
        assert_eq!(args, vec!["-c", "true"]);
        let c = Container {
            image: Some("unknown".into()),
            ..Container::default()
        };
        assert!(program_and_args(&c, None).is_err());
        Ok(())
    }

    #[test]
    fn a_directory_image_has_an_entrypoint_its_own_binaries_and_files() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("ambit-image-test-{}", std::process::id()));
        let io = |e: std::io::Error| e.to_string();
        std::fs::create_dir_all(dir.join("echo-advanced/bin")).map_err(io)?;
        std::fs::create_dir_all(dir.join("echo-advanced/root/etc")).map_err(io)?;
        for f in [
            "entrypoint",
            "bin/client",
            "root/cert.crt",
            "root/etc/x.conf",
        ] {
            std::fs::write(dir.join("echo-advanced").join(f), "").map_err(io)?;
        }
        let image = resolve(
            "registry.k8s.io/gateway-api/echo-advanced:v1.5.1",
            &BTreeMap::new(),
            std::slice::from_ref(&dir),
        );
        let root = dir.join("echo-advanced");
        let image = image.ok_or("no image")?;
        assert_eq!(image.entrypoint, root.join("entrypoint"));
        assert_eq!(image.bin_dir, Some(root.join("bin")));
        assert_eq!(
            image.files,
            vec![
                (root.join("root/cert.crt"), "/cert.crt".to_owned()),
                (root.join("root/etc/x.conf"), "/etc/x.conf".to_owned()),
            ]
        );
        let c = Container {
            command: Some(vec!["client".into(), "http://echo".into()]),
            ..Container::default()
        };
        assert_eq!(
            program_and_args(&c, Some(&image))?.0,
            root.join("bin/client")
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
