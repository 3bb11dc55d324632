//! The controller's CA (`ambit.ca.v1`) as a certificate issuer for a `CertificateStore`.

use crate::endpoint::ControllerEndpoint;
use ambit_identity::{CertificateIssuer, IssueError, SpiffeId};
use ambit_proto::ca::v1::{
    CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// One CSR round trip; the store retries with backoff after a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum CaCallError {
    #[error("the controller CA did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the controller CA refused: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("the controller CA returned an empty chain")]
    EmptyChain,
}

#[derive(Debug, Clone)]
pub struct ControllerIssuer {
    endpoint: Arc<ControllerEndpoint>,
    client: CertificateServiceClient<Channel>,
    /// Asked-for lifetime; the controller caps it. Zero: the controller's default.
    lifetime: Duration,
}

impl ControllerIssuer {
    pub fn new(endpoint: Arc<ControllerEndpoint>, channel: Channel, lifetime: Duration) -> Self {
        Self {
            endpoint,
            client: CertificateServiceClient::new(channel),
            lifetime,
        }
    }
}

impl CertificateIssuer for ControllerIssuer {
    async fn issue(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, IssueError> {
        let request = self
            .endpoint
            .request(CreateCertificateRequest {
                identity: identity.to_string(),
                csr_der: csr_der.to_vec(),
                lifetime_seconds: self.lifetime.as_secs(),
            })
            .await?;
        let response = tokio::time::timeout(
            CALL_TIMEOUT,
            self.client.clone().create_certificate(request),
        )
        .await
        .map_err(|_| CaCallError::Timeout(CALL_TIMEOUT))?
        .map_err(CaCallError::Status)?;
        let chain = response.into_inner().chain_der;
        if chain.is_empty() {
            return Err(CaCallError::EmptyChain.into());
        }
        Ok(chain.into_iter().map(CertificateDer::from).collect())
    }
}
