//! A JWKS document parsed once into verification keys, each with the algorithms it may verify.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Keys beyond this many are refused: a key set is tried key by key for a token without `kid`.
pub const MAX_KEYS: usize = 64;

/// The algorithms a token may be signed with. Never `none` (not even parsed) nor HMAC: a
/// shared secret has no place in a key set that anyone may read, and accepting HS256 is how
/// an RSA public key turns into a forging secret.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub fn is_supported(alg: Algorithm) -> bool {
    ALGORITHMS.contains(&alg)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document (a JSON object with \"keys\"): {0}")]
    Json(String),
    #[error("{0} keys: at most {MAX_KEYS} are accepted")]
    TooMany(usize),
    #[error(
        "no usable signing key: keys must be RSA, EC P-256/P-384 or Ed25519 public keys (HMAC \"oct\" keys are refused){skipped}"
    )]
    NoUsableKey { skipped: String },
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// What it may verify: the JWK's `alg` when it names one, else what its type allows.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A parsed key set. Unusable keys (encryption keys, HMAC, unknown curves) are left out and
/// named in [`Jwks::skipped`].
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub(crate) keys: Vec<Key>,
    skipped: Vec<String>,
}

impl Jwks {
    /// Parses a JWKS document; an error when it is not one or holds no usable key.
    pub fn parse(document: &str) -> Result<Jwks, JwksError> {
        let set: JwkSet =
            serde_json::from_str(document).map_err(|e| JwksError::Json(e.to_string()))?;
        if set.keys.len() > MAX_KEYS {
            return Err(JwksError::TooMany(set.keys.len()));
        }
        let mut jwks = Jwks::default();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk
                .common
                .key_id
                .as_ref()
                .map_or_else(|| format!("keys[{i}]"), |kid| format!("kid {kid:?}"));
            match key(jwk) {
                Ok(k) => jwks.keys.push(k),
                Err(why) => jwks.skipped.push(format!("{name}: {why}")),
            }
        }
        if jwks.keys.is_empty() {
            let skipped = if jwks.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped: {}", jwks.skipped.join("; "))
            };
            return Err(JwksError::NoUsableKey { skipped });
        }
        Ok(jwks)
    }

    /// Keys left out, and why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may verify a token signed with `alg` and naming `kid`: by `kid` when the
    /// token names one, else every key allowing `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }
}

fn key(jwk: &Jwk) -> Result<Key, String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (\"use\")".into());
    }
    let allowed: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported curve".into()),
        AlgorithmParameters::OctetKey(_) => return Err("HMAC (\"oct\") keys are refused".into()),
        _ => return Err("unsupported key type".into()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => allowed,
        Some(named) => match Algorithm::try_from(named) {
            Ok(alg) if allowed.contains(&alg) && is_supported(alg) => vec![alg],
            _ => return Err(format!("\"alg\" {named} does not fit the key")),
        },
    };
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("malformed key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        decoding,
    })
}
