//! A throwaway PKI for tests and benchmarks: a CA per trust domain and leaves on demand.
//! Test code: it panics on failure rather than returning errors.
#![allow(clippy::expect_used)]

use crate::{
    CertificateAuthority, CertificateHandle, CertificateRequest, SpiffeId, TrustBundle,
    TrustDomain, WorkloadCertificate,
};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const ROOT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(3600);

/// A CA for one trust domain. Panics on failure: test code only.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: Arc<CertificateAuthority>,
}

impl TestPki {
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain: TrustDomain = trust_domain.parse().expect("trust domain");
        let ca = CertificateAuthority::generate(trust_domain, ROOT_VALIDITY).expect("CA");
        Self { ca: Arc::new(ca) }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    pub fn id(&self, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::new(self.trust_domain().clone(), namespace, service_account).expect("id")
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(
            self.trust_domain().clone(),
            [self.ca.root_certificate().clone()],
        )
        .expect("bundle")
    }

    /// A valid one-hour certificate for `identity`.
    pub fn certificate(&self, identity: &SpiffeId) -> WorkloadCertificate {
        self.certificate_at(identity, LEAF_LIFETIME, SystemTime::now())
    }

    /// A certificate for `identity` issued at `issued` for `lifetime`, e.g. already expired.
    pub fn certificate_at(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
        issued: SystemTime,
    ) -> WorkloadCertificate {
        self.issue(identity, lifetime, issued, |leaf| vec![leaf])
    }

    /// A certificate whose chain is `chain(leaf)`.
    fn issue(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
        issued: SystemTime,
        chain: impl FnOnce(CertificateDer<'static>) -> Vec<CertificateDer<'static>>,
    ) -> WorkloadCertificate {
        let request = CertificateRequest::new(identity).expect("csr");
        let leaf = self
            .ca
            .sign_at(request.csr_der(), identity, lifetime, issued)
            .expect("sign");
        request.complete(chain(leaf)).expect("complete")
    }

    /// A fixed handle presenting a fresh certificate for `namespace/service_account`.
    pub fn handle(&self, namespace: &str, service_account: &str) -> CertificateHandle {
        CertificateHandle::fixed(self.certificate(&self.id(namespace, service_account)))
    }

    /// As [`Self::handle`], presenting `chain(leaf)` (leaf first) as its chain: a peer that
    /// sends extra certificates.
    pub fn handle_with_chain(
        &self,
        namespace: &str,
        service_account: &str,
        chain: impl FnOnce(CertificateDer<'static>) -> Vec<CertificateDer<'static>>,
    ) -> CertificateHandle {
        let identity = self.id(namespace, service_account);
        CertificateHandle::fixed(self.issue(&identity, LEAF_LIFETIME, SystemTime::now(), chain))
    }
}
