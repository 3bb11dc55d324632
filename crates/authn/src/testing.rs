//! Real keys and tokens for tests: keys generated per run (aws-lc-rs through rcgen), tokens
//! signed by jsonwebtoken's encoder, and the forged kinds a validator must refuse.
#![allow(clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its public JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key, SubjectPublicKeyInfo PEM: what a key-confusion attacker uses as an
    /// HMAC secret.
    pub public_pem: String,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    /// A fresh key for `alg` (RSA 2048 for RS*/PS*), named `kid` in its JWK.
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let rcgen_alg = match alg {
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_RSA_SHA256,
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate key");
        let pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("encoding key");
        let mut jwk = match alg {
            // jsonwebtoken derives Ed25519 JWKs from PKCS#8 v1 only; the raw key is the `x`.
            Algorithm::EdDSA => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
            }),
            _ => serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).expect("jwk"))
                .expect("jwk json"),
        };
        jwk["kid"] = kid.into();
        jwk["alg"] = serde_json::to_value(alg).expect("alg");
        Self {
            alg,
            kid: kid.to_owned(),
            encoding,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    /// The public JWK (with `kid` and `alg`).
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token of `claims` with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    /// A token of `claims` under `header` (any `alg`, `kid` or none), signed by this key.
    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// A JWKS document of `keys`, each as [`TestKey::jwk`] made it (edit them for other shapes).
pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// An HS256 token with `secret` as the HMAC key: with a public key as the secret, the
/// classic key-confusion forgery.
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_secret(secret).expect("secret");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
