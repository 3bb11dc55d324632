//! Running host commands (`ip`, `nsenter`, `mount`) and managing detached processes by pid file.
//! The testbed shells out to iproute2 and util-linux instead of making syscalls itself, which
//! keeps this crate free of unsafe code and makes every step reproducible by hand.

use crate::Error;
use rustix::process::{Pid, Signal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            cmd: describe(cmd),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: describe(cmd),
            msg: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Starts `program` detached from us (own process group, stdin closed, output to
/// `<log_dir>/<name>.log`) and records its pid in `<pid_dir>/<name>.pid`.
pub fn spawn_daemon(
    name: &str,
    program: &Path,
    args: &[String],
    log_dir: &Path,
    pid_dir: &Path,
) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(log_dir).map_err(|e| Error::io(log_dir, e))?;
    std::fs::create_dir_all(pid_dir).map_err(|e| Error::io(pid_dir, e))?;
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0);
    let child = cmd.spawn().map_err(|e| Error::Command {
        cmd: describe(&cmd),
        msg: e.to_string(),
    })?;
    let pid = child.id();
    let pid_path = pid_dir.join(format!("{name}.pid"));
    std::fs::write(&pid_path, pid.to_string()).map_err(|e| Error::io(&pid_path, e))?;
    // Not waited for: it outlives us. Reaping is init's job once we exit.
    drop(child);
    Ok(pid)
}

/// Pid files under `pid_dir`, as (name, pid).
pub fn pid_files(pid_dir: &Path) -> Vec<(String, i32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(pid_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if path.extension().is_none_or(|x| x != "pid") {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((name, pid, path));
        }
    }
    out.sort();
    out
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn signal(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

pub fn signal_group(pgid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// SIGTERM, then SIGKILL what is still alive after `grace`. Returns once all are gone or after
/// one more second.
pub fn terminate(pids: &[i32], grace: Duration) {
    for &p in pids {
        signal(p, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in pids.iter().filter(|&&p| alive(p)) {
        signal(p, Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process inside netns `name`, then deletes it.
pub fn netns_destroy(name: &str) -> Result<(), Error> {
    let pids: Vec<i32> = ip(&["netns", "pids", name])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &p in &pids {
        signal(p, Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    ip(&["netns", "del", name]).map(|_| ())
}

pub fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}
