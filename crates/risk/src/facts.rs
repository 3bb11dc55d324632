//! What the mesh knows about one namespace, read from its objects by [`NamespaceFacts::build`]:
//! the one place the controller and `kubectl ambit threats` turn objects into facts, so the two
//! never disagree.

use ambit_k8s::crd::{
    AuthorizationPolicy, Gateway, PolicyAction, PolicyRule, RequestAuthentication, WorkloadSelector,
};
use ambit_k8s::names::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE};
use ambit_k8s::ratelimit_crd::{RateLimitPolicy, TargetKind};
use ambit_k8s::route_crd::{GRPCRoute, HTTPRoute, ParentReference};
use ambit_k8s::waypoint::{FOR_SERVICE_ACCOUNT, WAYPOINT_CLASS};
pub use ambit_mesh::protocol::DeclaredBy;
use ambit_mesh::protocol::{self, HttpProtocol};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The objects facts are read from. Objects of other namespaces are ignored, so a caller may
/// pass a whole cluster's.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceObjects<'a> {
    pub namespace: &'a Namespace,
    pub pods: &'a [&'a Pod],
    pub services: &'a [&'a Service],
    pub gateways: &'a [&'a Gateway],
    pub authorization_policies: &'a [&'a AuthorizationPolicy],
    pub request_authentications: &'a [&'a RequestAuthentication],
    pub http_routes: &'a [&'a HTTPRoute],
    pub grpc_routes: &'a [&'a GRPCRoute],
    pub rate_limit_policies: &'a [&'a RateLimitPolicy],
}

/// Mesh-wide settings of the install (Helm values); `None`: not known to the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    /// `controller.certLifetimeSeconds`: the lifetime of workload (leaf) certificates.
    pub leaf_lifetime_seconds: Option<u64>,
    /// `node.tunnel.mode`.
    pub tunnel_mode: Option<TunnelMode>,
    /// `extAuthz.providers`.
    pub ext_authz_providers: Option<Vec<ExtAuthzProviderFacts>>,
}

/// What node tunnels do with plaintext to enrolled pods. A caller that cannot tell (a setting
/// unset, or not one of these) passes `None` as [`MeshSettings::tunnel_mode`], never a guess:
/// LOW-REQ2 then reports the mode unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum TunnelMode {
    Strict,
    Permissive,
}

impl TunnelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

named!(TunnelMode);

/// A tunnel mode that is not one of `strict`, `permissive` (the tunnel's `--mode` values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel mode {0:?} is not one of strict, permissive")]
pub struct UnknownTunnelMode(pub String);

impl std::str::FromStr for TunnelMode {
    type Err = UnknownTunnelMode;

    /// The tunnel's own spelling: exact, as its `--mode` flag takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "permissive" => Ok(Self::Permissive),
            _ => Err(UnknownTunnelMode(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzProviderFacts {
    pub name: String,
    /// A failing server lets requests through: such a provider does not check every request.
    pub fail_open: bool,
}

/// What the mesh knows about one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceFacts {
    pub namespace: String,
    /// Labelled `ambit.dev/dataplane-mode=ambient`.
    pub enrolled: bool,
    /// Application pods labelled `ambit.dev/dataplane-mode=none`.
    pub opted_out_pods: Vec<String>,
    /// A RequestAuthentication of the namespace declares at least one issuer.
    pub issuer_declared: bool,
    /// The service accounts application pods run as (waypoint pods are not applications).
    pub accounts: BTreeMap<String, AccountFacts>,
    pub settings: MeshSettings,
}

/// What the mesh knows about one service account of the namespace. "Covers" below means: every
/// application pod of the account is selected. "Every pod allow-listed by rules that name X"
/// means: every application pod of the account is selected by at least one ALLOW policy, and
/// every rule of every ALLOW policy selecting it names X. Since ALLOW policies add up, one
/// rule without X would let requests without X through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountFacts {
    pub pods: Vec<String>,
    /// Ports of Services selecting the account's pods that a waypoint would parse as HTTP.
    pub http_ports: Vec<HttpPort>,
    /// The account's waypoint, if a Gateway of class `ambit-waypoint` names it.
    pub waypoint: Option<WaypointFacts>,
    /// Every pod allow-listed by rules that name `principals` or `namespaces`: only the peers
    /// they list may connect.
    pub peer_allow_list: bool,
    /// Every pod allow-listed by rules that name `methods`.
    pub method_rules: bool,
    /// A RequestAuthentication with JWT rules covers the account.
    pub request_authentication: bool,
    /// Requests without a valid token are refused: a DENY policy covers the account with a rule
    /// `notRequestPrincipals: ["*"]` and nothing else, or every pod is allow-listed by rules
    /// that name `requestPrincipals`.
    pub request_principal_required: bool,
    pub ext_authz: ExtAuthz,
    /// Every Service with an HTTP port of the account is the parent of an HTTPRoute, and every
    /// rule of those routes sets `timeouts.request` or `timeouts.backendRequest`.
    pub route_timeouts: bool,
    /// Every Service with an HTTP port of the account, or a route attached to it, is the
    /// target of a RateLimitPolicy.
    pub rate_limited: bool,
}

impl AccountFacts {
    pub fn serves_http(&self) -> bool {
        !self.http_ports.is_empty()
    }
}

/// A Service port that speaks HTTP, and the rule that said so (the waypoint's own, shared
/// through `ambit_mesh::protocol`; docs/waypoints.md): `appProtocol` when set, else the port
/// name's prefix before `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPort {
    pub service: String,
    pub port: i32,
    /// The declared protocol, e.g. `http`, `h2c`, `grpc`.
    pub protocol: String,
    pub declared_by: DeclaredBy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaypointFacts {
    /// The Gateway's name (also the waypoint's own service account).
    pub gateway: String,
    /// The Gateway's `Programmed` condition is `True`.
    pub programmed: bool,
    /// Other service accounts whose traffic this waypoint also carries: its own, when
    /// application pods run as it (they hold the waypoint's identity).
    pub shared_with: Vec<String>,
}

/// Whether external authorization (a CUSTOM policy) checks every request to the account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ExtAuthz {
    /// No CUSTOM policy covers the account.
    #[default]
    None,
    /// CUSTOM policies cover the account, but none with an empty rule (`rules: [{}]`): some
    /// requests are not checked.
    SomeRequests,
    /// The CUSTOM policy covering every request names a provider the mesh does not declare
    /// (it then denies what it matches).
    ProviderNotDeclared {
        provider: String,
    },
    /// The CUSTOM policy covering every request names a provider that fails open.
    FailOpen {
        provider: String,
    },
    /// The mesh's providers are not known to the caller.
    ProvidersUnknown {
        provider: String,
    },
    EveryRequest {
        provider: String,
    },
}

impl NamespaceFacts {
    /// The facts of `objects.namespace`.
    pub fn build(objects: &NamespaceObjects<'_>, settings: &MeshSettings) -> Self {
        let ns = objects.namespace;
        let name = ns.metadata.name.clone().unwrap_or_default();
        let gateways: Vec<&Gateway> = mine(objects.gateways, |g| &g.metadata, &name)
            .into_iter()
            .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS)
            .collect();
        let waypoint_names: BTreeSet<&str> = gateways
            .iter()
            .filter_map(|g| g.metadata.name.as_deref())
            .collect();
        let pods: Vec<&Pod> = mine(objects.pods, |p| &p.metadata, &name)
            .into_iter()
            .filter(|p| !finished(p) && !is_waypoint(p, &waypoint_names))
            .collect();
        let services = mine(objects.services, |s| &s.metadata, &name);
        let policies = mine(objects.authorization_policies, |p| &p.metadata, &name);
        let authns: Vec<&RequestAuthentication> =
            mine(objects.request_authentications, |r| &r.metadata, &name)
                .into_iter()
                .filter(|r| !r.spec.jwt_rules.is_empty())
                .collect();
        let http_routes = mine(objects.http_routes, |r| &r.metadata, &name);
        let grpc_routes = mine(objects.grpc_routes, |r| &r.metadata, &name);
        let limits = mine(objects.rate_limit_policies, |r| &r.metadata, &name);
        let waypoints: Vec<(&Gateway, &str)> = gateways
            .iter()
            .filter_map(|g| Some((*g, served_account(g)?)))
            .collect();

        let mut by_account: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in &pods {
            by_account.entry(service_account(p)).or_default().push(p);
        }
        let accounts = by_account
            .iter()
            .map(|(sa, account_pods)| {
                let ctx = AccountContext {
                    namespace: &name,
                    sa,
                    pods: account_pods,
                    by_account: &by_account,
                    services: &services,
                    policies: &policies,
                    http_routes: &http_routes,
                    grpc_routes: &grpc_routes,
                    limits: &limits,
                    waypoints: &waypoints,
                    settings,
                };
                (sa.clone(), ctx.facts(&authns))
            })
            .collect();

        NamespaceFacts {
            enrolled: label(&ns.metadata, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_AMBIENT),
            opted_out_pods: pods
                .iter()
                .filter(|p| label(&p.metadata, DATAPLANE_MODE_LABEL) == Some(DATAPLANE_MODE_NONE))
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect(),
            issuer_declared: !authns.is_empty(),
            accounts,
            settings: settings.clone(),
            namespace: name,
        }
    }

    /// The service accounts serving HTTP.
    pub fn http_accounts(&self) -> impl Iterator<Item = (&String, &AccountFacts)> {
        self.accounts.iter().filter(|(_, a)| a.serves_http())
    }
}

/// What one account's facts are read from.
struct AccountContext<'a> {
    namespace: &'a str,
    sa: &'a str,
    pods: &'a [&'a Pod],
    by_account: &'a BTreeMap<String, Vec<&'a Pod>>,
    services: &'a [&'a Service],
    policies: &'a [&'a AuthorizationPolicy],
    http_routes: &'a [&'a HTTPRoute],
    grpc_routes: &'a [&'a GRPCRoute],
    limits: &'a [&'a RateLimitPolicy],
    waypoints: &'a [(&'a Gateway, &'a str)],
    settings: &'a MeshSettings,
}

impl AccountContext<'_> {
    /// The routes with Service `service` of this namespace as a parent.
    fn attached<'r, R>(
        &self,
        routes: &[&'r R],
        parents: impl Fn(&R) -> &Vec<ParentReference>,
        service: &str,
    ) -> Vec<&'r R> {
        routes
            .iter()
            .copied()
            .filter(|r| {
                parents(r)
                    .iter()
                    .any(|p| is_service(p, self.namespace, service))
            })
            .collect()
    }

    fn facts(&self, authns: &[&RequestAuthentication]) -> AccountFacts {
        let services: Vec<&Service> = self
            .services
            .iter()
            .copied()
            .filter(|s| self.pods.iter().any(|p| selects_pod(s, p)))
            .collect();
        let http_ports: Vec<HttpPort> = services.iter().flat_map(|s| http_ports(s)).collect();
        let http_services: BTreeSet<&str> = http_ports.iter().map(|p| p.service.as_str()).collect();
        AccountFacts {
            pods: self
                .pods
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect(),
            waypoint: self.waypoint(),
            peer_allow_list: self
                .allowed_with(|r| restricts(&r.principals) || restricts(&r.namespaces)),
            method_rules: self.allowed_with(|r| restricts(&r.methods)),
            request_authentication: authns
                .iter()
                .any(|a| self.covered(a.spec.selector.as_ref())),
            request_principal_required: self.denied_without_token()
                || self.allowed_with(|r| !r.request_principals.is_empty()),
            ext_authz: self.ext_authz(),
            route_timeouts: http_services.iter().all(|s| self.timed_out(s)),
            rate_limited: http_services.iter().all(|s| self.rate_limited(s)),
            http_ports,
        }
    }

    /// Whether `selector` selects every pod of the account.
    fn covered(&self, selector: Option<&WorkloadSelector>) -> bool {
        self.pods.iter().all(|p| selects(selector, p))
    }

    /// Whether every pod of the account is allow-listed by rules that `rule` accepts.
    fn allowed_with(&self, rule: impl Fn(&PolicyRule) -> bool) -> bool {
        self.pods.iter().all(|pod| {
            let allows: Vec<&AuthorizationPolicy> = self
                .policies
                .iter()
                .copied()
                .filter(|p| {
                    p.spec.action == PolicyAction::Allow && selects(p.spec.selector.as_ref(), pod)
                })
                .collect();
            !allows.is_empty() && allows.iter().all(|p| p.spec.rules.iter().all(&rule))
        })
    }

    /// Whether a DENY policy covering the account refuses every request without a valid token.
    fn denied_without_token(&self) -> bool {
        let only_tokenless = PolicyRule {
            not_request_principals: vec!["*".into()],
            ..PolicyRule::default()
        };
        self.policies.iter().any(|p| {
            p.spec.action == PolicyAction::Deny
                && self.covered(p.spec.selector.as_ref())
                && p.spec.rules.contains(&only_tokenless)
        })
    }

    fn ext_authz(&self) -> ExtAuthz {
        let custom: Vec<&AuthorizationPolicy> = self
            .policies
            .iter()
            .copied()
            .filter(|p| {
                p.spec.action == PolicyAction::Custom && self.covered(p.spec.selector.as_ref())
            })
            .collect();
        let every: Vec<String> = custom
            .iter()
            .filter(|p| p.spec.rules.iter().any(|r| *r == PolicyRule::default()))
            .filter_map(|p| Some(p.spec.provider.as_ref()?.name.clone()))
            .collect();
        let Some(first) = every.first() else {
            return if custom.is_empty() {
                ExtAuthz::None
            } else {
                ExtAuthz::SomeRequests
            };
        };
        let Some(declared) = &self.settings.ext_authz_providers else {
            return ExtAuthz::ProvidersUnknown {
                provider: first.clone(),
            };
        };
        // Any one fail-closed provider asked for every request is enough: each matching
        // provider is asked in turn and the first denial ends the request.
        if let Some(p) = every
            .iter()
            .find(|p| declared.iter().any(|d| &d.name == *p && !d.fail_open))
        {
            return ExtAuthz::EveryRequest {
                provider: p.clone(),
            };
        }
        match every
            .iter()
            .find(|p| declared.iter().any(|d| &d.name == *p))
        {
            Some(p) => ExtAuthz::FailOpen {
                provider: p.clone(),
            },
            None => ExtAuthz::ProviderNotDeclared {
                provider: first.clone(),
            },
        }
    }

    fn waypoint(&self) -> Option<WaypointFacts> {
        let (gw, _) = self.waypoints.iter().find(|(_, sa)| *sa == self.sa)?;
        let gateway = gw.metadata.name.clone().unwrap_or_default();
        // A Gateway serves one account, so the only other traffic its waypoint can carry is
        // that of application pods running as its own service account.
        let shared_with = if self.by_account.contains_key(&gateway) {
            vec![gateway.clone()]
        } else {
            Vec::new()
        };
        Some(WaypointFacts {
            programmed: gw.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
            }),
            shared_with,
            gateway,
        })
    }

    fn timed_out(&self, service: &str) -> bool {
        let routes = self.attached(self.http_routes, |r| &r.spec.parent_refs, service);
        !routes.is_empty()
            && routes.iter().all(|r| {
                r.spec.rules.iter().all(|rule| {
                    rule.timeouts
                        .as_ref()
                        .is_some_and(|t| t.request.is_some() || t.backend_request.is_some())
                })
            })
    }

    fn rate_limited(&self, service: &str) -> bool {
        let http = self.attached(self.http_routes, |r| &r.spec.parent_refs, service);
        let grpc = self.attached(self.grpc_routes, |r| &r.spec.parent_refs, service);
        let named = |m: &ObjectMeta, name: &str| m.name.as_deref() == Some(name);
        self.limits
            .iter()
            .flat_map(|l| &l.spec.target_refs)
            .any(|t| match t.kind {
                TargetKind::Service => t.name == service,
                TargetKind::HttpRoute => http.iter().any(|r| named(&r.metadata, &t.name)),
                TargetKind::GrpcRoute => grpc.iter().any(|r| named(&r.metadata, &t.name)),
            })
    }
}

/// The objects of namespace `ns`.
fn mine<'a, T>(objects: &[&'a T], meta: impl Fn(&T) -> &ObjectMeta, ns: &str) -> Vec<&'a T> {
    objects
        .iter()
        .copied()
        .filter(|o| meta(o).namespace.as_deref() == Some(ns))
        .collect()
}

/// A parent reference naming Service `name` of the route's own namespace, `ns`.
fn is_service(p: &ParentReference, ns: &str, name: &str) -> bool {
    p.kind.as_deref() == Some("Service")
        && p.group.as_deref().is_none_or(str::is_empty)
        && p.namespace.as_deref().is_none_or(|n| n == ns)
        && p.name == name
}

/// Whether a rule's list names who or what it allows. A list holding `*` does not count: among
/// principals `*` is any authenticated peer, and Istio reads it as "any" in every field, so
/// such a rule allows no fewer than an absent field would (ambit's engine matching no
/// namespace or method named `*` makes the rule narrower, never the report wrong).
/// `requestPrincipals: ["*"]` is not asked this: there `*` means "any valid token", which is
/// what its requirement asks.
fn restricts(values: &[String]) -> bool {
    !values.is_empty() && !values.iter().any(|v| v == "*")
}

fn finished(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

/// A pod the controller runs for one of the waypoint Gateways `gateways`: it runs as the Gateway's service
/// account and its controller is a ReplicaSet of the Deployment named after the Gateway
/// (`<gateway>-<hash>`). Not a label: any pod's author sets those (the Gateway API's
/// `gateway-name` one included), and a pod taken for a waypoint is hidden from LOW-REQ1 and
/// from enforcement. A tenant who can create pods can write these two fields too, but a
/// forged owner does not last: the garbage collector deletes a pod whose owner's uid does not
/// exist, and the real ReplicaSet releases a pod it does not select (dropping the reference:
/// an application again) or, if it selects it, counts it as one of its replicas and deletes
/// the surplus. And such a pod holds the waypoint's identity whatever it is counted as: who
/// may run as that service account is the boundary, not this check.
fn is_waypoint(p: &Pod, gateways: &BTreeSet<&str>) -> bool {
    let sa = service_account(p);
    gateways.contains(sa.as_str())
        && p.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && o.kind == "ReplicaSet"
                && o.name
                    .strip_prefix(sa.as_str())
                    .is_some_and(|r| r.starts_with('-'))
        })
}

fn service_account(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

/// The account a waypoint Gateway serves: its annotation, else its label (as the controller
/// reads it).
fn served_account(g: &Gateway) -> Option<&str> {
    let m = &g.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(FOR_SERVICE_ACCOUNT))
        .or_else(|| m.labels.as_ref()?.get(FOR_SERVICE_ACCOUNT))
        .map(String::as_str)
}

fn selects(selector: Option<&WorkloadSelector>, p: &Pod) -> bool {
    selector.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| label(&p.metadata, k) == Some(v.as_str()))
    })
}

fn selects_pod(s: &Service, p: &Pod) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| {
            !sel.is_empty()
                && sel
                    .iter()
                    .all(|(k, v)| label(&p.metadata, k) == Some(v.as_str()))
        })
}

fn http_ports(s: &Service) -> Vec<HttpPort> {
    let service = s.metadata.name.clone().unwrap_or_default();
    s.spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter_map(|p| {
            let (protocol, declared_by) = protocol::declared(
                p.name.as_deref().unwrap_or_default(),
                p.app_protocol.as_deref().unwrap_or_default(),
            );
            HttpProtocol::of(&protocol).is_some().then(|| HttpPort {
                service: service.clone(),
                port: p.port,
                protocol,
                declared_by,
            })
        })
        .collect()
}

fn label<'a>(m: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    m.labels.as_ref()?.get(name).map(String::as_str)
}
