//! The testbed's PKI: one CA for the apiserver's serving cert and the admin client cert, and
//! the service-account signing key that makes TokenRequest and TokenReview work.

use crate::Error;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Files written under `<state>/pki/`.
pub const CA_CERT: &str = "ca.crt";
pub const APISERVER_CERT: &str = "apiserver.crt";
pub const APISERVER_KEY: &str = "apiserver.key";
pub const ADMIN_CERT: &str = "admin.crt";
pub const ADMIN_KEY: &str = "admin.key";
pub const SA_KEY: &str = "sa.key";
/// The apiserver reads verification keys only as public keys (not PKCS#8 private keys).
pub const SA_PUB: &str = "sa.pub";

fn pki_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Pki(format!("{what}: {e}"))
}

/// Writes a fresh PKI into `dir`. `apiserver_ips` are the serving cert's IP SANs.
pub fn generate(dir: &Path, apiserver_ips: &[Ipv4Addr]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA params"))?;
    ca_params.distinguished_name = dn("ambit-testbed-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(pki_err("CA cert"))?;

    let mut sans: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    sans.extend([
        "127.0.0.1".to_owned(),
        crate::config::KUBERNETES_SERVICE_IP.to_string(),
    ]);
    let mut server = CertificateParams::new(sans).map_err(pki_err("apiserver params"))?;
    server.subject_alt_names.extend(
        apiserver_ips
            .iter()
            .map(|ip| SanType::IpAddress(IpAddr::V4(*ip))),
    );
    server.distinguished_name = dn("kube-apiserver", None);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(pki_err("apiserver key"))?;
    let server_cert = server
        .signed_by(&server_key, &ca)
        .map_err(pki_err("apiserver cert"))?;

    let mut admin =
        CertificateParams::new(Vec::<String>::new()).map_err(pki_err("admin params"))?;
    admin.distinguished_name = dn("ambit-testbed-admin", Some("system:masters"));
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate().map_err(pki_err("admin key"))?;
    let admin_cert = admin
        .signed_by(&admin_key, &ca)
        .map_err(pki_err("admin cert"))?;

    let sa_key = KeyPair::generate().map_err(pki_err("service-account key"))?;

    write(dir, CA_CERT, &ca.pem())?;
    write(dir, APISERVER_CERT, &server_cert.pem())?;
    write(dir, APISERVER_KEY, &server_key.serialize_pem())?;
    write(dir, ADMIN_CERT, &admin_cert.pem())?;
    write(dir, ADMIN_KEY, &admin_key.serialize_pem())?;
    write(dir, SA_KEY, &sa_key.serialize_pem())?;
    write(dir, SA_PUB, &sa_key.public_key_pem())?;
    Ok(())
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn write(dir: &Path, name: &str, content: &str) -> Result<(), Error> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|e| Error::io(&path, e))
}
