//! Inside pods' network namespaces: finding them by address, and their `tcp_tw_reuse`.
//!
//! Finding pods' network namespaces by address: the agent's way to adopt pods that started
//! before ambit was installed (no CNI ADD ever recorded them). Runtimes name pod netns as they
//! like (`cni-<random>`; the testbed `<node>-pod-<uid>`), so a netns is matched by the
//! addresses inside it, not by its name.
//!
//! Addresses are read with an rtnetlink `RTM_GETADDR` dump from a short-lived thread that
//! `setns(2)`s into the netns (rustix, no extra crate, no `ip`/`nsenter` process per netns);
//! the thread ends with the read, so nothing else ever runs in a pod's netns. Results are cached
//! by netns inode: a pod's addresses do not change while its sandbox lives.

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default directory of named network namespaces (`ip netns`, CNI runtimes).
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

// rtnetlink, from <linux/netlink.h> and <linux/rtnetlink.h>.
const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Bound on one dump: a pod netns has a handful of addresses.
const MAX_DUMP_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open netns {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter netns {path} (the capture agent needs CAP_SYS_ADMIN): {source}")]
    Enter {
        path: String,
        source: std::io::Error,
    },
    #[error("netlink in netns {path}: {source}")]
    Netlink {
        path: String,
        source: std::io::Error,
    },
    #[error("sysctl in netns {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed netlink reply or sysctl value in netns {0}")]
    Malformed(String),
}

/// The addresses configured in the netns at `path` (loopback and link-local left out).
pub fn addresses(path: &Path) -> Result<Vec<IpAddr>, NetnsError> {
    within(path, |name| {
        dump_addresses().map_err(|e| match e {
            DumpError::Io(source) => NetnsError::Netlink {
                path: name.to_owned(),
                source,
            },
            DumpError::Malformed => NetnsError::Malformed(name.to_owned()),
        })
    })
}

/// The netns's `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 (a new netns's default) loopback only.
/// Read through the procfs at `proc` (see [`DEFAULT_PROC`]).
pub fn tcp_tw_reuse(path: &Path, proc: &Path) -> Result<u8, NetnsError> {
    let file = proc.join(TCP_TW_REUSE);
    within(path, |name| {
        let text = std::fs::read_to_string(&file).map_err(sysctl_err(name))?;
        text.trim()
            .parse()
            .map_err(|_| NetnsError::Malformed(format!("{name}: {} is {text:?}", file.display())))
    })
}

pub fn set_tcp_tw_reuse(path: &Path, proc: &Path, value: u8) -> Result<(), NetnsError> {
    let file = proc.join(TCP_TW_REUSE);
    within(path, |name| {
        std::fs::write(&file, format!("{value}\n")).map_err(sysctl_err(name))
    })
}

/// Where procfs is, writable: on the node (the CNI plugin, the commands). A container's own
/// `/proc/sys` is read-only (the runtime's default), so the chart mounts the node's
/// `/proc/sys/net` into the agent's under another root. Any procfs mount serves: under
/// `sys/net`, a task sees the sysctls of its own netns, so the file is opened from a thread
/// inside the pod's.
pub const DEFAULT_PROC: &str = "/proc";
const TCP_TW_REUSE: &str = "sys/net/ipv4/tcp_tw_reuse";

fn sysctl_err(name: &str) -> impl FnOnce(std::io::Error) -> NetnsError + '_ {
    move |source| NetnsError::Sysctl {
        path: name.to_owned(),
        source,
    }
}

/// Runs `f` (given the netns's name for errors) on a short-lived thread inside the netns at
/// `path`: the thread ends with `f`, so nothing else ever runs in a pod's netns.
fn within<T: Send>(
    path: &Path,
    f: impl FnOnce(&str) -> Result<T, NetnsError> + Send,
) -> Result<T, NetnsError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: name.clone(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| NetnsError::Enter {
                    path: name.clone(),
                    source: e.into(),
                })?;
                f(&name)
            })
            .join()
            .unwrap_or_else(|_| Err(NetnsError::Malformed(name.clone())))
    })
}

enum DumpError {
    Io(std::io::Error),
    Malformed,
}

impl From<rustix::io::Errno> for DumpError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e.into())
    }
}

/// One `RTM_GETADDR` dump in the calling thread's netns.
fn dump_addresses() -> Result<Vec<IpAddr>, DumpError> {
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    let mut request = [0u8; NLMSG_HDR + IFADDRMSG];
    let len = request.len() as u32;
    request[0..4].copy_from_slice(&len.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifaddrmsg all zero: every family, every interface.
    rustix::net::send(&socket, &request, SendFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0;
    loop {
        let (n, _) = rustix::net::recv(&socket, &mut buf[..], RecvFlags::empty())?;
        total += n;
        if n == 0 || total > MAX_DUMP_BYTES {
            return Err(DumpError::Malformed);
        }
        if parse_dump(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses one datagram of the dump into `out`; `Ok(true)` once the dump is done.
fn parse_dump(mut b: &[u8], out: &mut Vec<IpAddr>) -> Result<bool, DumpError> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).ok_or(DumpError::Malformed)? as usize;
        let kind = u16_at(b, 4).ok_or(DumpError::Malformed)?;
        if len < NLMSG_HDR || len > b.len() {
            return Err(DumpError::Malformed);
        }
        let body = &b[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or(DumpError::Malformed)? as i32;
                return Err(DumpError::Io(std::io::Error::from_raw_os_error(-code)));
            }
            RTM_NEWADDR => parse_addr(body, out)?,
            _ => {}
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(false)
}

/// One `ifaddrmsg` and its attributes.
fn parse_addr(body: &[u8], out: &mut Vec<IpAddr>) -> Result<(), DumpError> {
    let family = *body.first().ok_or(DumpError::Malformed)?;
    let mut attrs = body.get(IFADDRMSG..).ok_or(DumpError::Malformed)?;
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0).ok_or(DumpError::Malformed)? as usize;
        let kind = u16_at(attrs, 2).ok_or(DumpError::Malformed)?;
        if len < 4 || len > attrs.len() {
            return Err(DumpError::Malformed);
        }
        let value = &attrs[4..len];
        if kind == IFA_ADDRESS || kind == IFA_LOCAL {
            let ip = match (family, value.len()) {
                (AF_INET, 4) => {
                    let v: [u8; 4] = value.try_into().map_err(|_| DumpError::Malformed)?;
                    Some(IpAddr::from(v))
                }
                (AF_INET6, 16) => {
                    let v: [u8; 16] = value.try_into().map_err(|_| DumpError::Malformed)?;
                    Some(IpAddr::from(v))
                }
                _ => None,
            };
            if let Some(ip) = ip
                && is_pod_address(&ip)
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(())
}

fn is_pod_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local(),
    }
}

/// (device, inode) of a netns file: two paths of one namespace compare equal.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Scans a netns directory, reading at most a bounded number of new netns per call.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Path → (netns identity, its addresses); only non-empty results are kept (a netns is
    /// often named before the CNI plugin gives it an address).
    cache: HashMap<PathBuf, ((u64, u64), Vec<IpAddr>)>,
}

impl Scanner {
    /// Addresses → netns paths in `dir`. The agent's own netns is never a candidate (on the
    /// testbed the node's netns sits in the same directory as its pods'). At most `budget`
    /// netns are read afresh; the rest wait for the next call. Errors on single netns are
    /// returned beside the result, per path.
    pub fn scan(
        &mut self,
        dir: &Path,
        budget: usize,
    ) -> (HashMap<IpAddr, Vec<PathBuf>>, Vec<NetnsError>) {
        let own = identity(Path::new("/proc/self/ns/net"));
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        self.cache.retain(|p, _| paths.contains(p));
        let mut budget = budget;
        let mut errors = Vec::new();
        let mut by_ip: HashMap<IpAddr, Vec<PathBuf>> = HashMap::new();
        for path in paths {
            let Some(id) = identity(&path) else { continue };
            if Some(id) == own {
                continue;
            }
            let cached = self
                .cache
                .get(&path)
                .filter(|(cached_id, _)| *cached_id == id)
                .map(|(_, ips)| ips.clone());
            let ips = match cached {
                Some(ips) => ips,
                None if budget == 0 => continue,
                None => {
                    budget -= 1;
                    match addresses(&path) {
                        Ok(ips) => {
                            if !ips.is_empty() {
                                self.cache.insert(path.clone(), (id, ips.clone()));
                            }
                            ips
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
            };
            for ip in ips {
                by_ip.entry(ip).or_default().push(path.clone());
            }
        }
        (by_ip, errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        m
    }

    fn newaddr(family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, 24, 0, 0, 2, 0, 0, 0];
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(RTM_NEWADDR, &body)
    }

    #[test]
    fn parses_an_address_dump() {
        let mut dump = newaddr(AF_INET, &[attr(IFA_ADDRESS, &[127, 0, 0, 1])]);
        dump.extend(newaddr(
            AF_INET,
            &[
                attr(IFA_ADDRESS, &[10, 101, 1, 5]),
                attr(IFA_LOCAL, &[10, 101, 1, 5]),
                attr(3, b"eth0\0"),
            ],
        ));
        let v6: std::net::Ipv6Addr = "fd00::5".parse().unwrap();
        let ll: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        dump.extend(newaddr(AF_INET6, &[attr(IFA_ADDRESS, &v6.octets())]));
        dump.extend(newaddr(AF_INET6, &[attr(IFA_ADDRESS, &ll.octets())]));
        let mut out = Vec::new();
        assert!(!parse_dump(&dump, &mut out).ok().unwrap(), "no DONE yet");
        assert!(
            parse_dump(&message(NLMSG_DONE, &[0; 4]), &mut out)
                .ok()
                .unwrap()
        );
        assert_eq!(
            out,
            vec!["10.101.1.5".parse::<IpAddr>().unwrap(), IpAddr::V6(v6)]
        );
    }

    #[test]
    fn malformed_dumps_are_errors_not_panics() {
        let mut out = Vec::new();
        let mut bad_len = newaddr(AF_INET, &[attr(IFA_ADDRESS, &[10, 0, 0, 1])]);
        bad_len[0] = 200;
        assert!(matches!(
            parse_dump(&bad_len, &mut out),
            Err(DumpError::Malformed)
        ));
        let mut bad_attr = newaddr(AF_INET, &[attr(IFA_ADDRESS, &[10, 0, 0, 1])]);
        bad_attr[NLMSG_HDR + IFADDRMSG] = 2; // attribute shorter than its header
        assert!(matches!(
            parse_dump(&bad_attr, &mut out),
            Err(DumpError::Malformed)
        ));
        let err = message(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(matches!(parse_dump(&err, &mut out), Err(DumpError::Io(_))));
        // A truncated trailing header is ignored rather than read past.
        assert!(!parse_dump(&[0u8; 7], &mut out).ok().unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn reads_its_own_netns_when_root() {
        // Entering a netns needs CAP_SYS_ADMIN; the root test drives this for real.
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping reads_its_own_netns_when_root: not root");
            return;
        }
        let ips = addresses(Path::new("/proc/self/ns/net")).unwrap();
        assert!(ips.iter().all(is_pod_address), "{ips:?}");
    }
}
