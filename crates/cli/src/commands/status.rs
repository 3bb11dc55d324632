//! `status`: reads every part's objects and lets [`crate::health`] judge them.

use super::{Error, Outcome, render};
use crate::args::Global;
use crate::client::{Connection, describe, is_status};
use crate::health::{self, Check, Report};
use crate::waypoint::{self, WAYPOINT_CLASS};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams};

pub(super) async fn status(
    conn: &Connection,
    global: &Global,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let ns = global.ambit_namespace.as_str();
    let client = &conn.client;
    let controller = controller(client, ns);
    let node = async {
        let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get_opt(health::NODE_DAEMONSET)
            .await;
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(health::NODE_POD_SELECTOR))
            .await;
        match (ds, pods) {
            (Ok(ds), Ok(pods)) => health::node(ns, ds.as_ref(), &pods.items),
            (Err(e), _) | (_, Err(e)) => Check::unreadable("node", &describe(&e)),
        }
    };
    let crds = crds(client);
    let class = gateway_class(client);
    let enrolled = enrolled_namespaces(client);
    let (controller, node, crds, class, enrolled) =
        tokio::join!(controller, node, crds, class, enrolled);
    let report = Report::new(ns, vec![controller, node, crds, class], enrolled);
    if !report.healthy {
        if report.looks_uninstalled() {
            note(&format!(
                "ambit does not look installed in namespace {ns}: helm install ambit charts/ambit -n {ns} --create-namespace (or pass --ambit-namespace)"
            ));
        } else {
            note("ambit is not healthy: see the UNHEALTHY parts above");
        }
    }
    let text = render(global.output, &report, report.render())?;
    Ok(Outcome {
        stdout: text,
        success: report.healthy,
    })
}

/// The controller Deployment's readiness (`check` asks too).
pub(super) async fn controller(client: &kube::Client, ns: &str) -> Check {
    match Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(health::CONTROLLER_DEPLOYMENT)
        .await
    {
        Ok(d) => health::controller(ns, d.as_ref()),
        Err(e) => Check::unreadable("controller", &describe(&e)),
    }
}

pub(super) async fn crds(client: &kube::Client) -> Check {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut found = Vec::new();
    for name in health::CRDS {
        match api.get_opt(name).await {
            Ok(c) => found.push(c),
            Err(e) => return Check::unreadable("crds", &describe(&e)),
        }
    }
    health::crds(&found)
}

pub(super) async fn gateway_class(client: &kube::Client) -> Check {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &waypoint::gateway_class_resource());
    match api.get_opt(WAYPOINT_CLASS).await {
        Ok(c) => health::gateway_class(WAYPOINT_CLASS, c.as_ref()),
        // No GatewayClass CRD: the crds check says so; here the class is simply absent.
        Err(e) if is_status(&e, 404) => health::gateway_class(WAYPOINT_CLASS, None),
        Err(e) => Check::unreadable("gatewayclass", &describe(&e)),
    }
}

/// Names of the namespaces labelled for the mesh.
pub(super) async fn enrolled_names(client: &kube::Client) -> Result<Vec<String>, String> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().labels(health::ENROLLED_SELECTOR))
        .await
        .map_err(|e| describe(&e))?;
    let mut names: Vec<String> = namespaces
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

async fn enrolled_namespaces(client: &kube::Client) -> Result<Vec<health::Enrolled>, String> {
    let names = enrolled_names(client).await?;
    let counts = names.iter().map(|ns| async move {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| format!("pods of {ns}: {}", describe(&e)))?;
        Ok(health::enrolled(
            ns,
            pods.items.iter().map(|p| p.metadata.labels.as_ref()),
        ))
    });
    futures::future::join_all(counts)
        .await
        .into_iter()
        .collect()
}
