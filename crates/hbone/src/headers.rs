//! The request headers HBONE carries end to end: tracing and forwarding context, passed through
//! when present and never required.

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

fn passthrough() -> [HeaderName; 3] {
    [
        HeaderName::from_static("baggage"),
        FORWARDED,
        HeaderName::from_static("traceparent"),
    ]
}

/// `baggage`, `forwarded` and `traceparent` from a CONNECT request, nothing else.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelHeaders(HeaderMap);

impl TunnelHeaders {
    /// Keeps only the pass-through headers of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut kept = HeaderMap::new();
        for name in passthrough() {
            for value in headers.get_all(&name) {
                kept.append(name.clone(), value.clone());
            }
        }
        Self(kept)
    }

    pub fn as_map(&self) -> &HeaderMap {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn apply_to(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keeps_only_the_passthrough_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        headers.append("baggage", HeaderValue::from_static("a=1"));
        headers.append("baggage", HeaderValue::from_static("b=2"));
        headers.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        headers.insert("authorization", HeaderValue::from_static("secret"));
        headers.insert("connection", HeaderValue::from_static("close"));
        let kept = TunnelHeaders::from_headers(&headers);
        assert_eq!(kept.as_map().len(), 4);
        assert_eq!(kept.as_map().get_all("baggage").iter().count(), 2);
        assert!(kept.as_map().get("authorization").is_none());
        assert!(kept.as_map().get("connection").is_none());
        assert!(TunnelHeaders::from_headers(&HeaderMap::new()).is_empty());
    }
}
