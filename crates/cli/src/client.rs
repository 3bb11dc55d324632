//! From kubeconfig to a client, as kubectl finds it: `--kubeconfig`, else `$KUBECONFIG`
//! (a list of files, merged), else `~/.kube/config`, else the in-cluster service account;
//! `--context` picks the context; the namespace defaults to the context's, else `default`.

use crate::args::Global;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use std::error::Error as _;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: KubeconfigError,
    },
    #[error("no kubeconfig found ({0}): set KUBECONFIG or pass --kubeconfig")]
    NoKubeconfig(KubeconfigError),
    #[error("kubeconfig: {0}")]
    Config(KubeconfigError),
    #[error("in-cluster config: {0}")]
    InCluster(kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client, the namespace commands act in, and the apiserver URL (for messages).
#[derive(Clone)]
pub struct Connection {
    pub client: kube::Client,
    pub namespace: String,
    pub server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("namespace", &self.namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

pub async fn connect(global: &Global) -> Result<Connection, ConnectError> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        cluster: None,
        user: None,
    };
    let kubeconfig = match &global.kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path).map_err(|error| ConnectError::Read {
                path: path.clone(),
                error,
            })?,
        ),
        None => match Kubeconfig::from_env() {
            Ok(Some(k)) => Some(k),
            Err(error) => {
                return Err(ConnectError::Read {
                    path: std::env::var_os("KUBECONFIG").unwrap_or_default().into(),
                    error,
                });
            }
            Ok(None) => match Kubeconfig::read() {
                Ok(k) => Some(k),
                Err(_) if global.context.is_none() && kube::Config::incluster().is_ok() => None,
                Err(e) => return Err(ConnectError::NoKubeconfig(e)),
            },
        },
    };
    let config = match kubeconfig {
        Some(k) => kube::Config::from_custom_kubeconfig(k, &options)
            .await
            .map_err(ConnectError::Config)?,
        None => kube::Config::incluster().map_err(ConnectError::InCluster)?,
    };
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(ConnectError::Client)?;
    Ok(Connection {
        client,
        namespace,
        server,
    })
}

/// A kube error as an operator reads it: the apiserver's own message and reason, or the whole
/// cause chain of a transport error, with a hint for the usual suspects.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let mut text = s.message.clone();
            if !s.reason.is_empty() || s.code != 0 {
                text.push_str(&format!(" ({} {})", s.code, s.reason));
            }
            match s.code {
                401 => text.push_str(
                    "; the apiserver rejected the credentials: check the kubeconfig's user",
                ),
                403 => text.push_str("; does your user have the RBAC rights? (kubectl auth can-i)"),
                _ => {}
            }
            text
        }
        other => {
            let mut text = other.to_string();
            let mut source = other.source();
            while let Some(s) = source {
                let next = s.to_string();
                if !text.contains(&next) {
                    text.push_str(": ");
                    text.push_str(&next);
                }
                source = s.source();
            }
            text
        }
    }
}

/// The apiserver answered with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason, "message": message,
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn api_errors_read_well() {
        let e = api_error(403, "Forbidden", "gateways is forbidden");
        assert!(is_status(&e, 403));
        let text = describe(&e);
        assert!(
            text.starts_with("gateways is forbidden (403 Forbidden)"),
            "{text}"
        );
        assert!(text.contains("RBAC"), "{text}");
        assert_eq!(
            describe(&api_error(404, "NotFound", "x not found")),
            "x not found (404 NotFound)"
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named() {
        let global = Global {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            context: None,
            namespace: None,
            output: crate::args::Output::Default,
            ambit_namespace: "ambit-system".into(),
        };
        let e = connect(&global).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    }
}
