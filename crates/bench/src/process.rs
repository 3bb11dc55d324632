//! Child processes of a benchmark: this same binary started in a role (given the CA on stdin,
//! reporting its listening address on stdout), or another program under test (nginx, the
//! waypoint). Either may be pinned to a CPU set; each is measured from /proc and stopped with
//! SIGTERM (SIGKILL if it lingers) when dropped.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The line a role prints once it listens.
pub const LISTENING: &str = "LISTENING ";

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// /proc reports CPU times in USER_HZ ticks, 100 per second on Linux's mainstream
/// architectures.
const USER_HZ: f64 = 100.0;

/// The glibc tunable the chart sets for the node tunnel and the controller for waypoints
/// (docs/tunnel.md, "Memory allocator"): the processes standing in for them run as shipped.
pub const SHIPPED_GLIBC_TUNABLES: (&str, &str) =
    ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576");

/// A command for `program`, run under `taskset -c CPUS` when `cpus` is given (taskset execs the
/// program, so the child's pid is the program's).
pub fn command(program: impl AsRef<OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A child process, stopped when dropped.
pub struct Process {
    name: String,
    child: Child,
    /// Set once the child has been reaped: its pid may then belong to another process.
    exited: bool,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            exited: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr, when spawned with it piped: the reader must keep reading, or the process
    /// blocks once the pipe is full.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        self.exited |= status.is_some();
        Ok(status)
    }

    /// Fails if the process has exited, naming how.
    pub fn check_running(&mut self) -> Result<()> {
        match self.try_wait()? {
            Some(status) => bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }

    /// Once the process has exited: its status and what it wrote to its piped stdout and
    /// stderr (for programs whose output is small enough not to fill a pipe).
    pub fn finish_if_exited(&mut self) -> Result<Option<Output>> {
        let Some(status) = self.try_wait()? else {
            return Ok(None);
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let Some(mut pipe) = self.child.stdout.take() {
            pipe.read_to_end(&mut stdout)?;
        }
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_end(&mut stderr)?;
        }
        Ok(Some(Output {
            status,
            stdout,
            stderr,
        }))
    }

    /// Waits until the process accepts connections on `addr` (10 s at most), failing early if
    /// it exits.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} does not listen on {addr} after 10 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn proc_file(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.pid()))
            .with_context(|| format!("reading /proc/PID/{file} of {}", self.name))
    }

    /// Resident set size now (VmRSS).
    pub fn rss_bytes(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// Peak resident set size so far (VmHWM).
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let kib: u64 = self
            .proc_file("status")?
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{field} in /proc status"))?;
        Ok(kib * 1024)
    }

    /// Context switches so far, voluntary (waiting) and involuntary (preempted), all threads.
    pub fn context_switches(&self) -> Result<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .with_context(|| format!("listing the threads of {}", self.name))?;
        let mut total = 0;
        for task in tasks {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// CPU time run so far, in nanoseconds: the sum over its live threads of the scheduler's
    /// own accounting (`/proc/PID/task/TID/schedstat`), precise where `/proc/PID/stat`'s 10 ms
    /// ticks are not (a round trip costs tens of microseconds). Threads that ended are not
    /// counted.
    pub fn cpu_ns(&self) -> Result<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .with_context(|| format!("listing the threads of {}", self.name))?;
        let mut total = 0;
        for task in tasks {
            // A thread may end between the listing and the read: it no longer counts.
            if let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .context("run time in /proc schedstat")?;
            }
        }
        Ok(total)
    }

    /// CPU time used so far, user and system, all threads (utime + stime of /proc/PID/stat).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.proc_file("stat")?;
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Fields 14 and 15 of proc(5); the first after ')' is field 3.
        let ticks = |index: usize| -> Result<u64> {
            fields
                .get(index - 3)
                .and_then(|v| v.parse().ok())
                .context("utime/stime in /proc stat")
        };
        Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        let pid = rustix::process::Pid::from_child(&self.child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This binary in a role, listening at `addr`.
pub struct RoleProcess {
    pub process: Process,
    pub addr: SocketAddr,
}

impl RoleProcess {
    /// Starts `role args...` (pinned to `cpus` when given), writes `stdin_text` to it, and
    /// waits for its address.
    pub fn start(
        role: &str,
        args: &[String],
        stdin_text: &str,
        cpus: Option<&str>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut process = Process::spawn(
            role,
            command(exe, cpus)
                .arg("role")
                .arg(role)
                .args(args)
                .env(SHIPPED_GLIBC_TUNABLES.0, SHIPPED_GLIBC_TUNABLES.1)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let mut stdin = process.child.stdin.take().context("child stdin")?;
        stdin.write_all(stdin_text.as_bytes())?;
        drop(stdin);
        let stdout = process.child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix(LISTENING) else {
            bail!("role {role} did not start: {line:?}");
        };
        Ok(Self {
            addr: addr.parse().context("role address")?,
            process,
        })
    }

    pub fn rss_bytes(&self) -> Result<u64> {
        self.process.rss_bytes()
    }
}
