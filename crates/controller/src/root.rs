//! The mesh roots and their rotation.
//!
//! Secret `ambit-ca` holds the signing root (`ca.crt`, `ca.key`) and, while a rotation is under
//! way, the other root trusted beside it (`trusted.crt`, certificates only). The published
//! bundle (ConfigMap `ambit-root-cert`, key `root.crt`) is the signing root followed by the
//! trusted ones. The controller watches the Secret: an edit republishes the bundle, in its own
//! namespace for tunnels and in every namespace that has the ConfigMap for waypoints, retried
//! until every namespace has it, and only then switches the signing root for the next leaf (a
//! peer never gets a leaf of a root it was not sent). Data planes reload the bundle and
//! re-request their leaves when it changes. The procedure is in docs/identity.md.

use crate::ca::{ROOT_CONFIGMAP, ROOT_SECRET, RootError, from_secret, publish_root};
use ambit_identity::{
    CaError, CertificateAuthority, CertificateIssuer, IssueError, SpiffeId, TlsError, TrustBundle,
    TrustDomain,
};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Secret key of the roots trusted beside the signing one (PEM, one or more certificates).
pub const TRUSTED_KEY: &str = "trusted.crt";

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(transparent)]
    Secret(#[from] RootError),
    #[error("Secret {ROOT_SECRET} key {TRUSTED_KEY} is not PEM text")]
    TrustedNotText,
    #[error("Secret {ROOT_SECRET}: the bundle of ca.crt and {TRUSTED_KEY} is unusable: {0}")]
    Bundle(#[from] TlsError),
    #[error(
        "Secret {ROOT_SECRET}: ca.crt has {left:?} of validity left, less than a leaf's lifetime \
         ({leaf:?}): it could sign no leaf"
    )]
    CannotSign { left: Duration, leaf: Duration },
}

/// One version of the roots: the CA that signs and the bundle published.
struct RootSet {
    ca: Arc<CertificateAuthority>,
    pem: String,
}

impl RootSet {
    fn same(&self, other: &Self) -> bool {
        self.pem == other.pem && self.ca.to_material().key_pem == other.ca.to_material().key_pem
    }

    fn new(ca: CertificateAuthority, trusted: Option<&str>) -> Result<Self, RootsError> {
        let pem = match trusted.map(str::trim).filter(|t| !t.is_empty()) {
            Some(trusted) => format!("{}\n{trusted}\n", ca.root_pem().trim_end()),
            None => ca.root_pem().to_owned(),
        };
        // Checked as the data planes will read it: a bundle they would refuse is not published.
        TrustBundle::from_pem(ca.trust_domain().clone(), pem.as_bytes())?;
        Ok(Self {
            ca: Arc::new(ca),
            pem,
        })
    }

    /// The roots an edit of the Secret asks for. A signing root with less validity left than
    /// a leaf lives is refused: switching to it would stop all issuance (the CA signs no leaf
    /// past its root's end).
    fn from_secret(
        secret: &Secret,
        namespace: &str,
        trust_domain: &TrustDomain,
        leaf_lifetime: Duration,
    ) -> Result<Self, RootsError> {
        let ca = from_secret(secret, namespace, trust_domain)?;
        Self::signing_for(ca, trusted_of(secret)?, leaf_lifetime)
    }

    fn signing_for(
        ca: CertificateAuthority,
        trusted: Option<&str>,
        leaf_lifetime: Duration,
    ) -> Result<Self, RootsError> {
        let left = ca.max_leaf_lifetime();
        if left < leaf_lifetime {
            return Err(RootsError::CannotSign {
                left,
                leaf: leaf_lifetime,
            });
        }
        Self::new(ca, trusted)
    }
}

fn trusted_of(secret: &Secret) -> Result<Option<&str>, RootsError> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TRUSTED_KEY))
        .map(|b| std::str::from_utf8(&b.0).map_err(|_| RootsError::TrustedNotText))
        .transpose()
}

/// The controller's live roots; clones share them.
#[derive(Clone)]
pub struct MeshRoots {
    trust_domain: TrustDomain,
    /// The roots installed: the first signs.
    current: Arc<watch::Sender<Arc<RootSet>>>,
    /// The bundle to publish: the installed one, or during a publication the one that will be
    /// (every publisher, the waypoint reconciler too, publishes the same).
    wanted: Arc<watch::Sender<String>>,
}

impl std::fmt::Debug for MeshRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRoots")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshRoots {
    /// The roots of the Secret `load_or_create_root` read `ca` from: `ca` signs, and whatever
    /// `trusted.crt` holds is published beside it (a controller restarting mid-rotation keeps
    /// publishing both).
    pub async fn load(
        client: &kube::Client,
        namespace: &str,
        ca: CertificateAuthority,
    ) -> Result<Self, RootsError> {
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(ROOT_SECRET)
            .await
            .map_err(|source| RootError::Kube {
                namespace: namespace.to_owned(),
                source,
            })?;
        let trusted = secret.as_ref().map(trusted_of).transpose()?.flatten();
        Ok(Self::with(RootSet::new(ca, trusted)?))
    }

    fn with(set: RootSet) -> Self {
        Self {
            trust_domain: set.ca.trust_domain().clone(),
            wanted: Arc::new(watch::Sender::new(set.pem.clone())),
            current: Arc::new(watch::Sender::new(Arc::new(set))),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA that signs new leaves now.
    pub fn signing(&self) -> Arc<CertificateAuthority> {
        self.current.borrow().ca.clone()
    }

    /// Signs with the current signing root (see [`CertificateAuthority::sign`]).
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        self.signing().sign(csr, identity, lifetime)
    }

    /// The signing root's certificate.
    pub fn root_certificate(&self) -> CertificateDer<'static> {
        self.signing().root_certificate().clone()
    }

    /// The bundle to publish (PEM): the signing root first (during a publication the root
    /// that will sign once every namespace has it).
    pub fn bundle_pem(&self) -> String {
        self.wanted.borrow().clone()
    }

    /// The bundle as a live trust bundle, for the controller's own serving certificate.
    pub fn trust_bundle(&self) -> Result<TrustBundle, TlsError> {
        TrustBundle::from_pem(self.trust_domain.clone(), self.bundle_pem().as_bytes())
    }

    /// Installs `set`; whether the signing root or the bundle changed.
    fn replace(&self, set: RootSet) -> bool {
        self.wanted.send_replace(set.pem.clone());
        self.current.send_if_modified(|current| {
            let changed = !current.same(&set);
            if changed {
                *current = Arc::new(set);
            }
            changed
        })
    }
}

/// Issues the controller's own certificates from the current signing root.
#[derive(Debug, Clone)]
pub struct RootIssuer {
    pub roots: MeshRoots,
    pub lifetime: Duration,
}

impl CertificateIssuer for RootIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        Ok(vec![self.roots.sign(csr_der, identity, self.lifetime)?])
    }
}

/// What [`run`] keeps up to date.
pub(crate) struct Rotation {
    pub(crate) client: kube::Client,
    pub(crate) namespace: String,
    pub(crate) roots: MeshRoots,
    /// The controller's own trust bundle (its serving certificate follows it).
    pub(crate) trust: TrustBundle,
    pub(crate) owner: Option<OwnerReference>,
    /// The lifetime of the leaves signed (a new signing root must outlive one).
    pub(crate) leaf_lifetime: Duration,
}

/// Watches the root Secret: an edit that changes the roots is published everywhere the bundle
/// is, retried with backoff until every namespace has it, and then installed (the signing root
/// switches). An unusable edit keeps the current roots (logged). Every replica runs it: each
/// signs, and the publishing is idempotent.
pub(crate) async fn run(rotation: Rotation) {
    let Rotation {
        client,
        namespace,
        roots,
        trust,
        owner,
        leaf_lifetime,
    } = rotation;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={ROOT_SECRET}"));
    let mut applied = watcher(secrets, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut publication = Publication::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = applied.try_next() => {
                let secret = match next {
                    Ok(Some(secret)) => secret,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, secret = ROOT_SECRET, "watch");
                        continue;
                    }
                };
                let set = match RootSet::from_secret(&secret, &namespace, roots.trust_domain(), leaf_lifetime) {
                    Ok(set) => set,
                    Err(error) => {
                        tracing::error!(%error, "root Secret edited into an unusable state: keeping the current roots");
                        continue;
                    }
                };
                if !publication.wants(&roots, set) {
                    continue;
                }
                tracing::info!(
                    roots = roots.bundle_pem().matches("BEGIN CERTIFICATE").count(),
                    "mesh roots changed: publishing the bundle, then signing with its first root"
                );
            }
            () = retry => {}
        }
        let publish = |pem: String| {
            let (client, namespace, owner) = (&client, &namespace, owner.as_ref());
            async move { publish_everywhere(client, namespace, &pem, owner).await }
        };
        retry_at = match publication.attempt(&roots, publish).await {
            Ok(()) => {
                if let Err(error) = trust.replace_pem(roots.bundle_pem().as_bytes()) {
                    tracing::error!(%error, "the controller's own trust bundle");
                }
                None
            }
            Err((error, delay)) => {
                tracing::error!(%error, retry_in_ms = delay.as_millis(), "publishing the rotated roots: the signing root switches once every namespace has them");
                Some(Instant::now() + delay)
            }
        };
    }
}

/// Roots the Secret asks for that not every namespace has yet.
#[derive(Default)]
struct Publication {
    pending: Option<(RootSet, ExponentialBackoff)>,
}

impl Publication {
    /// An edit of the Secret: whether `set` must be published, as it differs from the roots
    /// pending or, with none pending, from those installed. It then supersedes the pending ones
    /// and becomes the bundle every publisher publishes.
    fn wants(&mut self, roots: &MeshRoots, set: RootSet) -> bool {
        let differs = match &self.pending {
            Some((pending, _)) => !pending.same(&set),
            None => !roots.current.borrow().same(&set),
        };
        if differs {
            roots.wanted.send_replace(set.pem.clone());
            self.pending = Some((set, retry_delays()));
        }
        differs
    }

    /// Publishes the pending roots with `publish`, and once it succeeded installs them: the
    /// signing root switches only after every namespace has the bundle that trusts it. On
    /// failure, the error and the time until the next try (growing).
    async fn attempt<E, F, Fut>(
        &mut self,
        roots: &MeshRoots,
        publish: F,
    ) -> Result<(), (E, Duration)>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let Some((set, mut delays)) = self.pending.take() else {
            return Ok(());
        };
        match publish(set.pem.clone()).await {
            Ok(()) => {
                roots.replace(set);
                Ok(())
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(RETRY_MAX);
                self.pending = Some((set, delays));
                Err((error, delay))
            }
        }
    }
}

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .without_max_times()
        .build()
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("listing the namespaces that have ConfigMap {ROOT_CONFIGMAP}: {0}")]
    List(#[source] kube::Error),
    #[error("ConfigMap {ROOT_CONFIGMAP} not updated in namespaces {}", .0.join(", "))]
    Namespaces(Vec<String>),
}

/// The bundle in the controller's namespace and in every namespace that has the ConfigMap
/// (the waypoint namespaces: their reconciler publishes it there first). One namespace failing
/// does not stop the others.
async fn publish_everywhere(
    client: &kube::Client,
    namespace: &str,
    pem: &str,
    owner: Option<&OwnerReference>,
) -> Result<(), PublishError> {
    let mut failed = Vec::new();
    let mut publish = async |ns: &str| {
        if let Err(error) = publish_root(client, ns, pem, owner).await {
            tracing::warn!(%error, namespace = ns, "publishing the mesh roots");
            failed.push(ns.to_owned());
        }
    };
    // The tunnels' namespace first: it does not wait for the listing.
    publish(namespace).await;
    let published = Api::<ConfigMap>::all(client.clone())
        .list_metadata(&ListParams::default().fields(&format!("metadata.name={ROOT_CONFIGMAP}")))
        .await
        .map_err(PublishError::List)?;
    for ns in published
        .items
        .iter()
        .filter_map(|cm| cm.metadata.namespace.as_deref())
        .filter(|ns| *ns != namespace)
    {
        publish(ns).await;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(PublishError::Namespaces(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("cluster.local".parse().unwrap(), Duration::from_secs(3600))
            .unwrap()
    }

    #[test]
    fn the_bundle_is_the_signing_root_then_the_trusted_ones() {
        let (signing, old) = (ca(), ca());
        let old_pem = old.root_pem().to_owned();
        let set = RootSet::new(signing, Some(&old_pem)).unwrap();
        let bundle =
            TrustBundle::from_pem("cluster.local".parse().unwrap(), set.pem.as_bytes()).unwrap();
        assert_eq!(
            bundle.roots(),
            vec![
                set.ca.root_certificate().clone(),
                old.root_certificate().clone()
            ]
        );
    }

    #[test]
    fn an_unusable_trusted_root_is_refused() {
        assert!(RootSet::new(ca(), Some("-----BEGIN CERTIFICATE-----\nnope\n")).is_err());
        assert_eq!(
            RootSet::new(ca(), Some("  \n"))
                .unwrap()
                .pem
                .matches("BEGIN")
                .count(),
            1,
            "an emptied trusted.crt withdraws every other root"
        );
    }

    #[test]
    fn a_signing_root_that_outlives_no_leaf_is_refused() {
        let hour = Duration::from_secs(3600);
        let short = CertificateAuthority::generate(
            "cluster.local".parse().unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
        assert!(matches!(
            RootSet::signing_for(short, None, hour),
            Err(RootsError::CannotSign { .. })
        ));
        assert!(RootSet::signing_for(ca(), None, Duration::from_secs(1800)).is_ok());
    }

    #[test]
    fn replacing_tells_whether_the_roots_changed() {
        let (first, second) = (ca(), ca());
        let first_material = first.to_material();
        let roots = MeshRoots::with(RootSet::new(first, None).unwrap());
        let again = CertificateAuthority::from_pem(
            "cluster.local".parse().unwrap(),
            &first_material.certificate_pem,
            &first_material.key_pem,
        )
        .unwrap();
        assert!(!roots.replace(RootSet::new(again, None).unwrap()));
        let second_root = second.root_certificate().clone();
        assert!(roots.replace(RootSet::new(second, None).unwrap()));
        assert_eq!(roots.root_certificate(), second_root);
    }

    /// A copy of `ca` loaded from its material, as a Secret event that did not change it.
    fn copy(ca: &CertificateAuthority) -> CertificateAuthority {
        let material = ca.to_material();
        CertificateAuthority::from_pem(
            ca.trust_domain().clone(),
            &material.certificate_pem,
            &material.key_pem,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_signing_root_switches_only_once_its_bundle_is_published_and_a_failure_is_retried()
    {
        let (old, new) = (ca(), ca());
        let (old_root, new_root) = (
            old.root_certificate().clone(),
            new.root_certificate().clone(),
        );
        let old_pem = old.root_pem().to_owned();
        let roots = MeshRoots::with(RootSet::new(old, None).unwrap());
        let mut publication = Publication::default();
        let swap = RootSet::new(new, Some(&old_pem)).unwrap();
        let swapped_pem = swap.pem.clone();
        assert!(publication.wants(&roots, swap));
        assert_eq!(
            roots.bundle_pem(),
            swapped_pem,
            "what every publisher publishes"
        );

        let mut delays = Vec::new();
        for _ in 0..4 {
            let (error, delay) = publication
                .attempt(&roots, async |pem| {
                    assert_eq!(pem, swapped_pem);
                    Err("apiserver unavailable")
                })
                .await
                .unwrap_err();
            assert_eq!(error, "apiserver unavailable");
            assert_eq!(
                roots.root_certificate(),
                old_root,
                "switched before published"
            );
            delays.push(delay);
        }
        assert!(delays.is_sorted() && delays[0] >= RETRY_MIN && delays[3] > delays[0]);
        assert!(delays.iter().all(|d| *d <= RETRY_MAX), "{delays:?}");

        publication
            .attempt(&roots, async |_| Ok::<_, &str>(()))
            .await
            .unwrap();
        assert_eq!(roots.root_certificate(), new_root);
        assert_eq!(roots.bundle_pem(), swapped_pem);
        publication
            .attempt(&roots, async |_| -> Result<(), &str> {
                panic!("published again with nothing pending")
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_edit_is_published_unless_it_is_what_is_pending_or_installed() {
        let (old, new) = (ca(), ca());
        let old_root = old.root_certificate().clone();
        let old_pem = old.root_pem().to_owned();
        let roots = MeshRoots::with(RootSet::new(copy(&old), None).unwrap());
        let mut publication = Publication::default();
        assert!(!publication.wants(&roots, RootSet::new(copy(&old), None).unwrap()));

        assert!(publication.wants(&roots, RootSet::new(copy(&new), None).unwrap()));
        assert!(!publication.wants(&roots, RootSet::new(copy(&new), None).unwrap()));
        // Reverted while pending: the installed roots are published again (some namespaces
        // may have the pending bundle), and the signing root stays.
        assert!(publication.wants(&roots, RootSet::new(old, None).unwrap()));
        assert_eq!(roots.bundle_pem(), old_pem);
        publication
            .attempt(&roots, async |pem| {
                assert_eq!(pem, old_pem);
                Ok::<_, &str>(())
            })
            .await
            .unwrap();
        assert_eq!(roots.root_certificate(), old_root);
    }
}
