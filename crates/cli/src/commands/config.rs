//! `config dump`: a node tunnel's admin `/config_dump`, through a port-forward to its pod, as
//! `kubectl port-forward` does it. The admin port listens on the node's loopback only (the
//! chart's default): the apiserver's pod proxy, which dials the pod IP, cannot reach it, and
//! neither can anything else on the node's network. A port-forward needs the caller's
//! `pods/portforward` right in the ambit namespace, checked by the apiserver.

use super::{Error, Outcome, kube_error};
use crate::args::{Global, Output};
use crate::client::{Connection, describe};
use crate::health;
use crate::output;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

/// Port of the node tunnel's admin endpoint (`/config_dump`).
pub const TUNNEL_ADMIN_PORT: u16 = 15000;
pub const CONFIG_DUMP_PATH: &str = "/config_dump";

/// Why `/config_dump` could not be read through the port-forward.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{}", describe(.0))]
    PortForward(kube::Error),
    #[error("the port-forward opened no stream for port {0}")]
    NoStream(u16),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP over the port-forward (is the tunnel running on that node?): {0}")]
    Http(#[from] hyper::Error),
    #[error("the admin endpoint answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
}

/// The pod to ask on a node: a running one if there is one.
pub fn pick_node_pod(pods: &[Pod]) -> Option<&Pod> {
    let running = |p: &&Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    };
    pods.iter().find(running).or_else(|| pods.first())
}

/// GET `path` from `pod`'s `port` over a port-forward (ports on the node's loopback too, for
/// the tunnel runs in the node's network).
pub(super) async fn fetch(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<Bytes, DumpError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut forwarder = pods
        .portforward(pod, &[port])
        .await
        .map_err(DumpError::PortForward)?;
    let stream = forwarder
        .take_stream(port)
        .ok_or(DumpError::NoStream(port))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await;
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            match body {
                Ok(body) if status.is_success() => Ok(body),
                Ok(body) => Err(DumpError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).trim().to_owned(),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    };
    connection.abort();
    forwarder.abort();
    result
}

pub(super) async fn dump(conn: &Connection, global: &Global, node: &str) -> Result<Outcome, Error> {
    let ns = global.ambit_namespace.as_str();
    let client = &conn.client;
    if Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .map_err(kube_error(format!("reading node {node}")))?
        .is_none()
    {
        return Err(Error::NoNode(node.into()));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels(health::NODE_POD_SELECTOR)
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .map_err(kube_error(format!("listing ambit-node pods in {ns}")))?;
    let pod = pick_node_pod(&pods.items).ok_or_else(|| Error::NoNodePod {
        node: node.into(),
        namespace: ns.into(),
    })?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if phase != "Running" {
        return Err(Error::NodePodNotRunning {
            namespace: ns.into(),
            pod: pod_name,
            node: node.into(),
            phase,
        });
    }
    let body = fetch(client, ns, &pod_name, TUNNEL_ADMIN_PORT, CONFIG_DUMP_PATH)
        .await
        .map_err(|error| Error::Dump {
            namespace: ns.into(),
            pod: pod_name.clone(),
            error,
        })?;
    let dump: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| Error::DumpNotJson {
            pod: pod_name.clone(),
            error,
        })?;
    let text = match global.output {
        Output::Default | Output::Json => output::json(&dump)?,
        Output::Yaml => output::yaml(&dump)?,
    };
    Ok(Outcome::ok(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_running_pod_is_asked() {
        let pod = |name: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"phase": phase}}))
                .unwrap()
        };
        let pods = [pod("old", "Failed"), pod("new", "Running")];
        assert_eq!(
            pick_node_pod(&pods).unwrap().metadata.name.as_deref(),
            Some("new")
        );
        assert_eq!(
            pick_node_pod(&pods[..1]).unwrap().metadata.name.as_deref(),
            Some("old")
        );
        assert!(pick_node_pod(&[]).is_none());
    }
}
