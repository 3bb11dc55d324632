//! Installing the CNI plugin on the node, and taking it away on uninstall.
//!
//! The agent copies its own binary to `<cni-bin-dir>/ambit-capture` (temporary file, then
//! rename: a runtime never executes a half-written plugin) and appends its entry to the
//! `plugins` of the node's network config, the first `*.conflist` by name (as containerd and
//! CRI-O pick it). The edit keeps every other field (JSON key order is not kept), is
//! idempotent, and is written atomically. The primary CNI may rewrite its conflist at any
//! time (an upgrade, a restart): the agent checks on every tick and adds the entry again.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The plugin's `type`, and the name of its binary in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "ambit-capture";

/// Where the plugin goes, and what its conflist entry tells it (paths as the plugin sees
/// them on the node, which may differ from the agent's own mounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInstall {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub tunnel_socket: PathBuf,
    pub state_dir: PathBuf,
    /// Namespaces whose new pods start uncaptured while the tunnel cannot decide (see
    /// `cni::starts_uncaptured`): those the mesh needs to come up.
    pub boot_exempt_namespaces: Vec<String>,
    /// Captured pods get `net.ipv4.tcp_tw_reuse=1` (see `pod::time_wait_reuse`).
    pub time_wait_reuse: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("CNI install, {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("network config {path} is not valid JSON, left as it is: {source}")]
    Malformed {
        path: String,
        source: serde_json::Error,
    },
    #[error("network config {0} has no \"plugins\" list, left as it is (not a conflist?)")]
    NoPlugins(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl CniInstall {
    /// The conflist entry.
    pub fn entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "tunnelSocket": self.tunnel_socket,
            "stateDir": self.state_dir,
            "bootExemptNamespaces": self.boot_exempt_namespaces,
            "timeWaitReuse": self.time_wait_reuse,
        })
    }

    pub fn binary(&self) -> PathBuf {
        self.bin_dir.join(PLUGIN_TYPE)
    }

    /// Copies `exe` (the running agent) to the CNI bin dir, atomically.
    pub fn install_binary(&self, exe: &Path) -> Result<(), InstallError> {
        use std::os::unix::fs::PermissionsExt;
        let target = self.binary();
        let tmp = self
            .bin_dir
            .join(format!(".{PLUGIN_TYPE}.tmp{}", std::process::id()));
        std::fs::copy(exe, &tmp).map_err(io_err(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target))
    }

    /// Makes sure the first conflist has our entry. `Ok(Some(path))` when it was written,
    /// `Ok(None)` when there was nothing to do, or no conflist yet (the primary CNI has not
    /// written one: the agent waits).
    pub fn ensure_entry(&self) -> Result<Option<PathBuf>, InstallError> {
        let Some(path) = first_conflist(&self.conf_dir)? else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        match with_entry(&raw, &self.entry()).map_err(|e| e.at(&path))? {
            Some(edited) => {
                write_atomic(&path, &edited)?;
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }

    /// Removes our entry from every conflist that has it, and the binary (uninstall).
    /// Returns what was changed, for the log.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut changed = Vec::new();
        for path in conflists(&self.conf_dir)? {
            let raw = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            // A file we cannot parse is not ours to fix.
            if let Ok(Some(edited)) = without_entry(&raw) {
                write_atomic(&path, &edited)?;
                changed.push(path);
            }
        }
        let binary = self.binary();
        match std::fs::remove_file(&binary) {
            Ok(()) => changed.push(binary),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&binary)(e)),
        }
        Ok(changed)
    }
}

/// An edit that could not be made, before the file's path is known.
#[derive(Debug)]
pub enum EditError {
    Malformed(serde_json::Error),
    NoPlugins,
}

impl EditError {
    fn at(self, path: &Path) -> InstallError {
        let path = path.display().to_string();
        match self {
            Self::Malformed(source) => InstallError::Malformed { path, source },
            Self::NoPlugins => InstallError::NoPlugins(path),
        }
    }
}

fn plugins(conf: &mut Value) -> Result<&mut Vec<Value>, EditError> {
    conf.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or(EditError::NoPlugins)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The conflist `raw` with `entry` as its only ambit plugin, last in the chain; `None` if it
/// already is exactly so.
pub fn with_entry(raw: &str, entry: &Value) -> Result<Option<String>, EditError> {
    let mut conf: Value = serde_json::from_str(raw).map_err(EditError::Malformed)?;
    let list = plugins(&mut conf)?;
    if list.last() == Some(entry) && list.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(None);
    }
    list.retain(|p| !is_ours(p));
    list.push(entry.clone());
    Ok(Some(pretty(&conf)?))
}

/// The conflist `raw` without any ambit plugin; `None` if it has none.
pub fn without_entry(raw: &str) -> Result<Option<String>, EditError> {
    let mut conf: Value = serde_json::from_str(raw).map_err(EditError::Malformed)?;
    let list = plugins(&mut conf)?;
    let before = list.len();
    list.retain(|p| !is_ours(p));
    if list.len() == before {
        return Ok(None);
    }
    Ok(Some(pretty(&conf)?))
}

fn pretty(conf: &Value) -> Result<String, EditError> {
    let mut s = serde_json::to_string_pretty(conf).map_err(EditError::Malformed)?;
    s.push('\n');
    Ok(s)
}

fn conflists(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    Ok(files)
}

/// The conflist the runtime uses: the first `*.conflist` by name.
pub fn first_conflist(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(conflists(dir)?.into_iter().next())
}

/// Writes beside the target then renames: the runtime reads the old or the new file, never a
/// half-written one. The temporary name does not end in `.conflist`.
fn write_atomic(path: &Path, body: &str) -> Result<(), InstallError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.ambit-tmp{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PRIMARY: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ],
  "x-vendor": {"keep": [1, 2, 3]}
}"#;

    fn install(dir: &Path) -> CniInstall {
        CniInstall {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            tunnel_socket: "/var/run/ambit/tunnel.sock".into(),
            state_dir: "/var/run/ambit-capture/pods".into(),
            boot_exempt_namespaces: vec!["ambit-system".into(), "kube-system".into()],
            time_wait_reuse: true,
        }
    }

    #[test]
    fn appends_once_and_keeps_everything_else() {
        let entry = install(Path::new("/x")).entry();
        let once = with_entry(PRIMARY, &entry).unwrap().unwrap();
        let v: Value = serde_json::from_str(&once).unwrap();
        let original: Value = serde_json::from_str(PRIMARY).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(v["plugins"][2], entry);
        assert_eq!(v["plugins"][0], original["plugins"][0]);
        assert_eq!(v["plugins"][1], original["plugins"][1]);
        assert_eq!(v["x-vendor"], original["x-vendor"]);
        assert_eq!(v["name"], "k8s-pod-network");
        // Idempotent.
        assert!(with_entry(&once, &entry).unwrap().is_none());
        // Other paths replace the old entry rather than adding a second one.
        let mut moved = entry.clone();
        moved["stateDir"] = json!("/elsewhere");
        let again = with_entry(&once, &moved).unwrap().unwrap();
        let v: Value = serde_json::from_str(&again).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(v["plugins"][2]["stateDir"], "/elsewhere");
        // Out of place (another chained plugin appended after us): moved to the end.
        let mut later: Value = serde_json::from_str(&once).unwrap();
        later["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "tuning"}));
        let fixed = with_entry(&later.to_string(), &entry).unwrap().unwrap();
        let v: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["plugins"][2]["type"], "tuning");
        assert_eq!(v["plugins"][3], entry);
        // And out again, leaving the primary's config as it was.
        let removed = without_entry(&once).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&removed).unwrap(), original);
        assert!(without_entry(PRIMARY).unwrap().is_none());
    }

    #[test]
    fn malformed_configs_are_left_alone() {
        let entry = install(Path::new("/x")).entry();
        assert!(matches!(
            with_entry("{\"plugins\": [", &entry),
            Err(EditError::Malformed(_))
        ));
        assert!(matches!(
            with_entry(r#"{"type": "bridge"}"#, &entry),
            Err(EditError::NoPlugins)
        ));
        assert!(matches!(
            with_entry(r#"{"plugins": {"type": "bridge"}}"#, &entry),
            Err(EditError::NoPlugins)
        ));
        assert!(matches!(without_entry("[]"), Err(EditError::NoPlugins)));
    }

    #[test]
    fn installs_into_the_first_conflist_and_uninstalls() {
        let dir = std::env::temp_dir().join(format!("ambit-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cni = install(&dir);
        std::fs::create_dir_all(&cni.bin_dir).unwrap();
        // No conflist yet: nothing to do, no error.
        assert_eq!(cni.ensure_entry().unwrap(), None);
        std::fs::create_dir_all(&cni.conf_dir).unwrap();
        let first = cni.conf_dir.join("10-primary.conflist");
        let second = cni.conf_dir.join("20-other.conflist");
        std::fs::write(&first, PRIMARY).unwrap();
        std::fs::write(&second, PRIMARY).unwrap();
        std::fs::write(cni.conf_dir.join("05-single.conf"), "{}").unwrap();
        assert_eq!(cni.ensure_entry().unwrap(), Some(first.clone()));
        assert_eq!(cni.ensure_entry().unwrap(), None, "idempotent");
        assert!(
            std::fs::read_to_string(&first)
                .unwrap()
                .contains(PLUGIN_TYPE)
        );
        assert_eq!(std::fs::read_to_string(&second).unwrap(), PRIMARY);
        // The primary CNI rewrites its file: the entry comes back.
        std::fs::write(&first, PRIMARY).unwrap();
        assert_eq!(cni.ensure_entry().unwrap(), Some(first.clone()));
        // A malformed file is reported and not touched.
        std::fs::write(&first, "{").unwrap();
        let err = cni.ensure_entry().unwrap_err();
        assert!(err.to_string().contains("10-primary.conflist"), "{err}");
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "{");
        std::fs::write(&first, PRIMARY).unwrap();
        cni.ensure_entry().unwrap();

        let exe = dir.join("exe");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        cni.install_binary(&exe).unwrap();
        cni.install_binary(&exe).unwrap();
        assert_eq!(std::fs::read(cni.binary()).unwrap(), b"#!/bin/sh\n");
        let names: Vec<_> = std::fs::read_dir(&cni.bin_dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary files left");

        let changed = cni.uninstall().unwrap();
        assert_eq!(changed, vec![first.clone(), cni.binary()]);
        assert_eq!(
            serde_json::from_str::<Value>(&std::fs::read_to_string(&first).unwrap()).unwrap(),
            serde_json::from_str::<Value>(PRIMARY).unwrap()
        );
        assert!(!cni.binary().exists());
        assert!(cni.uninstall().unwrap().is_empty(), "idempotent");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
