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

use crate::rules::{self, RulesError};
use crate::state::{self, PodRecord, StateError};
use ambit_handoff::{self as handoff, HandoffError, Mode, Request};
use std::os::fd::OwnedFd;
use std::path::Path;

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

/// Records the pod as captured, then installs (or replaces) its rules for `mode`.
pub fn install(state: &Path, record: &PodRecord, mode: Mode) -> Result<(), PodError> {
    state::remember(state, &record.with_captured(true))?;
    rules::install(&record.netns, mode)?;
    Ok(())
}

/// Makes sure the pod has no rules, then records it as not captured.
pub fn uninstall(state: &Path, record: &PodRecord) -> Result<(), PodError> {
    rules::remove(&record.netns)?;
    state::remember(state, &record.with_captured(false))?;
    Ok(())
}

/// Asks the tunnel and applies its answer both ways: rules for a captured pod, none for
/// another (CNI ADD, `enroll`). Returns the decision.
pub fn enroll(state: &Path, socket: &Path, record: &PodRecord) -> Result<bool, PodError> {
    let decision = hand_over(state, socket, record)?;
    match decision {
        Some(mode) => install(state, record, mode)?,
        None => uninstall(state, record)?,
    }
    Ok(decision.is_some())
}

/// Releases a captured pod: rules out, recorded as not captured, then the tunnel lets go. The
/// rules are gone even when the tunnel cannot be told (the error says so).
pub fn release(state: &Path, socket: &Path, record: &PodRecord) -> Result<(), PodError> {
    uninstall(state, record)?;
    tell_removed(socket, &record.uid)?;
    Ok(())
}

/// Tells the tunnel to let the pod go; an unknown pod is not an error on its side.
pub fn tell_removed(socket: &Path, uid: &str) -> Result<(), HandoffError> {
    handoff::send(socket, &Request::Remove { uid: uid.into() }, None).map(|_| ())
}
