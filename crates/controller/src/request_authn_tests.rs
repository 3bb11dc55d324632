#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::index::testing::*;
use crate::index::{Change, Index};
use crate::view::Subscriber;
use ambit_authn::testing::{Algorithm, TestKey, jwks};
use serde_json::json;

fn key_set() -> String {
    jwks(&[TestKey::generate(Algorithm::ES256, "k1").jwk()])
}

/// A RequestAuthentication of `shop` for `app: back` with one rule of `issuer` whose keys
/// are `source` (`{"jwks": ...}`, `{"jwksUri": ...}` or `{"jwksSecretRef": ...}`).
fn ra(name: &str, issuer: &str, source: serde_json::Value) -> RequestAuthentication {
    let mut rule =
        json!({"issuer": issuer, "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]});
    rule.as_object_mut()
        .unwrap()
        .extend(source.as_object().unwrap().clone());
    obj(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "RequestAuthentication",
        "metadata": {"namespace": "shop", "name": name, "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "back"}}, "jwtRules": [rule]},
    }))
}

fn jwks_secret(name: &str, document: &str) -> Secret {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(document);
    obj(json!({
        "metadata": {"namespace": "shop", "name": name, "labels": {JWKS_SECRET_LABEL: "true"}},
        "data": {"jwks": data},
    }))
}

fn delivered(snapshot: &Snapshot, name: &str) -> pb::RequestAuthentication {
    match snapshot.resources[name].kind() {
        Some(pb::resource::Kind::RequestAuthentication(r)) => r.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn shop() -> Cluster {
    let mut c = Cluster::new();
    c.apply(ns("shop", true));
    c.apply(pod("shop", "a", "front", "n1", "10.0.0.1"));
    c.apply(pod("shop", "b", "back", "n2", "10.0.0.2"));
    c
}

#[test]
fn key_sets_are_resolved_inline_from_secrets_and_fetched_and_reach_the_waypoint_only() {
    let mut c = shop();
    let inline = key_set();
    c.apply(ra("inline", "https://a.example", json!({"jwks": inline})));
    c.apply(ra(
        "secret",
        "https://b.example",
        json!({"jwksSecretRef": {"name": "idp-keys"}}),
    ));
    c.apply(ra(
        "fetched",
        "https://c.example",
        json!({"jwksUri": "https://c.example/jwks"}),
    ));
    let mut index = Index::new(c.stores(), "cluster.local");
    let snap = index.update([Change::All]).unwrap();
    assert_eq!(
        delivered(&snap, "requestauthentication/shop/inline").jwt_rules[0].jwks,
        inline
    );
    // Not there yet: delivered without keys (its tokens are refused), and not Ready.
    assert_eq!(
        delivered(&snap, "requestauthentication/shop/secret").jwt_rules[0].jwks,
        ""
    );
    let sources = c.stores().key_sources;
    let store = c.stores().request_authns;
    let by_name = |n: &str| {
        store
            .state()
            .into_iter()
            .find(|r| r.name_any() == n)
            .unwrap()
    };
    let (ready, reason, message) = decide(&by_name("secret"), &sources);
    assert!(!ready);
    assert_eq!(reason, "KeysUnavailable");
    assert!(
        message.contains("Secret shop/idp-keys not found"),
        "{message}"
    );
    assert_eq!(decide(&by_name("inline"), &sources).1, "Resolved");

    // The Secret and the fetched document come: each is a KeySets change.
    let in_secret = key_set();
    let change = c.apply(jwks_secret("idp-keys", &in_secret));
    assert_eq!(change, Change::KeySets);
    let snap = index.update([change]).unwrap();
    assert_eq!(
        delivered(&snap, "requestauthentication/shop/secret").jwt_rules[0].jwks,
        in_secret
    );
    let fetched_doc = key_set();
    assert!(
        c.fetched
            .record("https://c.example/jwks", Ok(fetched_doc.clone()))
    );
    let snap = index.update([Change::KeySets]).unwrap();
    assert_eq!(
        delivered(&snap, "requestauthentication/shop/fetched").jwt_rules[0].jwks,
        fetched_doc
    );
    // A failed refresh keeps the last good key set.
    assert!(
        !c.fetched
            .record("https://c.example/jwks", Err("HTTP 503".into()))
    );
    assert!(index.update([Change::KeySets]).is_none());

    let waypoint = Subscriber::Waypoint("shop".into(), "back".into());
    let view = waypoint.view(&snap);
    let seen: Vec<String> = waypoint
        .visible(&view, &snap)
        .map(|(k, _)| k.to_string())
        .filter(|k| k.starts_with("requestauthentication/"))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for other in [
        Subscriber::Waypoint("shop".into(), "front".into()),
        Subscriber::Node("n2".into()),
    ] {
        let view = other.view(&snap);
        assert!(
            !other
                .visible(&view, &snap)
                .any(|(k, _)| k.starts_with("requestauthentication/")),
            "{other} sees a RequestAuthentication"
        );
    }
}

#[test]
fn an_invalid_resource_is_sent_fail_safe_and_reported() {
    let mut c = shop();
    let mut broken = ra("broken", "https://a.example", json!({"jwks": key_set()}));
    // Two rules of one issuer, and a claim header on the token's own header.
    let mut second = broken.spec.jwt_rules[0].clone();
    second.output_claim_to_headers[0].header = "Authorization".into();
    broken.spec.jwt_rules.push(second);
    c.apply(broken.clone());
    let mut index = Index::new(c.stores(), "cluster.local");
    let snap = index.update([Change::All]).unwrap();
    let sent = delivered(&snap, "requestauthentication/shop/broken");
    assert_eq!(sent.jwt_rules.len(), 1, "the repeated issuer goes");
    assert_eq!(
        sent.jwt_rules[0].output_claim_to_headers[0].header,
        "x-user"
    );
    let (ready, reason, message) = decide(&broken, &c.stores().key_sources);
    assert!(!ready);
    assert_eq!(reason, "Invalid");
    assert!(message.contains("jwtRules[1]"), "{message}");
    // Not enrolled: nothing is sent.
    let change = c.apply(ns("shop", false));
    let snap = index.update([change]).unwrap();
    assert!(
        !snap
            .resources
            .contains_key("requestauthentication/shop/broken")
    );
}

/// An HTTPS server on loopback under its own CA, answering every request with `status` and
/// `body`; returns its port and the CA (PEM).
async fn https_server(status: u16, body: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn jwks_uris_are_fetched_over_https_under_the_ca_bundle() {
    let document = key_set();
    let (port, ca) = https_server(200, document.clone()).await;
    let uri = format!("https://localhost:{port}/.well-known/jwks.json");
    let tls = client_tls(Some(&ca)).unwrap();
    assert_eq!(fetch(&tls, &uri).await.unwrap(), document);
    // Without the bundle the server is not trusted.
    let system_only = client_tls(None).unwrap();
    let err = fetch(&system_only, &uri).await.unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    assert!(
        fetch(&tls, &format!("http://localhost:{port}/"))
            .await
            .unwrap_err()
            .contains("only https")
    );
    let (port, ca) = https_server(404, String::new()).await;
    let tls = client_tls(Some(&ca)).unwrap();
    let err = fetch(&tls, &format!("https://localhost:{port}/jwks"))
        .await
        .unwrap_err();
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(matches!(
        client_tls(Some("not a certificate")),
        Err(TlsSetupError::EmptyBundle)
    ));
    let err = client_tls_file(Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
