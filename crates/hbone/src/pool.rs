//! The outbound connection pool: connections keyed by (local identity, peer address, expected
//! peer identities), many tunnels multiplexed on each, one dial for a burst, idle eviction,
//! PING keepalive that retires dead peers, and retirement of connections whose certificates
//! expire or whose peer's root is withdrawn.

use crate::client::{ClientConnection, Dialer, open_tunnel};
use crate::error::HboneError;
use crate::headers::TunnelHeaders;
use crate::lapse::{Lapse, jittered};
use crate::stream::H2Stream;
use ambit_identity::{CertificateHandle, SpiffeId};
use bytes::Bytes;
use h2::client::SendRequest;
use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at, sleep_until};

/// What a pooled connection is for. Tunnels share a connection only when all three match, so a
/// connection never carries traffic for an identity it was not authenticated as.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    local: SpiffeId,
    peer: SocketAddr,
    expected: Arc<[SpiffeId]>,
}

impl PoolKey {
    pub fn new(local: SpiffeId, peer: SocketAddr, mut expected: Vec<SpiffeId>) -> Self {
        expected.sort();
        expected.dedup();
        Self {
            local,
            peer,
            expected: expected.into(),
        }
    }

    pub fn local(&self) -> &SpiffeId {
        &self.local
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} as {:?}", self.local, self.peer, self.expected)
    }
}

/// Where the pool finds the certificate of a local identity.
pub trait LocalIdentities: Send + Sync + 'static {
    fn certificate(&self, local: &SpiffeId) -> Option<CertificateHandle>;
}

impl LocalIdentities for HashMap<SpiffeId, CertificateHandle> {
    fn certificate(&self, local: &SpiffeId) -> Option<CertificateHandle> {
        self.get(local).cloned()
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections dialed since the pool was made.
    pub dials: u64,
}

#[derive(Clone)]
pub struct HbonePool {
    inner: Arc<Inner>,
}

impl fmt::Debug for HbonePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HbonePool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Inner {
    dialer: Dialer,
    identities: Arc<dyn LocalIdentities>,
    keys: Mutex<HashMap<PoolKey, KeyConnections>>,
    dials: AtomicU64,
}

#[derive(Default)]
struct KeyConnections {
    connections: Vec<Arc<Pooled>>,
    /// Held while dialing, so a burst of tunnels to a new peer makes one connection.
    dialing: Arc<tokio::sync::Mutex<()>>,
    /// Dials that failed, and why the last one did: tunnels that queued behind a failed dial
    /// share its failure instead of each dialing (and timing out) in turn.
    failed_dials: u64,
    last_failure: Option<Arc<str>>,
}

struct Pooled {
    send: SendRequest<Bytes>,
    /// Tunnels open on this connection, and since when it has had none. Changed only under
    /// the pool lock, so an idle connection is never handed out while it is being retired.
    usage: Mutex<Usage>,
}

struct Usage {
    active: usize,
    idle_since: Instant,
}

/// Returns a stream slot to its connection when a tunnel ends.
struct SlotLease(Arc<Pooled>);

impl Drop for SlotLease {
    fn drop(&mut self) {
        let mut usage = lock(&self.0.usage);
        usage.active -= 1;
        if usage.active == 0 {
            usage.idle_since = Instant::now();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path leaves these maps half-updated across a panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HbonePool {
    pub fn new(dialer: Dialer, identities: Arc<dyn LocalIdentities>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer,
                identities,
                keys: Mutex::default(),
                dials: AtomicU64::new(0),
            }),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let keys = lock(&self.inner.keys);
        PoolStats {
            connections: keys.values().map(|k| k.connections.len()).sum(),
            dials: self.inner.dials.load(Ordering::Relaxed),
        }
    }

    /// Opens a tunnel to `target` through the peer of `key`, reusing a connection with a free
    /// stream slot or dialing one.
    ///
    /// The setup runs in its own allocation, freed once the tunnel is open, so a caller that
    /// keeps the tunnel in the same task does not carry the setup state for the tunnel's life.
    pub async fn connect(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        headers: &TunnelHeaders,
    ) -> Result<H2Stream, HboneError> {
        Box::pin(async {
            let mut retried = false;
            loop {
                let lease = self.checkout(key).await?;
                let (pooled, send) = (lease.0.clone(), lease.0.send.clone());
                match open_tunnel(send, target, headers, Some(Box::new(lease))).await {
                    // The peer did not take this stream (GOAWAY: it is draining, a restart or a
                    // tunnel upgrade; or REFUSED_STREAM: the connection's certificates lapsed
                    // on its side first): safe to ask again, on a new connection.
                    Err(HboneError::H2(e)) if !retried && not_taken(&e) => {
                        remove_locked(&mut lock(&self.inner.keys), key, &pooled);
                        retried = true;
                    }
                    opened => return opened,
                }
            }
        })
        .await
    }

    async fn checkout(&self, key: &PoolKey) -> Result<SlotLease, HboneError> {
        let max_streams = self.inner.dialer.settings().max_streams_per_connection;
        loop {
            let (dialing, failures_seen) = {
                let mut keys = lock(&self.inner.keys);
                let entry = keys.entry(key.clone()).or_default();
                if let Some(lease) = take_slot(entry, max_streams) {
                    return Ok(lease);
                }
                (entry.dialing.clone(), entry.failed_dials)
            };
            let _dialing = dialing.lock().await;
            {
                let mut keys = lock(&self.inner.keys);
                if let Some(entry) = keys.get_mut(key) {
                    // Someone may have dialed while we waited for the lock.
                    if let Some(lease) = take_slot(entry, max_streams) {
                        return Ok(lease);
                    }
                    if entry.failed_dials > failures_seen {
                        let reason = entry.last_failure.clone().unwrap_or_default();
                        forget_if_unused(&mut keys, key);
                        return Err(HboneError::PeerUnavailable {
                            peer: key.peer,
                            reason,
                        });
                    }
                }
            }
            // Boxed: the handshake state is large, and inline it would be carried by every
            // tunnel's task for the tunnel's whole life.
            if let Err(error) = Box::pin(self.dial(key)).await {
                let mut keys = lock(&self.inner.keys);
                if let Some(entry) = keys.get_mut(key) {
                    entry.failed_dials += 1;
                    entry.last_failure = Some(error.to_string().into());
                }
                forget_if_unused(&mut keys, key);
                return Err(error);
            }
        }
    }

    async fn dial(&self, key: &PoolKey) -> Result<(), HboneError> {
        let certificate = self
            .inner
            .identities
            .certificate(&key.local)
            .ok_or_else(|| HboneError::NoCertificate(key.local.clone()))?;
        self.inner.dials.fetch_add(1, Ordering::Relaxed);
        let (send, connection, authenticated) = self
            .inner
            .dialer
            .dial_authenticated(certificate, key.peer, key.expected.to_vec())
            .await?;
        let lapses = authenticated.watch(self.inner.dialer.settings().expiry_margin, None);
        let pooled = Arc::new(Pooled {
            send,
            usage: Mutex::new(Usage {
                active: 0,
                idle_since: Instant::now(),
            }),
        });
        lock(&self.inner.keys)
            .entry(key.clone())
            .or_default()
            .connections
            .push(pooled.clone());
        tokio::spawn(drive(
            connection,
            pooled,
            Arc::downgrade(&self.inner),
            key.clone(),
            lapses,
        ));
        Ok(())
    }
}

/// A stream the peer refused unprocessed: by a graceful GOAWAY (RFC 9113 §6.8) or
/// REFUSED_STREAM (§8.7).
fn not_taken(error: &h2::Error) -> bool {
    error.is_remote()
        && match error.reason() {
            Some(h2::Reason::NO_ERROR) => error.is_go_away(),
            Some(h2::Reason::REFUSED_STREAM) => error.is_reset(),
            _ => false,
        }
}

/// Drops the entry of a key with no connection and no other caller waiting on it (only the
/// entry itself and the caller hold its dial lock).
fn forget_if_unused(keys: &mut HashMap<PoolKey, KeyConnections>, key: &PoolKey) {
    if keys
        .get(key)
        .is_some_and(|entry| entry.connections.is_empty() && Arc::strong_count(&entry.dialing) <= 2)
    {
        keys.remove(key);
    }
}

fn take_slot(entry: &mut KeyConnections, max_streams: usize) -> Option<SlotLease> {
    entry.connections.iter().find_map(|pooled| {
        let mut usage = lock(&pooled.usage);
        (usage.active < max_streams).then(|| {
            usage.active += 1;
            SlotLease(pooled.clone())
        })
    })
}

#[derive(Debug)]
enum Retired {
    Closed,
    Idle,
    DeadPeer,
    Distrusted,
}

/// Polls the connection, pings the peer, and retires the connection when it closes, idles
/// out, or the peer stops answering. A lapse of its certificates takes it out of the pool
/// (no new tunnels); it closes once its tunnels are done, or, when the peer's root was
/// withdrawn, after `distrust_drain` at the latest.
async fn drive(
    mut connection: ClientConnection,
    pooled: Arc<Pooled>,
    pool: Weak<Inner>,
    key: PoolKey,
    mut lapses: mpsc::Receiver<Lapse>,
) {
    let Some(settings) = pool.upgrade().map(|p| p.dialer.settings().clone()) else {
        return;
    };
    let mut ping = connection.ping_pong();
    let tick = settings.keepalive_interval.min(settings.idle_timeout);
    let mut ticker = interval_at(Instant::now() + tick, tick);
    let mut last_ping = Instant::now();
    let mut pong_deadline: Option<Instant> = None;
    // Out of the pool: closes as soon as it carries no tunnel.
    let mut retired = false;
    let mut cut_at: Option<Instant> = None;
    let reason = loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(peer = %key.peer, %error, "HBONE connection failed");
                }
                break Retired::Closed;
            }
            _ = ticker.tick() => {
                let idle_timeout = if retired { Duration::ZERO } else { settings.idle_timeout };
                if retire_if_idle(&pool, &key, &pooled, idle_timeout) {
                    break Retired::Idle;
                }
                let ping_due =
                    pong_deadline.is_none() && last_ping.elapsed() >= settings.keepalive_interval;
                if let Some(ping) = ping.as_mut().filter(|_| ping_due)
                    && ping.send_ping(h2::Ping::opaque()).is_ok()
                {
                    last_ping = Instant::now();
                    pong_deadline = Some(last_ping + settings.keepalive_timeout);
                }
            }
            _ = sleep_until(pong_deadline.unwrap_or_else(Instant::now)), if pong_deadline.is_some() => {
                break Retired::DeadPeer;
            }
            Some(lapse) = lapses.recv() => {
                tracing::debug!(peer = %key.peer, ?lapse, "HBONE connection takes no new tunnels");
                remove(&pool, &key, &pooled);
                retired = true;
                if lapse == Lapse::Distrusted {
                    let (drain, jitter) = (settings.distrust_drain, settings.distrust_drain_jitter);
                    let drain = jittered(drain, jitter, &mut fastrand::Rng::new());
                    cut_at = Some(Instant::now() + drain);
                }
            }
            _ = sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => {
                break Retired::Distrusted;
            }
            pong = poll_fn(|cx| match ping.as_mut() {
                Some(ping) => ping.poll_pong(cx),
                None => std::task::Poll::Pending,
            }), if pong_deadline.is_some() => {
                match pong {
                    Ok(_) => pong_deadline = None,
                    Err(_) => break Retired::Closed,
                }
            }
        }
    };
    match reason {
        Retired::DeadPeer => {
            tracing::warn!(peer = %key.peer, "HBONE peer stopped answering PINGs; closing the connection")
        }
        Retired::Distrusted => {
            tracing::warn!(peer = %key.peer, "HBONE peer's root is no longer trusted; closing the connection and its tunnels")
        }
        Retired::Idle | Retired::Closed => {
            tracing::debug!(peer = %key.peer, ?reason, "HBONE connection retired")
        }
    }
    remove(&pool, &key, &pooled);
}

/// Removes the connection from the pool if it has had no tunnel for `idle_timeout`.
fn retire_if_idle(
    pool: &Weak<Inner>,
    key: &PoolKey,
    pooled: &Arc<Pooled>,
    idle_timeout: Duration,
) -> bool {
    let Some(pool) = pool.upgrade() else {
        return true;
    };
    let mut keys = lock(&pool.keys);
    let idle = {
        let usage = lock(&pooled.usage);
        usage.active == 0 && usage.idle_since.elapsed() >= idle_timeout
    };
    if idle {
        remove_locked(&mut keys, key, pooled);
    }
    idle
}

fn remove(pool: &Weak<Inner>, key: &PoolKey, pooled: &Arc<Pooled>) {
    if let Some(pool) = pool.upgrade() {
        remove_locked(&mut lock(&pool.keys), key, pooled);
    }
}

fn remove_locked(keys: &mut HashMap<PoolKey, KeyConnections>, key: &PoolKey, pooled: &Arc<Pooled>) {
    if let Some(entry) = keys.get_mut(key) {
        entry.connections.retain(|c| !Arc::ptr_eq(c, pooled));
        if entry.connections.is_empty() && Arc::strong_count(&entry.dialing) == 1 {
            keys.remove(key);
        }
    }
}
