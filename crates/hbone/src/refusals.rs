//! Tunnels the server turned down at a limit: counted for metrics, and warned about at a
//! bounded rate, so an operator sees a client's connections failing there.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// The refusal counters, and when the last warning about them was logged. Lock-free: a
/// refusal flood hits every server of the node at once.
#[derive(Debug)]
pub(crate) struct Refusals {
    peer_share: AtomicU64,
    node: AtomicU64,
    /// Milliseconds from `epoch` to the last warning, plus one; 0 before the first.
    last_warned: AtomicU64,
    epoch: Instant,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            peer_share: AtomicU64::new(0),
            node: AtomicU64::new(0),
            last_warned: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
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
        self.warns_at(self.epoch.elapsed())
    }

    /// Whether a refusal `since_epoch` is the one to warn about; of refusals racing for it,
    /// one wins.
    fn warns_at(&self, since_epoch: Duration) -> bool {
        let now = u64::try_from(since_epoch.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_warned.load(Ordering::Relaxed);
        let every = u64::try_from(REFUSAL_WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return false;
        }
        self.last_warned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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
        // Once the period has passed, the next one warns again, and only it.
        let later = refusals.epoch.elapsed() + REFUSAL_WARN_EVERY;
        assert!(refusals.warns_at(later));
        assert!(!refusals.warns_at(later));
        assert!(!refusals.warns_at(later + REFUSAL_WARN_EVERY / 2));
    }

    #[test]
    fn of_refusals_racing_for_the_warning_one_gets_it() {
        let refusals = Refusals::default();
        let warned = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter(|_| refusals.count(TunnelLimit::Node))
                            .count()
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .sum::<usize>()
        });
        assert_eq!(warned, 1);
        assert_eq!(refusals.totals().node, 4000);
    }
}
