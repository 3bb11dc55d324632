//! What the capture agent and the node tunnel agree on, in a crate of its own so the tunnel
//! links neither the capture agent nor a Kubernetes client (its code is TR-1's attack surface).
//!
//! Handing a pod's network namespace to the node tunnel: one request per unix-socket
//! connection. The capture side sends a JSON [`Request`] in one `sendmsg` carrying the netns fd
//! (SCM_RIGHTS) for `Add`, then shuts down its write side; the tunnel answers with a JSON
//! [`Reply`] and closes. Blocking I/O: both ends handle one small message per pod event.
//!
//! The tunnel decides enrollment, from the controller's view of its node: the answer to `Add`
//! says whether to capture the pod, and [`Request::Enrollment`] returns the whole picture the
//! capture agent reconciles running pods with (a namespace labeled or unlabeled, a pod opting
//! out). Neither side needs Kubernetes API rights for it.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// SO_MARK the tunnel puts on its own sockets; the capture rules let marked traffic through.
pub const TUNNEL_MARK: u32 = 0x539;
/// Outbound capture port (inside each pod netns): the rules redirect there, the tunnel listens.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PORT: u16 = 15006;
/// Default path of the tunnel's handoff socket (shared hostPath in the DaemonSet).
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/tunnel.sock";
/// The source address the node's probe traffic (kubelet's httpGet and tcpSocket probes) is
/// rewritten to on its way into a pod, as Istio does; the capture rules let it reach the app.
pub const PROBE_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);

/// What the node tunnel does with plaintext to enrolled pods; the capture rules follow it for
/// what the tunnel never sees (UDP, ICMP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse it: enrolled pods take only mutual-TLS traffic (and the node's probes).
    #[default]
    Strict,
    /// Let it in with no identity (L4 policy still applies).
    Permissive,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a mode (expected strict or permissive)")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Mode::Strict),
            "permissive" => Ok(Mode::Permissive),
            _ => Err(UnknownMode(s.into())),
        }
    }
}

const MAX_MESSAGE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// A pod to serve; its netns fd rides along.
    Add {
        uid: String,
        name: String,
        namespace: String,
    },
    /// A pod gone or opted out.
    Remove { uid: String },
    /// What the tunnel knows of this node's enrollment: answered with [`Reply::enrollment`].
    Enrollment,
    /// From a new tunnel starting on the node (a rolling upgrade) to the one serving: the
    /// serving tunnel keeps serving but reports itself not ready, so the new pod is not marked
    /// ready by its answer on the readiness port both share (host network).
    Successor,
    /// From that new tunnel once it has a view: give up one pod, its netns and its listening
    /// sockets (the same sockets, so no connection is refused between the two), and take no
    /// new pod. Answered with [`Reply::handed_over`] and the fds; `None` when none is left.
    HandOver,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `Add`: capture the pod. The tunnel serves it (or holds it until the controller's
    /// view has its addresses). `false`: the pod is not enrolled and the tunnel kept no fd.
    #[serde(default)]
    pub capture: bool,
    /// For a captured pod: the tunnel's mode. Absent (an older tunnel): strict, which fails
    /// closed.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<HandedOver>,
}

/// A pod given up by [`Request::HandOver`]. Its fds ride along: the netns first, then, when
/// `listening`, the listeners on [`OUTBOUND_PORT`], [`INBOUND_PORT`] and 15008 (HBONE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandedOver {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Served (with listeners), or held until the view has its addresses (netns only).
    pub listening: bool,
}

/// Fds a handed-over pod comes with: its netns and its three listeners.
pub const HANDED_OVER_FDS: usize = 4;

impl Reply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// The enrollment of one node's pods, as the tunnel has it from the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// The tunnel has a view from the controller (or its file). Until then nothing is known
    /// and nothing must be released.
    pub synced: bool,
    /// Namespaces labeled for the mesh.
    pub namespaces: Vec<String>,
    /// Enrolled pods on this node.
    pub pods: Vec<EnrolledPod>,
    /// Uids of this node's pods in enrolled namespaces that opted out.
    pub opted_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolledPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Empty until the pod's addresses are known.
    pub ips: Vec<std::net::IpAddr>,
}

impl Enrollment {
    /// Whether the pod `uid` of `namespace` is to be captured. A pod the view does not list
    /// yet, in an enrolled namespace, is captured: it fails closed until the view catches up
    /// rather than starting in plaintext.
    pub fn captures(&self, uid: &str, namespace: &str) -> bool {
        if self.pods.iter().any(|p| p.uid == uid) {
            return true;
        }
        !self.opted_out.iter().any(|u| u == uid) && self.namespaces.iter().any(|n| n == namespace)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(
        "cannot reach the node tunnel at {path} (is ambit-tunnel running on this node?): {source}"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("handoff I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed handoff message: {0}")]
    Message(#[from] serde_json::Error),
    #[error("an Add request came without a netns fd")]
    MissingFd,
    #[error("the tunnel refused the pod: {0}")]
    Refused(String),
}

/// Sends `request` (with `netns` for `Add`) and waits for the tunnel's answer; a refusal is an
/// error.
pub fn send(
    socket: &Path,
    request: &Request,
    netns: Option<&OwnedFd>,
) -> Result<Reply, HandoffError> {
    exchange(socket, request, netns).map(|(reply, _)| reply)
}

/// [`send`], keeping the fds the answer carries (a [`Request::HandOver`]).
pub fn exchange(
    socket: &Path,
    request: &Request,
    netns: Option<&OwnedFd>,
) -> Result<(Reply, Vec<OwnedFd>), HandoffError> {
    let stream = UnixStream::connect(socket).map_err(|source| HandoffError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let fds: Vec<_> = netns.iter().map(|fd| fd.as_fd()).collect();
    send_message(&stream, &serde_json::to_vec(request)?, &fds)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let (reply, fds) = receive_message(&stream)?;
    let reply: Reply = serde_json::from_slice(&reply)?;
    if reply.ok {
        Ok((reply, fds))
    } else {
        Err(HandoffError::Refused(reply.error.unwrap_or_default()))
    }
}

/// One message, its fds (SCM_RIGHTS) on its first byte.
fn send_message(stream: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDED_OVER_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    (&*stream).write_all(&body[sent..])
}

/// Reads one message to the peer's end, with the fds that came on it.
fn receive_message(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDED_OVER_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut len = got.bytes;
    while len < buf.len() {
        let n = (&*stream).read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    buf.truncate(len);
    Ok((buf, fds))
}

/// Reads one request (and its fd) from an accepted connection.
pub fn receive(stream: &UnixStream) -> Result<(Request, Option<OwnedFd>), HandoffError> {
    let (body, fds) = receive_message(stream)?;
    let request: Request = serde_json::from_slice(&body)?;
    // Keep the first; any extra fds are closed here.
    let fd = fds.into_iter().next();
    if matches!(request, Request::Add { .. }) && fd.is_none() {
        return Err(HandoffError::MissingFd);
    }
    Ok((request, fd))
}

/// Answers the request read by [`receive`].
pub fn answer(stream: &UnixStream, reply: &Reply) -> Result<(), HandoffError> {
    answer_with_fds(stream, reply, &[])
}

/// Answers with `fds` (a handed-over pod's).
pub fn answer_with_fds(
    stream: &UnixStream,
    reply: &Reply,
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandoffError> {
    stream.set_write_timeout(Some(TIMEOUT))?;
    send_message(stream, &serde_json::to_vec(reply)?, fds)?;
    Ok(())
}

/// Whether a tunnel is listening on `socket` (the CNI plugin's readiness check).
pub fn tunnel_ready(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn passes_the_fd_and_gets_the_ack() {
        let dir = std::env::temp_dir().join(format!("ambit-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                let (request, fd) = receive(&stream).unwrap();
                // The fd works: it is the same file as our own netns (a file we opened).
                let ok = fd.as_ref().map(|fd| {
                    let meta = std::fs::File::from(fd.try_clone().unwrap())
                        .metadata()
                        .unwrap();
                    meta.len()
                });
                seen.push((request.clone(), ok));
                let reply = match request {
                    Request::Add { .. } => Reply {
                        capture: true,
                        ..Reply::ok()
                    },
                    _ => Reply::refused("no such pod"),
                };
                answer(&stream, &reply).unwrap();
            }
            seen
        });
        let file_path = dir.join("payload");
        std::fs::write(&file_path, b"12345").unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&file_path).unwrap());
        let add = Request::Add {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "ns".into(),
        };
        assert!(send(&path, &add, Some(&fd)).unwrap().capture);
        let err = send(&path, &Request::Remove { uid: "u2".into() }, None).unwrap_err();
        assert!(err.to_string().contains("no such pod"), "{err}");
        let seen = server.join().unwrap();
        assert_eq!(seen[0], (add, Some(5)));
        assert_eq!(seen[1], (Request::Remove { uid: "u2".into() }, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_handed_over_pod_comes_with_its_fds() {
        let dir = std::env::temp_dir().join(format!("ambit-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let files: Vec<OwnedFd> = (0..HANDED_OVER_FDS)
            .map(|i| {
                let file = dir.join(format!("f{i}"));
                std::fs::write(&file, "x".repeat(i + 1)).unwrap();
                OwnedFd::from(std::fs::File::open(&file).unwrap())
            })
            .collect();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (request, _) = receive(&stream).unwrap();
            assert_eq!(request, Request::HandOver);
            let reply = Reply {
                handed_over: Some(HandedOver {
                    uid: "u1".into(),
                    name: "p".into(),
                    namespace: "ns".into(),
                    listening: true,
                }),
                ..Reply::ok()
            };
            let fds: Vec<_> = files.iter().map(AsFd::as_fd).collect();
            answer_with_fds(&stream, &reply, &fds).unwrap();
        });
        let (reply, fds) = exchange(&path, &Request::HandOver, None).unwrap();
        server.join().unwrap();
        assert_eq!(reply.handed_over.unwrap().uid, "u1");
        // In order: each fd is the file of its place.
        let sizes: Vec<u64> = fds
            .into_iter()
            .map(|fd| std::fs::File::from(fd).metadata().unwrap().len())
            .collect();
        assert_eq!(sizes, [1, 2, 3, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn captures_enrolled_and_not_yet_known_pods_of_enrolled_namespaces() {
        let e = Enrollment {
            synced: true,
            namespaces: vec!["demo".into()],
            pods: vec![EnrolledPod {
                uid: "a".into(),
                name: "a".into(),
                namespace: "demo".into(),
                ips: vec![],
            }],
            opted_out: vec!["b".into()],
        };
        assert!(e.captures("a", "demo"));
        assert!(!e.captures("b", "demo"), "opted out");
        assert!(
            e.captures("new", "demo"),
            "not in the view yet: fail closed"
        );
        assert!(!e.captures("c", "other"));
    }

    #[test]
    fn no_tunnel_is_a_clear_error() {
        let err = send(
            Path::new("/nonexistent/ambit.sock"),
            &Request::Remove { uid: "x".into() },
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("is ambit-tunnel running"), "{err}");
        assert!(!tunnel_ready(Path::new("/nonexistent/ambit.sock")));
    }
}
