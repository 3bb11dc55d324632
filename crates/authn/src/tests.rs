#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testing::{TestKey, hs256, jwks, unsigned};
use super::*;
use ambit_policy::{ClaimToHeader, PolicyScope};
use jsonwebtoken::Header;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::OnceLock;

const ISS: &str = "https://idp.example";
const NOW: u64 = 1_900_000_000;

/// One key per algorithm, generated once per test run (RSA generation is slow).
fn keys() -> &'static [TestKey] {
    static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            (Algorithm::RS256, "rs256"),
            (Algorithm::RS384, "rs384"),
            (Algorithm::RS512, "rs512"),
            (Algorithm::PS256, "ps256"),
            (Algorithm::ES256, "es256"),
            (Algorithm::ES384, "es384"),
            (Algorithm::EdDSA, "ed"),
        ]
        .into_iter()
        .map(|(alg, kid)| TestKey::generate(alg, kid))
        .collect()
    })
}

fn key(kid: &str) -> &'static TestKey {
    keys().iter().find(|k| k.kid == kid).unwrap()
}

fn all_jwks() -> String {
    jwks(&keys().iter().map(TestKey::jwk).collect::<Vec<_>>())
}

fn rule() -> JwtRule {
    JwtRule {
        issuer: ISS.into(),
        audiences: vec!["shop".into()],
        jwks: all_jwks(),
        from_headers: vec![],
        from_params: vec![],
        output_claim_to_headers: vec![],
        forward_original_token: false,
    }
}

fn resource(rules: Vec<JwtRule>) -> RequestAuthentication {
    RequestAuthentication {
        name: "idp".into(),
        namespace: "shop".into(),
        selector: Some(PolicyScope {
            match_labels: [("app".to_string(), "backend".to_string())].into(),
        }),
        jwt_rules: rules,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": NOW + 300, "scope": "billing.read"})
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    f(&mut c);
    c
}

/// Authenticates a request to `app=backend` in `shop` carrying `headers` and `uri`.
fn run(
    rules: Vec<JwtRule>,
    headers: &mut HeaderMap,
    uri: &mut Uri,
) -> Result<Option<RequestAuth>, AuthnError> {
    let (a, problems) = Authenticator::new(&[resource(rules)]);
    assert!(problems.is_empty(), "{problems:?}");
    let labels: BTreeMap<String, String> = [("app".into(), "backend".into())].into();
    let target = Target {
        namespace: "shop",
        labels: &labels,
        port: 8080,
    };
    a.rules_for(&target).authenticate(headers, uri, NOW)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

/// The outcome of `token` as a bearer token under [`rule`].
fn check(token: &str) -> Result<Option<RequestAuth>, AuthnError> {
    run(vec![rule()], &mut bearer(token), &mut Uri::from_static("/"))
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    for k in keys() {
        let auth = check(&k.sign(&claims()))
            .unwrap_or_else(|e| panic!("{:?}: {e}", k.alg))
            .unwrap();
        assert_eq!(auth.principal, "https://idp.example/alice");
        assert_eq!(auth.claims["scope"], "billing.read");
    }
}

#[test]
fn a_token_without_kid_is_tried_against_the_keys_of_its_algorithm() {
    for k in [key("es256"), key("ed"), key("rs256")] {
        let token = k.sign_with(Header::new(k.alg), &claims());
        assert!(check(&token).unwrap().is_some(), "{:?}", k.alg);
    }
}

#[test]
fn expiry_and_not_before_allow_the_clock_skew_only() {
    let k = key("es256");
    let at = |f: fn(&mut Value)| check(&k.sign(&with(f)));
    assert_eq!(
        at(|c| c["exp"] = (NOW - 61).into()),
        Err(AuthnError::Expired)
    );
    assert!(at(|c| c["exp"] = (NOW - 30).into()).is_ok(), "within skew");
    assert_eq!(
        at(|c| c["nbf"] = (NOW + 300).into()),
        Err(AuthnError::NotYetValid)
    );
    assert!(at(|c| c["nbf"] = (NOW + 30).into()).is_ok(), "within skew");
    assert_eq!(
        at(|c| c["exp"] = "tomorrow".into()),
        Err(AuthnError::Claim("exp".into()))
    );
    // No `exp` at all is accepted, as Istio does.
    assert!(at(|c| drop(c.as_object_mut().unwrap().remove("exp"))).is_ok());
}

#[test]
fn issuer_and_audience_must_be_ours() {
    let k = key("rs256");
    assert_eq!(
        check(&k.sign(&with(|c| c["iss"] = "https://evil.example".into()))),
        Err(AuthnError::UnknownIssuer("https://evil.example".into()))
    );
    // An issuer list holding ours is not our issuer.
    assert_eq!(
        check(&k.sign(&with(|c| c["iss"] = json!([ISS])))),
        Err(AuthnError::Claim("iss".into()))
    );
    assert_eq!(
        check(&k.sign(&with(|c| c["aud"] = "other".into()))),
        Err(AuthnError::Audience)
    );
    assert!(check(&k.sign(&with(|c| c["aud"] = json!(["other", "shop"])))).is_ok());
    assert_eq!(
        check(&k.sign(&with(|c| drop(c.as_object_mut().unwrap().remove("aud"))))),
        Err(AuthnError::Claim("aud".into()))
    );
    // No audiences configured: `aud` is not checked.
    let mut open = rule();
    open.audiences.clear();
    let token = k.sign(&with(|c| c["aud"] = "anyone".into()));
    let out = run(vec![open], &mut bearer(&token), &mut Uri::from_static("/"));
    assert!(out.unwrap().is_some());
}

#[test]
fn forged_tokens_are_refused() {
    let rsa = key("rs256");
    let stranger = TestKey::generate(Algorithm::ES256, "es256");
    // Same kid, another key: bad signature.
    assert_eq!(check(&stranger.sign(&claims())), Err(AuthnError::Signature));
    // A tampered payload under a genuine signature.
    let token = key("es256").sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let evil = b64_json(&with(|c| c["sub"] = "admin".into()));
    let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
    assert_eq!(check(&tampered), Err(AuthnError::Signature));
    // alg none: not even a header (`none` is no algorithm to the parser).
    assert_eq!(
        check(&unsigned(&claims())),
        Err(AuthnError::Malformed("header"))
    );
    // HS256 with the RSA public key as the HMAC secret (key confusion).
    for secret in [
        rsa.public_pem.as_bytes(),
        rsa.jwk()["n"].as_str().unwrap().as_bytes(),
    ] {
        assert!(matches!(
            check(&hs256(secret, "rs256", &claims())),
            Err(AuthnError::Algorithm(_))
        ));
    }
    // An algorithm the key does not allow: the RS256 key (its JWK says RS256) for PS256.
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("rs256".into());
    assert_eq!(
        check(&rsa.sign_with(header, &claims())),
        Err(AuthnError::UnknownKey(Some("rs256".into())))
    );
    // An EC header naming the RSA key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rs256".into());
    assert_eq!(
        check(&key("es256").sign_with(header, &claims())),
        Err(AuthnError::UnknownKey(Some("rs256".into())))
    );
    // Unknown kid.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rotated-away".into());
    assert_eq!(
        check(&key("es256").sign_with(header, &claims())),
        Err(AuthnError::UnknownKey(Some("rotated-away".into())))
    );
    for junk in ["", "abc", "a.b.c", "Zm9v.Zm9v.Zm9v"] {
        assert!(check(junk).is_err(), "{junk:?}");
    }
    assert_eq!(
        check(&"a".repeat(MAX_TOKEN_LEN + 1)),
        Err(AuthnError::Malformed("too long"))
    );
}

fn b64_json(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn locations_stripping_and_claim_headers() {
    let token = key("es256").sign(&claims());
    // No token: nothing, but claim headers a client sent are removed all the same.
    let mut r = rule();
    r.output_claim_to_headers = vec![
        ClaimToHeader {
            header: "x-user".into(),
            claim: "sub".into(),
        },
        ClaimToHeader {
            header: "x-exp".into(),
            claim: "exp".into(),
        },
        ClaimToHeader {
            header: "x-team".into(),
            claim: "org.team".into(),
        },
    ];
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "admin".parse().unwrap());
    let out = run(vec![r.clone()], &mut headers, &mut Uri::from_static("/"));
    assert_eq!(out, Ok(None));
    assert!(headers.get("x-user").is_none(), "spoofed claim header kept");
    // Bearer (any case), stripped by default; claims copied out.
    let nested = key("es256").sign(&with(|c| c["org"] = json!({"team": "payments"})));
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("bearer {nested}").parse().unwrap());
    headers.insert("x-user", "admin".parse().unwrap());
    let auth = run(vec![r.clone()], &mut headers, &mut Uri::from_static("/"))
        .unwrap()
        .unwrap();
    assert_eq!(auth.principal, "https://idp.example/alice");
    assert!(headers.get("authorization").is_none(), "token not stripped");
    assert_eq!(headers["x-user"], "alice");
    assert_eq!(headers["x-exp"], (NOW + 300).to_string());
    assert_eq!(headers["x-team"], "payments");
    // Basic credentials are not a bearer token.
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Basic YTpi".parse().unwrap());
    assert_eq!(
        run(vec![rule()], &mut headers, &mut Uri::from_static("/")),
        Ok(None)
    );
    // Kept when asked.
    let mut keep = rule();
    keep.forward_original_token = true;
    let mut headers = bearer(&token);
    run(vec![keep], &mut headers, &mut Uri::from_static("/"))
        .unwrap()
        .unwrap();
    assert!(headers.get("authorization").is_some());
    // A custom header with a prefix, and a query parameter; the Authorization header is then
    // not read.
    let mut custom = rule();
    custom.from_headers = vec![JwtHeader {
        name: "x-jwt".into(),
        prefix: "Token ".into(),
    }];
    custom.from_params = vec!["access_token".into()];
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", format!("Token {token}").parse().unwrap());
    assert!(
        run(
            vec![custom.clone()],
            &mut headers,
            &mut Uri::from_static("/")
        )
        .unwrap()
        .is_some()
    );
    assert!(headers.get("x-jwt").is_none());
    let mut uri: Uri = format!("/billing?a=1&access_token={token}&b=2")
        .parse()
        .unwrap();
    assert!(
        run(vec![custom.clone()], &mut HeaderMap::new(), &mut uri)
            .unwrap()
            .is_some()
    );
    assert_eq!(uri, "/billing?a=1&b=2");
    assert_eq!(
        run(
            vec![custom.clone()],
            &mut bearer(&token),
            &mut Uri::from_static("/")
        ),
        Ok(None)
    );
    // Two tokens: refused, whether in one header twice or in two places.
    let mut headers = bearer(&token);
    headers.append("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(
        run(vec![rule()], &mut headers, &mut Uri::from_static("/")),
        Err(AuthnError::SeveralTokens)
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", format!("Token {token}").parse().unwrap());
    let mut uri: Uri = format!("/?access_token={token}").parse().unwrap();
    assert_eq!(
        run(vec![custom], &mut headers, &mut uri),
        Err(AuthnError::SeveralTokens)
    );
}

#[test]
fn the_token_picks_its_rule_by_issuer_and_location() {
    let other = TestKey::generate(Algorithm::ES256, "other");
    let mut second = rule();
    second.issuer = "https://other.example".into();
    second.jwks = jwks(&[other.jwk()]);
    let token = other.sign(&with(|c| c["iss"] = "https://other.example".into()));
    let auth = run(
        vec![rule(), second.clone()],
        &mut bearer(&token),
        &mut Uri::from_static("/"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(auth.principal, "https://other.example/alice");
    // The first issuer's keys do not verify the second's tokens.
    let forged = key("es256").sign(&with(|c| c["iss"] = "https://other.example".into()));
    let out = run(
        vec![rule(), second],
        &mut bearer(&forged),
        &mut Uri::from_static("/"),
    );
    assert_eq!(out, Err(AuthnError::UnknownKey(Some("es256".into()))));
}

#[test]
fn rules_apply_to_the_selected_workloads_only() {
    let (a, _) = Authenticator::new(&[resource(vec![rule()])]);
    let frontend: BTreeMap<String, String> = [("app".into(), "frontend".into())].into();
    let rules = a.rules_for(&Target {
        namespace: "shop",
        labels: &frontend,
        port: 8080,
    });
    assert!(rules.is_empty());
    let token = key("es256").sign(&claims());
    assert_eq!(
        rules.authenticate(&mut bearer(&token), &mut Uri::from_static("/"), NOW),
        Ok(None),
        "no rule: the token is not looked at"
    );
}

#[test]
fn key_sets_are_parsed_once_and_bad_ones_refuse_every_token() {
    let es = key("es256");
    let hmac = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
    let mut enc = es.jwk();
    enc["use"] = "enc".into();
    let err = Jwks::parse(&jwks(&[hmac.clone(), enc])).unwrap_err();
    assert!(err.to_string().contains("HMAC"), "{err}");
    assert!(err.to_string().contains("kid \"h\""), "{err}");
    let parsed = Jwks::parse(&jwks(&[hmac.clone(), es.jwk()])).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed.skipped().len(), 1);
    assert!(Jwks::parse("{").is_err());
    assert!(Jwks::parse("[]").is_err());
    let many: Vec<Value> = (0..=MAX_KEYS).map(|_| es.jwk()).collect();
    assert_eq!(
        Jwks::parse(&jwks(&many)).unwrap_err(),
        JwksError::TooMany(MAX_KEYS + 1)
    );
    // A JWK whose alg does not fit its key is left out.
    let mut lying = es.jwk();
    lying["alg"] = "RS256".into();
    assert!(Jwks::parse(&jwks(&[lying])).is_err());
    // A rule whose key set is broken (or not fetched yet) refuses its issuer's tokens.
    let mut broken = rule();
    broken.jwks = String::new();
    let (a, problems) = Authenticator::new(&[resource(vec![broken])]);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("shop/idp jwtRules[0]"),
        "{problems:?}"
    );
    let labels: BTreeMap<String, String> = [("app".into(), "backend".into())].into();
    let target = Target {
        namespace: "shop",
        labels: &labels,
        port: 1,
    };
    let out = a.rules_for(&target).authenticate(
        &mut bearer(&es.sign(&claims())),
        &mut Uri::from_static("/"),
        NOW,
    );
    assert_eq!(out, Err(AuthnError::UnknownKey(Some("es256".into()))));
}

#[test]
fn a_verified_token_skips_its_signature_check_but_never_its_times() {
    let (a, _) = Authenticator::new(&[resource(vec![rule()])]);
    let labels: BTreeMap<String, String> = [("app".into(), "backend".into())].into();
    let target = Target {
        namespace: "shop",
        labels: &labels,
        port: 8080,
    };
    let rules = a.rules_for(&target);
    let at = |token: &str, now: u64| {
        rules.authenticate(&mut bearer(token), &mut Uri::from_static("/"), now)
    };
    let token = key("es256").sign(&claims());
    assert!(at(&token, NOW).unwrap().is_some());
    let provider = rules.providers[0];
    assert!(
        provider.cached(&token).is_some(),
        "remembered once verified"
    );
    // Served from the cache, its expiry still counts.
    assert!(at(&token, NOW + 200).unwrap().is_some());
    assert!(matches!(
        at(&token, NOW + 300 + CLOCK_SKEW_SECS + 1),
        Err(AuthnError::Expired)
    ));
    // A token whose signature was altered is a different token: checked, and refused.
    let (head, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{flipped}{}", &signature[1..]);
    assert!(matches!(at(&forged, NOW), Err(AuthnError::Signature)));
    assert!(provider.cached(&forged).is_none());
    // Bounded: past the limit the expired ones go, then all.
    for i in 0..VERIFIED_CACHE_ENTRIES + 10 {
        let t = key("ed").sign(&with(|c| c["sub"] = json!(format!("user-{i}"))));
        assert!(at(&t, NOW).unwrap().is_some());
    }
    assert!(provider.verified().len() <= VERIFIED_CACHE_ENTRIES);
}
