//! What happens to one pod: handed to the tunnel, captured, released. Shared by the CNI
//! plugin, the agent's reconcile and the `enroll`/`release` commands.
//!
//! Order, so that rules never redirect to listeners that will never exist:
//! - capture: the tunnel is asked first (`Add` with the netns fd) and decides; only a `capture`
//!   answer puts the rules in (the tunnel serves the pod, or holds its netns until its view has
//!   the pod's addresses, and the pod fails closed meanwhile);
//! - release: the rules go first, then the tunnel lets go (`Remove`), so no new connection is
//!   redirected to listeners that are closing.
//!
//! The record is written so that it says `captured` whenever rules may be present (see
//! [`crate::state`]).
//!
//! Capture also turns the netns's `net.ipv4.tcp_tw_reuse` from the kernel's 2 (reuse for
//! loopback addresses only) to 1 (see [`time_wait_reuse`]), and un-capture puts 2 back.

use crate::netns;
use crate::rules::{self, RulesError};
use crate::state::{self, PodRecord, StateError};
use ambit_handoff::{self as handoff, HandoffError, Mode, Request};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot open netns {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
}

impl PodError {
    /// The tunnel could not decide: its socket accepted no connection, or it refused (it is
    /// draining, or has no view yet). Not: the exchange broke, or the rules failed.
    pub fn tunnel_undecided(&self) -> bool {
        matches!(
            self,
            Self::Handoff(HandoffError::Connect { .. } | HandoffError::Refused(_))
        )
    }
}

/// Hands the pod's netns to the tunnel; returns the tunnel's decision: capture, in its mode
/// (`Some`), or not. Marked as being handed over meanwhile: the tunnel waits for the pod's
/// certificate before it answers, and the CA signs it once the agent has published the mark.
pub fn hand_over(
    state: &Path,
    socket: &Path,
    record: &PodRecord,
) -> Result<Option<Mode>, PodError> {
    state::mark_handing(state, record)?;
    let decision = ask(socket, record);
    state::unmark_handing(state, &record.uid)?;
    decision
}

fn ask(socket: &Path, record: &PodRecord) -> Result<Option<Mode>, PodError> {
    let fd: OwnedFd = std::fs::File::open(&record.netns)
        .map_err(|source| PodError::Netns {
            path: record.netns.display().to_string(),
            source,
        })?
        .into();
    let request = Request::Add {
        uid: record.uid.clone(),
        name: record.name.clone(),
        namespace: record.namespace.clone(),
    };
    let reply = handoff::send(socket, &request, Some(&fd))?;
    Ok(reply.capture.then_some(reply.mode))
}

/// A new netns's `net.ipv4.tcp_tw_reuse`: TIME_WAIT reused for loopback addresses only.
const KERNEL_DEFAULT: u8 = 2;
/// TIME_WAIT reused for new outgoing connections of any address (safe with TCP timestamps,
/// on by default: PAWS tells the old connection's segments from the new one's).
const REUSE: u8 = 1;

/// How capture treats pods' `net.ipv4.tcp_tw_reuse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctls {
    /// Set 1 where the value is the kernel's default (the operator's switch).
    pub time_wait_reuse: bool,
    /// A writable procfs ([`netns::DEFAULT_PROC`]).
    pub proc: PathBuf,
}

impl Sysctls {
    /// On the node, with its own `/proc`: the CNI plugin and the commands.
    pub fn on_node(time_wait_reuse: bool) -> Self {
        Self {
            time_wait_reuse,
            proc: netns::DEFAULT_PROC.into(),
        }
    }
}

/// What capture does with a pod's `net.ipv4.tcp_tw_reuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeWait {
    /// Set it to 1 and record so.
    Set,
    /// It is 1 and capture set it: keep it, and the record.
    Keep,
    /// Capture set it and must no longer (turned off, or un-capture): back to 2.
    Restore,
    /// Not capture's to change: the pod's owner chose this value (a pod's
    /// `securityContext.sysctls`), or capture is told to leave it.
    Leave,
}

impl TimeWait {
    /// Whether the record says capture set the value, after this.
    pub fn ours(self) -> bool {
        matches!(self, Self::Set | Self::Keep)
    }
}

/// Why a mesh pod needs reuse: the node tunnel connects to the app from the pod's own address
/// and closes first, so the pod's netns keeps one TIME_WAIT per inbound connection for 60 s,
/// shared by every client of the app's port; 2 does not reuse them (not loopback), so past
/// about 470 new connections a second the ephemeral ports run out (docs/reliability.md).
/// Only the kernel's default is changed: any other value is the pod owner's choice.
/// `enabled`: the operator's switch; `current`: the netns's value; `ours`: the record says
/// capture set it.
pub fn time_wait_reuse(enabled: bool, current: u8, ours: bool) -> TimeWait {
    match (enabled, current, ours) {
        (true, KERNEL_DEFAULT, _) => TimeWait::Set,
        (true, REUSE, true) => TimeWait::Keep,
        (false, REUSE, true) => TimeWait::Restore,
        _ => TimeWait::Leave,
    }
}

/// Records the pod as captured, then installs (or replaces) its rules for `mode`, then sets
/// its `tcp_tw_reuse` as [`time_wait_reuse`] says (`reuse`: the operator's switch). A sysctl
/// that cannot be read or written is logged, not an error: the pod is captured either way.
pub fn install(
    state: &Path,
    record: &PodRecord,
    mode: Mode,
    sysctls: &Sysctls,
) -> Result<(), PodError> {
    let (reuse, proc) = (sysctls.time_wait_reuse, &sysctls.proc);
    let ours = set_by_capture(state, record)?;
    let (current, plan) = read_and_plan(record, proc, reuse, ours);
    let captured = PodRecord {
        captured: true,
        time_wait_reuse: plan.ours() || (ours && current.is_err()),
        ..record.clone()
    };
    state::remember(state, &captured)?;
    rules::install(&record.netns, mode)?;
    if let (true, TimeWait::Leave, Ok(value)) = (reuse, plan, &current) {
        log(format_args!(
            "pod {} keeps net.ipv4.tcp_tw_reuse={value}: not the kernel's default, so its owner's",
            record.label()
        ));
    }
    apply(record, proc, plan, current);
    Ok(())
}

/// Makes sure the pod has no rules and `tcp_tw_reuse` as it was, then records it as not
/// captured.
pub fn uninstall(state: &Path, record: &PodRecord, proc: &Path) -> Result<(), PodError> {
    let ours = set_by_capture(state, record)?;
    strip(
        &PodRecord {
            time_wait_reuse: ours,
            ..record.clone()
        },
        proc,
    )?;
    state::remember(
        state,
        &PodRecord {
            captured: false,
            time_wait_reuse: false,
            ..record.clone()
        },
    )?;
    Ok(())
}

/// Whether capture set the pod's `tcp_tw_reuse`: a replay, a second `enroll` or a CNI ADD the
/// tunnel declined hand in a record without the flag, and the one on disk knows.
fn set_by_capture(state: &Path, record: &PodRecord) -> Result<bool, PodError> {
    Ok(record.time_wait_reuse
        || state::load(state, &record.uid)?.is_some_and(|r| r.time_wait_reuse))
}

/// Takes the rules out and puts `tcp_tw_reuse` back if capture set it (the record is the
/// caller's: [`uninstall`], or the agent's uninstall, which clears every record after).
pub fn strip(record: &PodRecord, proc: &Path) -> Result<(), PodError> {
    rules::remove(&record.netns)?;
    if record.time_wait_reuse {
        let (current, plan) = read_and_plan(record, proc, false, true);
        apply(record, proc, plan, current);
    }
    Ok(())
}

/// The pod's `tcp_tw_reuse` and what to do with it; nothing when it cannot be read.
fn read_and_plan(
    record: &PodRecord,
    proc: &Path,
    enabled: bool,
    ours: bool,
) -> (Result<u8, netns::NetnsError>, TimeWait) {
    let current = netns::tcp_tw_reuse(&record.netns, proc);
    let plan = match &current {
        Ok(value) => time_wait_reuse(enabled, *value, ours),
        Err(_) => TimeWait::Leave,
    };
    (current, plan)
}

/// Carries out `plan` on the pod's netns (whose value was `current`); a sysctl that cannot be
/// read or written is logged.
fn apply(record: &PodRecord, proc: &Path, plan: TimeWait, current: Result<u8, netns::NetnsError>) {
    let write = match (plan, current) {
        (_, Err(e)) => return log(format_args!("pod {}: {e}", record.label())),
        (TimeWait::Set, _) => REUSE,
        (TimeWait::Restore, _) => KERNEL_DEFAULT,
        (TimeWait::Keep | TimeWait::Leave, _) => return,
    };
    if let Err(e) = netns::set_tcp_tw_reuse(&record.netns, proc, write) {
        log(format_args!("pod {}: {e}", record.label()));
    }
}

fn log(line: impl std::fmt::Display) {
    eprintln!("ambit-capture: {line}");
}

/// Asks the tunnel and applies its answer both ways: rules for a captured pod, none for
/// another (CNI ADD, `enroll`). Returns the decision.
pub fn enroll(
    state: &Path,
    socket: &Path,
    record: &PodRecord,
    sysctls: &Sysctls,
) -> Result<bool, PodError> {
    let decision = hand_over(state, socket, record)?;
    match decision {
        Some(mode) => install(state, record, mode, sysctls)?,
        None => uninstall(state, record, &sysctls.proc)?,
    }
    Ok(decision.is_some())
}

/// Releases a captured pod: rules out, recorded as not captured, then the tunnel lets go. The
/// rules are gone even when the tunnel cannot be told (the error says so).
pub fn release(
    state: &Path,
    socket: &Path,
    record: &PodRecord,
    proc: &Path,
) -> Result<(), PodError> {
    uninstall(state, record, proc)?;
    tell_removed(socket, &record.uid)?;
    Ok(())
}

/// Tells the tunnel to let the pod go; an unknown pod is not an error on its side.
pub fn tell_removed(socket: &Path, uid: &str) -> Result<(), HandoffError> {
    handoff::send(socket, &Request::Remove { uid: uid.into() }, None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_default_is_changed_and_only_what_capture_set_is_put_back() {
        use TimeWait::*;
        // Capture, switch on: the default becomes 1; a 1 capture set stays (replay); any
        // other value is the owner's.
        assert_eq!(time_wait_reuse(true, 2, false), Set);
        assert_eq!(time_wait_reuse(true, 2, true), Set, "reset behind its back");
        assert_eq!(time_wait_reuse(true, 1, true), Keep);
        for owners in [0, 1, 3] {
            assert_eq!(time_wait_reuse(true, owners, false), Leave, "{owners}");
        }
        assert_eq!(
            time_wait_reuse(true, 0, true),
            Leave,
            "changed since: the owner's"
        );
        // Switch off, or un-capture: back to 2 only where capture set the 1.
        assert_eq!(time_wait_reuse(false, 1, true), Restore);
        assert_eq!(time_wait_reuse(false, 1, false), Leave);
        assert_eq!(time_wait_reuse(false, 2, false), Leave);
        assert_eq!(time_wait_reuse(false, 0, true), Leave);
        let recorded: Vec<bool> = [Set, Keep, Restore, Leave].map(TimeWait::ours).into();
        assert_eq!(recorded, [true, true, false, false]);
    }
}
