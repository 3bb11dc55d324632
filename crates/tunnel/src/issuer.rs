//! Where certificates come from: the controller's CA in a cluster, a local CA standalone.

use ambit_controller_client::ControllerIssuer;
use ambit_identity::{CertificateIssuer, IssueError, LocalIssuer, SpiffeId};
use rustls_pki_types::CertificateDer;

#[derive(Debug)]
pub enum Issuer {
    Controller(ControllerIssuer),
    Local(LocalIssuer),
}

impl CertificateIssuer for Issuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        match self {
            Issuer::Controller(i) => i.issue(identity, csr_der).await,
            Issuer::Local(i) => i.issue(identity, csr_der).await,
        }
    }
}
