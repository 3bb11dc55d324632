//! `threats`: reads a namespace's objects (or every namespace's) and the install's settings,
//! and lets [`crate::threats`] and `ambit-risk` score them.

use super::{Error, Outcome, kube_error, render};
use crate::args::Global;
use crate::client::{Connection, is_status};
use crate::health;
use crate::threats::{self, NamespaceThreats, Report};
use ambit_k8s::crd::{AuthorizationPolicy, Gateway, RequestAuthentication};
use ambit_k8s::ratelimit_crd::RateLimitPolicy;
use ambit_k8s::route_crd::{GRPCRoute, HTTPRoute};
use ambit_risk::{NamespaceFacts, NamespaceObjects};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::Resource;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

pub(super) async fn threats(
    conn: &Connection,
    global: &Global,
    all_namespaces: bool,
    note: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let client = &conn.client;
    let scope = (!all_namespaces).then_some(conn.namespace.as_str());
    let namespaces: Vec<Namespace> = match scope {
        Some(ns) => vec![
            Api::<Namespace>::all(client.clone())
                .get(ns)
                .await
                .map_err(kube_error(format!("reading namespace {ns}")))?,
        ],
        None => {
            Api::<Namespace>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(kube_error("listing namespaces"))?
                .items
        }
    };
    let ambit_ns = global.ambit_namespace.as_str();
    let (pods, services, gateways, policies, authns, http_routes, grpc_routes, limits) = tokio::try_join!(
        list::<Pod>(conn, scope),
        list::<Service>(conn, scope),
        list::<Gateway>(conn, scope),
        list::<AuthorizationPolicy>(conn, scope),
        list::<RequestAuthentication>(conn, scope),
        list::<HTTPRoute>(conn, scope),
        list::<GRPCRoute>(conn, scope),
        list::<RateLimitPolicy>(conn, scope),
    )?;
    let (controller, node) = tokio::try_join!(
        get::<Deployment>(conn, ambit_ns, health::CONTROLLER_DEPLOYMENT),
        get::<DaemonSet>(conn, ambit_ns, health::NODE_DAEMONSET),
    )?;
    let settings = threats::settings(controller.as_ref(), node.as_ref());

    let pods: Vec<&Pod> = pods.iter().collect();
    let services: Vec<&Service> = services.iter().collect();
    let gateways: Vec<&Gateway> = gateways.iter().collect();
    let policies: Vec<&AuthorizationPolicy> = policies.iter().collect();
    let authns: Vec<&RequestAuthentication> = authns.iter().collect();
    let http_routes: Vec<&HTTPRoute> = http_routes.iter().collect();
    let grpc_routes: Vec<&GRPCRoute> = grpc_routes.iter().collect();
    let limits: Vec<&RateLimitPolicy> = limits.iter().collect();
    let mut report = Report {
        namespaces: namespaces
            .iter()
            .map(|ns| {
                let objects = NamespaceObjects {
                    namespace: ns,
                    pods: &pods,
                    services: &services,
                    gateways: &gateways,
                    authorization_policies: &policies,
                    request_authentications: &authns,
                    http_routes: &http_routes,
                    grpc_routes: &grpc_routes,
                    rate_limit_policies: &limits,
                };
                NamespaceThreats::new(ns, &NamespaceFacts::build(&objects, &settings))
            })
            .collect(),
        settings,
    };
    report
        .namespaces
        .sort_by(|a, b| a.namespace.cmp(&b.namespace));
    for e in report
        .namespaces
        .iter()
        .filter_map(|n| n.label_error.as_ref())
    {
        note(&format!(
            "{e}: the controller evaluates and enforces nothing there"
        ));
    }
    let unknown = report.unknown_settings();
    if !unknown.is_empty() {
        note(&format!(
            "not known, scored as missing: {} (is ambit installed in namespace {ambit_ns}? pass --ambit-namespace)",
            unknown.join(", ")
        ));
    }
    let text = render(global.output, &report, report.render())?;
    Ok(Outcome::ok(text))
}

/// Every `K` in `scope` (`None`: every namespace); none when its CRD is not installed.
async fn list<K>(conn: &Connection, scope: Option<&str>) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = match scope {
        Some(ns) => Api::namespaced(conn.client.clone(), ns),
        None => Api::all(conn.client.clone()),
    };
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(l.items),
        Err(e) if is_status(&e, 404) => Ok(Vec::new()),
        Err(e) => Err(kube_error(format!("listing {}", K::plural(&())))(e)),
    }
}

async fn get<K>(conn: &Connection, ns: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    Api::<K>::namespaced(conn.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_error(format!("reading {} {ns}/{name}", K::kind(&()))))
}
