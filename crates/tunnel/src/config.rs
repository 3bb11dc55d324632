//! The tunnel's settings: flags, each with an environment variable, parsed by clap and
//! checked once into a typed [`Config`].

use ambit_controller_client::Source;
use ambit_identity::SpiffeId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The mode is in the handoff crate: the capture rules follow it too.
pub use ambit_handoff::Mode;

#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name: only its workloads get certificates.
    pub node: String,
    pub source: Source,
    /// Asked-for certificate lifetime; `None`: the CA's default (1 h for the local CA).
    pub cert_lifetime: Option<Duration>,
    /// The unix socket the capture agent hands pods to.
    pub socket: PathBuf,
    pub mode: Mode,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    pub drain_timeout: Duration,
    /// How long a tunnel with a successor starting keeps serving for it (and how long the
    /// successor waits for the node's ports).
    pub handover_timeout: Duration,
}

/// Where the chart mounts them.
pub const DEFAULT_CONTROLLER_IDENTITY: &str =
    "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller";
pub const DEFAULT_ROOT_CERT: &str = "/var/run/ambit-root/root-cert.pem";
pub const DEFAULT_TOKEN: &str = "/var/run/secrets/tokens/ambit-ca";

/// The command line; every flag has an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ambit-tunnel",
    version,
    about = "ambit's node tunnel: the node's workload identities, their traffic over HBONE"
)]
pub struct Args {
    /// This node's name: only its workloads get certificates.
    #[arg(long, env = "AMBIT_NODE")]
    pub node: String,
    /// `host:port` of the controller (config stream and CA). In a cluster.
    #[arg(long, env = "AMBIT_CONTROLLER", conflicts_with = "mesh")]
    pub controller: Option<String>,
    /// The SPIFFE id the controller must present.
    #[arg(long, env = "AMBIT_CONTROLLER_IDENTITY", default_value = DEFAULT_CONTROLLER_IDENTITY)]
    pub controller_identity: SpiffeId,
    /// The mesh root certificate (PEM).
    #[arg(long, env = "AMBIT_ROOT_CERT", default_value = DEFAULT_ROOT_CERT)]
    pub root_cert: PathBuf,
    /// The projected service-account token (audience `ambit-ca`).
    #[arg(long, env = "AMBIT_TOKEN", default_value = DEFAULT_TOKEN)]
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
    /// The unix socket the capture agent hands pods to.
    #[arg(long, env = "AMBIT_SOCKET", default_value = ambit_handoff::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What the inbound plaintext port does with traffic that did not come over HBONE:
    /// strict or permissive.
    #[arg(long, env = "AMBIT_MODE", default_value = "strict")]
    pub mode: Mode,
    /// Config dump (`/config_dump`).
    #[arg(long, env = "AMBIT_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, env = "AMBIT_METRICS", default_value = "0.0.0.0:15020")]
    pub metrics: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "AMBIT_READINESS", default_value = "0.0.0.0:15021")]
    pub readiness: SocketAddr,
    /// On SIGTERM, how long open connections may finish.
    #[arg(long, env = "AMBIT_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,
    /// In a rolling upgrade: how long a tunnel terminated while its successor starts keeps
    /// serving until the successor takes its pods over.
    #[arg(long, env = "AMBIT_HANDOVER_SECS", default_value_t = 20)]
    pub handover_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "say where the mesh comes from: --controller HOST:PORT (in a cluster) or --mesh FILE with --ca-cert and --ca-key (standalone)"
    )]
    Source,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
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
        Ok(Self {
            node: args.node,
            source,
            cert_lifetime: args.cert_lifetime_secs.map(Duration::from_secs),
            socket: args.socket,
            mode: args.mode,
            admin: args.admin,
            metrics: args.metrics,
            readiness: args.readiness,
            drain_timeout: Duration::from_secs(args.drain_secs),
            handover_timeout: Duration::from_secs(args.handover_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// From flags alone (the process environment left out).
    fn parse(line: &str) -> Result<Config, String> {
        let argv = std::iter::once("ambit-tunnel").chain(line.split_whitespace());
        let matches = Args::command()
            .mut_args(|a| a.env(None))
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        let args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn the_declaration_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn parses_and_names_bad_values() {
        let base = "--node n1 --mesh m.yaml --ca-cert c --ca-key k";
        let c = parse(base).unwrap();
        assert_eq!(c.mode, Mode::Strict);
        assert_eq!(c.admin.to_string(), "127.0.0.1:15000");
        let c = parse(&format!("{base} --mode permissive")).unwrap();
        assert_eq!(c.mode, Mode::Permissive);
        let e = parse(&format!("{base} --mode loose")).unwrap_err();
        assert!(e.contains("'loose'") && e.contains("--mode"), "{e}");
        let e = parse(&format!("{base} --admin nowhere")).unwrap_err();
        assert!(e.contains("--admin"), "{e}");
        let e = parse("--mesh m.yaml --ca-cert c --ca-key k").unwrap_err();
        assert!(e.contains("--node"), "{e}");
        assert!(parse("--bogus 1").is_err());
    }

    #[test]
    fn the_source_is_the_controller_or_files_never_both() {
        let c = parse("--node n1 --controller ambit-controller.ambit-system.svc:15012").unwrap();
        let Source::Controller {
            address,
            identity,
            token,
            ..
        } = c.source
        else {
            panic!("{:?}", c.source)
        };
        assert_eq!(address, "ambit-controller.ambit-system.svc:15012");
        assert_eq!(identity.to_string(), DEFAULT_CONTROLLER_IDENTITY);
        assert_eq!(token, std::path::Path::new(DEFAULT_TOKEN));
        assert_eq!(c.cert_lifetime, None);
        let e = parse("--node n1").unwrap_err();
        assert!(e.contains("--controller HOST:PORT"), "{e}");
        let e =
            parse("--node n1 --controller c:1 --mesh m.yaml --ca-cert c --ca-key k").unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse("--node n1 --mesh m.yaml").unwrap_err();
        assert!(e.contains("--ca-cert"), "{e}");
        let e = parse("--node n1 --controller c:1 --controller-identity bob").unwrap_err();
        assert!(e.contains("--controller-identity"), "{e}");
    }
}
