//! Certificates that end while connections live. A connection was authenticated once, at its
//! handshake; it may carry new tunnels only while the certificates of that handshake are
//! valid and their roots still trusted. Each connection gets one watcher task that tells its
//! loop when that stops being so.

use ambit_identity::{BundleChanges, ChainRole, TrustBundle, validity_of};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// What a connection's watcher holds besides the copy of the peer's chain, at most: its task's
/// state (under 1 KiB, tested), tokio's task header and its channel.
pub(crate) const WATCHER_OVERHEAD: u64 = 2 * 1024;

/// Why a connection takes no new tunnels any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lapse {
    /// The server stops (its listener closed): open tunnels go on.
    GoingAway,
    /// A certificate of the handshake expires: open tunnels go on, authorized while it was
    /// valid.
    Expired,
    /// The trust bundle no longer verifies the peer's chain (its root was withdrawn): open
    /// tunnels get a drain time, then the connection closes.
    Distrusted,
}

/// What a connection was authenticated with, kept to re-check it while the connection lives:
/// the peer's chain (at most 4 certificates in 8 KiB, the verifiers refuse longer ones),
/// against the roots as they change.
pub(crate) struct Authenticated {
    trust: TrustBundle,
    changes: BundleChanges,
    peer_chain: Vec<CertificateDer<'static>>,
    peer_role: ChainRole,
    at: SystemTime,
    /// The earliest `notAfter` of the peer's chain and of our own leaf.
    not_after: Option<SystemTime>,
}

impl Authenticated {
    /// `changes` must be subscribed before the handshake, so a change of the roots during it
    /// is seen (and the chain re-checked) rather than missed.
    pub(crate) fn new(
        trust: &TrustBundle,
        changes: BundleChanges,
        peer_chain: Option<&[CertificateDer<'static>]>,
        peer_role: ChainRole,
        own_not_after: Option<SystemTime>,
    ) -> Self {
        let leaf_not_after = peer_chain.and_then(<[_]>::first).and_then(not_after);
        Self::with_leaf_not_after(
            trust,
            changes,
            peer_chain,
            peer_role,
            leaf_not_after,
            own_not_after,
        )
    }

    /// [`Self::new`], for a caller that read the peer leaf's `notAfter` already (with its
    /// identity, in one parse).
    pub(crate) fn with_leaf_not_after(
        trust: &TrustBundle,
        changes: BundleChanges,
        peer_chain: Option<&[CertificateDer<'static>]>,
        peer_role: ChainRole,
        leaf_not_after: Option<SystemTime>,
        own_not_after: Option<SystemTime>,
    ) -> Self {
        let peer_chain = peer_chain.unwrap_or_default().to_vec();
        let not_after = peer_chain
            .iter()
            .skip(1)
            .filter_map(not_after)
            .chain(leaf_not_after)
            .chain(own_not_after)
            .min();
        Self {
            trust: trust.clone(),
            changes,
            peer_chain,
            peer_role,
            at: SystemTime::now(),
            not_after,
        }
    }

    /// Spawns the watcher. It sends each lapse once: `Expired` `early` before the earliest
    /// `notAfter` (at it, when less than `early` is left), `GoingAway` when `going_away` turns
    /// true, `Distrusted` when a change of the roots leaves the peer's chain unverified. It
    /// ends with the receiver.
    ///
    /// A task of its own so the connection's loop, polled at every frame, polls one channel
    /// (atomics) instead of a timer and a subscription; the chain is re-verified only when
    /// the roots change.
    pub(crate) fn watch(
        self,
        early: Duration,
        going_away: Option<watch::Receiver<bool>>,
    ) -> mpsc::Receiver<Lapse> {
        let (lapses, received) = mpsc::channel(3);
        tokio::spawn(self.run(lapses, early, going_away));
        received
    }

    async fn run(
        mut self,
        lapses: mpsc::Sender<Lapse>,
        early: Duration,
        mut going_away: Option<watch::Receiver<bool>>,
    ) {
        // The wall clock only turns the validity into a delay; the wait is tokio time.
        let left = self.not_after.map(|end| {
            let left = end.duration_since(SystemTime::now()).unwrap_or_default();
            left.checked_sub(early)
                .filter(|d| !d.is_zero())
                .unwrap_or(left)
        });
        let expiry = sleep_for(left);
        tokio::pin!(expiry);
        let mut expired = false;
        loop {
            let lapse = tokio::select! {
                () = &mut expiry, if !expired => {
                    expired = true;
                    Lapse::Expired
                }
                () = went_away(&mut going_away) => {
                    going_away = None;
                    Lapse::GoingAway
                }
                () = self.changes.changed() => {
                    if self.trust.verifies(&self.peer_chain, self.peer_role, self.at) {
                        continue;
                    }
                    Lapse::Distrusted
                }
                () = lapses.closed() => return,
            };
            if lapses.send(lapse).await.is_err() || lapse == Lapse::Distrusted {
                return;
            }
        }
    }
}

/// The end of `certificate`'s validity. The handshake parsed it already; one that did not
/// parse has no say.
pub(crate) fn not_after(certificate: &CertificateDer<'_>) -> Option<SystemTime> {
    validity_of(certificate).ok().map(|(_, end)| end)
}

/// A server's certificate resolver that remembers what it presented, for one handshake: the
/// server's own leaf ends the connection's tunnels too.
#[derive(Debug)]
pub(crate) struct Presented {
    resolver: Arc<dyn ResolvesServerCert>,
    presented: OnceLock<Arc<CertifiedKey>>,
}

impl Presented {
    pub(crate) fn new(resolver: Arc<dyn ResolvesServerCert>) -> Self {
        Self {
            resolver,
            presented: OnceLock::new(),
        }
    }

    /// The `notAfter` of the leaf presented, once the handshake chose it.
    pub(crate) fn not_after(&self, read: &PresentedNotAfter) -> Option<SystemTime> {
        read.of(self.presented.get()?)
    }
}

/// The `notAfter` of the leaf a server presented last: read once per certificate it presents,
/// not once per handshake.
#[derive(Debug, Default)]
pub(crate) struct PresentedNotAfter(Mutex<Option<(Arc<CertifiedKey>, Option<SystemTime>)>>);

impl PresentedNotAfter {
    fn of(&self, key: &Arc<CertifiedKey>) -> Option<SystemTime> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((last_key, end)) = &*last
            && Arc::ptr_eq(last_key, key)
        {
            return *end;
        }
        let end = not_after(key.end_entity_cert().ok()?);
        *last = Some((key.clone(), end));
        end
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.resolver.resolve(hello)?;
        // Resolved once per handshake (TLS 1.3, no resumption).
        let _ = self.presented.set(key.clone());
        Some(key)
    }
}

/// `drain` moved by up to `jitter` of itself either way (0.2: ±20%), so connections cut for
/// one withdrawal on every node do not all reconnect at the same moment.
pub(crate) fn jittered(drain: Duration, jitter: f64, rng: &mut fastrand::Rng) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    drain.mul_f64(1.0 + jitter * (2.0 * rng.f64() - 1.0))
}

async fn sleep_for(delay: Option<Duration>) {
    match delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `going_away` turns true; never without one (or once its sender is gone).
async fn went_away(going_away: &mut Option<watch::Receiver<bool>>) {
    if let Some(going_away) = going_away
        && going_away.wait_for(|g| *g).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_is_spread_twenty_percent_either_way_and_exact_without_jitter() {
        const DRAIN: Duration = Duration::from_secs(30);
        let mut rng = fastrand::Rng::with_seed(7);
        let drains: Vec<Duration> = (0..1000).map(|_| jittered(DRAIN, 0.2, &mut rng)).collect();
        let (min, max) = (drains.iter().min().unwrap(), drains.iter().max().unwrap());
        assert!(*min >= DRAIN.mul_f64(0.8) && *max <= DRAIN.mul_f64(1.2));
        // Both ways, most of the range: not one moment for every node.
        assert!(
            *min < DRAIN.mul_f64(0.82) && *max > DRAIN.mul_f64(1.18),
            "{min:?}..{max:?}"
        );
        assert_eq!(jittered(DRAIN, 0.0, &mut rng), DRAIN);
    }

    /// The watcher task's state stays within what the memory bound counts for it
    /// ([`WATCHER_OVERHEAD`], with the task header and the channel).
    #[tokio::test]
    async fn the_watcher_state_stays_small() {
        let pki = ambit_identity::testing::TestPki::new("cluster.local");
        let trust = pki.bundle();
        let authenticated =
            Authenticated::new(&trust, trust.changes(), None, ChainRole::Client, None);
        let (lapses, _received) = mpsc::channel(3);
        let task = authenticated.run(lapses, Duration::ZERO, None);
        eprintln!("watcher task: {} bytes", std::mem::size_of_val(&task));
        assert!(
            std::mem::size_of_val(&task) as u64 <= WATCHER_OVERHEAD / 2,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }
}
