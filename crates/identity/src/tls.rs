//! rustls configs for HBONE: TLS 1.3 only, AES-GCM, post-quantum hybrid key exchange preferred,
//! ALPN `h2`, client certificates required, and SPIFFE identity checks on both sides.
//!
//! SPIFFE certificates carry no DNS names, so the usual hostname check is replaced by an
//! explicit identity check: the client accepts only an expected set of server identities; the
//! server accepts any identity of its trust domain and hands it to the caller for authorization.

use crate::bundle::{ChainRole, TrustBundle};
use crate::cert::{CertificateError, identity_and_not_after, identity_of};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::store::CertificateHandle;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// The only ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust bundle has no usable root certificate: {0}")]
    NoRoots(String),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("could not build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("a client must expect at least one server identity")]
    NoExpectedIdentity,
}

/// The most certificates (leaf first) a peer's chain may hold, and the most bytes they may
/// take together. An ambit chain is a leaf and at most an intermediate or two (about 1 KiB
/// each); a connection keeps its peer's chain for as long as it lives, to re-check it when the
/// roots change, so a peer must not be able to make it hold the 64 KiB a TLS handshake
/// message allows.
pub const MAX_PEER_CHAIN_CERTIFICATES: usize = 4;
pub const MAX_PEER_CHAIN_BYTES: usize = 8 * 1024;

/// Why a peer's certificate was refused: its chain over the size bounds, or its identity once
/// the chain verified.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error(
        "peer sent a chain of {certificates} certificates in {bytes} bytes; at most {MAX_PEER_CHAIN_CERTIFICATES} certificates in {MAX_PEER_CHAIN_BYTES} bytes are accepted"
    )]
    ChainTooLong { certificates: usize, bytes: usize },
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("peer is {actual}, expected one of [{}]", format_ids(expected))]
    Unexpected {
        actual: SpiffeId,
        expected: Vec<SpiffeId>,
    },
    #[error("peer {actual} is outside trust domain {expected}")]
    ForeignTrustDomain {
        actual: SpiffeId,
        expected: TrustDomain,
    },
}

fn format_ids(ids: &[SpiffeId]) -> String {
    ids.iter()
        .map(SpiffeId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<PeerIdentityError> for rustls::Error {
    fn from(error: PeerIdentityError) -> Self {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(OtherError(Arc::new(
            error,
        ))))
    }
}

/// The identity failure inside a handshake error, if that is why the handshake failed.
pub fn peer_identity_error(error: &rustls::Error) -> Option<&PeerIdentityError> {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref()
        }
        _ => None,
    }
}

/// The crypto provider for every ambit TLS endpoint and key: TLS 1.3 AES-GCM suites only;
/// X25519MLKEM768 preferred, X25519 as the fallback.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                ],
                kx_groups: vec![
                    aws_lc_rs::kx_group::X25519MLKEM768,
                    aws_lc_rs::kx_group::X25519,
                ],
                ..aws_lc_rs::default_provider()
            })
        })
        .clone()
}

/// Refuses a chain over [`MAX_PEER_CHAIN_CERTIFICATES`] or [`MAX_PEER_CHAIN_BYTES`], before
/// any work is spent verifying it.
fn check_chain_size(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), PeerIdentityError> {
    let certificates = 1 + intermediates.len();
    let bytes = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
    if certificates > MAX_PEER_CHAIN_CERTIFICATES || bytes > MAX_PEER_CHAIN_BYTES {
        return Err(PeerIdentityError::ChainTooLong {
            certificates,
            bytes,
        });
    }
    Ok(())
}

/// The identity in a peer's leaf certificate, after the handshake verified it.
pub fn peer_identity(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<SpiffeId, PeerIdentityError> {
    Ok(identity_of(peer_leaf(peer_certificates)?)?)
}

/// [`peer_identity`] and the end of the leaf's validity, from one parse of it.
pub fn peer_identity_and_not_after(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<(SpiffeId, SystemTime), PeerIdentityError> {
    Ok(identity_and_not_after(peer_leaf(peer_certificates)?)?)
}

fn peer_leaf<'a, 'b>(
    peer_certificates: Option<&'a [CertificateDer<'b>]>,
) -> Result<&'a CertificateDer<'b>, PeerIdentityError> {
    peer_certificates
        .and_then(<[_]>::first)
        .ok_or(PeerIdentityError::NoCertificate)
}

/// A server config presenting `certificate` and requiring a client certificate from
/// `trust`'s trust domain. Rotation of `certificate` or of `trust`'s roots applies to the next
/// handshake.
pub fn server_config(
    certificate: CertificateHandle,
    trust: &TrustBundle,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(SpiffeClientVerifier {
        trust: trust.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(HandleResolver(certificate)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection proves its identity with a full handshake: no resumption state to
    // carry identities across certificate rotations.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config presenting `certificate` and accepting only a server whose SPIFFE id is in
/// `expected_server` (chained to `trust`'s roots as they are at each handshake).
pub fn client_config(
    certificate: CertificateHandle,
    trust: &TrustBundle,
    expected_server: Vec<SpiffeId>,
) -> Result<ClientConfig, TlsError> {
    if expected_server.is_empty() {
        return Err(TlsError::NoExpectedIdentity);
    }
    let provider = crypto_provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        trust: trust.clone(),
        expected: expected_server,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(HandleResolver(certificate)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(config)
}

/// The server name a client passes to rustls: SPIFFE peers are checked by identity, never by
/// name, so the peer's IP is used (rustls sends no SNI for it).
pub fn server_name(address: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(address.into())
}

#[derive(Debug)]
struct HandleResolver(CertificateHandle);

impl ResolvesServerCert for HandleResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key().clone())
    }
}

impl ResolvesClientCert for HandleResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to the trust roots, then an explicit check of the server's SPIFFE id.
#[derive(Debug)]
struct SpiffeServerVerifier {
    trust: TrustBundle,
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_chain_size(end_entity, intermediates)?;
        let roots = self.trust.current();
        let role = ChainRole::Server;
        if !roots
            .verified
            .contains(end_entity, intermediates, role, now)
        {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &roots.store,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            roots.verified.insert(end_entity, intermediates, role);
        }
        let actual = identity_of(end_entity).map_err(PeerIdentityError::from)?;
        if !self.expected.contains(&actual) {
            return Err(PeerIdentityError::Unexpected {
                actual,
                expected: self.expected.clone(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Chain to the trust roots (webpki), then the client's SPIFFE id must be in our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    trust: TrustBundle,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    /// No hints: they would have to outlive a change of the roots, and ambit clients present
    /// their one certificate whatever the server names.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain_size(end_entity, intermediates)?;
        let roots = self.trust.current();
        let role = ChainRole::Client;
        if !roots
            .verified
            .contains(end_entity, intermediates, role, now)
        {
            roots
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
            roots.verified.insert(end_entity, intermediates, role);
        }
        let actual = identity_of(end_entity).map_err(PeerIdentityError::from)?;
        if actual.trust_domain() != self.trust.trust_domain() {
            return Err(PeerIdentityError::ForeignTrustDomain {
                actual,
                expected: self.trust.trust_domain().clone(),
            }
            .into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! Full TLS 1.3 handshakes in memory (no sockets): the identity rules, each tested with a
    //! wrong identity.
    use super::*;
    use crate::testing::TestPki;
    use rustls::{ClientConnection, ServerConnection};
    use std::time::{Duration, SystemTime};

    struct Outcome {
        client: Result<(), rustls::Error>,
        server: Result<Option<SpiffeId>, rustls::Error>,
    }

    fn handshake(client: ClientConfig, server: ServerConfig) -> Outcome {
        let mut c =
            ClientConnection::new(Arc::new(client), server_name([127, 0, 0, 1].into())).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        let mut buf = Vec::new();
        let (mut client_result, mut server_result) = (Ok(()), Ok(()));
        for _ in 0..10 {
            buf.clear();
            let _ = c.write_tls(&mut buf);
            if let Err(e) = deliver(&buf, &mut s) {
                server_result = Err(e);
                // Deliver the alert so the client sees the failure too.
                buf.clear();
                let _ = s.write_tls(&mut buf);
                let _ = deliver(&buf, &mut c);
                break;
            }
            buf.clear();
            let _ = s.write_tls(&mut buf);
            if let Err(e) = deliver(&buf, &mut c) {
                client_result = Err(e);
                break;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        let server = server_result.map(|()| peer_identity(s.peer_certificates()).ok());
        Outcome {
            client: client_result,
            server,
        }
    }

    /// Hands all of `bytes` to `to` (rustls reads a few KiB at a time), processing each read.
    fn deliver<D>(
        mut bytes: &[u8],
        to: &mut rustls::ConnectionCommon<D>,
    ) -> Result<(), rustls::Error> {
        while !bytes.is_empty() {
            to.read_tls(&mut bytes).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn server_for(pki: &TestPki) -> ServerConfig {
        server_config(pki.handle("demo", "server"), &pki.bundle()).unwrap()
    }

    #[test]
    fn mutual_identities_are_verified_and_reported() {
        let pki = TestPki::new("cluster.local");
        let client = client_config(
            pki.handle("demo", "client"),
            &pki.bundle(),
            vec![pki.id("demo", "server")],
        )
        .unwrap();
        let outcome = handshake(client, server_for(&pki));
        outcome.client.unwrap();
        assert_eq!(outcome.server.unwrap(), Some(pki.id("demo", "client")));
    }

    #[test]
    fn client_refuses_a_server_with_an_unexpected_identity() {
        let pki = TestPki::new("cluster.local");
        let client = client_config(
            pki.handle("demo", "client"),
            &pki.bundle(),
            vec![pki.id("demo", "someone-else")],
        )
        .unwrap();
        let err = handshake(client, server_for(&pki)).client.unwrap_err();
        match peer_identity_error(&err) {
            Some(PeerIdentityError::Unexpected { actual, .. }) => {
                assert_eq!(actual, &pki.id("demo", "server"));
            }
            other => panic!("expected an unexpected-identity error, got {other:?} from {err}"),
        }
    }

    #[test]
    fn server_refuses_a_client_from_another_ca() {
        let pki = TestPki::new("cluster.local");
        let rogue = TestPki::new("cluster.local");
        let client = client_config(
            rogue.handle("demo", "client"),
            &pki.bundle(),
            vec![pki.id("demo", "server")],
        )
        .unwrap();
        let err = handshake(client, server_for(&pki)).server.unwrap_err();
        // Both roots share a subject name, so webpki finds the wrong issuer and its signature fails.
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                        | rustls::CertificateError::UnknownIssuer
                )
            ),
            "{err}"
        );
    }

    #[test]
    fn server_refuses_a_client_of_another_trust_domain_even_with_a_shared_root() {
        // One root trusted for two trust domains: the trust domain check must still hold.
        let pki = TestPki::new("cluster.local");
        let foreign_td: TrustDomain = "evil.example".parse().unwrap();
        let foreign_ca = same_root_other_domain(&pki, foreign_td.clone());
        let foreign_id = SpiffeId::new(foreign_td, "demo", "client").unwrap();
        let cert = foreign_ca.certificate(&foreign_id);
        let client = client_config(
            CertificateHandle::fixed(cert),
            &pki.bundle(),
            vec![pki.id("demo", "server")],
        )
        .unwrap();
        let err = handshake(client, server_for(&pki)).server.unwrap_err();
        assert!(
            matches!(
                peer_identity_error(&err),
                Some(PeerIdentityError::ForeignTrustDomain { .. })
            ),
            "{err}"
        );
    }

    /// The chain-size error of a refused handshake, as (certificates, bytes).
    fn chain_too_long(err: &rustls::Error) -> (usize, usize) {
        match peer_identity_error(err) {
            Some(PeerIdentityError::ChainTooLong {
                certificates,
                bytes,
            }) => (*certificates, *bytes),
            other => panic!("expected a chain-too-long error, got {other:?} from {err}"),
        }
    }

    /// `copies` copies of the leaf: valid certificates that take no part in its path, so only
    /// the size bound can refuse them.
    fn copies(copies: usize) -> Chain {
        Box::new(move |leaf| vec![leaf; copies])
    }

    type Chain = Box<dyn FnOnce(CertificateDer<'static>) -> Vec<CertificateDer<'static>>>;

    #[test]
    fn peer_chains_over_the_size_bounds_are_refused_on_both_sides() {
        let pki = TestPki::new("cluster.local");
        let client = |chain: Chain| {
            client_config(
                pki.handle_with_chain("demo", "client", chain),
                &pki.bundle(),
                vec![pki.id("demo", "server")],
            )
            .unwrap()
        };
        let at_the_bound = handshake(
            client(copies(MAX_PEER_CHAIN_CERTIFICATES)),
            server_for(&pki),
        );
        assert!(at_the_bound.client.is_ok() && at_the_bound.server.is_ok());

        let err = handshake(
            client(copies(MAX_PEER_CHAIN_CERTIFICATES + 1)),
            server_for(&pki),
        )
        .server
        .unwrap_err();
        assert_eq!(chain_too_long(&err).0, MAX_PEER_CHAIN_CERTIFICATES + 1);

        // Two certificates, one of them big: refused by size before it is parsed.
        let big: Chain =
            Box::new(|leaf| vec![leaf, CertificateDer::from(vec![0x30; MAX_PEER_CHAIN_BYTES])]);
        let err = handshake(client(big), server_for(&pki)).server.unwrap_err();
        let (certificates, bytes) = chain_too_long(&err);
        assert_eq!(certificates, 2);
        assert!(bytes > MAX_PEER_CHAIN_BYTES, "{bytes}");

        let long_server = server_config(
            pki.handle_with_chain("demo", "server", copies(MAX_PEER_CHAIN_CERTIFICATES + 1)),
            &pki.bundle(),
        )
        .unwrap();
        let err = handshake(client(copies(1)), long_server)
            .client
            .unwrap_err();
        assert_eq!(chain_too_long(&err).0, MAX_PEER_CHAIN_CERTIFICATES + 1);
    }

    #[test]
    fn server_refuses_an_expired_client_certificate() {
        let pki = TestPki::new("cluster.local");
        let id = pki.id("demo", "client");
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        let expired = pki.certificate_at(&id, Duration::from_secs(600), two_hours_ago);
        let client = client_config(
            CertificateHandle::fixed(expired),
            &pki.bundle(),
            vec![pki.id("demo", "server")],
        )
        .unwrap();
        let err = handshake(client, server_for(&pki)).server.unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
            ),
            "{err}"
        );
    }

    /// A rotation as the data plane sees it, on configs built once before it: the new root's
    /// leaves are refused until the bundle adds it, and the old root's after it is withdrawn.
    #[test]
    fn configs_follow_the_bundle_through_a_root_rotation() {
        let (old, new) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let (old_root, new_root) = (
            old.ca.root_certificate().clone(),
            new.ca.root_certificate().clone(),
        );
        let bundle = old.bundle();
        let server_id = old.id("demo", "server");
        let server = |pki: &TestPki| server_config(pki.handle("demo", "server"), &bundle).unwrap();
        let client = |pki: &TestPki| {
            client_config(
                pki.handle("demo", "client"),
                &bundle,
                vec![server_id.clone()],
            )
            .unwrap()
        };
        let accepted = |c: &TestPki, s: &TestPki| {
            let outcome = handshake(client(c), server(s));
            outcome.client.is_ok() && outcome.server.is_ok()
        };
        assert!(accepted(&old, &old));
        assert!(!accepted(&new, &old), "server trusts a root not yet added");
        assert!(!accepted(&old, &new), "client trusts a root not yet added");

        bundle.replace([old_root, new_root.clone()]).unwrap();
        for (c, s) in [(&old, &old), (&new, &old), (&old, &new), (&new, &new)] {
            assert!(accepted(c, s), "both roots trusted during the rotation");
        }

        bundle.replace([new_root]).unwrap();
        assert!(accepted(&new, &new));
        let refused = handshake(client(&old), server(&new)).server.unwrap_err();
        assert!(
            matches!(
                refused,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                        | rustls::CertificateError::UnknownIssuer
                )
            ),
            "a withdrawn root's client leaf: {refused}"
        );
        assert!(
            handshake(client(&new), server(&old)).client.is_err(),
            "a withdrawn root's server leaf"
        );
    }

    /// A chain verified once is remembered with the roots that verified it and judged again
    /// for the time only: past its `notAfter` or before its `notBefore` it is refused as the
    /// full check refuses it, and once its root is withdrawn it is not remembered.
    #[test]
    fn a_verified_chain_is_remembered_only_for_its_roots_role_and_validity() {
        let (pki, other) = (TestPki::new("cluster.local"), TestPki::new("cluster.local"));
        let bundle = pki.bundle();
        let verifier = SpiffeClientVerifier {
            trust: bundle.clone(),
            algorithms: crypto_provider().signature_verification_algorithms,
        };
        let client = pki.certificate(&pki.id("demo", "client"));
        let leaf = &client.chain()[0];
        let at = |t: SystemTime| {
            UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
        };
        let second = Duration::from_secs(1);
        let (not_before, not_after) = (client.not_before(), client.not_after());
        let during = at(not_before + second);
        let remembered = |role| bundle.current().verified.contains(leaf, &[], role, during);

        assert!(!remembered(ChainRole::Client));
        verifier.verify_client_cert(leaf, &[], during).unwrap();
        assert!(remembered(ChainRole::Client));
        assert!(!remembered(ChainRole::Server), "verified as a client only");
        verifier
            .verify_client_cert(leaf, &[], at(not_after))
            .unwrap();

        let expired = verifier.verify_client_cert(leaf, &[], at(not_after + second));
        assert!(
            matches!(
                expired,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                ))
            ),
            "{expired:?}"
        );
        let early = verifier.verify_client_cert(leaf, &[], at(not_before - second));
        assert!(
            matches!(
                early,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYetContext { .. }
                ))
            ),
            "{early:?}"
        );

        bundle
            .replace([other.ca.root_certificate().clone()])
            .unwrap();
        assert!(!remembered(ChainRole::Client));
        assert!(verifier.verify_client_cert(leaf, &[], during).is_err());
    }

    #[test]
    fn client_config_needs_an_expected_identity() {
        let pki = TestPki::new("cluster.local");
        assert!(matches!(
            client_config(pki.handle("demo", "client"), &pki.bundle(), vec![]),
            Err(TlsError::NoExpectedIdentity)
        ));
    }

    /// A CA for `trust_domain` that reuses `pki`'s root key and name, so its leaves chain to
    /// `pki`'s root: the case where only the trust domain check stands in the way.
    fn same_root_other_domain(pki: &TestPki, trust_domain: TrustDomain) -> TestPki {
        let material = pki.ca.to_material();
        let ca = crate::CertificateAuthority::from_pem(
            trust_domain,
            &material.certificate_pem,
            &material.key_pem,
        )
        .unwrap();
        TestPki { ca: Arc::new(ca) }
    }
}
