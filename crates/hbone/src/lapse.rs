//! Certificates that end while connections live. A connection was authenticated once, at its
//! handshake; it may carry new tunnels only while the certificates of that handshake are
//! valid and their roots still trusted. Each connection gets one watcher task that tells its
//! loop when that stops being so.

use ambit_identity::{BundleChanges, ChainRole, TrustBundle, validity_of};
use rustls::pki_types::CertificateDer;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

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

/// What a connection was authenticated with, kept to re-check it while the connection lives.
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
        let peer_chain = peer_chain.unwrap_or_default().to_vec();
        // The handshake parsed these already; one that did not parse has no say.
        let not_after = peer_chain
            .iter()
            .filter_map(|certificate| validity_of(certificate).ok().map(|(_, end)| end))
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
