//! `check`: reads what each check needs, each within `--timeout`, and lets [`crate::check`]
//! judge it. An apiserver that cannot be reached is one failure, and nothing else is tried.

use super::config::{CONFIG_DUMP_PATH, TUNNEL_ADMIN_PORT, fetch};
use super::{Error, Outcome, render, status};
use crate::args::{CheckOptions, Global};
use crate::check::{self, ClusterInventory, CrdOwner, Line, NodeFacts, Report, Rollout};
use crate::client::{Connection, describe};
use crate::health;
use crate::waypoint::{self, Waypoint};
use futures::future::{BoxFuture, FutureExt as _, join_all};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use std::io::IsTerminal as _;
use std::time::Duration;

use ambit_k8s::names::{CONTROLLER_LEASE as LEASE, ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY as ROOT_KEY};
const TUNNEL_METRICS_PORT: u16 = 15020;

pub(super) async fn check(
    conn: &Connection,
    global: &Global,
    options: &CheckOptions,
) -> Result<Outcome, Error> {
    let report = Report::new(checks(conn, global, options).await);
    let symbols = !options.no_color && std::io::stdout().is_terminal();
    Ok(Outcome {
        stdout: render(global.output, &report, report.render(symbols))?,
        success: report.success,
    })
}

const READ_HINT: &str = "the check needs read access to these objects (kubectl auth can-i list ...; docs/cli.md, Who may do what)";

/// One failure line for a check that could not read what it needs.
fn unreadable(category: &str, check: &str, error: &kube::Error) -> Line {
    Line::fail(
        category,
        check,
        format!("cannot read: {}", describe(error)),
        READ_HINT,
    )
}

/// `future` within `timeout`, else one failure naming the check.
fn timed<'a>(
    timeout: Duration,
    category: &'static str,
    check: &'static str,
    future: impl Future<Output = Vec<Line>> + Send + 'a,
) -> BoxFuture<'a, Vec<Line>> {
    async move {
        tokio::time::timeout(timeout, future).await.unwrap_or_else(|_| {
            vec![Line::fail(
                category,
                check,
                format!("timed out after {}s", timeout.as_secs_f32()),
                "the apiserver (or a port-forward) is slow or stuck; retry with a longer --timeout",
            )]
        })
    }
    .boxed()
}

async fn checks(conn: &Connection, global: &Global, options: &CheckOptions) -> Vec<Line> {
    const API: &str = "kubernetes-api";
    const REACH: &str = "can reach the apiserver";
    let client = &conn.client;
    let hint = "check the kubeconfig's server and credentials (kubectl cluster-info)";
    let version = match tokio::time::timeout(options.timeout, client.apiserver_version()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return vec![Line::fail(
                API,
                REACH,
                format!("{}: {}", conn.server, describe(&e)),
                hint,
            )];
        }
        Err(_) => {
            return vec![Line::fail(
                API,
                REACH,
                format!(
                    "{}: no answer within {}s",
                    conn.server,
                    options.timeout.as_secs_f32()
                ),
                hint,
            )];
        }
    };
    let mut lines = vec![Line::pass(API, REACH, conn.server.clone())];
    let checks = if options.pre {
        pre_install(client, global, &version.git_version, options.timeout)
    } else {
        installed(client, global, options.timeout)
    };
    lines.extend(join_all(checks).await.into_iter().flatten());
    lines
}

fn pre_install<'a>(
    client: &'a kube::Client,
    global: &'a Global,
    git_version: &str,
    timeout: Duration,
) -> Vec<BoxFuture<'a, Vec<Line>>> {
    let version = match check::chart_kube_version() {
        Ok(range) => check::kube_version(&range, git_version),
        Err(e) => Line::fail(
            "kubernetes-version",
            "Kubernetes version supported by the chart",
            e.to_string(),
            "a kubectl-ambit built from a broken chart: rebuild it",
        ),
    };
    vec![
        async move { vec![version] }.boxed(),
        timed(
            timeout,
            "other meshes",
            "no other mesh",
            other_meshes(client),
        ),
        network(client, global, timeout),
        timed(
            timeout,
            "permissions",
            "can create what the chart creates",
            permissions(client, &global.ambit_namespace),
        ),
        timed(
            timeout,
            "nodes",
            "Linux, kernel 5.2 or newer",
            nodes(client),
        ),
    ]
}

fn network<'a>(
    client: &'a kube::Client,
    global: &'a Global,
    timeout: Duration,
) -> BoxFuture<'a, Vec<Line>> {
    timed(
        timeout,
        "network",
        "NetworkPolicies admit HBONE (TCP 15008)",
        network_policies(client, global.namespace.as_deref()),
    )
}

fn qualified(objects: Vec<kube::api::PartialObjectMeta<impl Send>>) -> Vec<String> {
    objects
        .into_iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.unwrap_or_default(),
                o.metadata.name.unwrap_or_default()
            )
        })
        .collect()
}

async fn other_meshes(client: &kube::Client) -> Vec<Line> {
    const CATEGORY: &str = "other meshes";
    let all = ListParams::default();
    let (namespaces, deployments, daemonsets, crds, configmaps) = (
        Api::<Namespace>::all(client.clone()),
        Api::<Deployment>::all(client.clone()),
        Api::<DaemonSet>::all(client.clone()),
        Api::<CustomResourceDefinition>::all(client.clone()),
        Api::<ConfigMap>::namespaced(client.clone(), "kube-system"),
    );
    let (namespaces, deployments, daemonsets, crds, cilium) = tokio::join!(
        namespaces.list_metadata(&all),
        deployments.list_metadata(&all),
        daemonsets.list_metadata(&all),
        crds.list_metadata(&all),
        configmaps.get_opt("cilium-config"),
    );
    let read = || -> Result<_, kube::Error> {
        Ok((namespaces?, deployments?, daemonsets?, crds?, cilium?))
    };
    let (namespaces, deployments, daemonsets, crds, cilium) = match read() {
        Ok(all) => all,
        Err(e) => return vec![unreadable(CATEGORY, "no other mesh", &e)],
    };
    let owners: Vec<CrdOwner> = crds
        .items
        .iter()
        .map(|c| {
            let annotation = |k: &str| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .cloned()
            };
            CrdOwner {
                name: c.metadata.name.clone().unwrap_or_default(),
                release: annotation("meta.helm.sh/release-name").map(|name| {
                    format!(
                        "{}/{name}",
                        annotation("meta.helm.sh/release-namespace").unwrap_or_default()
                    )
                }),
            }
        })
        .collect();
    let inventory = ClusterInventory {
        namespaces: namespaces
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect(),
        deployments: qualified(deployments.items),
        daemonsets: qualified(daemonsets.items),
        crds: owners.iter().map(|c| c.name.clone()).collect(),
        cilium_config: cilium.and_then(|c| c.data),
    };
    let mut lines = check::conflicting_meshes(&inventory);
    lines.extend(check::existing_crds(&owners));
    lines
}

/// The enrolled namespaces, and `-n NS` when given: the namespaces to be meshed.
async fn network_policies(client: &kube::Client, namespace: Option<&str>) -> Vec<Line> {
    const CATEGORY: &str = "network";
    const CHECK: &str = "NetworkPolicies admit HBONE (TCP 15008)";
    let mut namespaces = match status::enrolled_names(client).await {
        Ok(n) => n,
        Err(e) => {
            return vec![Line::fail(
                CATEGORY,
                CHECK,
                format!("cannot list namespaces: {e}"),
                READ_HINT,
            )];
        }
    };
    namespaces.extend(namespace.map(str::to_owned));
    namespaces.sort();
    namespaces.dedup();
    let mut policies = Vec::new();
    for ns in &namespaces {
        match Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => policies.extend(list.items),
            Err(e) => return vec![unreadable(CATEGORY, CHECK, &e)],
        }
    }
    vec![check::network_policies(&namespaces, &policies)]
}

async fn permissions(client: &kube::Client, namespace: &str) -> Vec<Line> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let reviews = check::CHART_RESOURCES
        .iter()
        .map(|(group, resource, namespaced)| {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some((*group).into()),
                        resource: Some((*resource).into()),
                        verb: Some("create".into()),
                        namespace: namespaced.then(|| namespace.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let api = api.clone();
            async move {
                let allowed = api
                    .create(&PostParams::default(), &review)
                    .await?
                    .status
                    .is_some_and(|s| s.allowed);
                Ok::<_, kube::Error>((!allowed).then(|| (*resource).to_owned()))
            }
        });
    let denied: Result<Vec<Option<String>>, kube::Error> =
        join_all(reviews).await.into_iter().collect();
    match denied {
        Ok(denied) => vec![check::permissions(
            namespace,
            &denied.into_iter().flatten().collect::<Vec<_>>(),
        )],
        Err(e) => vec![unreadable(
            "permissions",
            "can create what the chart creates",
            &e,
        )],
    }
}

async fn nodes(client: &kube::Client) -> Vec<Line> {
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let facts: Vec<NodeFacts> = list
                .items
                .into_iter()
                .map(|n| {
                    let info = n.status.and_then(|s| s.node_info).unwrap_or_default();
                    NodeFacts {
                        name: n.metadata.name.unwrap_or_default(),
                        os: info.operating_system,
                        kernel: info.kernel_version,
                        runtime: info.container_runtime_version,
                    }
                })
                .collect();
            vec![check::nodes(&facts)]
        }
        Err(e) => vec![unreadable("nodes", "Linux, kernel 5.2 or newer", &e)],
    }
}

fn installed<'a>(
    client: &'a kube::Client,
    global: &'a Global,
    timeout: Duration,
) -> Vec<BoxFuture<'a, Vec<Line>>> {
    const CONTROL: &str = "control plane";
    let ns = global.ambit_namespace.as_str();
    let health_line = |check: &'static str, hint: String, part: BoxFuture<'a, health::Check>| {
        timed(timeout, CONTROL, check, async move {
            vec![check::from_health(CONTROL, check, &part.await, &hint)]
        })
    };
    vec![
        health_line(
            "controller Deployment ready",
            format!(
                "kubectl -n {ns} describe deployment {} (scaled to 0? pods crashing?)",
                health::CONTROLLER_DEPLOYMENT
            ),
            status::controller(client, ns).boxed(),
        ),
        timed(timeout, CONTROL, "controller Lease held", lease(client, ns)),
        health_line(
            "CRDs established",
            "reinstall the chart (helm upgrade --install ambit charts/ambit)".into(),
            status::crds(client).boxed(),
        ),
        health_line(
            "GatewayClass accepted",
            "the controller accepts it once it leads: see the controller checks above".into(),
            status::gateway_class(client).boxed(),
        ),
        timed(timeout, CONTROL, "mesh root valid", root(client, ns)),
        timed(
            timeout,
            "data plane",
            "tunnel DaemonSet ready on every node",
            rollout(client, ns),
        ),
        // Each tunnel within `timeout`; listing them too.
        timed(
            timeout * 2,
            "data plane",
            "tunnels",
            tunnels(client, ns, timeout),
        ),
        network(client, global, timeout),
        timed(
            timeout,
            "waypoints",
            "waypoints Programmed",
            waypoints(client),
        ),
        timed(
            timeout,
            "policies",
            "AuthorizationPolicies Enforced",
            policies(client),
        ),
    ]
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

async fn lease(client: &kube::Client, ns: &str) -> Vec<Line> {
    match Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
    {
        Ok(lease) => {
            let spec = lease.and_then(|l| l.spec).unwrap_or_default();
            vec![check::lease(
                ns,
                spec.holder_identity.as_deref(),
                spec.renew_time.map(|t| now() - t.0.as_second()),
                i64::from(spec.lease_duration_seconds.unwrap_or(15)),
            )]
        }
        Err(e) => vec![unreadable("control plane", "controller Lease held", &e)],
    }
}

async fn root(client: &kube::Client, ns: &str) -> Vec<Line> {
    const CHECK: &str = "mesh root valid";
    let hint = format!("rotate the root before it expires (docs/install.md; Secret {ns}/ambit-ca)");
    let cm = match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(ROOT_CONFIGMAP)
        .await
    {
        Ok(cm) => cm,
        Err(e) => return vec![unreadable("control plane", CHECK, &e)],
    };
    let pem = cm.and_then(|c| c.data).and_then(|mut d| d.remove(ROOT_KEY));
    let Some(pem) = pem else {
        return vec![Line::fail(
            "control plane",
            CHECK,
            format!("ConfigMap {ns}/{ROOT_CONFIGMAP} (key {ROOT_KEY}) not found"),
            "the controller publishes it once it has loaded or made the root: see the controller checks above",
        )];
    };
    let not_after = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp())
        });
    vec![match not_after {
        Some(t) => check::validity(
            "control plane",
            CHECK,
            "the root",
            t - now(),
            check::ROOT_EXPIRY_WARNING_SECS,
            &hint,
        ),
        None => Line::fail(
            "control plane",
            CHECK,
            format!("ConfigMap {ns}/{ROOT_CONFIGMAP} key {ROOT_KEY} is not a PEM certificate"),
            hint,
        ),
    }]
}

async fn rollout(client: &kube::Client, ns: &str) -> Vec<Line> {
    match Api::<DaemonSet>::namespaced(client.clone(), ns)
        .get_opt(health::NODE_DAEMONSET)
        .await
    {
        Ok(ds) => {
            let r = ds.map(|d| {
                let s = d.status.unwrap_or_default();
                Rollout {
                    desired: s.desired_number_scheduled,
                    ready: s.number_ready,
                    updated: s.updated_number_scheduled.unwrap_or(0),
                }
            });
            vec![check::node_rollout(ns, r)]
        }
        Err(e) => vec![unreadable(
            "data plane",
            "tunnel DaemonSet ready on every node",
            &e,
        )],
    }
}

/// Every running tunnel's config dump and rejected-resource count, each within `timeout`.
async fn tunnels(client: &kube::Client, ns: &str, timeout: Duration) -> Vec<Line> {
    let pods = match Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(health::NODE_POD_SELECTOR))
        .await
    {
        Ok(p) => p.items,
        Err(e) => return vec![unreadable("data plane", "tunnels", &e)],
    };
    let running = pods.into_iter().filter(|p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
    });
    let lines = running.map(|p| async move {
        let pod = p.metadata.name.unwrap_or_default();
        let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
        let state = tokio::time::timeout(timeout, tunnel_state(client, ns, &pod, &node))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs_f32())));
        check::tunnel(ns, state.map_err(|e| (node, e)))
    });
    join_all(lines).await
}

async fn tunnel_state(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    node: &str,
) -> Result<check::TunnelState, String> {
    let (dump, metrics) = tokio::join!(
        fetch(client, ns, pod, TUNNEL_ADMIN_PORT, CONFIG_DUMP_PATH),
        fetch(client, ns, pod, TUNNEL_METRICS_PORT, "/metrics"),
    );
    let dump = dump.map_err(|e| e.to_string())?;
    let dump: serde_json::Value =
        serde_json::from_slice(&dump).map_err(|e| format!("/config_dump is not JSON: {e}"))?;
    let mut state = check::tunnel_state(pod, node, &dump, now());
    state.rejected_resources = metrics
        .ok()
        .and_then(|m| check::metric_value(&String::from_utf8_lossy(&m), check::REJECTED_METRIC));
    Ok(state)
}

async fn waypoints(client: &kube::Client) -> Vec<Line> {
    const CHECK: &str = "waypoints Programmed";
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &waypoint::gateway_resource());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return vec![unreadable("waypoints", CHECK, &e)],
    };
    let waypoints: Vec<Waypoint> = list
        .items
        .iter()
        .map(Waypoint::from_object)
        .filter(Waypoint::is_waypoint)
        .collect();
    let wanting: Vec<String> = waypoints
        .iter()
        .filter(|w| w.programmed() != "True")
        .map(|w| match w.current("Programmed") {
            Some(c) => format!("{}/{} {c}", w.namespace, w.name),
            None => format!("{}/{} not Programmed yet", w.namespace, w.name),
        })
        .collect();
    vec![check::conditions(
        "waypoints",
        CHECK,
        waypoints.len(),
        &wanting,
        "kubectl ambit waypoint status -n NS NAME says why",
    )]
}

fn authorization_policies() -> ApiResource {
    ApiResource {
        group: "ambit.dev".into(),
        version: "v1alpha1".into(),
        api_version: "ambit.dev/v1alpha1".into(),
        kind: "AuthorizationPolicy".into(),
        plural: "authorizationpolicies".into(),
    }
}

async fn policies(client: &kube::Client) -> Vec<Line> {
    const CHECK: &str = "AuthorizationPolicies Enforced";
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &authorization_policies());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return vec![unreadable("policies", CHECK, &e)],
    };
    let wanting: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| {
            let conditions: Vec<waypoint::Condition> = p
                .data
                .pointer("/status/conditions")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            let enforced = conditions.into_iter().find(|c| c.type_ == "Enforced")?;
            (enforced.status == "False").then(|| {
                format!(
                    "{}/{} {enforced}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })
        })
        .collect();
    vec![check::conditions(
        "policies",
        CHECK,
        list.items.len(),
        &wanting,
        "kubectl get authorizationpolicies -A shows Enforced and its reason; docs/policies.md",
    )]
}
