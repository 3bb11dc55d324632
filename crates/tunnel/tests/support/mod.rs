//! Network-namespace fixtures for the tunnel's end-to-end tests: nodes on a bridge, pods per
//! node, processes inside them, all removed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when the test may run; prints a loud notice otherwise. Under CI a skip is a failure.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let msg = format!(
        "\n!!!!!!!!!! SKIPPED {test}: needs root (network namespaces, nftables). CI runs it as root. !!!!!!!!!!\n"
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("{msg}");
    false
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_status(cmd: &str) -> (bool, String, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Builds the binaries the tests run (other packages' binaries are not built for us), or,
/// with `AMBIT_TEST_BINS=DIR`, takes them from DIR as they are: an A/B run compares binaries
/// copied aside, whatever the shared target dir holds meanwhile.
pub fn build_binaries(packages: &[&str]) -> PathBuf {
    if let Some(dir) = std::env::var_os("AMBIT_TEST_BINS") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(["build", "--bins"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    assert!(cmd.status().unwrap().success(), "cargo build failed");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ambit-tunnel"));
    exe.parent().unwrap().to_path_buf()
}

/// Runs `f` on a thread inside netns `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// Starts `f` on a thread inside netns `ns` and returns at once.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
}

/// GET `path` from `addr` inside `ns`; `None` if it cannot connect.
pub fn http_get(ns: &str, addr: &str, path: &str) -> Option<String> {
    let addr = addr.to_owned();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    in_netns(ns, move || {
        let mut tcp = std::net::TcpStream::connect(&addr).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        tcp.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        tcp.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// The network namespaces and the directory of one test's topology, named after one prefix
/// (unique per process, short enough for interface names). Drop deletes the namespaces, the last
/// made first (a pod's veth goes with its namespace, before its node's), then the directory; a
/// topology that runs processes in them declares those before this field so they die first.
pub struct Namespaces {
    prefix: String,
    pub dir: PathBuf,
    made: Vec<String>,
}

impl Namespaces {
    /// `tag` followed by this process's id; a fresh directory `ambit-<prefix>` in the temp dir.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("ambit-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            prefix,
            dir,
            made: Vec::new(),
        }
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Where namespace `short` is mounted.
    pub fn path(&self, short: &str) -> String {
        format!("/run/netns/{}", self.ns(short))
    }

    /// Adds namespace `short` with its loopback up; returns its full name.
    pub fn add(&mut self, short: &str) -> String {
        let name = self.ns(short);
        self.made.push(name.clone());
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        name
    }

    /// Deletes namespace `short` now.
    pub fn delete(&mut self, short: &str) {
        let name = self.ns(short);
        sh(&format!("ip netns del {name}"));
        self.made.retain(|n| *n != name);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node tunnel in `ns` for `node`, taking its mesh and CA from `dir` (`mesh.yaml`, `ca.pem`,
/// `ca.key`), its handoff socket at `socket`, and logging to `log` in `dir`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_node_tunnel(
    ns: &str,
    exe: &Path,
    node: &str,
    dir: &Path,
    socket: &Path,
    mode: &str,
    env: &[(&str, &str)],
    log: &str,
) -> Proc {
    let arg = |file: &str| dir.join(file).to_str().unwrap().to_owned();
    Proc::spawn(
        ns,
        exe,
        &[
            "--node",
            node,
            "--mesh",
            &arg("mesh.yaml"),
            "--ca-cert",
            &arg("ca.pem"),
            "--ca-key",
            &arg("ca.key"),
            "--socket",
            socket.to_str().unwrap(),
            "--mode",
            mode,
        ],
        env,
        &dir.join(log),
    )
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait()
    }

    pub fn signal_term(&self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        poll("process exit", Duration::from_secs(15), || {
            self.0.try_wait().unwrap()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump inside a netns, writing to a file; started once it listens.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(ns: &str, file: &Path) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                "-B",
                "8192",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        // tcpdump says "listening on any ..." once capturing.
        while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(line.contains("listening on"), "tcpdump did not start");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self {
            proc: Proc(child),
            file: file.to_owned(),
        }
    }

    /// Stops the capture and returns (packet summaries, ASCII dump).
    pub fn finish(mut self) -> (String, String) {
        self.proc.terminate();
        let f = self.file.display();
        (
            sh(&format!("tcpdump -nn -r {f} 2>/dev/null")),
            sh(&format!("tcpdump -nn -A -r {f} 2>/dev/null")),
        )
    }
}

/// CPU time `pid` has run, in nanoseconds: the sum over its live threads of the scheduler's
/// own accounting (`/proc/PID/task/TID/schedstat`), precise where `/proc/PID/stat`'s 10 ms
/// ticks are not. Threads that ended are not counted.
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// A `/proc/PID/status` field in its unit (kB for memory).
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn rss_bytes(pid: u32) -> u64 {
    status_field(pid, "VmRSS:") * 1024
}

/// Resident anonymous memory (heap, stacks): what grows with the work a process holds, where
/// VmRSS also counts the pages of its own code it has touched so far.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    status_field(pid, "RssAnon:") * 1024
}

pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// How many interleaved rounds a benchmark runs: `AMBIT_BENCH_ROUNDS`, default 3.
pub fn bench_rounds() -> usize {
    match std::env::var("AMBIT_BENCH_ROUNDS") {
        Err(_) => 3,
        Ok(text) => {
            text.parse().ok().filter(|&n| n >= 1).unwrap_or_else(|| {
                panic!("AMBIT_BENCH_ROUNDS={text:?}: expected a whole number >= 1")
            })
        }
    }
}

/// Per-round values of one quantity: (median, min, max); the median is the upper middle of an
/// even count.
pub fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}
