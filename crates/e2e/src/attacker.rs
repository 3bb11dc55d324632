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

impl Attacker {
    /// Mints a certificate for `namespace/service_account` with the root in Secret `ambit-ca`.
    pub async fn new(
        client: &kube::Client,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self> {
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
        let trust_domain: TrustDomain = TRUST_DOMAIN.parse()?;
        let ca =
            CertificateAuthority::from_pem(trust_domain.clone(), &get("ca.crt")?, &get("ca.key")?)?;
        let identity = SpiffeId::new(trust_domain.clone(), namespace, service_account)?;
        let request = CertificateRequest::new(&identity)?;
        let leaf = ca.sign(request.csr_der(), &identity, LIFETIME)?;
        let certificate = request.complete(vec![leaf])?;
        let bundle = TrustBundle::new(trust_domain.clone(), [ca.root_certificate().clone()])?;
        let identities: HashMap<SpiffeId, CertificateHandle> =
            HashMap::from([(identity.clone(), CertificateHandle::fixed(certificate))]);
        Ok(Self {
            pool: HbonePool::new(
                Dialer::new(bundle, PoolSettings::default()),
                Arc::new(identities),
            ),
            identity,
            trust_domain,
        })
    }

    /// Opens an HBONE tunnel to `target` through the tunnel at `peer` (a pod's `IP:15008`),
    /// which must present `namespace/service_account`'s identity. `Ok` if the tunnel opened.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        (namespace, service_account): (&str, &str),
        target: SocketAddr,
    ) -> Result<(), HboneError> {
        let expected = SpiffeId::new(self.trust_domain.clone(), namespace, service_account)
            .map_err(|e| HboneError::Io(std::io::Error::other(e)))?;
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
