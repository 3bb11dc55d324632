//! `config dump`: a node tunnel's admin `/config_dump`, through the apiserver's pod proxy.

use super::{Error, Outcome, kube_error};
use crate::args::{Global, Output};
use crate::client::Connection;
use crate::health;
use crate::output;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

/// Port of the node tunnel's admin endpoint (`/config_dump`).
pub const TUNNEL_ADMIN_PORT: u16 = 15000;

/// The pod to ask on a node: a running one if there is one.
pub fn pick_node_pod(pods: &[Pod]) -> Option<&Pod> {
    let running = |p: &&Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    };
    pods.iter().find(running).or_else(|| pods.first())
}

/// The apiserver's pod proxy to the tunnel's admin endpoint.
pub fn config_dump_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{TUNNEL_ADMIN_PORT}/proxy/config_dump")
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
    let request = http::Request::get(config_dump_path(ns, &pod_name))
        .body(Vec::new())
        .map_err(|e| Error::Dump {
            namespace: ns.into(),
            pod: pod_name.clone(),
            error: kube::Error::HttpError(e),
        })?;
    let text = client
        .request_text(request)
        .await
        .map_err(|error| Error::Dump {
            namespace: ns.into(),
            pod: pod_name.clone(),
            error,
        })?;
    let dump: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| Error::DumpNotJson {
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
        assert_eq!(
            config_dump_path("ambit-system", "ambit-node-x"),
            "/api/v1/namespaces/ambit-system/pods/ambit-node-x:15000/proxy/config_dump"
        );
    }
}
