//! The waypoint's settings: flags, each with an environment variable (how the controller's
//! Deployment sets them), parsed once into a typed [`Config`].

use crate::http::server::Limits;
use ambit_controller_client::Source;
use ambit_identity::{SpiffeId, SpiffeIdError, TrustDomain, is_kubernetes_name};
use ambit_telemetry::otlp::{OtlpArgs, OtlpConfig, OtlpError};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ambit-waypoint",
    version,
    about = "The L7 proxy of one service account: HBONE in, HTTP/gRPC policy and telemetry, HBONE out"
)]
pub struct Args {
    /// Namespace of the waypoint and of the service account it serves.
    #[arg(long, env = "AMBIT_NAMESPACE")]
    pub namespace: String,
    /// The service account whose traffic this waypoint handles.
    #[arg(long, env = "AMBIT_WAYPOINT_FOR_SERVICE_ACCOUNT")]
    pub for_service_account: String,
    /// The waypoint's own service account: the identity it presents.
    #[arg(long, env = "AMBIT_SERVICE_ACCOUNT")]
    pub service_account: String,
    /// `host:port` of the controller (config stream and CA). In a cluster.
    #[arg(long, env = "AMBIT_CONTROLLER", conflicts_with = "mesh")]
    pub controller: Option<String>,
    /// The SPIFFE id the controller must present.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_IDENTITY",
        default_value = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller"
    )]
    pub controller_identity: SpiffeId,
    /// The mesh root certificate (PEM), from the `ambit-root-cert` ConfigMap.
    #[arg(
        long,
        env = "AMBIT_ROOT_CERT",
        default_value = "/var/run/ambit/root/root.crt"
    )]
    pub root_cert: PathBuf,
    /// The projected service-account token (audience `ambit-ca`).
    #[arg(
        long,
        env = "AMBIT_TOKEN",
        default_value = "/var/run/secrets/tokens/ambit-ca"
    )]
    pub token: PathBuf,
    /// Standalone (tests, benchmarks): a mesh file, reloaded when it changes.
    #[arg(long, env = "AMBIT_MESH", requires_all = ["ca_cert", "ca_key"])]
    pub mesh: Option<PathBuf>,
    /// Standalone: the local CA's certificate (PEM).
    #[arg(long, requires = "mesh")]
    pub ca_cert: Option<PathBuf>,
    /// Standalone: the local CA's key (PEM).
    #[arg(long, requires = "mesh")]
    pub ca_key: Option<PathBuf>,
    /// Certificate lifetime to ask for; the CA's default when absent.
    #[arg(long, env = "AMBIT_CERT_LIFETIME_SECS")]
    pub cert_lifetime_secs: Option<u64>,
    /// HBONE listener.
    #[arg(long, env = "AMBIT_LISTEN", default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// Config dump (`/config_dump`): loopback by default, it shows the whole view.
    #[arg(long, env = "AMBIT_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, env = "AMBIT_METRICS", default_value = "0.0.0.0:15020")]
    pub metrics: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "AMBIT_READINESS", default_value = "0.0.0.0:15021")]
    pub readiness: SocketAddr,
    /// A JSON line per request on stderr (`--access-log false`: none).
    #[arg(long, env = "AMBIT_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// On SIGTERM, how long open connections may finish.
    #[arg(long, env = "AMBIT_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,
    /// Hidden, for tests: the HTTP header read timeout in milliseconds, so a slowloris test
    /// need not wait the production default (10 s). Not an operator setting.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_read_timeout_ms: Option<u64>,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "say where the mesh comes from: --controller HOST:PORT (in a cluster) or --mesh FILE with --ca-cert and --ca-key (standalone)"
    )]
    Source,
    #[error("{flag}={value:?} is not a valid service account or namespace name")]
    Name { flag: &'static str, value: String },
    #[error(transparent)]
    Otlp(#[from] OtlpError),
}

/// The settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub for_service_account: String,
    /// The waypoint's own service account: with the source's trust domain, the identity it
    /// presents.
    pub service_account: String,
    pub source: Source,
    pub cert_lifetime: Option<Duration>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    pub drain_timeout: Duration,
    pub access_log: bool,
    /// Bounds of the downstream HTTP server: the production defaults, unless a test set them.
    pub http_limits: Limits,
    /// Span export; `None`: off.
    pub otlp: Option<OtlpConfig>,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        for (flag, value) in [
            ("--namespace", &args.namespace),
            ("--for-service-account", &args.for_service_account),
            ("--service-account", &args.service_account),
        ] {
            if !is_kubernetes_name(value) {
                return Err(ConfigError::Name {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let source = match (args.controller, args.mesh, args.ca_cert, args.ca_key) {
            (Some(address), None, _, _) => Source::Controller {
                address,
                identity: args.controller_identity,
                root_cert: args.root_cert,
                token: args.token,
            },
            (None, Some(mesh), Some(ca_cert), Some(ca_key)) => Source::File {
                mesh,
                ca_cert,
                ca_key,
            },
            _ => return Err(ConfigError::Source),
        };
        let mut http_limits = Limits::default();
        if let Some(ms) = args.http_header_read_timeout_ms {
            http_limits.header_read_timeout = Duration::from_millis(ms);
        }
        Ok(Self {
            namespace: args.namespace,
            for_service_account: args.for_service_account,
            service_account: args.service_account,
            source,
            cert_lifetime: args.cert_lifetime_secs.map(Duration::from_secs),
            listen: args.listen,
            admin: args.admin,
            metrics: args.metrics,
            readiness: args.readiness,
            drain_timeout: Duration::from_secs(args.drain_secs),
            access_log: args.access_log,
            http_limits,
            otlp: args.otlp.config("ambit-waypoint")?,
        })
    }
}

impl Config {
    /// The identity the waypoint presents, in the source's trust domain.
    pub fn identity(&self, trust_domain: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(trust_domain.clone(), &self.namespace, &self.service_account)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(line: &str) -> Result<Config, String> {
        let argv = std::iter::once("ambit-waypoint").chain(line.split_whitespace());
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    const BASE: &str =
        "--namespace shop --for-service-account backend --service-account waypoint-backend";

    #[test]
    fn controller_source_with_defaults() {
        let c = parse(&format!(
            "{BASE} --controller ambit-controller.ambit-system.svc:15012"
        ))
        .unwrap();
        let td: TrustDomain = "cluster.local".parse().unwrap();
        assert_eq!(
            c.identity(&td).unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/waypoint-backend"
        );
        assert_eq!(c.admin.to_string(), "127.0.0.1:15000");
        let Source::Controller { root_cert, .. } = &c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(root_cert, &PathBuf::from("/var/run/ambit/root/root.crt"));
        assert_eq!(
            c.http_limits.header_read_timeout,
            Duration::from_secs(10),
            "production keeps the default header read timeout"
        );
    }

    #[test]
    fn the_hidden_header_read_timeout_is_for_tests_only() {
        let c = parse(&format!(
            "{BASE} --controller c:1 --http-header-read-timeout-ms 250"
        ))
        .unwrap();
        assert_eq!(
            c.http_limits.header_read_timeout,
            Duration::from_millis(250)
        );
        let e = parse(&format!(
            "{BASE} --controller c:1 --http-header-read-timeout-ms 0"
        ))
        .unwrap_err();
        assert!(e.contains("0"), "{e}");
        let help = {
            use clap::CommandFactory;
            Args::command().render_help().to_string()
        };
        assert!(!help.contains("header-read-timeout"), "{help}");
    }

    #[test]
    fn bad_input_is_named() {
        let e = parse(BASE).unwrap_err();
        assert!(e.contains("--controller HOST:PORT"), "{e}");
        let e = parse(&format!(
            "{BASE} --controller c:1 --mesh m --ca-cert c --ca-key k"
        ))
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse(&format!("{BASE} --mesh m")).unwrap_err();
        assert!(e.contains("--ca-cert"), "{e}");
        let e =
            parse("--namespace Shop --for-service-account b --service-account w --controller c:1")
                .unwrap_err();
        assert!(e.contains("--namespace=\"Shop\""), "{e}");
        let e = parse(&format!(
            "{BASE} --controller c:1 --controller-identity bob"
        ))
        .unwrap_err();
        assert!(e.contains("bob"), "{e}");
        let e = parse(&format!("{BASE} --controller c:1 --metrics nowhere")).unwrap_err();
        assert!(e.contains("nowhere"), "{e}");
    }

    #[test]
    fn the_declaration_takes_what_the_controller_sets() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let declared: Vec<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        // The waypoint Deployment the controller writes (AMBIT_LOG is the log filter's).
        let deployment = include_str!("../../controller/src/waypoint.rs");
        let set: Vec<&str> = deployment
            .split("{\"name\": \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| name.starts_with("AMBIT_") && *name != "AMBIT_LOG")
            .collect();
        assert!(set.len() >= 7, "{set:?}");
        // Span export, which the controller sets the OpenTelemetry way when it is on.
        let set = set.into_iter().chain([
            ambit_telemetry::otlp::ENV_ENDPOINT,
            ambit_telemetry::otlp::ENV_SAMPLER_ARG,
            ambit_telemetry::otlp::ENV_SERVICE_NAME,
            ambit_telemetry::otlp::ENV_URL_PATH,
        ]);
        for name in set {
            assert!(
                declared.iter().any(|d| d == name),
                "{name} not declared: {declared:?}"
            );
        }
    }
}
