//! Request authentication (JWT) as sources deliver it: which workloads, which issuers, where
//! the token is and what becomes of it. The keys are the JWKS *document*, resolved by the
//! controller (inline, a Secret, or fetched over HTTPS): validating tokens is `ambit-authn`'s,
//! which only the waypoint links.

use crate::matchers::is_token;
use crate::{PolicyScope, Target};
use serde::{Deserialize, Serialize};

/// A `RequestAuthentication`: the JWT rules of the workloads it selects. Every rule of every
/// resource selecting a workload applies to its requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    pub name: String,
    pub namespace: String,
    /// No selector: every workload of the namespace.
    #[serde(default)]
    pub selector: Option<PolicyScope>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

impl RequestAuthentication {
    pub fn applies_to(&self, target: &Target<'_>) -> bool {
        PolicyScope::selects(&self.namespace, self.selector.as_ref(), target)
    }
}

/// The tokens of one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss` must be this.
    pub issuer: String,
    /// The token's `aud` must hold one of these; empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's public keys, a JWKS document (RFC 7517 §5). Empty: no key yet, so every
    /// token of this issuer is refused.
    #[serde(default)]
    pub jwks: String,
    /// Where the token is; none here and in `from_params`: `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters holding the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Claims copied into request headers for the app (headers of these names that the
    /// client sent are always removed, so the app can trust them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Keep the token in the request to the app; by default it is removed.
    #[serde(default)]
    pub forward_original_token: bool,
}

impl JwtRule {
    /// `Authorization: Bearer` when the rule names no location.
    pub fn default_header() -> JwtHeader {
        JwtHeader {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    /// The headers the token is read from, the default one included.
    pub fn headers(&self) -> Vec<JwtHeader> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            vec![Self::default_header()]
        } else {
            self.from_headers.clone()
        }
    }
}

/// A header holding the token after `prefix` (e.g. `Bearer `, matched case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// A claim (top level, or nested as `a.b`) copied into a request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// The first malformed value of a RequestAuthentication, named by its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthnError {
    #[error("jwtRules[{rule}].issuer: must not be empty")]
    Issuer { rule: usize },
    #[error("jwtRules[{rule}]: issuer {issuer:?} is already the issuer of jwtRules[{first}]")]
    DuplicateIssuer {
        rule: usize,
        first: usize,
        issuer: String,
    },
    #[error("jwtRules[{rule}].{field}: {value:?} is not a header name")]
    HeaderName {
        rule: usize,
        field: &'static str,
        value: String,
    },
    #[error("jwtRules[{rule}].fromHeaders: prefix {value:?} holds control characters")]
    Prefix { rule: usize, value: String },
    #[error("jwtRules[{rule}].fromParams: {value:?} is not a query parameter name")]
    Param { rule: usize, value: String },
    #[error(
        "jwtRules[{rule}].outputClaimToHeaders: header {header:?} is where a token is read from or a header the proxy owns"
    )]
    ReservedHeader { rule: usize, header: String },
    #[error("jwtRules[{rule}].outputClaimToHeaders: claim of header {header:?} must not be empty")]
    Claim { rule: usize, header: String },
}

impl RequestAuthentication {
    /// The valid resource nearest to this one, for the controller to send when this one does
    /// not validate (one tenant's mistake never makes a waypoint refuse everyone's config):
    /// rules without an issuer, or repeating one, go; malformed token locations go; claim
    /// headers that are malformed or collide with a token location go. What stays still
    /// refuses bad tokens and still strips the valid claim headers.
    pub fn fail_safe(&self) -> RequestAuthentication {
        let mut rules: Vec<JwtRule> = Vec::new();
        for r in &self.jwt_rules {
            if r.issuer.is_empty() || rules.iter().any(|o| o.issuer == r.issuer) {
                continue;
            }
            let mut r = r.clone();
            r.from_headers
                .retain(|h| is_token(&h.name) && !h.prefix.bytes().any(|b| b < 0x20 || b == 0x7f));
            r.from_params.retain(|p| is_param(p));
            rules.push(r);
        }
        let token_headers: Vec<String> = rules
            .iter()
            .flat_map(|r| r.headers())
            .map(|h| h.name.to_ascii_lowercase())
            .collect();
        for r in &mut rules {
            r.output_claim_to_headers.retain(|c| {
                let lower = c.header.to_ascii_lowercase();
                is_token(&c.header)
                    && !c.claim.is_empty()
                    && !token_headers.contains(&lower)
                    && !RESERVED.contains(&lower.as_str())
            });
        }
        RequestAuthentication {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            jwt_rules: rules,
        }
    }
}

fn is_param(p: &str) -> bool {
    !p.is_empty() && !p.contains(['&', '=', '#', ' '])
}

/// Headers the proxy sets or reads itself, never a claim's.
const RESERVED: [&str; 6] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
];

impl RequestAuthentication {
    /// Whether the rules can be applied as written: issuers set and distinct (a token picks
    /// its rule by issuer), locations and headers well-formed. The JWKS is checked where
    /// keys are parsed (`ambit-authn`).
    pub fn validate(&self) -> Result<(), RequestAuthnError> {
        let mut token_headers: Vec<String> = Vec::new();
        for (rule, r) in self.jwt_rules.iter().enumerate() {
            if r.issuer.is_empty() {
                return Err(RequestAuthnError::Issuer { rule });
            }
            if let Some(first) = self.jwt_rules[..rule]
                .iter()
                .position(|o| o.issuer == r.issuer)
            {
                return Err(RequestAuthnError::DuplicateIssuer {
                    rule,
                    first,
                    issuer: r.issuer.clone(),
                });
            }
            for h in &r.from_headers {
                if !is_token(&h.name) {
                    return Err(RequestAuthnError::HeaderName {
                        rule,
                        field: "fromHeaders",
                        value: h.name.clone(),
                    });
                }
                if h.prefix.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return Err(RequestAuthnError::Prefix {
                        rule,
                        value: h.prefix.clone(),
                    });
                }
            }
            if let Some(p) = r.from_params.iter().find(|p| !is_param(p)) {
                return Err(RequestAuthnError::Param {
                    rule,
                    value: p.clone(),
                });
            }
            token_headers.extend(r.headers().into_iter().map(|h| h.name.to_ascii_lowercase()));
        }
        for (rule, r) in self.jwt_rules.iter().enumerate() {
            for c in &r.output_claim_to_headers {
                if !is_token(&c.header) {
                    return Err(RequestAuthnError::HeaderName {
                        rule,
                        field: "outputClaimToHeaders",
                        value: c.header.clone(),
                    });
                }
                let lower = c.header.to_ascii_lowercase();
                if token_headers.contains(&lower) || RESERVED.contains(&lower.as_str()) {
                    return Err(RequestAuthnError::ReservedHeader {
                        rule,
                        header: c.header.clone(),
                    });
                }
                if c.claim.is_empty() {
                    return Err(RequestAuthnError::Claim {
                        rule,
                        header: c.header.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
