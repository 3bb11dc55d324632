//! The controller's settings: one constant per environment variable, parsed once into
//! [`Config`]; a bad value is named in the error.

use ambit_identity::{SpiffeId, TrustDomain};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_NAMESPACE: &str = "AMBIT_NAMESPACE";
pub const ENV_POD_NAME: &str = "AMBIT_POD_NAME";
pub const ENV_TRUST_DOMAIN: &str = "AMBIT_TRUST_DOMAIN";
pub const ENV_GRPC_ADDR: &str = "AMBIT_GRPC_ADDR";
pub const ENV_METRICS_ADDR: &str = "AMBIT_METRICS_ADDR";
pub const ENV_TUNNEL_SERVICE_ACCOUNT: &str = "AMBIT_TUNNEL_SERVICE_ACCOUNT";
pub const ENV_CERT_LIFETIME_SECS: &str = "AMBIT_CERT_LIFETIME_SECS";
pub const ENV_WAYPOINT_IMAGE: &str = "AMBIT_WAYPOINT_IMAGE";
pub const ENV_CONTROLLER_SERVICE_ACCOUNT: &str = "AMBIT_SERVICE_ACCOUNT";
pub const ENV_CONTROLLER_ADDRESS: &str = "AMBIT_CONTROLLER_ADDRESS";
/// JSON list of external authorization providers (the chart's `extAuthz.providers`).
pub const ENV_EXT_AUTHZ_PROVIDERS: &str = "AMBIT_EXT_AUTHZ_PROVIDERS";
/// A PEM file of CA certificates trusted, besides the system's, for RequestAuthentication
/// `jwksUri` fetches (an issuer under a private CA).
pub const ENV_JWKS_CA_BUNDLE: &str = "AMBIT_JWKS_CA_BUNDLE";

/// Longest leaf lifetime an operator may configure (callers get at most the configured one).
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace the controller runs in: CA Secret, root ConfigMap, Lease.
    pub namespace: String,
    /// Holder identity in the Lease.
    pub pod_name: String,
    /// The controller's own service account (its serving certificate's identity).
    pub service_account: String,
    pub trust_domain: TrustDomain,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// `(namespace, name)` of the node tunnels' service account: the only one that may
    /// subscribe as a node and ask for other identities than its own.
    pub tunnel_service_account: (String, String),
    pub cert_lifetime: Duration,
    pub waypoint_image: String,
    /// `HOST:PORT` at which waypoints reach this controller's gRPC (config stream and CA).
    pub controller_address: String,
    /// Delivered to every waypoint; CUSTOM policies name them.
    pub ext_authz_providers: Vec<ambit_policy::ExtAuthzProvider>,
    /// CA certificates (PEM file) trusted for `jwksUri` fetches besides the system's.
    pub jwks_ca_bundle: Option<PathBuf>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Parses from any lookup, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let namespace = get(ENV_NAMESPACE).unwrap_or_else(|| "ambit-system".into());
        let pod_name = get(ENV_POD_NAME).unwrap_or_else(|| "ambit-controller".into());
        let service_account =
            get(ENV_CONTROLLER_SERVICE_ACCOUNT).unwrap_or_else(|| "ambit-controller".into());
        let td = get(ENV_TRUST_DOMAIN).unwrap_or_else(|| "cluster.local".into());
        let trust_domain = td
            .parse::<TrustDomain>()
            .map_err(|e| ConfigError::Invalid {
                name: ENV_TRUST_DOMAIN,
                value: td.clone(),
                reason: e.to_string(),
            })?;
        let grpc_addr = addr(&get, ENV_GRPC_ADDR, "0.0.0.0:15012")?;
        let metrics_addr = addr(&get, ENV_METRICS_ADDR, "0.0.0.0:15014")?;
        let tsa =
            get(ENV_TUNNEL_SERVICE_ACCOUNT).unwrap_or_else(|| "ambit-system/ambit-tunnel".into());
        let tunnel_service_account = match tsa.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                (ns.to_string(), sa.to_string())
            }
            _ => {
                return Err(ConfigError::Invalid {
                    name: ENV_TUNNEL_SERVICE_ACCOUNT,
                    value: tsa,
                    reason: "expected <namespace>/<service-account>".into(),
                });
            }
        };
        let secs = get(ENV_CERT_LIFETIME_SECS).unwrap_or_else(|| "3600".into());
        let cert_lifetime = match secs.parse::<u64>() {
            Ok(s) if (60..=MAX_CERT_LIFETIME.as_secs()).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(ConfigError::Invalid {
                    name: ENV_CERT_LIFETIME_SECS,
                    value: secs,
                    reason: format!("expected seconds in 60..={}", MAX_CERT_LIFETIME.as_secs()),
                });
            }
        };
        let waypoint_image =
            get(ENV_WAYPOINT_IMAGE).unwrap_or_else(|| "ghcr.io/ambit/ambit-waypoint:dev".into());
        // The chart's Service in front of the controller; waypoints run in other namespaces,
        // so the name is qualified.
        let controller_address = get(ENV_CONTROLLER_ADDRESS)
            .unwrap_or_else(|| format!("ambit-controller.{namespace}.svc:15012"));
        if !host_port(&controller_address) {
            return Err(ConfigError::Invalid {
                name: ENV_CONTROLLER_ADDRESS,
                value: controller_address,
                reason: "expected HOST:PORT (a DNS name or IP and a port 1..=65535)".into(),
            });
        }
        let providers = get(ENV_EXT_AUTHZ_PROVIDERS).unwrap_or_default();
        let ext_authz_providers =
            crate::extauthz::parse(&providers).map_err(|e| ConfigError::Invalid {
                name: ENV_EXT_AUTHZ_PROVIDERS,
                value: providers.clone(),
                reason: e.to_string(),
            })?;
        let jwks_ca_bundle = get(ENV_JWKS_CA_BUNDLE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            jwks_ca_bundle,
            ext_authz_providers,
            namespace,
            pod_name,
            service_account,
            trust_domain,
            grpc_addr,
            metrics_addr,
            tunnel_service_account,
            cert_lifetime,
            waypoint_image,
            controller_address,
        })
    }

    /// The SPIFFE id of the controller's serving certificate.
    pub fn controller_identity(&self) -> Result<SpiffeId, ambit_identity::SpiffeIdError> {
        SpiffeId::new(
            self.trust_domain.clone(),
            &self.namespace,
            &self.service_account,
        )
    }
}

/// `HOST:PORT`, host non-empty without spaces or a scheme, port non-zero; an IPv6 host is
/// bracketed.
fn host_port(v: &str) -> bool {
    let Some((host, port)) = v.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

fn addr(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let v = get(name).unwrap_or_else(|| default.into());
    v.parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            name,
            value: v.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.grpc_addr.port(), 15012);
        assert_eq!(c.metrics_addr.port(), 15014);
        assert_eq!(
            c.tunnel_service_account,
            ("ambit-system".into(), "ambit-tunnel".into())
        );
        assert_eq!(c.cert_lifetime, Duration::from_secs(3600));
        assert_eq!(
            c.controller_address,
            "ambit-controller.ambit-system.svc:15012"
        );
        // The default follows the controller's namespace.
        let c = parse(&[(ENV_NAMESPACE, "mesh")]).unwrap();
        assert_eq!(c.controller_address, "ambit-controller.mesh.svc:15012");
        let c = parse(&[(ENV_CONTROLLER_ADDRESS, "[fd00::1]:15012")]).unwrap();
        assert_eq!(c.controller_address, "[fd00::1]:15012");
        assert_eq!(c.jwks_ca_bundle, None);
        let c = parse(&[(ENV_JWKS_CA_BUNDLE, "/etc/ambit/jwks-ca.pem")]).unwrap();
        assert_eq!(
            c.jwks_ca_bundle.as_deref(),
            Some(std::path::Path::new("/etc/ambit/jwks-ca.pem"))
        );
        assert_eq!(
            c.controller_identity().unwrap().to_uri(),
            "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller"
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (k, v) in [
            (ENV_GRPC_ADDR, "nope"),
            (ENV_TUNNEL_SERVICE_ACCOUNT, "just-a-name"),
            (ENV_CERT_LIFETIME_SECS, "5"),
            (ENV_CERT_LIFETIME_SECS, "999999999"),
            (ENV_TRUST_DOMAIN, "UPPER.case"),
            (ENV_CONTROLLER_ADDRESS, "ambit-controller"),
            (ENV_CONTROLLER_ADDRESS, "https://ambit-controller:15012"),
            (ENV_CONTROLLER_ADDRESS, "ambit-controller:0"),
            (ENV_CONTROLLER_ADDRESS, ":15012"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }
}
