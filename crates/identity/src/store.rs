//! Certificates per workload identity, issued on first use, rotated at half-life, forgotten when
//! the last user lets go. Keys exist only in memory.
//!
//! Scheduling uses tokio time so rotation and retry are tested with a paused clock; the wall
//! clock is read only to turn a certificate's absolute validity into a delay.

use crate::bundle::TrustBundle;
use crate::cert::{CertificateError, WorkloadCertificate};
use crate::csr::{CertificateRequest, CsrError};
use crate::spiffe::SpiffeId;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// An error from whatever signs CSRs (the controller's CA API, or an in-process CA).
pub type IssueError = Box<dyn std::error::Error + Send + Sync>;

/// Signs a CSR for an identity, returning the chain with the leaf first.
pub trait CertificateIssuer: Send + Sync + 'static {
    fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> impl Future<Output = Result<Vec<CertificateDer<'static>>, IssueError>> + Send;
}

/// Why an identity has no certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("could not obtain a certificate for {identity}: {reason}")]
    Issue {
        identity: SpiffeId,
        reason: Arc<str>,
    },
    #[error("the certificate store dropped the identity {0}")]
    Gone(SpiffeId),
}

/// How failed issuance is retried: exponential backoff between these bounds.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
enum Slot {
    Pending,
    Ready(Arc<WorkloadCertificate>),
    /// The first issuance failed; there is no certificate to keep.
    Failed(Arc<str>),
}

/// A cheap, cloneable view of the current certificate of one identity; TLS configs built from
/// it present the newest certificate at every handshake.
#[derive(Clone)]
pub struct CertificateHandle(watch::Receiver<Slot>);

impl CertificateHandle {
    /// A handle that always yields `certificate` (no rotation): for tests and benchmarks.
    pub fn fixed(certificate: WorkloadCertificate) -> Self {
        let (_, receiver) = watch::channel(Slot::Ready(Arc::new(certificate)));
        Self(receiver)
    }

    /// A handle with no certificate: TLS presents none. A tunnel uses it for its first call to
    /// the controller's CA, before it holds any identity.
    pub fn without_certificate() -> Self {
        let (_, receiver) = watch::channel(Slot::Pending);
        Self(receiver)
    }

    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        match &*self.0.borrow() {
            Slot::Ready(certificate) => Some(certificate.clone()),
            Slot::Pending | Slot::Failed(_) => None,
        }
    }

    /// Waits until a different certificate is current (after a rotation).
    pub async fn changed(&mut self) -> Result<Arc<WorkloadCertificate>, watch::error::RecvError> {
        loop {
            self.0.changed().await?;
            if let Some(certificate) = self.current() {
                return Ok(certificate);
            }
        }
    }
}

impl fmt::Debug for CertificateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CertificateHandle")
            .field(&self.current().map(|c| c.identity().clone()))
            .finish()
    }
}

struct Entry {
    identity: SpiffeId,
    slot: watch::Receiver<Slot>,
    rotation: AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.rotation.abort();
    }
}

/// Keeps an identity's certificate alive and rotating; the identity is forgotten (and its key
/// dropped) when the last lease goes.
#[derive(Clone)]
pub struct IdentityLease(Arc<Entry>);

impl IdentityLease {
    pub fn identity(&self) -> &SpiffeId {
        &self.0.identity
    }

    pub fn handle(&self) -> CertificateHandle {
        let mut slot = self.0.slot.clone();
        // `changed` should mean "rotated since this handle was made".
        slot.mark_unchanged();
        CertificateHandle(slot)
    }
}

impl fmt::Debug for IdentityLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdentityLease")
            .field(&self.0.identity)
            .finish()
    }
}

pub struct CertificateStore<I> {
    issuer: Arc<I>,
    retry: RetryPolicy,
    trust: Option<TrustBundle>,
    entries: Arc<Mutex<HashMap<SpiffeId, Weak<Entry>>>>,
}

impl<I> fmt::Debug for CertificateStore<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateStore")
            .field("identities", &self.identities())
            .finish_non_exhaustive()
    }
}

impl<I> CertificateStore<I> {
    /// Identities currently held, sorted.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let entries = lock(&self.entries);
        let mut ids: Vec<SpiffeId> = entries
            .iter()
            .filter(|(_, entry)| entry.strong_count() > 0)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

impl<I: CertificateIssuer> CertificateStore<I> {
    pub fn new(issuer: I, retry: RetryPolicy) -> Self {
        Self {
            issuer: Arc::new(issuer),
            retry,
            trust: None,
            entries: Arc::default(),
        }
    }

    /// Follows `trust` through a root rotation: every certificate is re-issued when the bundle
    /// changes (the signing root may have), and one that does not chain to the signing root is
    /// re-requested with backoff instead of at half-life (the CA had not switched yet).
    pub fn following(mut self, trust: TrustBundle) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Returns a lease on `identity`'s certificate, issuing it first if no one holds it yet.
    /// Concurrent callers for the same identity share one issuance.
    pub async fn acquire(&self, identity: &SpiffeId) -> Result<IdentityLease, StoreError> {
        self.acquire_within(identity, Duration::ZERO).await
    }

    /// [`acquire`](Self::acquire), but a failed issuance is retried (with the store's backoff)
    /// for up to `patience` before it is reported: for an identity the CA is about to grant,
    /// as a pod's once its node has recorded the pod captured.
    pub async fn acquire_within(
        &self,
        identity: &SpiffeId,
        patience: Duration,
    ) -> Result<IdentityLease, StoreError> {
        let entry = self.entry(identity);
        let mut slot = entry.slot.clone();
        let ready = tokio::time::timeout(patience, slot.wait_for(|s| matches!(s, Slot::Ready(_))))
            .await
            .map(|ready| ready.map(|s| s.clone()));
        // Past `patience`, the first outcome counts, failure included.
        let outcome = match ready {
            Ok(ready) => ready,
            Err(_) => slot
                .wait_for(|s| !matches!(s, Slot::Pending))
                .await
                .map(|s| s.clone()),
        };
        match outcome {
            Ok(Slot::Ready(_)) => Ok(IdentityLease(entry)),
            Ok(Slot::Failed(reason)) => Err(StoreError::Issue {
                identity: identity.clone(),
                reason,
            }),
            Ok(Slot::Pending) | Err(_) => Err(StoreError::Gone(identity.clone())),
        }
    }

    fn entry(&self, identity: &SpiffeId) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(identity).and_then(Weak::upgrade) {
            return entry;
        }
        entries.retain(|_, entry| entry.strong_count() > 0);
        let (sender, receiver) = watch::channel(Slot::Pending);
        let rotation = tokio::spawn(maintain(
            self.issuer.clone(),
            identity.clone(),
            sender,
            self.retry,
            self.trust.clone(),
        ))
        .abort_handle();
        let entry = Arc::new(Entry {
            identity: identity.clone(),
            slot: receiver,
            rotation,
        });
        entries.insert(identity.clone(), Arc::downgrade(&entry));
        entry
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("issuer refused: {0}")]
    Issuer(IssueError),
    #[error("issued certificate is unusable: {0}")]
    Certificate(#[from] CertificateError),
}

async fn issue_once<I: CertificateIssuer>(
    issuer: &I,
    identity: &SpiffeId,
) -> Result<WorkloadCertificate, RenewError> {
    let request = CertificateRequest::new(identity)?;
    let chain = issuer
        .issue(identity, request.csr_der())
        .await
        .map_err(RenewError::Issuer)?;
    Ok(request.complete(chain)?)
}

/// Issues, then re-issues at every half-life and at every change of `trust`; on failure keeps
/// the current certificate and retries with backoff.
async fn maintain<I: CertificateIssuer>(
    issuer: Arc<I>,
    identity: SpiffeId,
    slot: watch::Sender<Slot>,
    retry: RetryPolicy,
    trust: Option<TrustBundle>,
) {
    let mut backoff = retry.initial;
    let mut changes = trust.as_ref().map(TrustBundle::changes);
    loop {
        match issue_once(&*issuer, &identity).await {
            Ok(certificate) => {
                let stale = trust.as_ref().is_some_and(|t| {
                    certificate
                        .chain()
                        .first()
                        .is_some_and(|leaf| !t.from_signing_root(leaf))
                });
                let half_life = until_half_life(&certificate, SystemTime::now());
                // A leaf already at its end on arrival (this clock ahead of the CA's) would be
                // re-requested at once, in a loop against the CA: it waits out the backoff.
                let early = stale || half_life < retry.initial;
                let delay = if early { backoff } else { half_life };
                tracing::info!(%identity, renew_in_s = delay.as_secs(), stale, "certificate issued");
                slot.send_replace(Slot::Ready(Arc::new(certificate)));
                backoff = if early {
                    (backoff * 2).min(retry.max)
                } else {
                    retry.initial
                };
                let bundle_changed = async {
                    match changes.as_mut() {
                        Some(changes) => changes.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = bundle_changed => {
                        tracing::info!(%identity, "trust bundle changed: re-issuing");
                    }
                }
            }
            Err(error) => {
                let reason: Arc<str> = error.to_string().into();
                let kept = slot.send_if_modified(|current| match current {
                    Slot::Ready(_) => false,
                    _ => {
                        *current = Slot::Failed(reason.clone());
                        true
                    }
                });
                tracing::warn!(
                    %identity,
                    %error,
                    keeping_current = !kept,
                    retry_in_ms = backoff.as_millis(),
                    "certificate issuance failed"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(retry.max);
            }
        }
    }
}

/// Time from `now` (the certificate's arrival) until half its remaining validity has passed.
/// Not half of `notBefore..notAfter`: CAs backdate `notBefore` for clock skew (ours by 60 s), so
/// that midpoint lies before issuance for short leaves, and a 60 s leaf was renewed at once, in
/// a loop against the CA.
fn until_half_life(certificate: &WorkloadCertificate, now: SystemTime) -> Duration {
    certificate
        .not_after()
        .duration_since(now)
        .unwrap_or_default()
        / 2
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
