//! The controller's settings: flags, each with the environment variable the chart sets (one
//! constant per variable), parsed by clap and validated once into [`Config`]; a bad value is
//! named by its flag and variable.

use ambit_identity::{SpiffeId, TrustDomain};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_NAMESPACE: &str = "AMBIT_NAMESPACE";
pub const ENV_POD_NAME: &str = "AMBIT_POD_NAME";
pub const ENV_TRUST_DOMAIN: &str = "AMBIT_TRUST_DOMAIN";
pub const ENV_GRPC_ADDR: &str = "AMBIT_GRPC_ADDR";
pub const ENV_METRICS_ADDR: &str = "AMBIT_METRICS_ADDR";
pub const ENV_TUNNEL_SERVICE_ACCOUNT: &str = "AMBIT_TUNNEL_SERVICE_ACCOUNT";
/// Also read back by `kubectl ambit threats`, hence in ambit-k8s.
pub const ENV_CERT_LIFETIME_SECS: &str = ambit_k8s::names::CERT_LIFETIME_ENV;
pub const ENV_WAYPOINT_IMAGE: &str = "AMBIT_WAYPOINT_IMAGE";
pub const ENV_CONTROLLER_SERVICE_ACCOUNT: &str = "AMBIT_SERVICE_ACCOUNT";
pub const ENV_CONTROLLER_ADDRESS: &str = "AMBIT_CONTROLLER_ADDRESS";
/// JSON list of external authorization providers (the chart's `extAuthz.providers`).
pub const ENV_EXT_AUTHZ_PROVIDERS: &str = ambit_k8s::names::EXT_AUTHZ_PROVIDERS_ENV;
/// A PEM file of CA certificates trusted, besides the system's, for RequestAuthentication
/// `jwksUri` fetches (an issuer under a private CA).
pub const ENV_JWKS_CA_BUNDLE: &str = "AMBIT_JWKS_CA_BUNDLE";
pub const ENV_GRPC_IDLE_TIMEOUT_SECS: &str = "AMBIT_GRPC_IDLE_TIMEOUT_SECS";
pub const ENV_TOKEN_REVIEWS_PER_SECOND: &str = "AMBIT_TOKEN_REVIEWS_PER_SECOND";
pub const ENV_TOKEN_REVIEW_BURST: &str = "AMBIT_TOKEN_REVIEW_BURST";
/// The node tunnels' mode (the chart's `node.tunnel.mode`), which risk profiles report on.
pub const ENV_TUNNEL_MODE: &str = "AMBIT_TUNNEL_MODE";
/// The OTLP/gRPC collector waypoints export spans to (the chart's `tracing.otlp.endpoint`);
/// unset or empty: no spans.
pub const ENV_WAYPOINT_OTLP_ENDPOINT: &str = "AMBIT_WAYPOINT_OTLP_ENDPOINT";
/// The fraction of new traces waypoints sample (`tracing.otlp.sampling`).
pub const ENV_WAYPOINT_OTLP_SAMPLING: &str = "AMBIT_WAYPOINT_OTLP_SAMPLING";
/// What of a request's path waypoint spans carry (`tracing.otlp.path`).
pub const ENV_WAYPOINT_OTLP_PATH: &str = "AMBIT_WAYPOINT_OTLP_PATH";

/// Longest leaf lifetime an operator may configure (callers get at most the configured one).
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The command line. Values stay text here: [`Config::from_args`] checks them, naming the
/// environment variable too, since that is how the chart sets them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ambit-controller",
    version,
    about = "ambit's control plane: the mesh model, the CA, waypoints, route and policy status"
)]
pub struct Args {
    /// Namespace the controller runs in: CA Secret, root ConfigMap, Lease.
    #[arg(long, env = ENV_NAMESPACE, default_value = "ambit-system")]
    pub namespace: String,
    /// Holder identity in the Lease.
    #[arg(long, env = ENV_POD_NAME, default_value = "ambit-controller")]
    pub pod_name: String,
    /// The controller's own service account (its serving certificate's identity).
    #[arg(long, env = ENV_CONTROLLER_SERVICE_ACCOUNT, default_value = "ambit-controller")]
    pub service_account: String,
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = "cluster.local")]
    pub trust_domain: String,
    /// gRPC: config stream and CA.
    #[arg(long, env = ENV_GRPC_ADDR, value_name = "ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: String,
    /// Prometheus metrics, /readyz and /healthz.
    #[arg(long, env = ENV_METRICS_ADDR, value_name = "ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: String,
    /// The node tunnels' service account: the only one that may subscribe as a node.
    #[arg(
        long,
        env = ENV_TUNNEL_SERVICE_ACCOUNT,
        value_name = "NAMESPACE/NAME",
        default_value = "ambit-system/ambit-tunnel"
    )]
    pub tunnel_service_account: String,
    /// Leaf certificate lifetime, 60..=86400.
    #[arg(
        long,
        env = ENV_CERT_LIFETIME_SECS,
        value_name = "SECS",
        default_value_t = ambit_k8s::names::DEFAULT_CERT_LIFETIME_SECS.to_string()
    )]
    pub cert_lifetime_secs: String,
    /// The image of the waypoints the controller deploys.
    #[arg(long, env = ENV_WAYPOINT_IMAGE, default_value = "ghcr.io/ambit/ambit-waypoint:dev")]
    pub waypoint_image: String,
    /// HOST:PORT at which waypoints reach this controller's gRPC (default: the chart's Service,
    /// ambit-controller.NAMESPACE.svc:15012).
    #[arg(long, env = ENV_CONTROLLER_ADDRESS, value_name = "HOST:PORT")]
    pub controller_address: Option<String>,
    /// JSON list of external authorization providers.
    #[arg(long, env = ENV_EXT_AUTHZ_PROVIDERS, value_name = "JSON")]
    pub ext_authz_providers: Option<String>,
    /// PEM file of CA certificates trusted for `jwksUri` fetches besides the system's.
    #[arg(long, env = ENV_JWKS_CA_BUNDLE, value_name = "FILE")]
    pub jwks_ca_bundle: Option<String>,
    /// Close a gRPC connection that has held no stream this long, 1..=86400.
    #[arg(long, env = ENV_GRPC_IDLE_TIMEOUT_SECS, value_name = "SECS", default_value = "300")]
    pub grpc_idle_timeout_secs: String,
    /// TokenReviews sent to the apiserver per second, sustained, 1..=10000.
    #[arg(long, env = ENV_TOKEN_REVIEWS_PER_SECOND, value_name = "N", default_value = "50")]
    pub token_reviews_per_second: String,
    /// TokenReviews sent at once after a quiet spell, 1..=10000.
    #[arg(long, env = ENV_TOKEN_REVIEW_BURST, value_name = "N", default_value = "200")]
    pub token_review_burst: String,
    /// The node tunnels' mode, strict or permissive (read by risk profiles, not enforced here);
    /// unset: unknown, which risk profiles report as such rather than guess.
    #[arg(long, env = ENV_TUNNEL_MODE, value_name = "MODE")]
    pub tunnel_mode: Option<String>,
    /// OTLP/gRPC collector (`http://HOST:PORT` or `https://`) the waypoints export spans to.
    #[arg(long, env = ENV_WAYPOINT_OTLP_ENDPOINT, value_name = "URL")]
    pub waypoint_otlp_endpoint: Option<String>,
    /// Fraction of requests the waypoints sample, 0..=1.
    #[arg(long, env = ENV_WAYPOINT_OTLP_SAMPLING, value_name = "RATIO", default_value = "1")]
    pub waypoint_otlp_sampling: String,
    /// What of a request's path waypoint spans carry: route, full or none.
    #[arg(long, env = ENV_WAYPOINT_OTLP_PATH, value_name = "WHAT", default_value = "route")]
    pub waypoint_otlp_path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        /// The environment variable (the flag is its lowercase, `--grpc-addr`).
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Args(#[from] clap::Error),
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
    /// A gRPC connection holding no stream this long is closed.
    pub grpc_idle_timeout: Duration,
    pub token_reviews: ReviewRate,
    /// What the node tunnels do with plaintext to enrolled pods (LOW-REQ2 of risk profiles);
    /// `None`: not told, so not known (a manual install, a tunnel started with another mode).
    pub tunnel_mode: Option<ambit_risk::TunnelMode>,
    /// Span export written into every waypoint; `None`: off.
    pub waypoint_tracing: Option<crate::waypoint::WaypointTracing>,
}

/// The TokenReview rate limit: sustained per second, and at once after a quiet spell (all
/// tunnels and waypoints reconnecting after a controller restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Config {
    /// Settings from the variables `get` returns (flags are not read, nor is the process
    /// environment), so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut argv = vec![OsString::from("ambit-controller")];
        let command = Args::command().mut_args(|arg| {
            if let (Some(long), Some(value)) = (
                arg.get_long(),
                arg.get_env().and_then(|e| e.to_str()).and_then(&get),
            ) {
                argv.push(format!("--{long}={value}").into());
            }
            arg.env(None)
        });
        let matches = command.try_get_matches_from(argv)?;
        Self::from_args(Args::from_arg_matches(&matches)?)
    }

    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let invalid = |name, value: &str, reason: String| ConfigError::Invalid {
            name,
            value: value.to_owned(),
            reason,
        };
        let trust_domain = args
            .trust_domain
            .parse::<TrustDomain>()
            .map_err(|e| invalid(ENV_TRUST_DOMAIN, &args.trust_domain, e.to_string()))?;
        let addr = |name, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| invalid(name, v, e.to_string()))
        };
        let grpc_addr = addr(ENV_GRPC_ADDR, &args.grpc_addr)?;
        let metrics_addr = addr(ENV_METRICS_ADDR, &args.metrics_addr)?;
        let tsa = &args.tunnel_service_account;
        let tunnel_service_account = match tsa.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                (ns.to_string(), sa.to_string())
            }
            _ => {
                return Err(invalid(
                    ENV_TUNNEL_SERVICE_ACCOUNT,
                    tsa,
                    "expected <namespace>/<service-account>".into(),
                ));
            }
        };
        let secs = &args.cert_lifetime_secs;
        let cert_lifetime = match secs.parse::<u64>() {
            Ok(s) if (60..=MAX_CERT_LIFETIME.as_secs()).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(invalid(
                    ENV_CERT_LIFETIME_SECS,
                    secs,
                    format!("expected seconds in 60..={}", MAX_CERT_LIFETIME.as_secs()),
                ));
            }
        };
        // The chart's Service in front of the controller; waypoints run in other namespaces,
        // so the name is qualified.
        let controller_address = args
            .controller_address
            .unwrap_or_else(|| format!("ambit-controller.{}.svc:15012", args.namespace));
        if !host_port(&controller_address) {
            return Err(invalid(
                ENV_CONTROLLER_ADDRESS,
                &controller_address,
                "expected HOST:PORT (a DNS name or IP and a port 1..=65535)".into(),
            ));
        }
        let providers = args.ext_authz_providers.unwrap_or_default();
        let ext_authz_providers = crate::extauthz::parse(&providers)
            .map_err(|e| invalid(ENV_EXT_AUTHZ_PROVIDERS, &providers, e.to_string()))?;
        let in_range = |name, v: &str, max: u32| match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(invalid(
                name,
                v,
                format!("expected a whole number in 1..={max}"),
            )),
        };
        let grpc_idle_timeout = Duration::from_secs(
            in_range(
                ENV_GRPC_IDLE_TIMEOUT_SECS,
                &args.grpc_idle_timeout_secs,
                86_400,
            )?
            .into(),
        );
        let count = |name, v: &str| {
            in_range(name, v, 10_000).map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
        };
        let token_reviews = ReviewRate {
            per_second: count(ENV_TOKEN_REVIEWS_PER_SECOND, &args.token_reviews_per_second)?,
            burst: count(ENV_TOKEN_REVIEW_BURST, &args.token_review_burst)?,
        };
        let tunnel_mode = args
            .tunnel_mode
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.parse::<ambit_risk::TunnelMode>()
                    .map_err(|e| invalid(ENV_TUNNEL_MODE, &m, e.to_string()))
            })
            .transpose()?;
        let waypoint_tracing = match args.waypoint_otlp_endpoint.filter(|e| !e.is_empty()) {
            None => None,
            Some(endpoint) => {
                use ambit_telemetry::otlp_settings::{UrlPath, valid_endpoint, valid_ratio};
                if !valid_endpoint(&endpoint) {
                    return Err(invalid(
                        ENV_WAYPOINT_OTLP_ENDPOINT,
                        &endpoint,
                        "expected an http:// or https:// URL with a host".into(),
                    ));
                }
                let sampling = &args.waypoint_otlp_sampling;
                if !sampling.parse().is_ok_and(valid_ratio) {
                    return Err(invalid(
                        ENV_WAYPOINT_OTLP_SAMPLING,
                        sampling,
                        "expected a ratio from 0 to 1".into(),
                    ));
                }
                let path = &args.waypoint_otlp_path;
                let Some(url_path) = UrlPath::parse(path) else {
                    return Err(invalid(
                        ENV_WAYPOINT_OTLP_PATH,
                        path,
                        "expected route, full or none".into(),
                    ));
                };
                Some(crate::waypoint::WaypointTracing {
                    endpoint,
                    sampling: sampling.clone(),
                    url_path,
                })
            }
        };
        let jwks_ca_bundle = args
            .jwks_ca_bundle
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            tunnel_mode,
            waypoint_tracing,
            grpc_idle_timeout,
            token_reviews,
            jwks_ca_bundle,
            ext_authz_providers,
            namespace: args.namespace,
            pod_name: args.pod_name,
            service_account: args.service_account,
            trust_domain,
            grpc_addr,
            metrics_addr,
            tunnel_service_account,
            cert_lifetime,
            waypoint_image: args.waypoint_image,
            controller_address,
        })
    }

    /// What risk profiles know of the install's settings.
    pub fn mesh_settings(&self) -> ambit_risk::MeshSettings {
        ambit_risk::MeshSettings {
            leaf_lifetime_seconds: Some(self.cert_lifetime.as_secs()),
            tunnel_mode: self.tunnel_mode,
            ext_authz_providers: Some(
                self.ext_authz_providers
                    .iter()
                    .map(|p| ambit_risk::ExtAuthzProviderFacts {
                        name: p.name.clone(),
                        fail_open: p.fail_open,
                    })
                    .collect(),
            ),
        }
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
        assert_eq!(
            c.tunnel_mode, None,
            "unset is unknown, never taken for strict"
        );
        assert_eq!(c.mesh_settings().tunnel_mode, None);
        for mode in [
            ambit_risk::TunnelMode::Strict,
            ambit_risk::TunnelMode::Permissive,
        ] {
            let c = parse(&[(ENV_TUNNEL_MODE, mode.as_str())]).unwrap();
            assert_eq!(c.mesh_settings().tunnel_mode, Some(mode));
        }
        assert_eq!(c.waypoint_tracing, None);
        let c = parse(&[
            (ENV_WAYPOINT_OTLP_ENDPOINT, "http://otel.observability:4317"),
            (ENV_WAYPOINT_OTLP_SAMPLING, "0.25"),
        ])
        .unwrap();
        assert_eq!(
            c.waypoint_tracing,
            Some(crate::waypoint::WaypointTracing {
                endpoint: "http://otel.observability:4317".into(),
                sampling: "0.25".into(),
                url_path: ambit_telemetry::otlp_settings::UrlPath::Route,
            })
        );
        assert_eq!(c.grpc_idle_timeout, Duration::from_secs(300));
        assert_eq!(
            (
                c.token_reviews.per_second.get(),
                c.token_reviews.burst.get()
            ),
            (50, 200)
        );
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
            (ENV_GRPC_IDLE_TIMEOUT_SECS, "0"),
            (ENV_GRPC_IDLE_TIMEOUT_SECS, "5m"),
            (ENV_TOKEN_REVIEWS_PER_SECOND, "0"),
            (ENV_TOKEN_REVIEW_BURST, "100000"),
            (ENV_TUNNEL_MODE, "lenient"),
            (ENV_WAYPOINT_OTLP_ENDPOINT, "otel:4317"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
        // The ratio and path setting are checked when tracing is on.
        for (k, v) in [
            (ENV_WAYPOINT_OTLP_SAMPLING, "1.5"),
            (ENV_WAYPOINT_OTLP_SAMPLING, "-0.1"),
            (ENV_WAYPOINT_OTLP_SAMPLING, "NaN"),
            (ENV_WAYPOINT_OTLP_SAMPLING, "half"),
            (ENV_WAYPOINT_OTLP_PATH, "raw"),
        ] {
            let e = parse(&[(ENV_WAYPOINT_OTLP_ENDPOINT, "https://otel:4317"), (k, v)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }

    #[test]
    fn the_declaration_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_and_the_charts_variables() {
        let c = Config::from_args(
            Args::try_parse_from([
                "ambit-controller",
                "--namespace",
                "mesh",
                "--grpc-addr=127.0.0.1:1",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:1");
        assert_eq!(c.controller_address, "ambit-controller.mesh.svc:15012");
        // Every AMBIT_ variable the chart gives the controller is one of its flags' (AMBIT_LOG
        // is the log filter's).
        let declared: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let chart = include_str!("../../../charts/ambit/templates/controller.yaml");
        let set: Vec<&str> = chart
            .split("- name: ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|name| name.starts_with("AMBIT_") && *name != "AMBIT_LOG")
            .collect();
        assert!(set.len() >= 10, "{set:?}");
        for name in set {
            assert!(
                declared.iter().any(|d| d == name),
                "{name} not declared: {declared:?}"
            );
        }
    }
}
