//! The mesh's external authorization providers (Helm value `extAuthz.providers`, rendered as
//! JSON into `AMBIT_EXT_AUTHZ_PROVIDERS`): parsed and checked once at start (an operator's
//! setting, not a tenant's object: a bad one stops the controller with its name and field),
//! then delivered to every waypoint as `extauthzprovider/<name>` resources. CUSTOM
//! AuthorizationPolicies name them.

use ambit_policy::{ExtAuthzProtocol, ExtAuthzProvider, ExtAuthzProviderError};
use ambit_proto::config::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    #[error("not a JSON list of providers: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("provider {name:?}: {source}")]
    Invalid {
        name: String,
        source: ExtAuthzProviderError,
    },
    #[error("provider {0:?} is declared twice")]
    Duplicate(String),
}

/// The providers of `json` (empty text: none), each valid, names unique.
pub fn parse(json: &str) -> Result<Vec<ExtAuthzProvider>, ProvidersError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let providers: Vec<ExtAuthzProvider> = serde_json::from_str(json)?;
    for (i, p) in providers.iter().enumerate() {
        p.validate().map_err(|source| ProvidersError::Invalid {
            name: p.name.clone(),
            source,
        })?;
        if providers[..i].iter().any(|o| o.name == p.name) {
            return Err(ProvidersError::Duplicate(p.name.clone()));
        }
    }
    Ok(providers)
}

/// The config-stream resources of `providers`, by name.
pub fn resources(providers: &[ExtAuthzProvider]) -> Vec<(String, pb::resource::Kind)> {
    providers
        .iter()
        .map(|p| {
            let resource = pb::ExtAuthzProvider {
                name: p.name.clone(),
                service: p.service.clone(),
                port: p.port.into(),
                protocol: match p.protocol {
                    ExtAuthzProtocol::Grpc => "grpc",
                    ExtAuthzProtocol::Http => "http",
                }
                .into(),
                timeout_ms: p.timeout_ms,
                fail_open: p.fail_open,
                status_on_error: p.status_on_error.into(),
                include_request_body_in_check: p.include_request_body_in_check.map(|b| {
                    pb::ExtAuthzBody {
                        max_request_bytes: b.max_request_bytes,
                        allow_partial_message: b.allow_partial_message,
                    }
                }),
                path_prefix: p.path_prefix.clone(),
                include_request_headers_in_check: p.include_request_headers_in_check.clone(),
                headers_to_upstream_on_allow: p.headers_to_upstream_on_allow.clone(),
                headers_to_downstream_on_allow: p.headers_to_downstream_on_allow.clone(),
                headers_to_downstream_on_deny: p.headers_to_downstream_on_deny.clone(),
            };
            (
                format!("extauthzprovider/{}", p.name),
                pb::resource::Kind::ExtAuthzProvider(resource),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_chart_value_parses_and_becomes_resources() {
        let json = r#"[
            {"name": "authz", "service": "ext-authz.sec.svc.cluster.local", "port": 9000, "protocol": "grpc"},
            {"name": "authz-http", "service": "ext-authz.sec.svc.cluster.local", "port": 8000,
             "protocol": "http", "failOpen": true, "timeoutMs": 300,
             "includeRequestHeadersInCheck": ["x-ext-authz"],
             "headersToUpstreamOnAllow": ["x-ext-authz-check-result"]}
        ]"#;
        let providers = parse(json).unwrap();
        assert_eq!(providers.len(), 2);
        let resources = resources(&providers);
        assert_eq!(resources[0].0, "extauthzprovider/authz");
        let pb::resource::Kind::ExtAuthzProvider(p) = &resources[1].1 else {
            panic!("{:?}", resources[1].1);
        };
        assert_eq!(
            (p.protocol.as_str(), p.port, p.timeout_ms),
            ("http", 8000, 300)
        );
        assert!(p.fail_open);
        assert_eq!(p.status_on_error, 403);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_provider_is_named() {
        let err = parse(r#"[{"name": "a", "service": "x", "port": 0, "protocol": "grpc"}]"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, r#"provider "a": port 0 is not a port"#);
        let twice = r#"[{"name": "a", "service": "x", "port": 1, "protocol": "grpc"},
                        {"name": "a", "service": "y", "port": 1, "protocol": "http"}]"#;
        assert!(matches!(parse(twice), Err(ProvidersError::Duplicate(n)) if n == "a"));
        assert!(matches!(parse("{}"), Err(ProvidersError::Parse(_))));
    }
}
