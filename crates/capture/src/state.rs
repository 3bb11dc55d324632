//! The node's memory of pods, in a state directory shared by the CNI plugin and the agent
//! (a hostPath: it survives agent restarts, not reboots, as pod netns do). The node tunnel
//! never mounts it: the agent publishes what it holds as captured (TR-1).
//!
//! One JSON file per pod, written atomically, whether the pod is captured or not: the agent
//! reconciles every recorded pod with the enrollment. Invariant kept by [`crate::pod`]: a pod's
//! record says `captured` *before* its rules go in, and stops saying it only *after* they are
//! gone, so the records always cover every netns that has rules (uninstall relies on it).
//!
//! Beside the records, `enrollment` keeps the last synced enrollment the agent saw, for a CNI
//! ADD while the tunnel is unreachable.

use ambit_handoff::Enrollment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Default directory of pod records.
pub const DEFAULT_STATE_DIR: &str = "/var/run/ambit-capture/pods";
/// The last synced enrollment, in the state directory (no `.json`: it is not a record).
const ENROLLMENT_FILE: &str = "enrollment";

/// A pod on this node, as the CNI plugin or the agent recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The pod's netns as the runtime named it (`CNI_NETNS`, or found by the agent's scan).
    pub netns: PathBuf,
    /// Capture rules are (or are being) installed. Records written before enrollment existed
    /// were all captured.
    #[serde(default = "captured_by_default")]
    pub captured: bool,
    /// Capture turned the netns's `net.ipv4.tcp_tw_reuse` from the kernel's 2 to 1
    /// ([`crate::pod::time_wait_reuse`]); un-capture puts 2 back. Written before the sysctl
    /// is, as `captured` before the rules.
    #[serde(default)]
    pub time_wait_reuse: bool,
}

fn captured_by_default() -> bool {
    true
}

impl PodRecord {
    /// `namespace/name (uid)`, for logs.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("pod state in {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("pod state file {path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn decode_err(path: &Path) -> impl FnOnce(serde_json::Error) -> StateError + '_ {
    move |source| StateError::Decode {
        path: path.display().to_string(),
        source,
    }
}

/// A pod's record: `<uid>.json`.
const RECORD: &str = "json";
/// A pod being handed to the tunnel: `<uid>.handing`, the record as it will be, from just
/// before the handoff until its answer. The agent publishes these pods as captured, because the
/// tunnel asks the CA for the pod's certificate before it answers.
const HANDING: &str = "handing";

fn record_path(state: &Path, uid: &str) -> PathBuf {
    pod_path(state, uid, RECORD)
}

fn pod_path(state: &Path, uid: &str, extension: &str) -> PathBuf {
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
    state.join(format!("{safe}.{extension}"))
}

/// Writes `body` to a temporary file beside `path`; the caller renames or links it in place.
fn write_tmp(path: &Path, body: &[u8]) -> Result<PathBuf, StateError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, body).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Records (or replaces the record of) a pod.
pub fn remember(state: &Path, record: &PodRecord) -> Result<(), StateError> {
    write_pod(&record_path(state, &record.uid), record)
}

fn write_pod(path: &Path, record: &PodRecord) -> Result<(), StateError> {
    let body = serde_json::to_vec(record).map_err(decode_err(path))?;
    let tmp = write_tmp(path, &body)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Marks a pod as being handed to the tunnel (see [`HANDING`]).
pub fn mark_handing(state: &Path, record: &PodRecord) -> Result<(), StateError> {
    write_pod(&pod_path(state, &record.uid, HANDING), record)
}

pub fn unmark_handing(state: &Path, uid: &str) -> Result<(), StateError> {
    remove_file(&pod_path(state, uid, HANDING))
}

/// The pods marked as being handed to the tunnel since `since` (`None`: ever). A handoff that
/// died half way (a killed CNI plugin) leaves its mark behind, so the caller passes a time
/// before which no handoff can still be running, and leaves out the pods whose netns is gone.
pub fn handing(
    state: &Path,
    since: Option<SystemTime>,
) -> Result<(Vec<PodRecord>, Vec<StateError>), StateError> {
    read_pods(state, HANDING, since)
}

/// Records a pod only if it has no record yet (the agent's scan must not overwrite what a
/// concurrent CNI ADD wrote); `Ok(false)` if one exists.
pub fn remember_new(state: &Path, record: &PodRecord) -> Result<bool, StateError> {
    let path = record_path(state, &record.uid);
    let body = serde_json::to_vec(record).map_err(decode_err(&path))?;
    let tmp = write_tmp(&path, &body)?;
    // link(2) fails if the target exists: create-if-absent, atomically.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub fn forget(state: &Path, uid: &str) -> Result<(), StateError> {
    remove_file(&record_path(state, uid))
}

/// Whether `uid` still has a record (it may be forgotten by a CNI DEL at any time).
pub fn is_recorded(state: &Path, uid: &str) -> bool {
    record_path(state, uid).exists()
}

fn remove_file(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub fn load(state: &Path, uid: &str) -> Result<Option<PodRecord>, StateError> {
    let path = record_path(state, uid);
    match std::fs::read(&path) {
        Ok(body) => Ok(Some(
            serde_json::from_slice(&body).map_err(decode_err(&path))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Every record, by uid. A record that cannot be read is reported and skipped, so one bad
/// file does not stop the node's reconcile.
pub fn records(state: &Path) -> Result<(Vec<PodRecord>, Vec<StateError>), StateError> {
    read_pods(state, RECORD, None)
}

fn read_pods(
    state: &Path,
    extension: &str,
    since: Option<SystemTime>,
) -> Result<(Vec<PodRecord>, Vec<StateError>), StateError> {
    let entries = match std::fs::read_dir(state) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io_err(state)(e)),
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(state))?.path();
        if path.extension().is_none_or(|e| e != extension) {
            continue;
        }
        if let Some(since) = since {
            match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(modified) if modified < since => continue,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    bad.push(io_err(&path)(e));
                    continue;
                }
            }
        }
        match std::fs::read(&path) {
            Ok(body) => match serde_json::from_slice(&body) {
                Ok(record) => out.push(record),
                Err(e) => bad.push(decode_err(&path)(e)),
            },
            // Forgotten between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bad.push(io_err(&path)(e)),
        }
    }
    out.sort_by(|a: &PodRecord, b| a.uid.cmp(&b.uid));
    Ok((out, bad))
}

/// Saves the last synced enrollment (for CNI ADDs while the tunnel is unreachable).
pub fn save_enrollment(state: &Path, enrollment: &Enrollment) -> Result<(), StateError> {
    let path = state.join(ENROLLMENT_FILE);
    let body = serde_json::to_vec(enrollment).map_err(decode_err(&path))?;
    let tmp = write_tmp(&path, &body)?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The last synced enrollment the agent saved, if any and readable.
pub fn saved_enrollment(state: &Path) -> Option<Enrollment> {
    let body = std::fs::read(state.join(ENROLLMENT_FILE)).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Removes every record and the saved enrollment (uninstall).
pub fn clear(state: &Path) -> Result<(), StateError> {
    remove_file(&state.join(ENROLLMENT_FILE))?;
    let (records, _) = records(state)?;
    for r in records {
        forget(state, &r.uid)?;
    }
    let (handing, _) = handing(state, None)?;
    for r in handing {
        unmark_handing(state, &r.uid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(uid: &str, captured: bool) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            name: "n".into(),
            namespace: "ns".into(),
            netns: "/nonexistent/netns".into(),
            captured,
            time_wait_reuse: false,
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ambit-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn remembers_and_forgets() {
        let dir = temp("rf");
        assert!(records(&dir).unwrap().0.is_empty());
        remember(&dir, &rec("b", true)).unwrap();
        remember(&dir, &rec("a/../x", false)).unwrap();
        remember(&dir, &rec("b", true)).unwrap();
        let (got, bad) = records(&dir).unwrap();
        assert_eq!(got, vec![rec("a/../x", false), rec("b", true)]);
        assert!(bad.is_empty());
        assert!(is_recorded(&dir, "b"));
        assert_eq!(load(&dir, "b").unwrap(), Some(rec("b", true)));
        forget(&dir, "b").unwrap();
        forget(&dir, "never").unwrap();
        assert!(!is_recorded(&dir, "b"));
        assert_eq!(records(&dir).unwrap().0, vec![rec("a/../x", false)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn handing_marks_are_apart_from_the_records_and_cleared() {
        let dir = temp("handing");
        remember(&dir, &rec("a", true)).unwrap();
        mark_handing(&dir, &rec("b", false)).unwrap();
        assert_eq!(handing(&dir, None).unwrap().0, vec![rec("b", false)]);
        assert_eq!(records(&dir).unwrap().0, vec![rec("a", true)]);
        unmark_handing(&dir, "b").unwrap();
        unmark_handing(&dir, "never").unwrap();
        assert!(handing(&dir, None).unwrap().0.is_empty());
        mark_handing(&dir, &rec("c", false)).unwrap();
        clear(&dir).unwrap();
        assert!(handing(&dir, None).unwrap().0.is_empty());
        assert!(records(&dir).unwrap().0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mark_older_than_the_cutoff_is_left_out() {
        let dir = temp("stale");
        mark_handing(&dir, &rec("killed", false)).unwrap();
        mark_handing(&dir, &rec("running", false)).unwrap();
        let now = SystemTime::now();
        let minute = std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(pod_path(&dir, "killed", HANDING))
            .unwrap()
            .set_modified(now - minute)
            .unwrap();
        let cutoff = Some(now - minute / 2);
        assert_eq!(
            handing(&dir, cutoff).unwrap().0,
            vec![rec("running", false)]
        );
        assert_eq!(handing(&dir, None).unwrap().0.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remember_new_never_overwrites() {
        let dir = temp("new");
        assert!(remember_new(&dir, &rec("a", false)).unwrap());
        remember(&dir, &rec("a", true)).unwrap();
        assert!(!remember_new(&dir, &rec("a", false)).unwrap());
        assert_eq!(load(&dir, "a").unwrap(), Some(rec("a", true)));
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_records_were_captured_and_bad_ones_are_skipped() {
        let dir = temp("old");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("u.json"),
            r#"{"uid":"u","name":"n","namespace":"ns","netns":"/run/netns/x"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("bad.json"), "{").unwrap();
        let (got, bad) = records(&dir).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].captured);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("bad.json"), "{}", bad[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn enrollment_is_saved_beside_the_records_and_cleared() {
        let dir = temp("enr");
        assert!(saved_enrollment(&dir).is_none());
        let e = Enrollment {
            synced: true,
            namespaces: vec!["demo".into()],
            ..Enrollment::default()
        };
        save_enrollment(&dir, &e).unwrap();
        remember(&dir, &rec("a", true)).unwrap();
        assert_eq!(saved_enrollment(&dir), Some(e));
        assert_eq!(records(&dir).unwrap().0.len(), 1, "not taken for a record");
        clear(&dir).unwrap();
        assert!(saved_enrollment(&dir).is_none());
        assert!(records(&dir).unwrap().0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
