//! What a CONNECT's `:authority` names, and where its requests may go. Pure: decided from the
//! mesh model alone.
//!
//! A client tunnel keeps the original destination in `:authority`: a Service VIP and port, or a
//! pod IP and port. The waypoint serves it only if it belongs to its service account: a Service
//! with at least one endpoint running as that account, or such a pod. Anything else is refused
//! (401): a waypoint is never an open relay into the mesh.

use ambit_identity::SpiffeId;
use ambit_mesh::protocol::{self, HttpProtocol};
use ambit_mesh::{Mesh, ServicePort, Waypoint, Workload};
use std::net::SocketAddr;

/// Ports of the node tunnel inside every pod: never a destination.
const TUNNEL_PORTS: [u16; 3] = [15001, 15006, ambit_hbone::HBONE_PORT];

/// What the destination port speaks, from its Service port's `appProtocol` or name prefix
/// (`http`, `http-web`, `grpc-api`, ...). Anything unknown is TCP: forwarded with L4 policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    /// HTTP/1.1 (a client speaking HTTP/2 prior knowledge is served too); HTTP/1.1 upstream.
    Http,
    /// HTTP/2 prior knowledge (h2c), up and down.
    Http2,
    /// gRPC: HTTP/2 with gRPC status mapping.
    Grpc,
}

impl Protocol {
    /// By ambit-mesh's rule, which `ambit-risk` also reports with.
    pub fn of(port: &ServicePort) -> Self {
        let (declared, _) = protocol::declared(&port.name, &port.app_protocol);
        match HttpProtocol::of(&declared) {
            Some(HttpProtocol::Http1) => Self::Http,
            Some(HttpProtocol::Http2) => Self::Http2,
            Some(HttpProtocol::Grpc) => Self::Grpc,
            None => Self::Tcp,
        }
    }

    pub fn is_http(self) -> bool {
        self != Self::Tcp
    }

    /// Whether requests go upstream as HTTP/2.
    pub fn upstream_h2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }
}

/// What a CONNECT named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Service of the served account, by its VIP; `port` is the Service port.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// One pod of the served account; `port` is the pod port.
    Workload { uid: String, port: u16 },
}

/// A served destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: Target,
    /// The `:authority` as the client sent it.
    pub authority: SocketAddr,
    pub protocol: Protocol,
}

impl Destination {
    /// `name.namespace` of the Service, or empty for a pod, for metrics and logs.
    pub fn service(&self) -> String {
        match &self.target {
            Target::Service {
                namespace, name, ..
            } => format!("{name}.{namespace}"),
            Target::Workload { .. } => String::new(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotServed {
    #[error(
        "{authority} is neither a Service nor a pod of service account {namespace}/{service_account}"
    )]
    Elsewhere {
        authority: SocketAddr,
        namespace: String,
        service_account: String,
    },
    #[error("port {port} is not a port of Service {service}")]
    ServicePort { service: String, port: u16 },
    #[error("port {0} belongs to the node tunnel")]
    TunnelPort(u16),
    #[error("pod {0} is not enrolled: it cannot be reached over HBONE")]
    NotEnrolled(String),
}

/// Decides what `authority` names for the waypoint of `(namespace, service_account)`.
pub fn resolve(
    mesh: &Mesh,
    (namespace, service_account): (&str, &str),
    authority: SocketAddr,
) -> Result<Destination, NotServed> {
    let elsewhere = || NotServed::Elsewhere {
        authority,
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
    };
    let serves = |w: &Workload| w.namespace == namespace && w.service_account == service_account;
    if let Some(service) = mesh.service_by_vip(authority.ip()) {
        let mine = service
            .endpoints
            .iter()
            .filter_map(|uid| mesh.workload_by_uid(uid))
            .any(serves);
        if !mine {
            return Err(elsewhere());
        }
        let port = service
            .ports
            .iter()
            .find(|p| p.port == authority.port())
            .ok_or_else(|| NotServed::ServicePort {
                service: format!("{}/{}", service.namespace, service.name),
                port: authority.port(),
            })?;
        return Ok(Destination {
            target: Target::Service {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                port: port.port,
            },
            authority,
            protocol: Protocol::of(port),
        });
    }
    let workload = mesh
        .workload_by_ip(authority.ip())
        .filter(|w| serves(w))
        .ok_or_else(elsewhere)?;
    if TUNNEL_PORTS.contains(&authority.port()) {
        return Err(NotServed::TunnelPort(authority.port()));
    }
    if !workload.hbone {
        return Err(NotServed::NotEnrolled(format!(
            "{}/{}",
            workload.namespace, workload.name
        )));
    }
    // A pod port speaks what the Service ports targeting it declare.
    let protocol = mesh
        .config()
        .services
        .iter()
        .filter(|s| s.endpoints.contains(&workload.uid))
        .flat_map(|s| &s.ports)
        .find(|p| p.target_port == authority.port())
        .map_or(Protocol::Tcp, Protocol::of);
    Ok(Destination {
        target: Target::Workload {
            uid: workload.uid.clone(),
            port: authority.port(),
        },
        authority,
        protocol,
    })
}

/// Where to send: a pod, over HBONE to its node tunnel, or, for a backend whose pods are
/// behind a waypoint of their own, that waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's uid; for a hop through a waypoint, `waypoint:<namespace>/<name>`.
    pub uid: String,
    /// The CONNECT target: the pod IP and target port; through a waypoint, the backend
    /// Service's VIP and port (the pod's address for a Service without a VIP), as a node
    /// tunnel sends it, so that waypoint routes and applies its policy.
    pub addr: SocketAddr,
    /// The identity the HBONE peer must present: the pod's, or its waypoint's.
    pub identity: SpiffeId,
    /// The backend's own waypoint, when the request goes through it.
    pub waypoint: Option<SocketAddr>,
}

impl Endpoint {
    /// Where the HBONE connection goes: the pod's node tunnel, or the waypoint.
    pub fn hbone_peer(&self) -> SocketAddr {
        self.waypoint
            .unwrap_or_else(|| SocketAddr::new(self.addr.ip(), ambit_hbone::HBONE_PORT))
    }
}

/// Where a destination's requests may go now: for a Service, its ready, enrolled endpoints of
/// the served account; for a pod, that pod (ready or not: the client asked for it).
pub fn endpoints(mesh: &Mesh, served: (&str, &str), target: &Target) -> Vec<Endpoint> {
    let (namespace, service_account) = served;
    match target {
        Target::Service {
            namespace: svc_ns,
            name,
            port,
        } => service_endpoints(mesh, svc_ns, name, *port, |w| {
            (w.namespace == namespace && w.service_account == service_account).then_some(Hop::Pod)
        }),
        Target::Workload { uid, port } => mesh
            .workload_by_uid(uid)
            .and_then(|w| endpoint(mesh, w, *port))
            .into_iter()
            .collect(),
    }
}

/// Where requests a route sent to a backend Service may go: its ready, enrolled endpoints of
/// the served account or of an account without a waypoint, directly; and for pods behind a
/// waypoint of their own, that waypoint, once for all of them (it picks the pod and applies
/// their policy). Never around a waypoint: pods bound to one that has no address yet are left
/// out.
pub fn backend_endpoints(mesh: &Mesh, served: (&str, &str), target: &Target) -> Vec<Endpoint> {
    let Target::Service {
        namespace,
        name,
        port,
    } = target
    else {
        return endpoints(mesh, served, target);
    };
    service_endpoints(mesh, namespace, name, *port, |w| {
        if w.namespace == served.0 && w.service_account == served.1 {
            return Some(Hop::Pod);
        }
        match mesh.waypoint_of(w) {
            Ok(None) => Some(Hop::Pod),
            Ok(Some(waypoint)) => Some(Hop::Waypoint(waypoint)),
            Err(_) => None,
        }
    })
}

/// How a pod of a Service is reached.
enum Hop<'a> {
    Pod,
    Waypoint(&'a Waypoint),
}

/// The ready, enrolled endpoints of a Service port, each reached as `hop` says (not at all
/// when it says `None`). Pods behind one waypoint make one endpoint.
fn service_endpoints<'a>(
    mesh: &'a Mesh,
    namespace: &str,
    name: &str,
    port: u16,
    hop: impl Fn(&'a Workload) -> Option<Hop<'a>>,
) -> Vec<Endpoint> {
    let Some(service) = mesh
        .config()
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == name)
    else {
        return Vec::new();
    };
    let Some(target_port) = service
        .ports
        .iter()
        .find(|p| p.port == port)
        .map(|p| p.target_port)
    else {
        return Vec::new();
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for w in service
        .endpoints
        .iter()
        .filter_map(|uid| mesh.workload_by_uid(uid))
        .filter(|w| w.hbone && w.ready)
    {
        let found = match hop(w) {
            None => None,
            Some(Hop::Pod) => endpoint(mesh, w, target_port),
            Some(Hop::Waypoint(waypoint)) => {
                let uid = format!("waypoint:{}/{}", waypoint.namespace, waypoint.name);
                let target = match service.vips.first() {
                    Some(&vip) => SocketAddr::new(vip, port),
                    None => match w.ips.first() {
                        Some(&ip) => SocketAddr::new(ip, target_port),
                        None => continue,
                    },
                };
                let known = |e: &Endpoint| e.uid == uid && e.addr == target;
                if endpoints.iter().any(known) {
                    continue;
                }
                mesh.waypoint_identity(waypoint).map(|identity| Endpoint {
                    uid,
                    addr: target,
                    identity,
                    waypoint: Some(waypoint.address),
                })
            }
        };
        endpoints.extend(found);
    }
    endpoints
}

fn endpoint(mesh: &Mesh, w: &Workload, port: u16) -> Option<Endpoint> {
    let ip = *w.ips.first()?;
    let identity = mesh.identity(w)?.clone();
    Some(Endpoint {
        uid: w.uid.clone(),
        addr: SocketAddr::new(ip, port),
        identity,
        waypoint: None,
    })
}

#[cfg(test)]
#[path = "destination_tests.rs"]
mod tests;
