//! Tunnels the server turned down at a limit: counted for metrics, and warned about at a
//! bounded rate, so an operator sees a client's connections failing there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A tunnel limit that turned a CONNECT down (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelLimit {
    /// The client already held its share (`max_tunnels_per_peer`).
    PeerShare,
    /// The servers of the budget held `max_tunnels` together.
    Node,
}

/// CONNECTs answered 503 at a tunnel limit since the budget was made, by limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelRefusals {
    pub peer_share: u64,
    pub node: u64,
}

/// At most one warning per this long about refused tunnels: a client past its share may send
/// thousands of CONNECTs a second, and each refusal is counted anyway.
pub(crate) const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// The refusal counters, and when the last warning about them was logged.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    peer_share: AtomicU64,
    node: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl Refusals {
    /// Counts one refusal; true when it is the one to warn about (the first, or the first
    /// after [`REFUSAL_WARN_EVERY`]).
    pub(crate) fn count(&self, limit: TunnelLimit) -> bool {
        let counter = match limit {
            TunnelLimit::PeerShare => &self.peer_share,
            TunnelLimit::Node => &self.node,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < REFUSAL_WARN_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    pub(crate) fn totals(&self) -> TunnelRefusals {
        TunnelRefusals {
            peer_share: self.peer_share.load(Ordering::Relaxed),
            node: self.node.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_refusal_and_warns_once_a_period() {
        let refusals = Refusals::default();
        assert!(
            refusals.count(TunnelLimit::PeerShare),
            "the first one warns"
        );
        assert!(
            !refusals.count(TunnelLimit::Node),
            "a second one within the period does not"
        );
        assert!(!refusals.count(TunnelLimit::PeerShare));
        assert_eq!(
            refusals.totals(),
            TunnelRefusals {
                peer_share: 2,
                node: 1
            }
        );
        // Once the period has passed, the next one warns again.
        *refusals.last_warned.lock().unwrap() = Instant::now().checked_sub(REFUSAL_WARN_EVERY);
        assert!(refusals.count(TunnelLimit::Node));
    }
}
