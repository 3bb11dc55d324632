//! The client half of issuance: a fresh key that never leaves memory and a CSR for it.

use crate::cert::{CertificateError, WorkloadCertificate};
use crate::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fmt;

#[derive(Debug, thiserror::Error)]
#[error("could not create a key and CSR: {0}")]
pub struct CsrError(#[from] rcgen::Error);

/// A pending issuance: the key stays here until [`CertificateRequest::complete`] pairs it with
/// the chain the CA returned.
pub struct CertificateRequest {
    identity: SpiffeId,
    key: KeyPair,
    csr: Vec<u8>,
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Generates an ECDSA P-256 key and a CSR asking for `identity` as the only URI SAN.
    pub fn new(identity: &SpiffeId) -> Result<Self, CsrError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_uri().try_into()?)];
        let csr = params.serialize_request(&key)?.der().to_vec();
        Ok(Self {
            identity: identity.clone(),
            key,
            csr,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The CSR in DER, to send to the CA.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr
    }

    /// Pairs the key with the issued chain (leaf first), checking the leaf is for our identity
    /// and our key.
    pub fn complete(
        self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCertificate, CertificateError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        WorkloadCertificate::new(self.identity, chain, key)
    }
}
