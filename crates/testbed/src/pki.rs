//! The testbed's PKI: one CA for the apiserver's serving cert, the admin client cert, each
//! node's kubelet serving cert and the apiserver's client cert for kubelets (so exec, logs and
//! port-forward are mutual TLS both ways), and the service-account signing key that makes
//! TokenRequest and TokenReview work.

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
/// What the apiserver presents to kubelets.
pub const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
pub const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";
/// The CommonName of that cert: the one client a node's kubelet endpoint lets in.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// A node's kubelet serving cert and key.
pub fn kubelet_cert(node: &str) -> String {
    format!("kubelet-{node}.crt")
}
pub fn kubelet_key(node: &str) -> String {
    format!("kubelet-{node}.key")
}

fn pki_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Pki(format!("{what}: {e}"))
}

/// Writes a fresh PKI into `dir`. `apiserver_ips` are the serving cert's IP SANs; `nodes` are
/// (name, IP) of the nodes whose kubelet endpoints get serving certs.
pub fn generate(
    dir: &Path,
    apiserver_ips: &[Ipv4Addr],
    nodes: &[(String, Ipv4Addr)],
) -> Result<(), Error> {
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

    let client = |cn: &str, org: Option<&str>| -> Result<(String, String), Error> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(pki_err("client params"))?;
        params.distinguished_name = dn(cn, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(pki_err("client key"))?;
        let cert = params.signed_by(&key, &ca).map_err(pki_err(cn))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (admin_cert, admin_key) = client("ambit-testbed-admin", Some("system:masters"))?;
    let (kubelet_client_cert, kubelet_client_key) = client(KUBELET_CLIENT_CN, None)?;
    for (node, ip) in nodes {
        let mut params =
            CertificateParams::new(vec![node.clone()]).map_err(pki_err("kubelet params"))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(*ip)));
        params.distinguished_name = dn(&format!("system:node:{node}"), Some("system:nodes"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(pki_err("kubelet key"))?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(pki_err("kubelet cert"))?;
        write(dir, &kubelet_cert(node), &cert.pem())?;
        write(dir, &kubelet_key(node), &key.serialize_pem())?;
    }

    let sa_key = KeyPair::generate().map_err(pki_err("service-account key"))?;

    write(dir, CA_CERT, &ca.pem())?;
    write(dir, APISERVER_CERT, &server_cert.pem())?;
    write(dir, APISERVER_KEY, &server_key.serialize_pem())?;
    write(dir, ADMIN_CERT, &admin_cert)?;
    write(dir, ADMIN_KEY, &admin_key)?;
    write(dir, KUBELET_CLIENT_CERT, &kubelet_client_cert)?;
    write(dir, KUBELET_CLIENT_KEY, &kubelet_client_key)?;
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
