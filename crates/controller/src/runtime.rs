//! Wiring: CA root, reflectors, index, gRPC and metrics servers, leader election and the
//! waypoint controller. `start` returns once the caches are synced and the servers listen.

use crate::auth::Authenticator;
use crate::ca::{self, CaService};
use crate::config::{Config, MAX_CERT_LIFETIME};
use crate::config_service::ConfigServer;
use crate::crd::{AuthorizationPolicy, Gateway};
use crate::index::{self, Inputs, Snapshot};
use crate::metrics::Metrics;
use crate::{grpc, lease, waypoint};
use ambit_identity::{CertificateStore, LocalIssuer, RetryPolicy};
use ambit_proto::ca::v1::certificate_service_server::CertificateServiceServer;
use ambit_proto::config::v1::config_service_server::ConfigServiceServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// How long `start` waits for the core caches (pods, namespaces, services, slices).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("CA root: {0}")]
    Root(#[from] ca::RootError),
    #[error("publishing the root certificate: {0}")]
    PublishRoot(kube::Error),
    #[error("controller identity: {0}")]
    Identity(#[from] ambit_identity::SpiffeIdError),
    #[error("controller serving certificate: {0}")]
    Certificate(#[from] ambit_identity::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] grpc::TlsSetupError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "caches did not sync within {SYNC_TIMEOUT:?}: is the apiserver reachable and RBAC granted?"
    )]
    SyncTimeout,
}

/// A running controller. Dropping it stops every task.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The mesh root certificate (PEM).
    pub root_pem: String,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub leader: watch::Receiver<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until a task ends (none should); used by `main`.
    pub async fn wait(mut self) {
        let _ = self.tasks.join_next().await;
    }
}

fn spawn_reflector<K>(tasks: &mut JoinSet<()>, api: Api<K>, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // managedFields are most of a Pod's bytes and the index never reads them.
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o| o.meta_mut().managed_fields = None),
    );
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Err(e) = &event {
                    tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch");
                }
                notify.notify_one();
                async {}
            })
            .await;
    });
    reader
}

pub async fn start(client: kube::Client, config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let mut tasks = JoinSet::new();

    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let router = crate::metrics::router(metrics.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, router).await {
            tracing::error!(error = %e, "metrics server");
        }
    });

    let owner = ca::install_owner(&client).await;
    let ca = Arc::new(
        ca::load_or_create_root(
            &client,
            &config.namespace,
            &config.trust_domain,
            owner.as_ref(),
        )
        .await?,
    );
    ca::publish_root(&client, &config.namespace, &ca, owner.as_ref())
        .await
        .map_err(StartError::PublishRoot)?;
    let store = CertificateStore::new(
        LocalIssuer::new(ca.clone(), config.cert_lifetime),
        RetryPolicy::default(),
    );
    let serving = store.acquire(&config.controller_identity()?).await?;
    let tls = grpc::server_tls(serving.handle())?;

    // Reflectors feed one index task through a Notify: a burst of events is one rebuild.
    let notify = Arc::new(Notify::new());
    let namespaces = spawn_reflector(
        &mut tasks,
        Api::<Namespace>::all(client.clone()),
        notify.clone(),
    );
    let pods = spawn_reflector(&mut tasks, Api::<Pod>::all(client.clone()), notify.clone());
    let services = spawn_reflector(
        &mut tasks,
        Api::<Service>::all(client.clone()),
        notify.clone(),
    );
    let slices = spawn_reflector(
        &mut tasks,
        Api::<EndpointSlice>::all(client.clone()),
        notify.clone(),
    );
    let gateways = spawn_reflector(
        &mut tasks,
        Api::<Gateway>::all(client.clone()),
        notify.clone(),
    );
    let policies = spawn_reflector(
        &mut tasks,
        Api::<AuthorizationPolicy>::all(client.clone()),
        notify.clone(),
    );
    let synced = async {
        namespaces.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        services.wait_until_ready().await?;
        slices.wait_until_ready().await
    };
    match tokio::time::timeout(SYNC_TIMEOUT, synced).await {
        Ok(Ok(())) => {}
        _ => return Err(StartError::SyncTimeout),
    }
    // Gateway API and ambit CRDs may be missing: their watches retry, they do not block.

    let trust_domain = config.trust_domain.as_str().to_string();
    let build = {
        let (namespaces, pods, services, slices, gateways, policies) = (
            namespaces,
            pods.clone(),
            services,
            slices,
            gateways,
            policies,
        );
        move || {
            let (n, p, s, e, g, a) = (
                namespaces.state(),
                pods.state(),
                services.state(),
                slices.state(),
                gateways.state(),
                policies.state(),
            );
            index::build(
                &Inputs {
                    namespaces: &n,
                    pods: &p,
                    services: &s,
                    endpoint_slices: &e,
                    gateways: &g,
                    policies: &a,
                },
                &trust_domain,
            )
        }
    };
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(build()));
    tasks.spawn(async move {
        loop {
            notify.notified().await;
            let mut snapshot = build();
            // Only wake subscribers when something a subscriber could see changed, and tell
            // them what, so most need not diff their whole view.
            snapshot_tx.send_if_modified(|current| {
                // Unchanged resources keep the previous generation's allocation: sessions
                // still holding an older snapshot then share, not duplicate, the model.
                for (k, e) in snapshot.resources.iter_mut() {
                    if let Some(old) = current.resources.get(k).filter(|o| o.version == e.version) {
                        e.resource = old.resource.clone();
                    }
                }
                let changed = index::changed_names(&current.resources, &snapshot.resources);
                if changed.is_empty() {
                    return false;
                }
                snapshot.generation = current.generation + 1;
                snapshot.changed = Arc::new(changed);
                *current = Arc::new(std::mem::take(&mut snapshot));
                true
            });
        }
    });

    let (leader_tx, leader) = watch::channel(false);
    tasks.spawn(lease::run(
        client.clone(),
        config.namespace.clone(),
        config.pod_name.clone(),
        owner.clone(),
        leader_tx,
        metrics.clone(),
    ));
    tasks.spawn(waypoint::run(waypoint::Context {
        client: client.clone(),
        image: config.waypoint_image.clone(),
        trust_domain: config.trust_domain.as_str().to_string(),
        leader: leader.clone(),
        metrics: metrics.clone(),
    }));

    let auth = Authenticator::new(client.clone(), ambit_proto::TOKEN_AUDIENCE);
    let ca_service = CaService {
        ca: ca.clone(),
        auth: auth.clone(),
        pods,
        tunnel: config.tunnel_service_account.clone(),
        default_lifetime: config.cert_lifetime,
        max_lifetime: MAX_CERT_LIFETIME,
        metrics: metrics.clone(),
    };
    let config_service = ConfigServer {
        auth,
        snapshots: snapshots.clone(),
        tunnel: config.tunnel_service_account.clone(),
        metrics: metrics.clone(),
    };
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let incoming = grpc::incoming(grpc_listener, tls);
    tasks.spawn(async move {
        // Keeps the serving certificate's lease (and its rotation task) alive.
        let _serving = serving;
        let _store = store;
        let result = tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(ca_service))
            .add_service(ConfigServiceServer::new(config_service))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server");
        }
    });
    metrics.set_ready();
    tracing::info!(%grpc_addr, %metrics_addr, "controller ready");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        root_pem: ca.root_pem().to_string(),
        snapshots,
        metrics,
        leader,
        tasks,
    })
}
