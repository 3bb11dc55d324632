//! Wiring: CA root, reflectors, index, gRPC and metrics servers, leader election, the
//! waypoint controller, the policy and route status writers and the risk profiles. `start` returns once every cache
//! feeding the index has synced, however long that takes, and the servers listen.

use crate::auth::Authenticator;
use crate::ca::{self, CaService};
use crate::config::Config;
use crate::config_service::ConfigServer;
use crate::index::{Change, ChangeQueue, ClusterView, Index, Snapshot, Stores, Watched};
use crate::metrics::Metrics;
use crate::request_authn::{self, Fetched, KeySources};
use crate::root::{self, MeshRoots, RootIssuer};
use crate::{
    auto_waypoint, grpc, lease, policy, ratelimit, rejections, risk, route_status, waypoint,
};
use ambit_identity::{CertificateStore, RetryPolicy};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::WriterDropped};
use kube::runtime::{WatchStreamExt, watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often `start` says which caches it is still waiting for.
const SYNC_REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("CA root: {0}")]
    Root(#[from] ca::RootError),
    #[error("the mesh roots: {0}")]
    Roots(#[from] root::RootsError),
    #[error("the controller's trust bundle: {0}")]
    Trust(#[from] ambit_identity::TlsError),
    #[error("publishing the root certificate: {0}")]
    PublishRoot(kube::Error),
    #[error("controller identity: {0}")]
    Identity(#[from] ambit_identity::SpiffeIdError),
    #[error("controller serving certificate: {0}")]
    Certificate(#[from] ambit_identity::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] grpc::TlsSetupError),
    #[error("JWKS client: {0}")]
    JwksTls(#[from] request_authn::TlsSetupError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {0} cache can never sync: its watch ended")]
    WatchEnded(String),
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

/// What a reflector can watch and keep: a namespaced-or-cluster object of a static kind.
trait Reflected:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Reflected for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Watches `api` into a store and tells the index what changed; a (re)list may have changed
/// anything.
fn spawn_reflector<K>(tasks: &mut JoinSet<()>, api: Api<K>, changes: Arc<ChangeQueue>) -> Store<K>
where
    K: Reflected + Watched,
{
    spawn_reflector_with(tasks, api, changes, watcher::Config::default())
}

/// [`spawn_reflector`] for the objects `config` selects.
fn spawn_reflector_with<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    changes: Arc<ChangeQueue>,
    config: watcher::Config,
) -> Store<K>
where
    K: Reflected + Watched,
{
    reflect(tasks, api, config, K::trim, move |event| match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => changes.push(o.change()),
        watcher::Event::InitDone => changes.push(Change::All),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    })
}

/// Watches `api` into a store the index does not read (only the CA does).
fn spawn_store<K>(tasks: &mut JoinSet<()>, api: Api<K>) -> Store<K>
where
    K: Reflected,
{
    reflect(tasks, api, watcher::Config::default(), |_| {}, |_| {})
}

/// The reflector task under both: `trim` before storing, `seen` for each event.
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    seen: impl Fn(watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Reflected,
{
    let (reader, writer) = reflector::store();
    // managedFields are most of an object's bytes and the index never reads them.
    let stream = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(move |o| {
            o.meta_mut().managed_fields = None;
            trim(o);
        }),
    );
    tasks.spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => seen(event),
                Err(e) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch"),
            }
        }
    });
    reader
}

/// The first list of a store, with its kind.
fn synced<K>(store: &Store<K>) -> BoxFuture<'_, (String, Result<(), WriterDropped>)>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    store.wait_until_ready().map(move |r| (kind, r)).boxed()
}

/// Waits until every store feeding the index has had its first list, however long that takes
/// (an apiserver away, RBAC or a CRD missing): a view built from a partial cache tells clients
/// resuming from it to drop what is missing, and a dropped DENY policy opens a door. Until
/// then nothing is served, and tunnels and waypoints keep their last good config.
async fn wait_synced(stores: &Stores) -> Result<(), StartError> {
    // Destructured, so that a store added to the index cannot be forgotten here.
    let Stores {
        namespaces,
        pods,
        services,
        endpoint_slices,
        gateways,
        policies,
        http_routes,
        grpc_routes,
        grants,
        request_authns,
        rate_limits,
        // Not waited for: reading JWKS Secrets is an opt-in grant (docs/policies.md), and a
        // rule whose Secret is not there yet only refuses its own tokens.
        key_sources: _,
        // Not a cache: filled by the risk evaluation once serving.
        refusals: _,
    } = stores;
    let mut pending: FuturesUnordered<_> = [
        synced(namespaces),
        synced(pods),
        synced(services),
        synced(endpoint_slices),
        synced(gateways),
        synced(policies),
        synced(http_routes),
        synced(grpc_routes),
        synced(grants),
        synced(request_authns),
        synced(rate_limits),
    ]
    .into_iter()
    .collect();
    let mut synced_kinds: Vec<String> = Vec::new();
    let started = tokio::time::Instant::now();
    let mut report = tokio::time::interval_at(started + SYNC_REPORT_EVERY, SYNC_REPORT_EVERY);
    loop {
        tokio::select! {
            next = pending.next() => match next {
                None => return Ok(()),
                Some((kind, Ok(()))) => synced_kinds.push(kind),
                Some((kind, Err(_))) => return Err(StartError::WatchEnded(kind)),
            },
            _ = report.tick() => tracing::warn!(
                synced = ?synced_kinds,
                waiting_for = pending.len(),
                elapsed_s = started.elapsed().as_secs(),
                "not serving yet: every cache must sync first. Is the apiserver reachable, RBAC granted, are ambit's and the Gateway API CRDs installed? (the watch warnings say which)"
            ),
        }
    }
}

/// Feeds changes to the index and publishes its snapshots; the changes that came in during an
/// update are the next update.
async fn run_index(
    mut index: Index,
    changes: Arc<ChangeQueue>,
    snapshots: watch::Sender<Arc<Snapshot>>,
) {
    loop {
        let batch = changes.take().await;
        // A rebuild takes ~150 ms at 10,000 pods: off the async workers.
        let updated = tokio::task::spawn_blocking(move || {
            let snapshot = index.update(batch);
            (index, snapshot)
        })
        .await;
        let Ok((back, snapshot)) = updated else {
            tracing::error!("index update panicked; config is no longer updated");
            return;
        };
        index = back;
        if let Some(snapshot) = snapshot {
            snapshots.send_replace(Arc::new(snapshot));
        }
    }
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
    let ca = ca::load_or_create_root(
        &client,
        &config.namespace,
        &config.trust_domain,
        owner.as_ref(),
    )
    .await?;
    let roots = MeshRoots::load(&client, &config.namespace, ca).await?;
    ca::publish_root(
        &client,
        &config.namespace,
        &roots.bundle_pem(),
        owner.as_ref(),
    )
    .await
    .map_err(StartError::PublishRoot)?;
    let trust = roots.trust_bundle()?;
    tasks.spawn(root::run(root::Rotation {
        client: client.clone(),
        namespace: config.namespace.clone(),
        roots: roots.clone(),
        trust: trust.clone(),
        owner: owner.clone(),
        leaf_lifetime: config.cert_lifetime,
    }));
    let store = CertificateStore::new(
        RootIssuer {
            roots: roots.clone(),
            lifetime: config.cert_lifetime,
        },
        RetryPolicy::default(),
    )
    .following(trust);
    let serving = store.acquire(&config.controller_identity()?).await?;
    let tls = grpc::server_tls(serving.handle())?;

    // Reflectors tell one index task what changed.
    let changes = Arc::new(ChangeQueue::default());
    let stores = Stores {
        namespaces: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        pods: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        services: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        endpoint_slices: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        gateways: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        policies: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        http_routes: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        grpc_routes: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        grants: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        request_authns: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        rate_limits: spawn_reflector(&mut tasks, Api::all(client.clone()), changes.clone()),
        key_sources: KeySources {
            secrets: spawn_reflector_with(
                &mut tasks,
                Api::all(client.clone()),
                changes.clone(),
                watcher::Config::default()
                    .labels(&format!("{}=true", request_authn::JWKS_SECRET_LABEL)),
            ),
            fetched: Fetched::default(),
        },
        refusals: Default::default(),
    };
    wait_synced(&stores).await?;

    let ca_stores = stores.clone();
    let policy_store = stores.policies.clone();
    let route_stores = stores.clone();
    let jwt_stores = stores.clone();
    let rate_limit_stores = stores.clone();
    let auto_waypoint_stores = stores.clone();
    let risk_stores = stores.clone();
    tasks.spawn(request_authn::run_fetcher(
        stores.request_authns.clone(),
        stores.key_sources.fetched.clone(),
        changes.clone(),
        request_authn::client_tls_file(config.jwks_ca_bundle.as_deref())?,
    ));
    // The first snapshot already refuses what enforced risk profiles refuse: a tunnel resuming
    // from a restarted controller must not see their DENY policies go and come back.
    risk::refuse(
        &stores.refusals,
        &risk::evaluate_all(&stores, &config.mesh_settings()),
    );
    let mut index = Index::new(stores, config.trust_domain.as_str())
        .with_ext_authz_providers(&config.ext_authz_providers);
    let first = index.update([Change::All]).unwrap_or_default();
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(first));
    tasks.spawn(run_index(index, changes.clone(), snapshot_tx));

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
        waypoint: waypoint::WaypointSettings {
            image: config.waypoint_image.clone(),
            controller_address: config.controller_address.clone(),
            controller_identity: config.controller_identity()?.to_uri(),
            tracing: config.waypoint_tracing.clone(),
        },
        roots: roots.clone(),
        install_owner: owner.clone(),
        leader: leader.clone(),
        metrics: metrics.clone(),
    }));
    let events = crate::status::Events::new(client.clone(), config.pod_name.clone());
    tasks.spawn(policy::run_status(policy::StatusContext {
        client: client.clone(),
        events: events.clone(),
        leader: leader.clone(),
        snapshots: snapshots.clone(),
        policies: policy_store,
    }));
    tasks.spawn(request_authn::run_status(request_authn::StatusContext {
        client: client.clone(),
        leader: leader.clone(),
        snapshots: snapshots.clone(),
        resources: jwt_stores.request_authns,
        sources: jwt_stores.key_sources,
    }));
    let view = |stores| ClusterView {
        client: client.clone(),
        leader: leader.clone(),
        snapshots: snapshots.clone(),
        stores,
    };
    tasks.spawn(ratelimit::run_status(view(rate_limit_stores)));
    tasks.spawn(auto_waypoint::run(view(auto_waypoint_stores)));
    let risk_profiles = spawn_store(&mut tasks, Api::all(client.clone()));
    tasks.spawn(risk::run(risk::Context {
        view: view(risk_stores),
        changes,
        settings: config.mesh_settings(),
        metrics: metrics.clone(),
        events: events.clone(),
        profiles: risk_profiles,
    }));
    tasks.spawn(route_status::run(view(route_stores)));

    let auth = Authenticator::new(
        client.clone(),
        ambit_proto::TOKEN_AUDIENCE,
        config.token_reviews,
        metrics.clone(),
    );
    let ca_service = CaService {
        ca: roots.clone(),
        auth: auth.clone(),
        stores: ca_stores.clone(),
        // Not waited for: until it has synced, the CA refuses tunnels (retriable), no more.
        captures: spawn_store(&mut tasks, Api::all(client.clone())),
        tunnel: config.tunnel_service_account.clone(),
        default_lifetime: config.cert_lifetime,
        metrics: metrics.clone(),
    };
    let (rejections, reporting) = rejections::reporter(events, ca_stores);
    tasks.spawn(reporting);
    let config_service = ConfigServer::new(
        auth,
        snapshots.clone(),
        config.tunnel_service_account.clone(),
        metrics.clone(),
        rejections,
    );
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
    let incoming = grpc::incoming(grpc_listener, tls, config.grpc_idle_timeout);
    tasks.spawn(async move {
        // Keeps the serving certificate's lease (and its rotation task) alive.
        let _serving = serving;
        let _store = store;
        let result = grpc::serve(incoming, ca_service, config_service).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server");
        }
    });
    metrics.set_ready();
    tracing::info!(%grpc_addr, %metrics_addr, "controller ready");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        root_pem: roots.bundle_pem(),
        snapshots,
        metrics,
        leader,
        tasks,
    })
}
