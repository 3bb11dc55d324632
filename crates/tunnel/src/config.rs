//! Command-line configuration, parsed once into a typed [`Config`].

use ambit_controller_client::Source;
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {value:?} is not valid (expected {expected})")]
    Invalid {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "say where the mesh comes from: --controller HOST:PORT (in a cluster) or --mesh FILE with --ca-cert and --ca-key (standalone), not both"
    )]
    Source,
    #[error("{0} needs a value")]
    NoValue(String),
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

const USAGE_FLAGS: [&str; 15] = [
    "--node",
    "--controller",
    "--controller-identity",
    "--root-cert",
    "--token",
    "--mesh",
    "--ca-cert",
    "--ca-key",
    "--cert-lifetime-secs",
    "--socket",
    "--mode",
    "--admin",
    "--metrics",
    "--readiness",
    "--drain-secs",
];

/// Where the chart mounts them.
pub const DEFAULT_CONTROLLER_IDENTITY: &str =
    "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller";
pub const DEFAULT_ROOT_CERT: &str = "/var/run/ambit-root/root-cert.pem";
pub const DEFAULT_TOKEN: &str = "/var/run/secrets/tokens/ambit-ca";

impl Config {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let mut values = std::collections::HashMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let Some(known) = USAGE_FLAGS.iter().find(|f| **f == flag) else {
                return Err(ConfigError::Unknown(flag));
            };
            let value = args.next().ok_or(ConfigError::NoValue(flag))?;
            values.insert(*known, value);
        }
        let required =
            |flag: &'static str| values.get(flag).cloned().ok_or(ConfigError::Missing(flag));
        let addr = |flag: &'static str, default: &str| {
            let v = values.get(flag).map_or(default, String::as_str);
            v.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                flag,
                value: v.into(),
                expected: "ip:port",
            })
        };
        let secs = |flag: &'static str, default: u64| {
            values.get(flag).map_or(Ok(default), |v| {
                v.parse::<u64>().map_err(|_| ConfigError::Invalid {
                    flag,
                    value: v.clone(),
                    expected: "seconds",
                })
            })
        };
        let source = match (values.get("--controller"), values.get("--mesh")) {
            (Some(address), None) => {
                let identity = values
                    .get("--controller-identity")
                    .map_or(DEFAULT_CONTROLLER_IDENTITY, String::as_str);
                Source::Controller {
                    address: address.clone(),
                    identity: identity.parse().map_err(|_| ConfigError::Invalid {
                        flag: "--controller-identity",
                        value: identity.into(),
                        expected: "a SPIFFE id spiffe://TRUST-DOMAIN/ns/NS/sa/SA",
                    })?,
                    root_cert: values
                        .get("--root-cert")
                        .map_or(DEFAULT_ROOT_CERT, String::as_str)
                        .into(),
                    token: values
                        .get("--token")
                        .map_or(DEFAULT_TOKEN, String::as_str)
                        .into(),
                }
            }
            (None, Some(mesh)) => Source::File {
                mesh: mesh.into(),
                ca_cert: required("--ca-cert")?.into(),
                ca_key: required("--ca-key")?.into(),
            },
            _ => return Err(ConfigError::Source),
        };
        Ok(Self {
            node: required("--node")?,
            source,
            cert_lifetime: values
                .contains_key("--cert-lifetime-secs")
                .then(|| secs("--cert-lifetime-secs", 0).map(Duration::from_secs))
                .transpose()?,
            socket: values
                .get("--socket")
                .map_or(ambit_handoff::DEFAULT_SOCKET, String::as_str)
                .into(),
            mode: values.get("--mode").map_or(Ok(Mode::Strict), |m| {
                m.parse().map_err(|_| ConfigError::Invalid {
                    flag: "--mode",
                    value: m.clone(),
                    expected: "strict or permissive",
                })
            })?,
            admin: addr("--admin", "127.0.0.1:15000")?,
            metrics: addr("--metrics", "0.0.0.0:15020")?,
            readiness: addr("--readiness", "0.0.0.0:15021")?,
            drain_timeout: Duration::from_secs(secs("--drain-secs", 5)?),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_and_names_bad_values() {
        let base = "--node n1 --mesh m.yaml --ca-cert c --ca-key k";
        let c = Config::parse(args(base)).unwrap();
        assert_eq!(c.mode, Mode::Strict);
        assert_eq!(c.admin.to_string(), "127.0.0.1:15000");
        let c = Config::parse(args(&format!("{base} --mode permissive"))).unwrap();
        assert_eq!(c.mode, Mode::Permissive);
        let e = Config::parse(args(&format!("{base} --mode loose"))).unwrap_err();
        assert!(e.to_string().contains("\"loose\""), "{e}");
        let e = Config::parse(args(&format!("{base} --admin nowhere"))).unwrap_err();
        assert!(e.to_string().contains("--admin"), "{e}");
        let e = Config::parse(args("--mesh m.yaml --ca-cert c --ca-key k")).unwrap_err();
        assert!(e.to_string().contains("--node"), "{e}");
        assert!(Config::parse(args("--bogus 1")).is_err());
    }

    #[test]
    fn the_source_is_the_controller_or_files_never_both() {
        let c = Config::parse(args(
            "--node n1 --controller ambit-controller.ambit-system.svc:15012",
        ))
        .unwrap();
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
        for bad in [
            "--node n1",
            "--node n1 --controller c:1 --mesh m.yaml --ca-cert c --ca-key k",
        ] {
            let e = Config::parse(args(bad)).unwrap_err();
            assert!(matches!(e, ConfigError::Source), "{bad}: {e}");
        }
        let e = Config::parse(args("--node n1 --controller c:1 --controller-identity bob"))
            .unwrap_err();
        assert!(e.to_string().contains("--controller-identity"), "{e}");
    }
}
