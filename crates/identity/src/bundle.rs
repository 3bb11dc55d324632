//! The trust bundle: the roots of one trust domain as a live, shared handle.
//!
//! A root rotation changes the bundle while connections are open: every clone of a
//! [`TrustBundle`] sees the change at the next handshake, and holders of established
//! connections learn of it through [`TrustBundle::changes`] and re-check the chains those
//! connections were made with ([`TrustBundle::verifies`]; HBONE cuts the ones that no longer
//! verify). The first root is the one the CA signs new leaves with; a change of the bundle is
//! also how data planes learn that they should re-request their leaves.

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::watch;

use crate::cert::validity_of;
use crate::spiffe::TrustDomain;
use crate::tls::{TlsError, crypto_provider};

/// One version of the bundle's roots, with what verification needs prebuilt once per change
/// rather than per handshake.
pub(crate) struct Roots {
    certificates: Vec<CertificateDer<'static>>,
    pub(crate) store: Arc<RootCertStore>,
    /// The first root alone: whether a leaf comes from the root that signs now.
    signing: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    /// Chains these roots verified, so that a peer dialing again with the same chain is not
    /// verified again (a new bundle starts empty).
    pub(crate) verified: VerifiedChains,
}

impl Roots {
    fn new(certificates: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let Some(first) = certificates.first() else {
            return Err(TlsError::NoRoots("the bundle is empty".into()));
        };
        let store = Arc::new(store_of(certificates.iter().cloned())?);
        let signing = Arc::new(store_of([first.clone()])?);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), crypto_provider())
                .build()?;
        Ok(Self {
            certificates,
            store,
            signing,
            client_verifier,
            verified: VerifiedChains::default(),
        })
    }
}

/// How many verified chains one version of the roots remembers: the peers a tunnel dials or
/// serves again and again. At most 8 KiB each (the verifiers refuse longer chains), so 512 KiB.
const VERIFIED_CHAINS: usize = 64;

/// Chains (leaf first) that verified against one version of the roots, with their validity.
/// Whether a chain verifies depends on the roots, its bytes, the role it is presented in (the
/// key usage) and the time. A chain found here (same roots, bytes and role) is judged again
/// for the time only, against the validity of each of its certificates: building its path and
/// checking its signatures again would give the same answer. The oldest is forgotten first.
#[derive(Default)]
pub(crate) struct VerifiedChains(Mutex<VecDeque<VerifiedChain>>);

struct VerifiedChain {
    role: ChainRole,
    chain: Vec<CertificateDer<'static>>,
    /// The latest `notBefore` and the earliest `notAfter` of the chain's certificates, in
    /// seconds since the epoch, as the path check compares them.
    valid: (u64, u64),
}

impl VerifiedChains {
    /// Whether `end_entity` and `intermediates` verified as `role` before, and every one of
    /// them is valid `now`.
    pub(crate) fn contains(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: ChainRole,
        now: UnixTime,
    ) -> bool {
        let now = now.as_secs();
        lock(&self.0).iter().any(|verified| {
            verified.role == role
                && verified.chain.len() == 1 + intermediates.len()
                && verified.chain[0] == *end_entity
                && verified.chain[1..] == *intermediates
                && (verified.valid.0..=verified.valid.1).contains(&now)
        })
    }

    /// Remembers a chain that just verified as `role`.
    pub(crate) fn insert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: ChainRole,
    ) {
        let chain: Vec<CertificateDer<'static>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs()
                .into()
        };
        let mut valid = (0, u64::MAX);
        for certificate in &chain {
            // Verified, so it parses; a validity before 1970 is not worth remembering.
            let Some((Some(from), Some(until))) = validity_of(certificate)
                .ok()
                .map(|(f, u)| (secs(f), secs(u)))
            else {
                return;
            };
            valid = (valid.0.max(from), valid.1.min(until));
        }
        let mut verified = lock(&self.0);
        if verified.len() == VERIFIED_CHAINS {
            verified.pop_front();
        }
        verified.push_back(VerifiedChain { role, chain, valid });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the list whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn store_of(
    certificates: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for root in certificates {
        store
            .add(root)
            .map_err(|e| TlsError::NoRoots(e.to_string()))?;
    }
    Ok(store)
}

/// The roots of one trust domain; clones share them, and [`TrustBundle::replace`] changes them
/// for every clone at once.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Arc<watch::Sender<Arc<Roots>>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.borrow().certificates.len())
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of `roots`, the first being the root that signs new leaves.
    pub fn new(
        trust_domain: TrustDomain,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let roots = Roots::new(roots.into_iter().collect())?;
        Ok(Self {
            trust_domain,
            roots: Arc::new(watch::Sender::new(Arc::new(roots))),
        })
    }

    /// A bundle of every certificate in `pem` (the published `root.crt`), in order.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, TlsError> {
        Self::new(trust_domain, parse_pem(pem)?)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots now trusted, the signing root first.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.borrow().certificates.clone()
    }

    pub(crate) fn current(&self) -> Arc<Roots> {
        self.roots.borrow().clone()
    }

    /// Trusts exactly `roots` from the next handshake on. Returns whether anything changed
    /// (order included: the first root is the signing one). An unusable set leaves the bundle
    /// as it was.
    pub fn replace(
        &self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<bool, TlsError> {
        let certificates: Vec<_> = roots.into_iter().collect();
        if self.roots.borrow().certificates == certificates {
            return Ok(false);
        }
        self.roots.send_replace(Arc::new(Roots::new(certificates)?));
        Ok(true)
    }

    /// [`Self::replace`] from PEM.
    pub fn replace_pem(&self, pem: &[u8]) -> Result<bool, TlsError> {
        self.replace(parse_pem(pem)?)
    }

    /// Notified at every change of the roots from now on.
    pub fn changes(&self) -> BundleChanges {
        BundleChanges(self.roots.subscribe())
    }

    /// Whether `chain` (leaf first), presented by `role` and verified at `at` (its handshake),
    /// chains to a root trusted now. Validity is judged at `at`, so the answer is about the
    /// roots alone: a chain that verified at its handshake fails only if its root was
    /// withdrawn since.
    pub fn verifies(&self, chain: &[CertificateDer<'_>], role: ChainRole, at: SystemTime) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let at = UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let roots = self.current();
        match role {
            ChainRole::Client => roots
                .client_verifier
                .verify_client_cert(leaf, intermediates, at)
                .is_ok(),
            ChainRole::Server => ParsedCertificate::try_from(leaf).is_ok_and(|parsed| {
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots.store,
                    intermediates,
                    at,
                    crypto_provider().signature_verification_algorithms.all,
                )
                .is_ok()
            }),
        }
    }

    /// Whether `leaf` chains to the signing (first) root: a leaf that chains only to another
    /// root was issued before a rotation reached its CA and should be renewed.
    pub fn from_signing_root(&self, leaf: &CertificateDer<'_>) -> bool {
        let signing = self.current().signing.clone();
        ParsedCertificate::try_from(leaf).is_ok_and(|parsed| {
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &signing,
                &[],
                UnixTime::now(),
                crypto_provider().signature_verification_algorithms.all,
            )
            .is_ok()
        })
    }
}

/// Which end of a connection presented a chain: the key usage its leaf must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainRole {
    /// The connecting end (`clientAuth`).
    Client,
    /// The accepting end (`serverAuth`).
    Server,
}

/// Tells of changes of a [`TrustBundle`]'s roots.
pub struct BundleChanges(watch::Receiver<Arc<Roots>>);

impl BundleChanges {
    /// Waits for the next change; pending forever once every bundle clone is gone.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the roots changed since this was made or last waited on.
    pub fn has_changed(&self) -> bool {
        self.0.has_changed().unwrap_or(false)
    }
}

impl fmt::Debug for BundleChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleChanges").finish_non_exhaustive()
    }
}

fn parse_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoRoots(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;

    fn root(pki: &TestPki) -> CertificateDer<'static> {
        pki.ca.root_certificate().clone()
    }

    #[test]
    fn clones_share_a_replacement_and_are_told_of_it() {
        let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let bundle = old.bundle();
        let clone = bundle.clone();
        let changes = clone.changes();
        assert!(bundle.replace([root(&old), root(&new)]).unwrap());
        assert_eq!(clone.roots(), vec![root(&old), root(&new)]);
        assert!(changes.has_changed());
        let changes = clone.changes();
        assert!(!bundle.replace([root(&old), root(&new)]).unwrap());
        assert!(!changes.has_changed(), "the same roots are no change");
        assert!(bundle.replace([root(&new), root(&old)]).unwrap());
        assert!(changes.has_changed(), "a new signing root is a change");
    }

    #[test]
    fn an_unusable_replacement_keeps_the_bundle() {
        let pki = TestPki::new("cluster.local");
        let bundle = pki.bundle();
        assert!(bundle.replace([]).is_err());
        assert!(bundle.replace_pem(b"not a certificate").is_err());
        assert_eq!(bundle.roots(), vec![root(&pki)]);
    }

    #[test]
    fn pem_holds_every_root_in_order() {
        let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let pem = format!("{}{}", new.ca.root_pem(), old.ca.root_pem());
        let bundle = TrustBundle::from_pem(old.trust_domain().clone(), pem.as_bytes()).unwrap();
        assert_eq!(bundle.roots(), vec![root(&new), root(&old)]);
    }

    #[test]
    fn a_chain_verifies_while_its_root_is_in_the_bundle() {
        let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let id = old.id("demo", "a");
        let chain = old.certificate(&id).chain().to_vec();
        let at = SystemTime::now();
        let bundle = old.bundle();
        for role in [ChainRole::Client, ChainRole::Server] {
            assert!(bundle.verifies(&chain, role, at), "{role:?}");
        }
        bundle.replace([root(&new), root(&old)]).unwrap();
        assert!(
            bundle.verifies(&chain, ChainRole::Client, at),
            "old root still trusted"
        );
        bundle.replace([root(&new)]).unwrap();
        for role in [ChainRole::Client, ChainRole::Server] {
            assert!(
                !bundle.verifies(&chain, role, at),
                "{role:?} after withdrawal"
            );
        }
        assert!(!bundle.verifies(&[], ChainRole::Client, at));
    }

    #[test]
    fn validity_is_judged_at_the_handshake_not_now() {
        let pki = TestPki::new("cluster.local");
        let id = pki.id("demo", "a");
        let issued = SystemTime::now() - std::time::Duration::from_secs(600);
        let expired = pki.certificate_at(&id, std::time::Duration::from_secs(60), issued);
        let bundle = pki.bundle();
        let during = issued + std::time::Duration::from_secs(30);
        assert!(bundle.verifies(expired.chain(), ChainRole::Client, during));
        assert!(!bundle.verifies(expired.chain(), ChainRole::Client, SystemTime::now()));
    }

    #[test]
    fn a_leaf_is_from_the_signing_root_only_if_it_chains_to_the_first() {
        let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let id = old.id("demo", "a");
        let (old_leaf, new_leaf) = (old.certificate(&id), new.certificate(&id));
        let bundle = TrustBundle::new(id.trust_domain().clone(), [root(&new), root(&old)]).unwrap();
        assert!(bundle.from_signing_root(&new_leaf.chain()[0]));
        assert!(!bundle.from_signing_root(&old_leaf.chain()[0]));
    }
}
