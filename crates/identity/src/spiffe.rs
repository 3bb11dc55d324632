//! SPIFFE identities of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! ambit only ever issues and accepts this Kubernetes shape, so anything else is rejected at
//! parse time instead of flowing into authorization decisions.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec caps a SPIFFE ID (as a URI) at 2048 bytes.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE spec caps the trust domain at 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not an ambit SPIFFE id or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE id must start with \"spiffe://\"")]
    MissingScheme,
    #[error("SPIFFE id is {0} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain is {0} bytes long; the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong(usize),
    #[error(
        "trust domain has {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed (no port, user info or upper case)"
    )]
    InvalidTrustDomainChar(char),
    #[error("SPIFFE id has a query or fragment")]
    QueryOrFragment,
    #[error("SPIFFE id path must be /ns/<namespace>/sa/<service-account>, got {0:?}")]
    NotNamespaceServiceAccount(String),
    #[error("SPIFFE id path has an empty segment")]
    EmptySegment,
    #[error("SPIFFE id path has a '.' or '..' segment")]
    DotSegment,
    #[error("SPIFFE id path has {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    InvalidPathChar(char),
}

/// A SPIFFE trust domain such as `cluster.local`: validated, lowercase, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong(name.len()));
        }
        if let Some(bad) = name.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(SpiffeIdError::InvalidTrustDomainChar(bad));
        }
        Ok(Self(name.into()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// The identity of a Kubernetes service account in a trust domain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

/// Whether `name` is a Kubernetes object name (RFC 1123 subdomain: lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, at most 253 bytes), as the
/// namespaces and service accounts that make a mesh identity are. Stricter than a SPIFFE path
/// segment.
pub fn is_kubernetes_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl SpiffeId {
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        let id = Self {
            trust_domain,
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let len = id.to_string().len();
        if len > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(len));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI form, as carried in certificate SANs.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    if let Some(bad) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::InvalidPathChar(bad));
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        if uri.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(uri.len()));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::MissingScheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain = trust_domain.parse::<TrustDomain>()?;
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            validate_segment(segment)?;
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => {
                Self::new(trust_domain, namespace, service_account)
            }
            _ => Err(SpiffeIdError::NotNamespaceServiceAccount(format!(
                "/{path}"
            ))),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        s.parse()
    }

    #[test]
    fn kubernetes_names_are_rfc_1123_subdomains() {
        for ok in ["shop", "waypoint-back", "a.b-c", "0x"] {
            assert!(is_kubernetes_name(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in ["", "Shop", "-a", "a-", "a_b", ".a", long.as_str()] {
            assert!(!is_kubernetes_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn round_trips_the_kubernetes_shape() {
        let id = parse("spiffe://cluster.local/ns/demo/sa/web-frontend").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "web-frontend");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/demo/sa/web-frontend"
        );
        assert_eq!(parse(&id.to_uri()).unwrap(), id);
    }

    #[test]
    fn rejects_every_malformed_form() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("https://cluster.local/ns/a/sa/b", MissingScheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", MissingScheme),
            ("spiffe:///ns/a/sa/b", EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                InvalidTrustDomainChar('C'),
            ),
            (
                "spiffe://cluster.local:8080/ns/a/sa/b",
                InvalidTrustDomainChar(':'),
            ),
            (
                "spiffe://user@cluster.local/ns/a/sa/b",
                InvalidTrustDomainChar('@'),
            ),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", QueryOrFragment),
            ("spiffe://cluster.local/ns/a/sa/b#frag", QueryOrFragment),
            ("spiffe://cluster.local", EmptySegment),
            ("spiffe://cluster.local/", EmptySegment),
            ("spiffe://cluster.local/ns//sa/b", EmptySegment),
            ("spiffe://cluster.local/ns/a/sa/b/", EmptySegment),
            ("spiffe://cluster.local/ns/../sa/b", DotSegment),
            ("spiffe://cluster.local/ns/a/sa/.", DotSegment),
            ("spiffe://cluster.local/ns/a%2f/sa/b", InvalidPathChar('%')),
            ("spiffe://cluster.local/ns/a b/sa/b", InvalidPathChar(' ')),
            (
                "spiffe://cluster.local/ns/a/sa/b/extra",
                NotNamespaceServiceAccount("/ns/a/sa/b/extra".into()),
            ),
            (
                "spiffe://cluster.local/sa/b/ns/a",
                NotNamespaceServiceAccount("/sa/b/ns/a".into()),
            ),
            (
                "spiffe://cluster.local/workload",
                NotNamespaceServiceAccount("/workload".into()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input).as_ref(), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long_td = "a".repeat(256);
        assert_eq!(
            parse(&format!("spiffe://{long_td}/ns/a/sa/b")),
            Err(SpiffeIdError::TrustDomainTooLong(256))
        );
        let long_sa = "s".repeat(MAX_ID_LEN);
        assert!(matches!(
            parse(&format!("spiffe://td/ns/a/sa/{long_sa}")),
            Err(SpiffeIdError::TooLong(_))
        ));
    }

    #[test]
    fn constructor_validates_segments() {
        let td: TrustDomain = "td".parse().unwrap();
        assert_eq!(
            SpiffeId::new(td.clone(), "", "sa"),
            Err(SpiffeIdError::EmptySegment)
        );
        assert_eq!(
            SpiffeId::new(td, "ns", "a/b"),
            Err(SpiffeIdError::InvalidPathChar('/'))
        );
    }
}
