//! The mesh certificate authority: a root that signs workload CSRs into short-lived leaves whose
//! only SAN is the SPIFFE id the caller was authorized for.

use crate::spiffe::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::fmt;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Leaves are backdated by this much so a peer whose clock runs slightly behind still accepts them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why the CA could not be created, loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not generate the CA key or certificate: {0}")]
    Generate(rcgen::Error),
    #[error("CA certificate PEM is unusable: {0}")]
    InvalidCertificate(String),
    #[error("CA key PEM is unusable: {0}")]
    InvalidKey(rcgen::Error),
    #[error("CA certificate is not a CA (basic constraints cA=false or absent)")]
    NotACa,
    #[error("CA key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error("CSR is malformed or its signature does not verify: {0}")]
    InvalidCsr(rcgen::Error),
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKeyAlgorithm,
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: Box<SpiffeId>,
        trust_domain: TrustDomain,
    },
    #[error("requested lifetime {requested:?} is outside 1s..={max:?}")]
    InvalidLifetime { requested: Duration, max: Duration },
    #[error("the system random number generator failed")]
    Random,
    #[error("could not sign the certificate: {0}")]
    Sign(rcgen::Error),
}

/// The CA's root certificate and key (in PEM), for persisting in a Kubernetes Secret.
pub struct CaMaterial {
    pub certificate_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
    /// When the root expires: no leaf may outlive it, however long this CA has been loaded.
    root_not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("root_not_after", &self.root_not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed root for `trust_domain`, valid for `validity` from now.
    pub fn generate(trust_domain: TrustDomain, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain.as_str());
        params
            .distinguished_name
            .push(DnType::CommonName, "ambit root CA");
        // Constrained(0): this root signs leaves only, never further CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = (now + validity).into();
        params.serial_number = Some(random_serial()?);
        let root = params.self_signed(&key).map_err(CaError::Generate)?;
        let root_pem = root.pem();
        Ok(Self {
            trust_domain,
            issuer: Issuer::new(params, key),
            root: root.der().clone(),
            root_pem,
            root_not_after: now + validity,
        })
    }

    /// Loads a root supplied as PEM (e.g. from a Secret), checking that it is a CA and that
    /// the key belongs to it.
    pub fn from_pem(
        trust_domain: TrustDomain,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        use rustls_pki_types::pem::PemObject;
        let root = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(CaError::InvalidKey)?;
        let (_, parsed) = X509Certificate::from_der(root.as_ref())
            .map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::NotACa);
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        // A root dated before 1970 is as good as expired.
        let root_not_after = u64::try_from(parsed.validity().not_after.timestamp())
            .map_or(SystemTime::UNIX_EPOCH, |secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
            });
        let issuer = Issuer::from_ca_cert_der(&root, key)
            .map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
        Ok(Self {
            trust_domain,
            issuer,
            root_pem: certificate_pem.to_owned(),
            root,
            root_not_after,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate peers must trust.
    pub fn root_certificate(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The longest leaf this CA signs now: its root's validity left.
    pub fn max_leaf_lifetime(&self) -> Duration {
        self.max_leaf_lifetime_at(SystemTime::now())
    }

    fn max_leaf_lifetime_at(&self, now: SystemTime) -> Duration {
        self.root_not_after.duration_since(now).unwrap_or_default()
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Root certificate and key as PEM, for storage in a Secret.
    pub fn to_material(&self) -> CaMaterial {
        CaMaterial {
            certificate_pem: self.root_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
        }
    }

    /// Signs `csr` into a leaf for `identity`, valid for `lifetime` from now.
    ///
    /// Only the CSR's public key is used: the SAN is `identity` alone, whatever the CSR asked
    /// for, because the caller's authorization decided the identity, not the CSR.
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        self.sign_at(csr, identity, lifetime, SystemTime::now())
    }

    /// [`Self::sign`] with an explicit issuing time (tests use it for expired certificates).
    pub fn sign_at(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, CaError> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: Box::new(identity.clone()),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let max = self.max_leaf_lifetime_at(now);
        if lifetime < Duration::from_secs(1) || lifetime > max {
            return Err(CaError::InvalidLifetime {
                requested: lifetime,
                max,
            });
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr.to_vec(),
        ))
        .map_err(CaError::InvalidCsr)?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKeyAlgorithm);
        }
        let mut params = CertificateParams::default();
        // Empty subject: the identity is the SAN alone (rcgen then marks the SAN critical).
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.to_uri().try_into().map_err(CaError::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Tunnels use the same certificate as HBONE client and server.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(random_serial()?);
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(leaf.der().clone())
    }
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Random)?;
    // A positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Issues from an in-process CA with a fixed leaf lifetime: for the controller's own use,
/// tests and benchmarks.
#[derive(Debug, Clone)]
pub struct LocalIssuer {
    ca: std::sync::Arc<CertificateAuthority>,
    lifetime: Duration,
}

impl LocalIssuer {
    pub fn new(ca: std::sync::Arc<CertificateAuthority>, lifetime: Duration) -> Self {
        Self { ca, lifetime }
    }
}

impl crate::store::CertificateIssuer for LocalIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, crate::store::IssueError> {
        Ok(vec![self.ca.sign(csr_der, identity, self.lifetime)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;
    use crate::{CertificateRequest, identity_of, validity_of};
    use x509_parser::extensions::GeneralName;

    const HOUR: Duration = Duration::from_secs(3600);

    fn general_names(der: &CertificateDer<'_>) -> Vec<String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn signs_a_leaf_whose_only_san_is_the_authorized_identity() {
        let pki = TestPki::new("cluster.local");
        let id = pki.id("demo", "web");
        // The CSR asks for a different identity; the CA must ignore that.
        let request = CertificateRequest::new(&pki.id("kube-system", "admin")).unwrap();
        let leaf = pki.ca.sign(request.csr_der(), &id, HOUR).unwrap();
        assert_eq!(general_names(&leaf), vec![format!("URI:{id}")]);
        assert_eq!(identity_of(&leaf).unwrap(), id);
        let (not_before, not_after) = validity_of(&leaf).unwrap();
        let lifetime = not_after.duration_since(not_before).unwrap();
        assert_eq!(lifetime, HOUR + CLOCK_SKEW_ALLOWANCE);
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn refuses_an_identity_of_another_trust_domain() {
        let pki = TestPki::new("cluster.local");
        let other = TestPki::new("evil.example").id("demo", "web");
        let request = CertificateRequest::new(&other).unwrap();
        let err = pki.ca.sign(request.csr_der(), &other, HOUR).unwrap_err();
        assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    }

    #[test]
    fn refuses_a_tampered_or_garbage_csr() {
        let pki = TestPki::new("cluster.local");
        let id = pki.id("demo", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let mut tampered = request.csr_der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(matches!(
            pki.ca.sign(&tampered, &id, HOUR),
            Err(CaError::InvalidCsr(_))
        ));
        assert!(matches!(
            pki.ca.sign(b"not a csr", &id, HOUR),
            Err(CaError::InvalidCsr(_))
        ));
    }

    #[test]
    fn refuses_lifetimes_outside_bounds() {
        let pki = TestPki::new("cluster.local");
        let id = pki.id("demo", "web");
        let request = CertificateRequest::new(&id).unwrap();
        for lifetime in [Duration::ZERO, Duration::from_secs(365 * 24 * 3600)] {
            assert!(matches!(
                pki.ca.sign(request.csr_der(), &id, lifetime),
                Err(CaError::InvalidLifetime { .. })
            ));
        }
    }

    /// A controller that runs for months must not sign, near its root's end, a leaf that
    /// outlives the root (the chain would break before the leaf is renewed).
    #[test]
    fn no_leaf_outlives_the_root_however_long_the_ca_has_been_loaded() {
        let td: TrustDomain = "cluster.local".parse().unwrap();
        let ca = CertificateAuthority::generate(td, Duration::from_secs(2 * 3600)).unwrap();
        let id = SpiffeId::new(ca.trust_domain().clone(), "demo", "web").unwrap();
        let request = CertificateRequest::new(&id).unwrap();
        let soon = SystemTime::now() + Duration::from_secs(90 * 60);
        assert!(ca.sign_at(request.csr_der(), &id, HOUR / 4, soon).is_ok());
        assert!(matches!(
            ca.sign_at(request.csr_der(), &id, HOUR, soon),
            Err(CaError::InvalidLifetime { max, .. }) if max <= HOUR / 2
        ));
    }

    #[test]
    fn reloads_from_pem_and_checks_the_material() {
        let pki = TestPki::new("cluster.local");
        let material = pki.ca.to_material();
        let td = pki.trust_domain().clone();
        let loaded = CertificateAuthority::from_pem(
            td.clone(),
            &material.certificate_pem,
            &material.key_pem,
        )
        .unwrap();
        assert_eq!(loaded.root_certificate(), pki.ca.root_certificate());
        let id = pki.id("demo", "web");
        let request = CertificateRequest::new(&id).unwrap();
        let leaf = loaded.sign(request.csr_der(), &id, HOUR).unwrap();
        // A leaf from the reloaded CA completes against the original root's bundle.
        request.complete(vec![leaf]).unwrap();

        let other = TestPki::new("cluster.local").ca.to_material();
        assert!(matches!(
            CertificateAuthority::from_pem(td.clone(), &material.certificate_pem, &other.key_pem),
            Err(CaError::KeyMismatch)
        ));
        let not_a_ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let not_a_ca = CertificateParams::new(vec!["leaf.example".to_string()])
            .unwrap()
            .self_signed(&not_a_ca_key)
            .unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(
                td.clone(),
                &not_a_ca.pem(),
                &not_a_ca_key.serialize_pem()
            ),
            Err(CaError::NotACa)
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(td, "garbage", &material.key_pem),
            Err(CaError::InvalidCertificate(_))
        ));
    }
}
