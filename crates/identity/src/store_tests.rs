//! Rotation, failure and lifetime of identities, on a paused tokio clock.

use super::*;
use crate::LocalIssuer;
use crate::testing::TestPki;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const LIFETIME: Duration = Duration::from_secs(600);

/// An in-process CA that counts issuances and can be told to fail or to lie about identity.
#[derive(Clone)]
struct FlakyIssuer {
    inner: LocalIssuer,
    pki: TestPki,
    issued: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    wrong_identity: Arc<AtomicBool>,
}

impl FlakyIssuer {
    fn new(pki: &TestPki) -> Self {
        Self::with_lifetime(pki, LIFETIME)
    }

    fn with_lifetime(pki: &TestPki, lifetime: Duration) -> Self {
        Self {
            inner: LocalIssuer::new(pki.ca.clone(), lifetime),
            pki: pki.clone(),
            issued: Arc::default(),
            failing: Arc::default(),
            wrong_identity: Arc::default(),
        }
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl CertificateIssuer for FlakyIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err("CA unavailable".into());
        }
        if self.wrong_identity.load(Ordering::SeqCst) {
            let other = self.pki.id("kube-system", "admin");
            return self.inner.issue(&other, csr_der).await;
        }
        self.inner.issue(identity, csr_der).await
    }
}

fn store(issuer: &FlakyIssuer) -> CertificateStore<FlakyIssuer> {
    CertificateStore::new(
        issuer.clone(),
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
    )
}

fn serial(certificate: &WorkloadCertificate) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(certificate.chain()[0].as_ref()).unwrap();
    parsed.raw_serial().to_vec()
}

/// Lets spawned tasks run to their next await without moving the clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn rotates_at_half_life() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    let store = store(&issuer);
    let id = pki.id("demo", "web");
    let lease = store.acquire(&id).await.unwrap();
    let mut handle = lease.handle();
    let first = handle.current().unwrap();
    assert_eq!(first.identity(), &id);
    assert_eq!(issuer.issued(), 1);

    let half_life = until_half_life(&first, SystemTime::now());
    assert!(half_life > Duration::from_secs(200), "{half_life:?}");
    tokio::time::advance(half_life - Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(issuer.issued(), 1, "renewed before half-life");

    tokio::time::advance(Duration::from_secs(10)).await;
    let second = handle.changed().await.unwrap();
    assert_eq!(issuer.issued(), 2);
    assert_ne!(serial(&first), serial(&second));
    assert_eq!(second.identity(), &id);
}

/// The CA backdates `notBefore` by a minute for clock skew: a one-minute leaf is still renewed
/// half a minute after it arrives, not at once and again and again.
#[tokio::test(start_paused = true)]
async fn a_one_minute_leaf_is_renewed_half_a_minute_after_issuance() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::with_lifetime(&pki, Duration::from_secs(60));
    let store = store(&issuer);
    let lease = store.acquire(&pki.id("demo", "web")).await.unwrap();
    let mut handle = lease.handle();
    settle().await;
    assert_eq!(issuer.issued(), 1, "renewed on arrival");

    tokio::time::advance(Duration::from_secs(25)).await;
    settle().await;
    assert_eq!(issuer.issued(), 1, "renewed before half-life");
    tokio::time::advance(Duration::from_secs(6)).await;
    handle.changed().await.unwrap();
    assert_eq!(issuer.issued(), 2);
}

#[tokio::test(start_paused = true)]
async fn keeps_the_old_certificate_while_renewal_fails() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    let store = store(&issuer);
    let lease = store.acquire(&pki.id("demo", "web")).await.unwrap();
    let mut handle = lease.handle();
    let first = handle.current().unwrap();

    issuer.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(until_half_life(&first, SystemTime::now()) + Duration::from_secs(1)).await;
    settle().await;
    // Several retries with backoff, and the first certificate stays current throughout.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(8)).await;
        settle().await;
    }
    assert!(issuer.issued() >= 4, "retries: {}", issuer.issued());
    assert_eq!(serial(&handle.current().unwrap()), serial(&first));

    issuer.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(8)).await;
    let renewed = handle.changed().await.unwrap();
    assert_ne!(serial(&renewed), serial(&first));
}

#[tokio::test(start_paused = true)]
async fn first_issuance_failure_is_reported() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    issuer.failing.store(true, Ordering::SeqCst);
    let store = store(&issuer);
    let err = store.acquire(&pki.id("demo", "web")).await.unwrap_err();
    assert!(err.to_string().contains("CA unavailable"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_patient_acquire_waits_through_refusals_for_the_certificate() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    issuer.failing.store(true, Ordering::SeqCst);
    let store = store(&issuer);
    let id = pki.id("demo", "web");
    // The CA refuses until the pod is recorded, 2.5 s later: retries at 1 s and 3 s.
    let (lease, ()) = tokio::join!(store.acquire_within(&id, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        issuer.failing.store(false, Ordering::SeqCst);
    });
    assert_eq!(lease.unwrap().identity(), &id);
    assert_eq!(issuer.issued(), 3);
    // Past its patience, the refusal is reported.
    issuer.failing.store(true, Ordering::SeqCst);
    let other = pki.id("demo", "api");
    let err = store
        .acquire_within(&other, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CA unavailable"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn refuses_a_certificate_issued_for_another_identity() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    issuer.wrong_identity.store(true, Ordering::SeqCst);
    let store = store(&issuer);
    let err = store.acquire(&pki.id("demo", "web")).await.unwrap_err();
    assert!(err.to_string().contains("was issued for"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn shares_one_issuance_and_forgets_the_identity_with_its_last_lease() {
    let pki = TestPki::new("cluster.local");
    let issuer = FlakyIssuer::new(&pki);
    let store = store(&issuer);
    let id = pki.id("demo", "web");
    let (a, b) = tokio::join!(store.acquire(&id), store.acquire(&id));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(issuer.issued(), 1);
    assert_eq!(store.identities(), vec![id.clone()]);

    drop(a);
    assert_eq!(store.identities(), vec![id.clone()]);
    drop(b);
    assert!(store.identities().is_empty());

    // The rotation task stopped with the identity: time passing issues nothing more.
    tokio::time::advance(LIFETIME * 2).await;
    settle().await;
    assert_eq!(issuer.issued(), 1);

    let _again = store.acquire(&id).await.unwrap();
    assert_eq!(issuer.issued(), 2);
}

/// A CA whose signing root an operator switches, as the controller does in a root rotation.
#[derive(Clone)]
struct RotatingIssuer {
    signing: Arc<Mutex<TestPki>>,
    issued: Arc<AtomicUsize>,
}

impl CertificateIssuer for RotatingIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        let ca = lock(&self.signing).ca.clone();
        Ok(vec![ca.sign(csr_der, identity, LIFETIME)?])
    }
}

/// The data plane's half of a root rotation: each bundle change re-issues at once (not at
/// half-life), and a leaf from a root that no longer signs is re-requested with backoff until
/// the CA has switched.
#[tokio::test(start_paused = true)]
async fn a_bundle_change_re_issues_and_a_leaf_from_the_old_root_is_re_requested() {
    let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
    let issuer = RotatingIssuer {
        signing: Arc::new(Mutex::new(old.clone())),
        issued: Arc::default(),
    };
    let issued = || issuer.issued.load(Ordering::SeqCst);
    let bundle = old.bundle();
    let store =
        CertificateStore::new(issuer.clone(), RetryPolicy::default()).following(bundle.clone());
    let lease = store.acquire(&old.id("demo", "web")).await.unwrap();
    let mut handle = lease.handle();
    settle().await;
    assert_eq!(issued(), 1);

    let (old_root, new_root) = (
        old.ca.root_certificate().clone(),
        new.ca.root_certificate().clone(),
    );
    bundle
        .replace([old_root.clone(), new_root.clone()])
        .unwrap();
    handle.changed().await.unwrap();
    assert_eq!(issued(), 2, "re-issued when the new root was added");

    // The bundle names the new root as signing before this CA switched: the leaf it gets is
    // still the old root's, so it asks again, and gets the new root's once the CA switched.
    bundle.replace([new_root.clone(), old_root]).unwrap();
    let stale = handle.changed().await.unwrap();
    assert!(!bundle.from_signing_root(&stale.chain()[0]));
    *lock(&issuer.signing) = new.clone();
    let fresh = handle.changed().await.unwrap();
    assert!(bundle.from_signing_root(&fresh.chain()[0]));
    let settled = issued();

    tokio::time::advance(LIFETIME / 4).await;
    settle().await;
    assert_eq!(
        issued(),
        settled,
        "a leaf from the signing root waits for half-life"
    );
}

/// A CA whose clock is behind this one: every leaf it signs has already expired here.
#[derive(Clone)]
struct BehindIssuer {
    pki: TestPki,
    issued: Arc<AtomicUsize>,
}

impl CertificateIssuer for BehindIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        let behind = SystemTime::now() - 2 * LIFETIME;
        Ok(vec![
            self.pki.ca.sign_at(csr_der, identity, LIFETIME, behind)?,
        ])
    }
}

/// Clock skew: a leaf past its `notAfter` on arrival has no half-life left, and is re-requested
/// with the growing backoff (1 s doubling to 8 s here), not at once in a loop against the CA.
#[tokio::test(start_paused = true)]
async fn a_leaf_expired_on_arrival_is_re_requested_with_backoff() {
    let pki = TestPki::new("cluster.local");
    let issuer = BehindIssuer {
        pki: pki.clone(),
        issued: Arc::default(),
    };
    let store = CertificateStore::new(
        issuer.clone(),
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
    );
    let issued = || issuer.issued.load(Ordering::SeqCst);
    let _lease = store.acquire(&pki.id("demo", "web")).await.unwrap();
    settle().await;
    assert_eq!(issued(), 1, "re-requested on arrival");

    // Re-requests at 1, 3, 7, 15, 23, 31, 39 s.
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(issued(), 8);
}
