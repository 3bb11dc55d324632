//! The node agent's memory of enrolled pods, and the replay that hands them all to a tunnel
//! that (re)started: a restarted tunnel has lost every netns fd, and the pods keep their
//! capture rules, so their traffic fails closed until the agent hands them over again.

use crate::cni::{EnrollError, enroll};
use crate::handoff::Request;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default directory of pod records (node-local, survives agent restarts, not reboots).
pub const DEFAULT_STATE_DIR: &str = "/var/run/ambit/pods";

/// An enrolled pod, as the agent remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub netns: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("pod state in {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("pod record {path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

fn record_path(state: &Path, uid: &str) -> PathBuf {
    // Kubernetes uids are UUIDs; anything else is made path-safe.
    let safe: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join(format!("{safe}.json"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn remember(state: &Path, record: &PodRecord) -> Result<(), StateError> {
    std::fs::create_dir_all(state).map_err(io_err(state))?;
    let path = record_path(state, &record.uid);
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(record).map_err(|source| StateError::Decode {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(&tmp, body).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

pub fn forget(state: &Path, uid: &str) -> Result<(), StateError> {
    let path = record_path(state, uid);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
        _ => Ok(()),
    }
}

pub fn records(state: &Path) -> Result<Vec<PodRecord>, StateError> {
    let entries = match std::fs::read_dir(state) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(state)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(state))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let body = std::fs::read(&path).map_err(io_err(&path))?;
        out.push(
            serde_json::from_slice(&body).map_err(|source| StateError::Decode {
                path: path.display().to_string(),
                source,
            })?,
        );
    }
    out.sort_by(|a: &PodRecord, b| a.uid.cmp(&b.uid));
    Ok(out)
}

/// A replayed pod's uid and how its handoff went.
pub type Replayed = (String, Result<(), EnrollError>);

/// Hands every remembered pod whose netns still exists to the tunnel at `socket`.
pub fn replay(state: &Path, socket: &Path) -> Result<Vec<Replayed>, StateError> {
    Ok(records(state)?
        .into_iter()
        .filter(|r| r.netns.exists())
        .map(|r| {
            let result = enroll(
                &r.netns,
                socket,
                Request::Add {
                    uid: r.uid.clone(),
                    name: r.name,
                    namespace: r.namespace,
                },
            );
            (r.uid, result)
        })
        .collect())
}

/// Identifies one tunnel instance: each start binds a new socket file.
fn tunnel_instance(socket: &Path) -> Option<(u64, i64)> {
    let meta = std::fs::metadata(socket).ok()?;
    crate::handoff::tunnel_ready(socket).then(|| (meta.ino(), meta.ctime_nsec()))
}

/// Runs forever: whenever a new tunnel instance appears on `socket`, replays all pods.
/// Failed pods are retried on the next tick until they succeed.
pub fn run(state: &Path, socket: &Path, tick: Duration) -> ! {
    let mut served = None;
    loop {
        let now = tunnel_instance(socket);
        if now.is_some() && now != served {
            match replay(state, socket) {
                Ok(results) => {
                    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
                    for (uid, result) in &failed {
                        if let Err(e) = result {
                            eprintln!("ambit-capture agent: pod {uid}: {e}");
                        }
                    }
                    eprintln!(
                        "ambit-capture agent: handed {} pod(s) to the tunnel, {} failed",
                        results.len() - failed.len(),
                        failed.len()
                    );
                    if failed.is_empty() {
                        served = now;
                    }
                }
                Err(e) => eprintln!("ambit-capture agent: {e}"),
            }
        }
        std::thread::sleep(tick);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn remembers_and_forgets() {
        let dir = std::env::temp_dir().join(format!("ambit-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(records(&dir).unwrap().is_empty());
        let rec = |uid: &str| PodRecord {
            uid: uid.into(),
            name: "n".into(),
            namespace: "ns".into(),
            netns: "/nonexistent/netns".into(),
        };
        remember(&dir, &rec("b")).unwrap();
        remember(&dir, &rec("a/../x")).unwrap();
        remember(&dir, &rec("b")).unwrap();
        let got = records(&dir).unwrap();
        assert_eq!(got, vec![rec("a/../x"), rec("b")]);
        // Pods whose netns is gone are not replayed.
        assert!(
            replay(&dir, Path::new("/nonexistent.sock"))
                .unwrap()
                .is_empty()
        );
        forget(&dir, "b").unwrap();
        forget(&dir, "never").unwrap();
        assert_eq!(records(&dir).unwrap(), vec![rec("a/../x")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
