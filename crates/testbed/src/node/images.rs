//! Images are binaries: an image reference maps to an executable, by an explicit entry or by
//! its last path segment naming a binary in the bin dirs (`ghcr.io/ambit/ambit-tunnel:dev` →
//! `ambit-tunnel`, `ambit-echo-server:latest` → `ambit-echo-server`).

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

pub fn resolve(
    image: &str,
    images: &BTreeMap<String, PathBuf>,
    bin_dirs: &[PathBuf],
) -> Option<PathBuf> {
    let repo = repository(image);
    if let Some(p) = images.get(image).or_else(|| images.get(repo)) {
        return Some(p.clone());
    }
    let last = repo.rsplit('/').next()?;
    bin_dirs.iter().map(|d| d.join(last)).find(|p| p.is_file())
}

fn which(name: &str) -> Option<PathBuf> {
    crate::sys::PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The program and argv of a container: the image's binary is the entrypoint; `command`
/// replaces it (its first word is the image's binary when the names match, else a host
/// program, so `sh -c …` works) and `args` follow.
pub fn program_and_args(
    c: &Container,
    image_bin: Option<&Path>,
) -> Result<(PathBuf, Vec<String>), String> {
    let args = c.args.clone().unwrap_or_default();
    let image = c.image.as_deref().unwrap_or_default();
    match c.command.as_deref() {
        Some([first, rest @ ..]) => {
            let base = Path::new(first)
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or(first);
            let prog = match image_bin {
                Some(bin) if bin.file_name().and_then(|s| s.to_str()) == Some(base) => {
                    bin.to_path_buf()
                }
                _ if first.contains('/') && Path::new(first).is_file() => PathBuf::from(first),
                _ => which(base).ok_or_else(|| {
                    format!("command {first:?} is neither image {image}'s binary nor on the host")
                })?,
            };
            Ok((prog, rest.iter().cloned().chain(args).collect()))
        }
        _ => {
            let bin = image_bin.ok_or_else(|| {
                format!("image {image} maps to no binary (and the container has no command)")
            })?;
            Ok((bin.to_path_buf(), args))
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
        let c = Container {
            image: Some("ambit-echo-server:latest".into()),
            args: Some(vec!["9000".into()]),
            ..Container::default()
        };
        assert_eq!(
            program_and_args(&c, Some(&bin))?,
            (bin.clone(), vec!["9000".to_owned()])
        );
        let c = Container {
            command: Some(vec!["/usr/local/bin/ambit-echo-server".into(), "1".into()]),
            ..c
        };
        assert_eq!(
            program_and_args(&c, Some(&bin))?,
            (bin.clone(), vec!["1".to_owned(), "9000".to_owned()])
        );
        let c = Container {
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["true".into()]),
            ..c
        };
        let (prog, args) = program_and_args(&c, Some(&bin))?;
        assert!(prog.ends_with("sh"));
        assert_eq!(args, vec!["-c", "true"]);
        let c = Container {
            image: Some("unknown".into()),
            ..Container::default()
        };
        assert!(program_and_args(&c, None).is_err());
        Ok(())
    }
}
