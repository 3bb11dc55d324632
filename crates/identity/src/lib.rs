//! Identity for ambit: SPIFFE ids, the mesh CA, CSRs, rotating certificates held in memory,
//! and rustls configs that authenticate peers by SPIFFE id.

mod bundle;
mod ca;
mod cert;
mod csr;
mod spiffe;
mod store;
mod tls;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use bundle::{BundleChanges, ChainRole, TrustBundle};
pub use ca::{CaError, CaMaterial, CertificateAuthority, LocalIssuer};
pub use cert::{
    CertificateError, WorkloadCertificate, identity_and_not_after, identity_of, validity_of,
};
pub use csr::{CertificateRequest, CsrError};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain, is_kubernetes_name};
pub use store::{
    CertificateHandle, CertificateIssuer, CertificateStore, IdentityLease, IssueError, RetryPolicy,
    StoreError,
};
pub use tls::{
    ALPN_H2, MAX_PEER_CHAIN_BYTES, MAX_PEER_CHAIN_CERTIFICATES, PeerIdentityError, TlsError,
    client_config, crypto_provider, peer_identity, peer_identity_and_not_after,
    peer_identity_error, server_config, server_name,
};
