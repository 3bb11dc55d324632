//! An attacker who holds a valid workload certificate and dials a pod's node tunnel over HBONE
//! directly, skipping the pod's waypoint (and its L7 policy). The certificate is minted with the
//! mesh root from Secret `ambit-ca`, which a test may read: it stands for a stolen workload key,
//! exactly what the destination tunnel's "only from the waypoint" check is there for.

use crate::{SYSTEM_NS, TRUST_DOMAIN};
use ambit_hbone::{Dialer, HboneError, HbonePool, PoolKey, PoolSettings, TunnelHeaders};
use ambit_identity::{
    CertificateAuthority, CertificateHandle, CertificateRequest, SpiffeId, TrustBundle, TrustDomain,
};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The Secret the controller keeps its root in (keys `ca.crt`, `ca.key`).
const CA_SECRET: &str = "ambit-ca";
const LIFETIME: Duration = Duration::from_secs(3600);

/// HBONE as one identity, with a certificate the mesh's own CA signed.
pub struct Attacker {
    pool: HbonePool,
    dialer: Dialer,
    certificate: CertificateHandle,
    pub identity: SpiffeId,
    trust_domain: TrustDomain,
}

impl std::fmt::Debug for Attacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attacker")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The mesh's signing root as Secret `ambit-ca` holds it now.
pub async fn mesh_ca(client: &kube::Client) -> Result<CertificateAuthority> {
    let secret = Api::<Secret>::namespaced(client.clone(), SYSTEM_NS)
        .get(CA_SECRET)
        .await
        .with_context(|| format!("reading Secret {SYSTEM_NS}/{CA_SECRET}"))?;
    let data = secret.data.unwrap_or_default();
    let get = |key: &str| -> Result<String> {
        let bytes = data
            .get(key)
            .with_context(|| format!("Secret {CA_SECRET} has no {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    };
    Ok(CertificateAuthority::from_pem(
        TRUST_DOMAIN.parse()?,
        &get("ca.crt")?,
        &get("ca.key")?,
    )?)
}

impl Attacker {
    /// Mints a certificate for `namespace/service_account` with the root in Secret `ambit-ca`.
    pub async fn new(
        client: &kube::Client,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self> {
        let ca = mesh_ca(client).await?;
        let trust = TrustBundle::new(ca.trust_domain().clone(), [ca.root_certificate().clone()])?;
        Self::minted_by(&ca, trust, namespace, service_account)
    }

    /// Mints a certificate for `namespace/service_account` with `ca` (a root the mesh may no
    /// longer trust), verifying tunnels with `trust`.
    pub fn minted_by(
        ca: &CertificateAuthority,
        trust: TrustBundle,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self> {
        let trust_domain = ca.trust_domain().clone();
        let identity = SpiffeId::new(trust_domain.clone(), namespace, service_account)?;
        let request = CertificateRequest::new(&identity)?;
        let leaf = ca.sign(request.csr_der(), &identity, LIFETIME)?;
        let certificate = request.complete(vec![leaf])?;
        let certificate = CertificateHandle::fixed(certificate);
        let identities: HashMap<SpiffeId, CertificateHandle> =
            HashMap::from([(identity.clone(), certificate.clone())]);
        let dialer = Dialer::new(trust, PoolSettings::default());
        Ok(Self {
            pool: HbonePool::new(dialer.clone(), Arc::new(identities)),
            dialer,
            certificate,
            identity,
            trust_domain,
        })
    }

    /// The identity a tunnel serving `namespace/service_account` must present.
    fn peer_identity(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, HboneError> {
        SpiffeId::new(self.trust_domain.clone(), namespace, service_account)
            .map_err(|e| HboneError::Io(std::io::Error::other(e)))
    }

    /// [`Attacker::connect`] on a connection of its own (a full handshake each time), closed
    /// when done: probes that must not pile up connections at the peer.
    pub async fn connect_once(
        &self,
        peer: SocketAddr,
        (namespace, service_account): (&str, &str),
        target: SocketAddr,
    ) -> Result<(), HboneError> {
        let expected = self.peer_identity(namespace, service_account)?;
        let stream = self
            .dialer
            .connect_unpooled(
                self.certificate.clone(),
                peer,
                vec![expected],
                target,
                &TunnelHeaders::default(),
            )
            .await?;
        drop(stream);
        Ok(())
    }

    /// Opens an HBONE tunnel to `target` through the tunnel at `peer` (a pod's `IP:15008`),
    /// which must present `namespace/service_account`'s identity. `Ok` if the tunnel opened.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        (namespace, service_account): (&str, &str),
        target: SocketAddr,
    ) -> Result<(), HboneError> {
        let expected = self.peer_identity(namespace, service_account)?;
        let key = PoolKey::new(self.identity.clone(), peer, vec![expected]);
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            self.pool.connect(&key, target, &TunnelHeaders::default()),
        )
        .await
        .map_err(|_| HboneError::Io(std::io::ErrorKind::TimedOut.into()))??;
        drop(stream);
        Ok(())
    }
}
