//! The mesh model a data plane serves from: workloads, services, waypoints, authorization
//! policies (evaluated by `ambit-policy`) and routes (`ambit-route`), indexed for the lookups
//! the tunnel and the waypoint make per connection and per request.
//!
//! Sources (a YAML file today, the controller's config stream later) produce a [`MeshConfig`];
//! [`Mesh::new`] validates and indexes it. A `Mesh` is immutable: a new config makes a new one.

mod live;
mod model;
pub mod protocol;

pub use live::LiveMesh;
pub use model::{MeshConfig, RateLimit, RateLimitTarget, Service, ServicePort, Waypoint, Workload};

use ambit_identity::{SpiffeId, SpiffeIdError, TrustDomain};
use ambit_policy::{
    Decision, HttpRequest, PolicyError, RequestAuthnError, Source, Target, Verdict,
};
use ambit_route::{CompiledRoute, RouteError, RouteTable};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read mesh file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("mesh file {path} is not valid: {source}")]
    Parse {
        path: String,
        // Boxed: serde-saphyr's error carries a source snippet, too large to return by value.
        source: Box<serde_saphyr::Error>,
    },
    #[error("invalid trust domain {0:?}")]
    TrustDomain(String),
    #[error("workload {workload}: invalid identity: {source}")]
    Identity {
        workload: String,
        source: SpiffeIdError,
    },
    #[error("two workloads claim uid {0}")]
    DuplicateUid(String),
    #[error("two workloads claim IP {0}")]
    DuplicateIp(IpAddr),
    #[error("service {service}: endpoint {uid} is not a known workload")]
    UnknownEndpoint { service: String, uid: String },
    #[error("policy {policy}: {source}")]
    Policy { policy: String, source: PolicyError },
    #[error("request authentication {name}: {source}")]
    RequestAuthentication {
        name: String,
        source: RequestAuthnError,
    },
    #[error("route {route}: {source}")]
    Route { route: String, source: RouteError },
    #[error("ext_authz provider {name}: {source}")]
    ExtAuthzProvider {
        name: String,
        source: ambit_policy::ExtAuthzProviderError,
    },
}

/// What a destination address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A mesh workload (HBONE capable or not) and the port to reach on it.
    Workload(&'a Workload, u16),
    /// Nothing the mesh knows: plain passthrough.
    Unknown,
}

/// A validated, indexed mesh config.
#[derive(Debug)]
pub struct Mesh {
    config: MeshConfig,
    trust_domain: TrustDomain,
    identities: Vec<SpiffeId>,
    by_uid: HashMap<String, usize>,
    by_ip: HashMap<IpAddr, usize>,
    services_by_vip: HashMap<IpAddr, usize>,
    services_by_host: HashMap<String, usize>,
    /// Per service, its ready endpoints (indices into the workloads): only those are picked.
    ready_endpoints: Vec<Vec<usize>>,
    /// Round-robin cursor per service, for endpoint choice.
    cursors: Vec<AtomicUsize>,
    /// By parent Service namespace, then name.
    route_tables: HashMap<String, HashMap<String, ServiceRoutes>>,
    /// The routes left out, and why.
    route_errors: Vec<MeshError>,
}

/// The route tables of one Service: one per port that routes name, and for its other ports
/// the routes that attach to every port.
#[derive(Debug, Default)]
struct ServiceRoutes {
    ports: HashMap<u16, RouteTable>,
    any_port: Option<RouteTable>,
}

impl Mesh {
    pub fn from_yaml_file(path: &Path) -> Result<Self, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = MeshConfig::from_yaml(&text).map_err(|source| MeshError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        Self::new(config)
    }

    pub fn new(config: MeshConfig) -> Result<Self, MeshError> {
        let trust_domain: TrustDomain = config
            .trust_domain
            .parse()
            .map_err(|_| MeshError::TrustDomain(config.trust_domain.clone()))?;
        let mut identities = Vec::with_capacity(config.workloads.len());
        let mut by_uid = HashMap::new();
        let mut by_ip = HashMap::new();
        for (i, w) in config.workloads.iter().enumerate() {
            let id = SpiffeId::new(trust_domain.clone(), &w.namespace, &w.service_account)
                .map_err(|source| MeshError::Identity {
                    workload: format!("{}/{}", w.namespace, w.name),
                    source,
                })?;
            identities.push(id);
            if by_uid.insert(w.uid.clone(), i).is_some() {
                return Err(MeshError::DuplicateUid(w.uid.clone()));
            }
            for ip in &w.ips {
                if by_ip.insert(*ip, i).is_some() {
                    return Err(MeshError::DuplicateIp(*ip));
                }
            }
        }
        let mut services_by_vip = HashMap::new();
        let mut services_by_host = HashMap::new();
        let mut ready_endpoints = Vec::with_capacity(config.services.len());
        for (i, s) in config.services.iter().enumerate() {
            let mut ready = Vec::with_capacity(s.endpoints.len());
            for uid in &s.endpoints {
                let Some(&w) = by_uid.get(uid) else {
                    return Err(MeshError::UnknownEndpoint {
                        service: format!("{}/{}", s.namespace, s.name),
                        uid: uid.clone(),
                    });
                };
                if config.workloads[w].ready {
                    ready.push(w);
                }
            }
            ready_endpoints.push(ready);
            for vip in &s.vips {
                services_by_vip.insert(*vip, i);
            }
            services_by_host.insert(s.hostname(), i);
        }
        for p in &config.policies {
            p.validate().map_err(|source| MeshError::Policy {
                policy: format!("{}/{}", p.namespace, p.name),
                source,
            })?;
        }
        for r in &config.request_authentications {
            r.validate()
                .map_err(|source| MeshError::RequestAuthentication {
                    name: format!("{}/{}", r.namespace, r.name),
                    source,
                })?;
        }
        for p in &config.ext_authz_providers {
            p.validate().map_err(|source| MeshError::ExtAuthzProvider {
                name: p.name.clone(),
                source,
            })?;
        }
        let cursors = config
            .services
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        let (route_tables, route_errors) = route_tables(&config.routes);
        Ok(Self {
            config,
            trust_domain,
            identities,
            by_uid,
            by_ip,
            services_by_vip,
            services_by_host,
            ready_endpoints,
            cursors,
            route_tables,
            route_errors,
        })
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Workload> {
        self.by_uid.get(uid).map(|&i| &self.config.workloads[i])
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_ip.get(&ip).map(|&i| &self.config.workloads[i])
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Service> {
        self.services_by_vip
            .get(&ip)
            .map(|&i| &self.config.services[i])
    }

    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Service> {
        self.services_by_host
            .get(hostname)
            .map(|&i| &self.config.services[i])
    }

    /// The SPIFFE id of a workload of this mesh.
    pub fn identity(&self, workload: &Workload) -> Option<&SpiffeId> {
        self.by_uid.get(&workload.uid).map(|&i| &self.identities[i])
    }

    /// Whether `namespace` is enrolled in the mesh.
    pub fn namespace_enrolled(&self, namespace: &str) -> bool {
        self.config.namespaces.iter().any(|n| n == namespace)
    }

    /// The workloads scheduled on `node`.
    pub fn workloads_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.config.workloads.iter().filter(move |w| w.node == node)
    }

    /// The waypoint serving `namespace/service_account`, if there is one.
    pub fn waypoint_for(&self, namespace: &str, service_account: &str) -> Option<&Waypoint> {
        self.config
            .waypoints
            .iter()
            .find(|w| w.namespace == namespace && w.for_service_account == service_account)
    }

    /// The waypoint `workload`'s traffic must go through: `Ok(None)` if it has none, `Err`
    /// with the binding while its bound waypoint has no address yet (nothing can go through
    /// it: refuse, never go around it).
    pub fn waypoint_of<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> Result<Option<&'a Waypoint>, &'a str> {
        match self.waypoint_for(&workload.namespace, &workload.service_account) {
            Some(waypoint) => Ok(Some(waypoint)),
            None => workload.waypoint.as_deref().map_or(Ok(None), Err),
        }
    }

    /// Whether `identity` is a waypoint's: one client that carries many clients' traffic.
    pub fn is_waypoint(&self, identity: &SpiffeId) -> bool {
        self.config
            .waypoints
            .iter()
            .any(|w| self.waypoint_identity(w).as_ref() == Some(identity))
    }

    /// The identity a waypoint presents.
    pub fn waypoint_identity(&self, waypoint: &Waypoint) -> Option<SpiffeId> {
        SpiffeId::new(
            self.trust_domain.clone(),
            &waypoint.namespace,
            &waypoint.service_account,
        )
        .ok()
    }

    /// Resolves an original destination: a Service VIP picks one of its ready endpoints
    /// (round robin; none ready is `Unknown`, as no endpoint is) and maps the port to its
    /// target port; a workload IP is used as is, ready or not (the caller chose that pod).
    pub fn resolve(&self, dst: SocketAddr) -> Destination<'_> {
        if let Some(&i) = self.services_by_vip.get(&dst.ip()) {
            let service = &self.config.services[i];
            let Some(port) = service.ports.iter().find(|p| p.port == dst.port()) else {
                return Destination::Unknown;
            };
            let ready = &self.ready_endpoints[i];
            if ready.is_empty() {
                return Destination::Unknown;
            }
            let n = self.cursors[i].fetch_add(1, Ordering::Relaxed) % ready.len();
            return Destination::Workload(&self.config.workloads[ready[n]], port.target_port);
        }
        match self.workload_by_ip(dst.ip()) {
            Some(w) => Destination::Workload(w, dst.port()),
            None => Destination::Unknown,
        }
    }

    /// The routes attached to port `port` of Service `namespace/name`; `None` when none is
    /// (the Service is reached as it is).
    pub fn route_table(&self, namespace: &str, name: &str, port: u16) -> Option<&RouteTable> {
        let routes = self.route_tables.get(namespace)?.get(name)?;
        routes.ports.get(&port).or(routes.any_port.as_ref())
    }

    /// The routes left out of the tables because they do not compile, with the reason.
    pub fn route_errors(&self) -> &[MeshError] {
        &self.route_errors
    }

    /// The external authorization provider CUSTOM policies call `name`.
    pub fn ext_authz_provider(&self, name: &str) -> Option<&ambit_policy::ExtAuthzProvider> {
        self.config
            .ext_authz_providers
            .iter()
            .find(|p| p.name == name)
    }

    /// L4 authorization for a connection to `workload` on `port` from `source` (the node
    /// tunnel): rules with L7 fields are evaluated fail-safe, see `ambit_policy`.
    pub fn authorize(&self, workload: &Workload, port: u16, source: &Source) -> Decision {
        self.authorize_connection(workload, port, source).decision
    }

    /// [`Mesh::authorize`], with the AUDIT policy that matched.
    pub fn authorize_connection(&self, workload: &Workload, port: u16, source: &Source) -> Verdict {
        ambit_policy::authorize(&self.config.policies, &target(workload, port), source, None)
    }

    /// L7 authorization of an HTTP request to `workload` on `port` from `source` (the
    /// waypoint, which knows the real client).
    pub fn authorize_request(
        &self,
        workload: &Workload,
        port: u16,
        source: &Source,
        request: &HttpRequest<'_>,
    ) -> Verdict {
        ambit_policy::authorize(
            &self.config.policies,
            &target(workload, port),
            source,
            Some(request),
        )
    }
}

/// The routes attached to each Service port. A route that does not compile is left out (one
/// tenant's broken route never takes the others down) and its error kept.
fn route_tables(
    routes: &[ambit_route::Route],
) -> (
    HashMap<String, HashMap<String, ServiceRoutes>>,
    Vec<MeshError>,
) {
    /// Per Service: the routes of each named port, and those of every port.
    type Attached = (
        BTreeMap<u16, Vec<Arc<CompiledRoute>>>,
        Vec<Arc<CompiledRoute>>,
    );
    let mut attached: BTreeMap<(String, String), Attached> = BTreeMap::new();
    let mut errors = Vec::new();
    for route in routes {
        let compiled = match route.compile() {
            Ok(c) => Arc::new(c),
            Err(source) => {
                errors.push(MeshError::Route {
                    route: format!("{}/{}", route.namespace, route.name),
                    source,
                });
                continue;
            }
        };
        // Per Service the route names: its ports, `None` for every port (a route listed
        // twice for one table would only be looked at twice).
        let mut per_service: BTreeMap<(&str, &str), Option<Vec<u16>>> = BTreeMap::new();
        for p in &route.parents {
            let ports = per_service
                .entry((&p.namespace, &p.name))
                .or_insert_with(|| Some(Vec::new()));
            match (p.port, ports.as_mut()) {
                (None, _) => *ports = None,
                (Some(port), Some(list)) if !list.contains(&port) => list.push(port),
                (Some(_), _) => {}
            }
        }
        for ((ns, name), ports) in per_service {
            let (by_port, any) = attached.entry((ns.into(), name.into())).or_default();
            match ports {
                None => any.push(compiled.clone()),
                Some(ports) => {
                    for port in ports {
                        by_port.entry(port).or_default().push(compiled.clone());
                    }
                }
            }
        }
    }
    let mut tables: HashMap<String, HashMap<String, ServiceRoutes>> = HashMap::new();
    for ((ns, name), (by_port, any)) in attached {
        let ports = by_port
            .into_iter()
            .map(|(port, routes)| {
                let routes = routes.into_iter().chain(any.iter().cloned());
                (port, RouteTable::new(&ns, routes))
            })
            .collect();
        let any_port = (!any.is_empty()).then(|| RouteTable::new(&ns, any));
        tables
            .entry(ns)
            .or_default()
            .insert(name, ServiceRoutes { ports, any_port });
    }
    (tables, errors)
}

fn target(workload: &Workload, port: u16) -> Target<'_> {
    Target {
        namespace: &workload.namespace,
        labels: &workload.labels,
        port,
    }
}

#[cfg(test)]
mod tests;
