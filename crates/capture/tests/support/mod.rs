//! Fixtures for the agent's root test: pod netns with an address, a fake tunnel answering the
//! handoff protocol on a real unix socket, a fake apiserver on loopback, and the agent process.
//! Everything is removed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use ambit_handoff::{self as handoff, Enrollment, Reply, Request};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

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

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pod netns (`/run/netns/NAME`) with one address (on a veth whose peer stays inside).
#[derive(Debug)]
pub struct PodNetns {
    pub name: String,
    pub ip: String,
}

impl PodNetns {
    pub fn new(name: String, ip: String) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        // Built before the commands run, so a failure removes what was made.
        let netns = Self { name, ip };
        let (name, ip) = (&netns.name, &netns.ip);
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up \
             && ip -n {name} link add eth0 type veth peer name eth1 \
             && ip -n {name} addr add {ip}/32 dev eth0 && ip -n {name} link set eth0 up"
        ));
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn captured(&self) -> bool {
        ambit_capture::rules::installed(&self.path()).unwrap()
    }

    /// The netns's `net.ipv4.tcp_tw_reuse`.
    pub fn tw_reuse(&self) -> u8 {
        ambit_capture::netns::tcp_tw_reuse(&self.path(), Path::new("/proc")).unwrap()
    }

    pub fn set_tw_reuse(&self, value: u8) {
        ambit_capture::netns::set_tcp_tw_reuse(&self.path(), Path::new("/proc"), value).unwrap()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What the fake tunnel was asked, in order: `add UID`, `remove UID`, `enrollment`.
pub type Requests = Arc<Mutex<Vec<String>>>;

/// A tunnel on a real unix socket answering the handoff protocol from an enrollment the test
/// sets: `Add` answers `capture` as [`Enrollment::captures`] says, and is refused while the
/// enrollment is not synced.
pub struct FakeTunnel {
    path: PathBuf,
    pub enrollment: Arc<Mutex<Enrollment>>,
    pub requests: Requests,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeTunnel {
    pub fn start(path: &Path, enrollment: Arc<Mutex<Enrollment>>) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let requests = Requests::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (enrollment, requests, stop) = (enrollment.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok((request, _fd)) = handoff::receive(&stream) else {
                        continue;
                    };
                    let view = enrollment.lock().unwrap().clone();
                    let (line, reply) = match request {
                        Request::Add { .. } if !view.synced => {
                            ("add refused".to_owned(), Reply::refused("no view yet"))
                        }
                        Request::Add { uid, namespace, .. } => (
                            format!("add {uid}"),
                            Reply {
                                capture: view.captures(&uid, &namespace),
                                ..Reply::ok()
                            },
                        ),
                        Request::Remove { uid } => (format!("remove {uid}"), Reply::ok()),
                        Request::Enrollment => (
                            "enrollment".to_owned(),
                            Reply {
                                enrollment: Some(view),
                                ..Reply::ok()
                            },
                        ),
                        // Between tunnels only (an upgrade): no agent sends them.
                        Request::Successor | Request::HandOver => (
                            "tunnel to tunnel".to_owned(),
                            Reply::refused("not a tunnel"),
                        ),
                    };
                    requests.lock().unwrap().push(line);
                    let _ = handoff::answer(&stream, &reply);
                }
            })
        };
        Self {
            path: path.to_owned(),
            enrollment,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, enrollment: Enrollment) {
        *self.enrollment.lock().unwrap() = enrollment;
    }

    pub fn count(&self, line: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// Waits until the agent has asked for the enrollment `n` more times: `n - 1` whole ticks
    /// ran with what the test set before.
    pub fn wait_ticks(&self, n: usize) {
        let start = self.count("enrollment");
        poll("agent ticks", || {
            (self.count("enrollment") >= start + n).then_some(())
        });
    }
}

impl Drop for FakeTunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An apiserver on loopback that knows one DaemonSet, answering GETs of it with `status`.
pub struct FakeApiserver {
    pub addr: std::net::SocketAddr,
    pub status: Arc<Mutex<u16>>,
    pub gets: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
}

impl FakeApiserver {
    pub fn start(namespace: &str, name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(Mutex::new(200u16));
        let gets = Arc::new(Mutex::new(0usize));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}");
        let found = format!(
            r#"{{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{{"name":"{name}","namespace":"{namespace}","uid":"1"}}}}"#
        );
        {
            let (status, gets, stop) = (status.clone(), gets.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        head += &line;
                        line.clear();
                    }
                    let code = if head.starts_with(&format!("GET {path} ")) {
                        *gets.lock().unwrap() += 1;
                        *status.lock().unwrap()
                    } else {
                        404
                    };
                    let body = if code == 200 {
                        found.clone()
                    } else {
                        format!(
                            r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":{code},"message":"fake"}}"#
                        )
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
        Self {
            addr,
            status,
            gets,
            stop,
        }
    }

    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
                 users: [{{name: agent, user: {{token: fake-token}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: agent}}}}]\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    pub fn answer(&self, code: u16) {
        *self.status.lock().unwrap() = code;
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The agent process; killed on drop if still running. Its stderr goes to `log`.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// The agent as in its container: in a mount namespace of its own (gone with it) where
    /// `/proc/sys` is read-only, as container runtimes mount it, and the node's `/proc/sys/net`
    /// is under `proc` (`--proc-dir`), as the chart mounts it.
    pub fn start(args: &[String], kubeconfig: &Path, log: &Path, proc: &Path) -> Self {
        let mut command = Command::new("unshare");
        command.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            r#"mkdir -p "$1/sys/net"; mount --bind /proc/sys/net "$1/sys/net"
               mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
               shift; exec "$@""#,
            "sh",
        ]);
        command
            .arg(proc)
            .arg(env!("CARGO_BIN_EXE_ambit-capture"))
            .arg("agent")
            .arg("--proc-dir")
            .arg(proc);
        Self::spawn(command, args, kubeconfig, log)
    }

    /// The agent in network namespace `netns` (`ip netns exec`), as the chart runs it in the
    /// node's.
    pub fn start_in(netns: &str, args: &[String], kubeconfig: &Path, log: &Path) -> Self {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            netns,
            env!("CARGO_BIN_EXE_ambit-capture"),
            "agent",
        ]);
        Self::spawn(command, args, kubeconfig, log)
    }

    fn spawn(mut command: Command, args: &[String], kubeconfig: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove(ambit_capture::agent::ENV_NAMESPACE)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
        poll(&format!("{needle:?} in the agent log"), || {
            self.log().contains(needle).then_some(())
        });
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        poll("the agent to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

/// Runs the binary as a CNI plugin; (success, stdout).
pub fn cni(command: &str, netns: &Path, uid: &str, namespace: &str, conf: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambit-capture"))
        .env("CNI_COMMAND", command)
        .env("CNI_NETNS", netns)
        .env("CNI_CONTAINERID", format!("c-{uid}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=pod-{uid};K8S_POD_UID={uid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
