//! End-user request authentication (JWT) for the waypoint. Pure: no I/O and no clock (the
//! caller says what time it is), so every outcome is a unit test.
//!
//! [`Authenticator::new`] compiles the `RequestAuthentication`s of a mesh model once: each
//! JWKS document is parsed into keys ([`Jwks`]). Per request, [`Authenticator::rules_for`]
//! picks the rules of the workload reached and [`Rules::authenticate`]:
//!
//! 1. removes the headers the rules fill from claims, whatever happens next (a client never
//!    gets to set them);
//! 2. finds the token: the rules' headers (`Authorization: Bearer` by default) and query
//!    parameters; none is fine (policy decides), two are refused;
//! 3. picks the rule by the token's issuer, the key by `kid` (or every key of the token's
//!    algorithm), and checks the signature (RS256/384/512, PS256/384/512, ES256/384, EdDSA:
//!    never `none`, never HMAC, never an algorithm the key does not allow), then `exp` and
//!    `nbf` with [`CLOCK_SKEW_SECS`], `iss` and `aud`;
//! 4. valid: copies the claims asked for into headers, removes the token unless the rule
//!    forwards it, and returns the principal (`iss/sub`) and claims for authorization.

mod jwks;

pub use jwks::{ALGORITHMS, Jwks, JwksError, MAX_KEYS};

use ambit_policy::{JwtHeader, JwtRule, RequestAuth, RequestAuthentication, Target};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Allowed difference between our clock and the issuer's, for `exp` and `nbf`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// A token longer than this is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Tokens whose signature each provider remembers having verified. A signature check is the
/// cost of JWT (an ES256 verify is tens of µs; a client sends the same token for minutes), so
/// a token seen before skips it, as Envoy's JWT cache does; its times are still checked on
/// every request. Bounded: at most this many tokens, each at most [`MAX_CACHED_TOKEN_LEN`].
pub const VERIFIED_CACHE_ENTRIES: usize = 1024;
const MAX_CACHED_TOKEN_LEN: usize = 4096;

/// Why a presented token is refused (a 401 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("more than one token in the request")]
    SeveralTokens,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token issuer {0:?} is not trusted here")]
    UnknownIssuer(String),
    #[error("no key of the issuer verifies this token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token claim {0:?} is malformed")]
    Claim(String),
}

impl AuthnError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SeveralTokens => "several_tokens",
            Self::Malformed(_) => "malformed",
            Self::Algorithm(_) => "algorithm",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::UnknownKey(_) => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::Claim(_) => "claim",
        }
    }
}

/// One issuer's rule, with its keys parsed.
#[derive(Debug)]
struct Provider {
    rule: JwtRule,
    headers: Vec<JwtHeader>,
    keys: Jwks,
    /// One per accepted algorithm: `iss`, `aud` and the algorithm (checked against the
    /// token's header), built once.
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens verified against these keys and this rule, with their claims. Dropped with the
    /// provider, so a change of keys or rule forgets them.
    verified: Mutex<HashMap<Box<str>, Map<String, Value>>>,
}

impl Provider {
    fn new(rule: &JwtRule) -> (Self, Option<JwksError>) {
        // No document yet (the controller could not get one): no key, every token refused.
        let (keys, error) = match Jwks::parse(&rule.jwks) {
            Ok(keys) => (keys, None),
            Err(e) => (Jwks::default(), Some(e)),
        };
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                // Time is ours to check, against the caller's clock.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.required_spec_claims = HashSet::from(["iss".to_owned()]);
                v.set_issuer(&[&rule.issuer]);
                if rule.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&rule.audiences);
                    v.required_spec_claims.insert("aud".to_owned());
                }
                (alg, v)
            })
            .collect();
        let provider = Provider {
            rule: rule.clone(),
            headers: rule.headers(),
            keys,
            validations,
            verified: Mutex::default(),
        };
        (provider, error)
    }

    fn reads(&self, location: &Location<'_>) -> bool {
        match location {
            Location::Header(h) => self.headers.iter().any(|o| o == *h),
            Location::Param(p) => self.rule.from_params.iter().any(|o| o == *p),
        }
    }

    /// The claims of a token of this provider's issuer, signature and claims checked, then
    /// remembered.
    fn validate(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        now: u64,
    ) -> Result<Map<String, Value>, AuthnError> {
        let alg = header.alg;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(AuthnError::Algorithm(format!("{alg:?}")));
        };
        let mut tried = false;
        for key in self.keys.candidates(alg, header.kid.as_deref()) {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => {
                    check_time(&data.claims, now)?;
                    self.remember(token, &data.claims, now);
                    return Ok(data.claims);
                }
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
                Err(e) => return Err(decode_error(e.kind())),
            }
        }
        Err(if tried {
            AuthnError::Signature
        } else {
            AuthnError::UnknownKey(header.kid.clone())
        })
    }
}

impl Provider {
    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Map<String, Value>>> {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claims of `token` if its signature was verified before.
    fn cached(&self, token: &str) -> Option<Map<String, Value>> {
        self.verified().get(token).cloned()
    }

    /// Remembers a verified token; when full, forgets the expired ones, or all of them.
    fn remember(&self, token: &str, claims: &Map<String, Value>, now: u64) {
        if token.len() > MAX_CACHED_TOKEN_LEN {
            return;
        }
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_CACHE_ENTRIES {
            verified.retain(|_, claims| check_time(claims, now).is_ok());
            if verified.len() >= VERIFIED_CACHE_ENTRIES {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
    }
}

fn decode_error(kind: &ErrorKind) -> AuthnError {
    match kind {
        ErrorKind::InvalidSignature => AuthnError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthnError::Algorithm("mismatched".into())
        }
        ErrorKind::InvalidAudience => AuthnError::Audience,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            AuthnError::Claim(c.clone())
        }
        ErrorKind::InvalidIssuer => AuthnError::Claim("iss".into()),
        _ => AuthnError::Malformed("undecodable"),
    }
}

/// `exp` and `nbf` (NumericDate, RFC 7519 §2) when present, with [`CLOCK_SKEW_SECS`].
fn check_time(claims: &Map<String, Value>, now: u64) -> Result<(), AuthnError> {
    let date = |name: &str| -> Result<Option<u64>, AuthnError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or_else(|| AuthnError::Claim(name.into())),
        }
    };
    if date("exp")?.is_some_and(|exp| exp.saturating_add(CLOCK_SKEW_SECS) <= now) {
        return Err(AuthnError::Expired);
    }
    if date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS)) {
        return Err(AuthnError::NotYetValid);
    }
    Ok(())
}

/// The `RequestAuthentication`s of a model, compiled.
#[derive(Debug, Default)]
pub struct Authenticator {
    source: Vec<RequestAuthentication>,
    /// Per resource, its providers.
    providers: Vec<Vec<Provider>>,
}

impl Authenticator {
    /// Compiles `source`. A rule whose JWKS does not parse keeps no key (its tokens are
    /// refused); the problems are returned, named `namespace/name jwtRules[i]`, for the log.
    pub fn new(source: &[RequestAuthentication]) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let providers = source
            .iter()
            .map(|ra| {
                ra.jwt_rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| {
                        let (p, error) = Provider::new(rule);
                        if let Some(e) = error {
                            problems.push(format!(
                                "{}/{} jwtRules[{i}] ({}): {e}",
                                ra.namespace, ra.name, rule.issuer
                            ));
                        }
                        p
                    })
                    .collect()
            })
            .collect();
        let authenticator = Self {
            source: source.to_vec(),
            providers,
        };
        (authenticator, problems)
    }

    /// What it was compiled from: a new model with the same resources can keep it.
    pub fn source(&self) -> &[RequestAuthentication] {
        &self.source
    }

    /// The rules that apply to requests to `target`'s workload.
    pub fn rules_for(&self, target: &Target<'_>) -> Rules<'_> {
        let providers = self
            .source
            .iter()
            .zip(&self.providers)
            .filter(|(ra, _)| ra.applies_to(target))
            .flat_map(|(_, ps)| ps)
            .collect();
        Rules { providers }
    }
}

/// The rules of one workload.
#[derive(Debug)]
pub struct Rules<'a> {
    providers: Vec<&'a Provider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location<'a> {
    Header(&'a JwtHeader),
    Param(&'a str),
}

/// Where a request holds its token, and the token.
struct Found<'a> {
    location: Location<'a>,
    token: String,
}

impl<'a> Rules<'a> {
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Authenticates a request, rewriting its headers and URI as the module says.
    /// `Ok(None)`: no token. `now`: seconds since the Unix epoch.
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        uri: &mut Uri,
        now: u64,
    ) -> Result<Option<RequestAuth>, AuthnError> {
        for p in &self.providers {
            for c in &p.rule.output_claim_to_headers {
                headers.remove(c.header.as_str());
            }
        }
        let Some(found) = self.find(headers, uri)? else {
            return Ok(None);
        };
        let token = found.token.as_str();
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthnError::Malformed("too long"));
        }
        let (provider, claims) = self.verify(token, found.location, now)?;
        let issuer = provider.rule.issuer.as_str();
        let subject = match claims.get("sub") {
            None => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AuthnError::Claim("sub".into())),
        };
        let principal = format!("{issuer}/{subject}");
        for c in &provider.rule.output_claim_to_headers {
            if let (Some(value), Ok(name)) = (
                claim_header_value(&claims, &c.claim),
                HeaderName::from_bytes(c.header.as_bytes()),
            ) {
                headers.insert(name, value);
            }
        }
        if !provider.rule.forward_original_token {
            match found.location {
                Location::Header(h) => {
                    headers.remove(h.name.as_str());
                }
                Location::Param(p) => remove_param(uri, p),
            }
        }
        Ok(Some(RequestAuth { principal, claims }))
    }

    /// The provider of `token`, found at `location`, and its claims, signature and claims
    /// checked.
    fn verify(
        &self,
        token: &str,
        location: Location<'_>,
        now: u64,
    ) -> Result<(&'a Provider, Map<String, Value>), AuthnError> {
        // A token verified before is known by its exact bytes (any other token misses): the
        // provider that remembered it verified its issuer, so neither its header nor its
        // claims need decoding again. Its times count on every request all the same.
        let remembered = self
            .providers
            .iter()
            .filter(|p| p.reads(&location))
            .find_map(|p| Some((*p, p.cached(token)?)));
        if let Some((provider, claims)) = remembered {
            check_time(&claims, now)?;
            return Ok((provider, claims));
        }
        // `alg: none` and other unknown algorithms fail here: the header does not parse.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed("header"))?;
        if !jwks::is_supported(header.alg) {
            return Err(AuthnError::Algorithm(format!("{:?}", header.alg)));
        }
        #[derive(serde::Deserialize)]
        struct Issuer {
            iss: String,
        }
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
            .map_err(|_| AuthnError::Claim("iss".into()))?
            .iss;
        let provider = self
            .providers
            .iter()
            .find(|p| p.rule.issuer == issuer && p.reads(&location))
            .ok_or(AuthnError::UnknownIssuer(issuer))?;
        Ok((provider, provider.validate(token, &header, now)?))
    }

    /// The one token of the request among the rules' locations.
    fn find(&self, headers: &HeaderMap, uri: &Uri) -> Result<Option<Found<'a>>, AuthnError> {
        let mut found: Option<Found<'a>> = None;
        let mut take = |location: Location<'a>, token: &str| {
            if let Some(f) = &found {
                // The same place read by several rules is one token.
                if f.location == location
                    || matches!((f.location, location), (Location::Header(a), Location::Header(b)) if a.name.eq_ignore_ascii_case(&b.name))
                {
                    return Ok(());
                }
                return Err(AuthnError::SeveralTokens);
            }
            found = Some(Found {
                location,
                token: token.to_owned(),
            });
            Ok(())
        };
        for p in &self.providers {
            for h in &p.headers {
                let mut values = headers.get_all(h.name.as_str()).iter();
                let Some(value) = values.next() else { continue };
                if values.next().is_some() {
                    return Err(AuthnError::SeveralTokens);
                }
                let value = value
                    .to_str()
                    .map_err(|_| AuthnError::Malformed("header value"))?;
                if let Some(token) = strip_prefix_ignore_case(value, &h.prefix) {
                    take(Location::Header(h), token.trim())?;
                }
            }
            for name in &p.rule.from_params {
                let mut values = query_values(uri, name);
                let Some(value) = values.next() else { continue };
                if values.next().is_some() {
                    return Err(AuthnError::SeveralTokens);
                }
                take(Location::Param(name), value)?;
            }
        }
        Ok(found)
    }
}

fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn query_values<'u>(uri: &'u Uri, name: &'u str) -> impl Iterator<Item = &'u str> + 'u {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
}

fn remove_param(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    // Built from a valid path and a subset of a valid query: it parses.
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *uri = new;
        }
    }
}

/// A claim (nested as `a.b`) as a header value: strings as they are, numbers and booleans
/// as JSON writes them; other types, and values a header cannot carry, are not copied.
fn claim_header_value(claims: &Map<String, Value>, claim: &str) -> Option<HeaderValue> {
    let mut names = claim.split('.');
    let first = claims.get(names.next()?)?;
    let value = names.try_fold(first, |v, name| v.as_object()?.get(name))?;
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
