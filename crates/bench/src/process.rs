//! Child processes of a benchmark: this same binary started in a role, given the CA on stdin,
//! reporting its listening address on stdout; killed when dropped.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The line a role prints once it listens.
pub const LISTENING: &str = "LISTENING ";

pub struct RoleProcess {
    name: String,
    child: Child,
    pub addr: SocketAddr,
}

impl RoleProcess {
    /// Starts `role args...`, writes `stdin_text` to it, and waits for its address.
    pub fn start(role: &str, args: &[String], stdin_text: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut child = Command::new(exe)
            .arg("role")
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting role {role}"))?;
        let mut stdin = child.stdin.take().context("child stdin")?;
        stdin.write_all(stdin_text.as_bytes())?;
        drop(stdin);
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix(LISTENING) else {
            let _ = child.kill();
            bail!("role {role} did not start: {line:?}");
        };
        Ok(Self {
            name: role.to_string(),
            addr: addr.parse().context("role address")?,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now, from /proc.
    pub fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("reading the status of {}", self.name))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS in /proc status")?;
        Ok(kib * 1024)
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
