//! Workload certificates: what a tunnel holds for one identity, and reading identities and
//! validity out of X.509.

use crate::spiffe::{SpiffeId, SpiffeIdError};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate cannot serve as, or does not carry, a workload identity.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate is not valid X.509 DER: {0}")]
    Malformed(String),
    #[error("certificate has {0} URI SANs; a SPIFFE certificate has exactly one")]
    UriSanCount(usize),
    #[error("certificate URI SAN is not an ambit SPIFFE id: {0}")]
    InvalidSpiffeId(#[from] SpiffeIdError),
    #[error("certificate was issued for {actual}, expected {expected}")]
    WrongIdentity {
        expected: Box<SpiffeId>,
        actual: Box<SpiffeId>,
    },
    #[error("private key is unusable: {0}")]
    Key(String),
}

/// The SPIFFE id carried in a certificate's only URI SAN.
pub fn identity_of(certificate: &CertificateDer<'_>) -> Result<SpiffeId, CertificateError> {
    identity_in(&parse(certificate)?)
}

/// The validity window `(not_before, not_after)` of a certificate.
pub fn validity_of(
    certificate: &CertificateDer<'_>,
) -> Result<(SystemTime, SystemTime), CertificateError> {
    Ok(validity_in(&parse(certificate)?))
}

/// [`identity_of`] and the end of [`validity_of`] from one parse, as a handshake's peer needs
/// both.
pub fn identity_and_not_after(
    certificate: &CertificateDer<'_>,
) -> Result<(SpiffeId, SystemTime), CertificateError> {
    let cert = parse(certificate)?;
    Ok((identity_in(&cert)?, validity_in(&cert).1))
}

fn identity_in(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertificateError> {
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push(*uri);
            }
        }
    }
    match uris.as_slice() {
        [uri] => Ok(uri.parse()?),
        other => Err(CertificateError::UriSanCount(other.len())),
    }
}

fn validity_in(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let validity = cert.validity();
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    (
        to_system(validity.not_before),
        to_system(validity.not_after),
    )
}

fn parse<'a>(certificate: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertificateError> {
    let (_, cert) = X509Certificate::from_der(certificate.as_ref())
        .map_err(|e| CertificateError::Malformed(e.to_string()))?;
    Ok(cert)
}

/// A leaf certificate chain with its private key, ready for rustls. The key lives only in
/// memory, inside the signing key object, and is never serialized again.
#[derive(Clone)]
pub struct WorkloadCertificate {
    identity: SpiffeId,
    certified_key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl WorkloadCertificate {
    /// Pairs an issued chain (leaf first) with its key, checking the leaf carries `identity`.
    pub fn new(
        identity: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertificateError> {
        let leaf = chain.first().ok_or(CertificateError::EmptyChain)?;
        let actual = identity_of(leaf)?;
        if actual != identity {
            return Err(CertificateError::WrongIdentity {
                expected: Box::new(identity),
                actual: Box::new(actual),
            });
        }
        let (not_before, not_after) = validity_of(leaf)?;
        let signing_key = crate::tls::crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertificateError::Key(e.to_string()))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key
            .keys_match()
            .map_err(|e| CertificateError::Key(e.to_string()))?;
        Ok(Self {
            identity,
            certified_key: Arc::new(certified_key),
            not_before,
            not_after,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// How long the certificate is valid in total.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}
