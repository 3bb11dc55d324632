//! Test clients of the controller's gRPC API: a TLS channel that verifies the controller's
//! SPIFFE id, and a config subscription that applies deltas and ACKs (or NACKs) them.
#![allow(dead_code)]

use ambit_controller::config::Config;
use ambit_controller::crd::Gateway;
use ambit_controller::runtime::Running;
use ambit_identity::{CertificateHandle, SpiffeId, TrustBundle};
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

pub use ambit_testbed::eventually;

/// Where ambit runs in these tests: the CA Secret, the Lease, the tunnels' service account.
pub const SYSTEM_NS: &str = "ambit-system";

/// The controller's account, impersonated by the admin.
pub const CONTROLLER_USER: &str = "system:serviceaccount:ambit-system:ambit-controller";
pub const CONTROLLER_GROUPS: &str =
    "system:serviceaccounts,system:serviceaccounts:ambit-system,system:authenticated";

/// A client acting as the controller's service account.
pub async fn as_controller(tb: &ambit_testbed::Testbed) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(tb.config.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info.impersonate = Some(CONTROLLER_USER.into());
    config.auth_info.impersonate_groups =
        Some(CONTROLLER_GROUPS.split(',').map(String::from).collect());
    Ok(kube::Client::try_from(config)?)
}

/// The controller's config in process: loopback ports, ambit in `SYSTEM_NS`.
pub fn controller_config() -> Result<Config> {
    controller_config_with(&[])
}

/// [`controller_config`] with more settings (`(variable, value)`).
pub fn controller_config_with(settings: &[(&str, &str)]) -> Result<Config> {
    Ok(Config::from_lookup(|k| match k {
        "AMBIT_GRPC_ADDR" | "AMBIT_METRICS_ADDR" => Some("127.0.0.1:0".into()),
        "AMBIT_NAMESPACE" => Some(SYSTEM_NS.into()),
        _ => settings
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned()),
    })?)
}

/// The controller in process, acting as its service account (see `as_controller`).
pub async fn start_as_controller(tb: &ambit_testbed::Testbed, config: &Config) -> Result<Running> {
    // `start` waits for every cache; a CRD or a grant missing here would make it wait for good.
    tokio::time::timeout(
        Duration::from_secs(60),
        ambit_controller::runtime::start(as_controller(tb).await?, config.clone()),
    )
    .await
    .context(
        "the controller did not start within 60 s: is a CRD it watches missing, or RBAC to list it?",
    )?
    .map_err(Into::into)
}

/// Runs `checks` on the testbed `name`/`id` with `nodes` nodes, once `binaries` are built;
/// skips, loudly, when not root.
pub async fn on_testbed(
    test: &str,
    name: &str,
    id: u8,
    nodes: u8,
    binaries: &[&str],
    checks: impl AsyncFnOnce(&ambit_testbed::Testbed) -> Result<()>,
) -> Result<()> {
    on_testbed_with_images(test, name, id, nodes, binaries, &[], checks).await
}

/// [`on_testbed`], with `images` (image reference, binary or image directory) added to the
/// nodes' image map.
pub async fn on_testbed_with_images(
    test: &str,
    name: &str,
    id: u8,
    nodes: u8,
    binaries: &[&str],
    images: &[(&str, &std::path::Path)],
    checks: impl AsyncFnOnce(&ambit_testbed::Testbed) -> Result<()>,
) -> Result<()> {
    if ambit_testbed::skip_without_root(test) {
        return Ok(());
    }
    ambit_testbed::build_binaries(binaries)?;
    let mut config = ambit_testbed::Config::new(name, id)?.with_nodes(nodes)?;
    config.images.extend(
        images
            .iter()
            .map(|(image, path)| ((*image).to_owned(), path.to_path_buf())),
    );
    ambit_testbed::Testbed::new(config)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?
        .up_run_down(checks)
        .await
}

/// Creates namespace `name` with `labels` (a JSON object).
pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name, "labels": labels}})),
        )
        .await?;
    Ok(())
}

/// Waits until the status condition `type_` of `name` reads `status` for `reason`; its message.
pub async fn condition_reads<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    (status, reason): (&str, &str),
    timeout: Duration,
) -> Result<String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let what = format!("{name}'s {type_} condition {status} for {reason}");
    Ok(eventually(&what, timeout, || async {
        let object = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        let conditions = object["status"]["conditions"].as_array()?;
        let c = conditions.iter().find(|c| c["type"] == type_)?;
        (c["status"] == status && c["reason"] == reason)
            .then(|| c["message"].as_str().unwrap_or_default().to_owned())
    })
    .await?)
}

/// A waypoint Gateway `name` for the account `sa`, as `kubectl ambit waypoint apply` writes it.
pub fn waypoint_gateway(name: &str, sa: &str) -> Gateway {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "annotations": {"ambit.dev/for-service-account": sa}},
        "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }))
}

/// A Service `name` on port 80 (`http`) to 8080 of the pods labelled `app: <name>`.
pub fn echo_service(name: &str) -> Service {
    obj(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
}

/// Creates each `(namespace, name)` service account, retrying while a new namespace is not
/// ready for them yet.
pub async fn create_service_accounts(
    client: &kube::Client,
    accounts: &[(&str, &str)],
    timeout: Duration,
) -> Result<()> {
    for &(ns, sa) in accounts {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually(&format!("service account {ns}/{sa}"), timeout, || async {
            api.create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": sa}})),
            )
            .await
            .ok()
        })
        .await?;
    }
    Ok(())
}

/// A Kubernetes object from JSON.
pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Creates every CRD the chart ships (ambit's and the Gateway API's, so every cache the
/// controller waits for at start has its CRD), and waits until they are served.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/ambit/files");
    let mut files = Vec::new();
    for dir in ["crds", "gateway-api"] {
        let dir = format!("{chart}/{dir}");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let docs: Vec<Option<CustomResourceDefinition>> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("a CRD in {}", file.display()))?;
        crds.extend(docs.into_iter().flatten());
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &crds {
        api.create(&PostParams::default(), crd).await?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                api.get(&name).await.ok().filter(|c| {
                    c.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                })
            },
        )
        .await?;
    }
    Ok(())
}

/// A channel to the controller over TLS, accepting only `controller` chained to `root_pem`.
pub async fn channel(addr: SocketAddr, root_pem: &str, controller: &SpiffeId) -> Result<Channel> {
    channel_from(None, addr, root_pem, controller).await
}

/// [`channel`], its connections made from `source` (a loopback address other than 127.0.0.1
/// stands for another client) when given.
pub async fn channel_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    root_pem: &str,
    controller: &SpiffeId,
) -> Result<Channel> {
    let tls = controller_tls(root_pem, controller)?;
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let tls = tls_connect(source, addr, tls).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_static("http://ambit-controller")
        .connect_with_connector(connector)
        .await?)
}

/// The TLS client config of a caller of the controller: no certificate, only `controller`
/// chained to `root_pem` accepted.
pub fn controller_tls(root_pem: &str, controller: &SpiffeId) -> Result<Arc<rustls::ClientConfig>> {
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes())?;
    let bundle = TrustBundle::new(controller.trust_domain().clone(), [root])?;
    Ok(Arc::new(ambit_identity::client_config(
        CertificateHandle::without_certificate(),
        &bundle,
        vec![controller.clone()],
    )?))
}

/// TCP from `source` (any when `None`) to `addr`, without a byte sent.
pub async fn tcp_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// A TLS connection to the controller from `source`.
pub async fn tls_connect(
    source: Option<IpAddr>,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(source, addr).await?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(ambit_identity::server_name(addr.ip()), tcp)
        .await
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// What a subscriber holds, updated as deltas arrive.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub resources: BTreeMap<String, pb::Resource>,
    pub deltas: u64,
    pub last_delta: Option<pb::Delta>,
}

impl View {
    pub fn workload_names(&self) -> Vec<String> {
        self.resources
            .values()
            .filter_map(|r| match &r.kind {
                Some(pb::resource::Kind::Workload(w)) => {
                    Some(format!("{}/{}", w.namespace, w.name))
                }
                _ => None,
            })
            .collect()
    }

    pub fn known(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(k, r)| (k.clone(), r.version.clone()))
            .collect()
    }
}

pub struct Subscription {
    pub view: watch::Receiver<View>,
    _task: tokio::task::JoinHandle<()>,
}

/// Subscribes and keeps applying deltas. `nack` makes it reject every delta instead.
pub async fn subscribe(
    channel: Channel,
    token: &str,
    subscriber: pb::subscribe::Subscriber,
    known: BTreeMap<String, String>,
    nack: bool,
) -> Result<Subscription, tonic::Status> {
    let answer = if nack { Answer::Nack } else { Answer::Ack };
    subscribe_answering(channel, token, subscriber, known, answer).await
}

/// How a test subscriber answers each delta.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Applies it whole.
    Ack,
    /// Rejects it whole.
    Nack,
    /// Rejects these resources alone (name -> error), as a data plane does a resource it
    /// cannot use, and applies the rest.
    Reject(BTreeMap<String, String>),
}

/// [`subscribe`], answering each delta as `answer` says.
pub async fn subscribe_answering(
    channel: Channel,
    token: &str,
    subscriber: pb::subscribe::Subscriber,
    known: BTreeMap<String, String>,
    answer: Answer,
) -> Result<Subscription, tonic::Status> {
    let nack = matches!(answer, Answer::Nack);
    let mut client = pb::config_service_client::ConfigServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let _ = tx
        .send(pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Subscribe(pb::Subscribe {
                subscriber: Some(subscriber),
                known: known.clone().into_iter().collect(),
                accepts_parts: false,
            })),
        })
        .await;
    let mut inbound = client
        .stream(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            token,
        ))
        .await?
        .into_inner();
    // The stream is accepted lazily: the first delta (or the refusal) comes with the first read.
    let first = inbound.message().await?;
    let mut state = View::default();
    // Resuming: the client holds what it stated.
    for (k, v) in known {
        state.resources.insert(
            k.clone(),
            pb::Resource {
                name: k,
                version: v,
                kind: None,
            },
        );
    }
    let (view_tx, view) = watch::channel(View::default());
    let task = tokio::spawn(async move {
        let mut next = first;
        while let Some(delta) = next {
            if !nack {
                for name in &delta.removals {
                    state.resources.remove(name);
                }
                for r in &delta.upserts {
                    state.resources.insert(r.name.clone(), r.clone());
                }
            }
            state.deltas += 1;
            state.last_delta = Some(delta.clone());
            view_tx.send_replace(state.clone());
            let rejected = match &answer {
                Answer::Reject(errors) => delta
                    .upserts
                    .iter()
                    .filter_map(|r| {
                        errors.get(&r.name).map(|error| pb::RejectedResource {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            error: error.clone(),
                        })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let ack = pb::Ack {
                nonce: delta.nonce.clone(),
                error: if nack {
                    "test: rejected".into()
                } else {
                    String::new()
                },
                rejected,
            };
            if tx
                .send(pb::ClientMessage {
                    kind: Some(pb::client_message::Kind::Ack(ack)),
                })
                .await
                .is_err()
            {
                break;
            }
            next = inbound.message().await.ok().flatten();
        }
    });
    Ok(Subscription { view, _task: task })
}

impl Subscription {
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&View) -> bool,
    ) -> Result<View> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let v = self.view.borrow_and_update();
                if pred(&v) {
                    return Ok(v.clone());
                }
            }
            match tokio::time::timeout_at(deadline, self.view.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("subscription ended while waiting for {what}"),
                Err(_) => {
                    let v = self.view.borrow();
                    return Err(anyhow::anyhow!(
                        "timed out after {timeout:?} waiting for {what}"
                    ))
                    .with_context(|| format!("view: {:?}", v.workload_names()));
                }
            }
        }
    }
}

/// Subscribes as the waypoint of `ns/sa` with its `token`, retrying until the controller
/// knows that waypoint.
pub async fn subscribe_as_waypoint(
    channel: &Channel,
    token: &str,
    ns: &str,
    sa: &str,
    timeout: Duration,
) -> Result<Subscription> {
    Ok(eventually(
        &format!("subscribed as {sa}'s waypoint"),
        timeout,
        || async {
            subscribe(
                channel.clone(),
                token,
                pb::subscribe::Subscriber::Waypoint(pb::ServiceAccountRef {
                    namespace: ns.into(),
                    name: sa.into(),
                }),
                BTreeMap::new(),
                false,
            )
            .await
            .ok()
        },
    )
    .await?)
}

/// Waits for pod `name` to run with an IP.
pub async fn pod_running(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    Ok(eventually(
        &format!("pod {name} running with an IP"),
        Duration::from_secs(60),
        || async {
            pods.get(name).await.ok().filter(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
            })
        },
    )
    .await?)
}

/// A projected-style token of `SYSTEM_NS/sa`, bound to a pod when given.
pub async fn token(
    client: &kube::Client,
    sa: &str,
    pod: Option<(&str, &str)>,
    audience: &str,
) -> Result<String> {
    token_in(client, SYSTEM_NS, sa, pod, audience).await
}

/// The config source of the tunnel pod `tunnel-1` on the testbed: the mesh root and a token
/// bound to that pod, written under a temporary directory named after `test` (returned for the
/// test to remove).
pub async fn tunnel_source(
    client: &kube::Client,
    tunnel_pod: &Pod,
    root_pem: &str,
    address: SocketAddr,
    identity: SpiffeId,
    test: &str,
) -> Result<(ambit_controller_client::source::Source, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("ambit-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("root.pem"), root_pem)?;
    let tunnel_uid = tunnel_pod.metadata.uid.clone().context("uid")?;
    std::fs::write(
        dir.join("token"),
        token(
            client,
            "ambit-tunnel",
            Some(("tunnel-1", &tunnel_uid)),
            ambit_proto::TOKEN_AUDIENCE,
        )
        .await?,
    )?;
    let source = ambit_controller_client::source::Source::Controller {
        address: address.to_string(),
        identity,
        root_cert: dir.join("root.pem"),
        token: dir.join("token"),
    };
    Ok((source, dir))
}

/// A token of `ns/sa` for the controller's audience, as a waypoint of that account holds.
pub async fn waypoint_token(client: &kube::Client, ns: &str, sa: &str) -> Result<String> {
    token_in(client, ns, sa, None, ambit_proto::TOKEN_AUDIENCE).await
}

async fn token_in(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod: Option<(&str, &str)>,
    audience: &str,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({"audiences": [audience], "expirationSeconds": 3600});
    if let Some((name, uid)) = pod {
        spec["boundObjectRef"] =
            json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid});
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let tr: serde_json::Value = api
        .create_subresource("token", sa, &PostParams::default(), &body)
        .await?;
    Ok(tr["status"]["token"]
        .as_str()
        .context("token in TokenRequest status")?
        .to_string())
}

/// A pod of the testbed's echo server, labeled `app: <name>`, on `node`.
pub fn pod_json(name: &str, sa: &str, node: &str) -> Pod {
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node, "serviceAccountName": sa, "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "ghcr.io/ambit/ambit-echo-server:dev", "args": ["8080"]}],
        },
    }))
}

async fn create<K>(api: Api<K>, v: serde_json::Value) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    api.create(&PostParams::default(), &obj(v)).await?;
    Ok(())
}

/// The controller's RBAC as the chart renders it: its ClusterRole, Role and their bindings.
pub async fn chart_rbac(client: &kube::Client) -> Result<()> {
    from_manifests(
        client,
        "ambit-controller",
        &["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"],
    )
    .await
}

/// What the chart gives the node agent over NodeCaptures: its ClusterRole and binding, and the
/// admission policy (with its binding) that keeps each agent to its own node's object.
pub async fn chart_node_capture_rights(client: &kube::Client) -> Result<()> {
    from_manifests(client, "ambit-node", &["ClusterRole", "ClusterRoleBinding"]).await?;
    from_manifests(
        client,
        "ambit-node-capture",
        &[
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    )
    .await
}

/// Creates the objects named `name` of the rendered chart (`manifests/ambit.yaml`) whose kinds
/// are `kinds` (sorted), and fails unless there is one of each.
async fn from_manifests(client: &kube::Client, name: &str, kinds: &[&str]) -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../manifests/ambit.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut created = Vec::new();
    for v in serde_saphyr::from_multiple::<serde_json::Value>(&text)? {
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        if v["metadata"]["name"] != name || !kinds.contains(&kind.as_str()) {
            continue;
        }
        let c = client.clone();
        match kind.as_str() {
            "ClusterRole" => create(Api::<ClusterRole>::all(c), v).await?,
            "ClusterRoleBinding" => create(Api::<ClusterRoleBinding>::all(c), v).await?,
            "Role" => create(Api::<Role>::namespaced(c, SYSTEM_NS), v).await?,
            "RoleBinding" => create(Api::<RoleBinding>::namespaced(c, SYSTEM_NS), v).await?,
            "ValidatingAdmissionPolicy" => {
                create(Api::<ValidatingAdmissionPolicy>::all(c), v).await?
            }
            "ValidatingAdmissionPolicyBinding" => {
                create(Api::<ValidatingAdmissionPolicyBinding>::all(c), v).await?
            }
            _ => bail!("no API for kind {kind}"),
        }
        created.push(kind);
    }
    created.sort();
    anyhow::ensure!(created == kinds, "{name} in {path}: {created:?}");
    Ok(())
}

/// A client of the testbed's apiserver that authenticates with `token` only.
pub async fn with_bearer(tb: &ambit_testbed::Testbed, token: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(tb.config.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Ok(kube::Client::try_from(config)?)
}
