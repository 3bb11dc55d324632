//! Config-stream resources into an [`ambit_mesh::MeshConfig`]. Pure: a malformed resource is
//! rejected alone, named with the reason, which the subscription reports in its ACK.

use crate::stream::Resources;
use ambit_mesh::{MeshConfig, Service, ServicePort};
use ambit_policy::{
    Action, ClaimToHeader, Condition, ExtAuthzBody, ExtAuthzProtocol, ExtAuthzProvider,
    HeaderMatch, JwtHeader, JwtRule, Policy, PolicyScope, RequestAuthentication, Rule,
};
use ambit_proto::config::v1 as pb;
use ambit_route as rt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{resource}: {what} is already held by {holder}")]
    Claimed {
        resource: String,
        what: String,
        holder: String,
    },
    #[error("{resource}: {value:?} is not an IP address")]
    Ip { resource: String, value: String },
    #[error("{resource}: port {port} is out of range")]
    Port { resource: String, port: u32 },
    #[error("{resource}: action {action:?} is not ALLOW, DENY, AUDIT or CUSTOM")]
    Action { resource: String, action: String },
    #[error("{resource}: identity {identity:?} is not a SPIFFE id")]
    Identity { resource: String, identity: String },
    #[error("{resource}: {field} {value:?} is not one this data plane knows")]
    Unknown {
        resource: String,
        field: &'static str,
        value: String,
    },
    #[error("{resource}: {field} is missing")]
    Missing {
        resource: String,
        field: &'static str,
    },
    #[error("{resource}: {field} {value} is out of range")]
    Range {
        resource: String,
        field: &'static str,
        value: u64,
    },
}

fn ips(resource: &str, values: &[String]) -> Result<Vec<IpAddr>, ConvertError> {
    values
        .iter()
        .map(|v| {
            v.parse().map_err(|_| ConvertError::Ip {
                resource: resource.to_owned(),
                value: v.clone(),
            })
        })
        .collect()
}

fn port(resource: &str, port: u32) -> Result<u16, ConvertError> {
    u16::try_from(port).map_err(|_| ConvertError::Port {
        resource: resource.to_owned(),
        port,
    })
}

/// A service's endpoint: the workload uid and its service port -> target port map.
type Member<'a> = (&'a str, &'a BTreeMap<u32, u32>);

/// The model the resources describe, and the resources it leaves out or holds fail-safe.
#[derive(Debug, Default)]
pub struct Converted {
    pub config: MeshConfig,
    /// Each left out (or, for an AuthorizationPolicy or RequestAuthentication, held in its
    /// fail-safe form), with the reason.
    pub rejected: Vec<pb::RejectedResource>,
}

/// The mesh model the resources describe. One resource that cannot be read never costs the
/// others (issue 14, no poison pills): it is rejected alone, and
///
/// - an AuthorizationPolicy that does not validate is kept in its fail-safe form
///   ([`ambit_policy::Policy::fail_safe`]: a DENY's broken field matches anything, an
///   ALLOW's broken value matches nothing); one whose action is unknown denies everything to
///   the workloads it selects; a RequestAuthentication likewise ([`fail_safe`]);
/// - a workload claiming an IP (or uid) an earlier workload claims (by resource name) is left
///   out, so the index stays unambiguous;
/// - any other resource is left out.
///
/// Further:
/// - A waypoint with no address yet is left out (its Service has no cluster IP); the
///   workloads bound to it keep their binding, so tunnels refuse their traffic meanwhile.
/// - A service port whose target is named (0 on the wire) takes the target its endpoints
///   report.
/// - Policies keep their L7 rules: `ambit_policy::authorize` evaluates them fail-safe at L4,
///   and in full at a waypoint.
///
/// [`fail_safe`]: ambit_policy::RequestAuthentication::fail_safe
pub fn mesh_config(trust_domain: &str, resources: &Resources) -> Converted {
    let mut config = MeshConfig {
        trust_domain: trust_domain.to_owned(),
        ..MeshConfig::default()
    };
    let td: Option<ambit_identity::TrustDomain> = trust_domain.parse().ok();
    let mut rejected = Vec::new();
    let mut reject = |resource: &pb::Resource, error: String| {
        tracing::warn!(resource = resource.name, %error, "config resource rejected");
        rejected.push(pb::RejectedResource {
            name: resource.name.clone(),
            version: resource.version.clone(),
            error,
        });
    };
    let mut members: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
    let mut claimed_ips: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut claimed_uids: BTreeSet<&str> = BTreeSet::new();
    for (name, resource) in resources {
        let Some(kind) = &resource.kind else { continue };
        match kind {
            pb::resource::Kind::Namespace(n) => config.namespaces.push(n.name.clone()),
            pb::resource::Kind::Workload(w) => {
                match workload(name, td.as_ref(), w, &claimed_ips, &claimed_uids) {
                    Ok(model) => {
                        claimed_uids.insert(&w.uid);
                        for ip in &model.ips {
                            claimed_ips.insert(*ip, name);
                        }
                        for (service, ports) in &w.services {
                            members
                                .entry(service.as_str())
                                .or_default()
                                .push((w.uid.as_str(), &ports.ports));
                        }
                        config.workloads.push(model);
                    }
                    Err(e) => reject(resource, e.to_string()),
                }
            }
            pb::resource::Kind::Waypoint(w) => match waypoint(name, w) {
                Ok(Some(model)) => config.waypoints.push(model),
                Ok(None) => {}
                Err(e) => reject(resource, e.to_string()),
            },
            pb::resource::Kind::AuthorizationPolicy(p) => {
                let (model, error) = policy(name, p);
                if let Some(error) = error {
                    reject(resource, format!("{error}; enforced fail-safe"));
                }
                config.policies.push(model);
            }
            // `Mesh::new` also leaves out a route that does not compile, alone.
            pb::resource::Kind::Route(r) => match route_model(name, r) {
                Ok(route) => config.routes.push(route),
                Err(e) => reject(resource, e.to_string()),
            },
            pb::resource::Kind::RequestAuthentication(r) => {
                let model = request_authentication(r);
                match model.validate() {
                    Ok(()) => config.request_authentications.push(model),
                    Err(e) => {
                        reject(resource, format!("{name}: {e}; enforced fail-safe"));
                        config.request_authentications.push(model.fail_safe());
                    }
                }
            }
            pb::resource::Kind::RateLimit(r) => match rate_limit(name, r) {
                Ok(limit) => config.rate_limits.push(limit),
                Err(e) => reject(resource, e.to_string()),
            },
            pb::resource::Kind::ExtAuthzProvider(p) => {
                let checked = ext_authz_provider(name, p).map_err(|e| e.to_string());
                match checked.and_then(|p| match p.validate() {
                    Ok(()) => Ok(p),
                    Err(e) => Err(format!("{name}: {e}")),
                }) {
                    Ok(provider) => config.ext_authz_providers.push(provider),
                    Err(e) => reject(resource, e),
                }
            }
            // Services are read in a second pass, once their endpoints are known.
            pb::resource::Kind::Service(_) => {}
        }
    }
    for (name, resource) in resources {
        let Some(pb::resource::Kind::Service(s)) = &resource.kind else {
            continue;
        };
        let key = format!("{}/{}", s.namespace, s.name);
        let endpoints = members.get(key.as_str()).map_or(&[][..], Vec::as_slice);
        match service(name, s, endpoints) {
            Ok(model) => config.services.push(model),
            Err(e) => reject(resource, e.to_string()),
        }
    }
    Converted { config, rejected }
}

fn workload(
    name: &str,
    trust_domain: Option<&ambit_identity::TrustDomain>,
    w: &pb::Workload,
    claimed_ips: &BTreeMap<IpAddr, &str>,
    claimed_uids: &BTreeSet<&str>,
) -> Result<ambit_mesh::Workload, ConvertError> {
    let ips = ips(name, &w.ips)?;
    if let Some(td) = trust_domain {
        ambit_identity::SpiffeId::new(td.clone(), &w.namespace, &w.service_account).map_err(
            |_| ConvertError::Identity {
                resource: name.to_owned(),
                identity: format!("{}/{}", w.namespace, w.service_account),
            },
        )?;
    }
    if claimed_uids.contains(w.uid.as_str()) {
        return Err(ConvertError::Claimed {
            resource: name.to_owned(),
            what: format!("uid {}", w.uid),
            holder: "another workload".into(),
        });
    }
    if let Some(ip) = ips.iter().find(|ip| claimed_ips.contains_key(ip)) {
        return Err(ConvertError::Claimed {
            resource: name.to_owned(),
            what: format!("IP {ip}"),
            holder: claimed_ips[ip].to_owned(),
        });
    }
    Ok(ambit_mesh::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        ips,
        hbone: !w.opted_out,
        ready: !w.not_ready,
        labels: w.labels.clone().into_iter().collect(),
        waypoint: (!w.waypoint.is_empty()).then(|| w.waypoint.clone()),
    })
}

/// `None` while the waypoint has no address.
fn waypoint(name: &str, w: &pb::Waypoint) -> Result<Option<ambit_mesh::Waypoint>, ConvertError> {
    let Some(vip) = ips(name, &w.vips)?.into_iter().next() else {
        return Ok(None);
    };
    let identity: ambit_identity::SpiffeId =
        w.identity.parse().map_err(|_| ConvertError::Identity {
            resource: name.to_owned(),
            identity: w.identity.clone(),
        })?;
    Ok(Some(ambit_mesh::Waypoint {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        for_service_account: w.for_service_account.clone(),
        service_account: identity.service_account().to_owned(),
        address: SocketAddr::new(vip, ambit_hbone::HBONE_PORT),
    }))
}

fn service(name: &str, s: &pb::Service, endpoints: &[Member<'_>]) -> Result<Service, ConvertError> {
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        let target = match p.target_port {
            0 => endpoints
                .iter()
                .find_map(|(_, map)| map.get(&p.port).copied())
                .unwrap_or(p.port),
            t => t,
        };
        ports.push(ServicePort {
            port: port(name, p.port)?,
            target_port: port(name, target)?,
            name: p.name.clone(),
            app_protocol: p.app_protocol.clone(),
        });
    }
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        vips: ips(name, &s.vips)?,
        ports,
        endpoints: endpoints.iter().map(|(uid, _)| (*uid).to_owned()).collect(),
    })
}

fn request_authentication(r: &pb::RequestAuthentication) -> RequestAuthentication {
    RequestAuthentication {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        selector: (!r.match_labels.is_empty()).then(|| PolicyScope {
            match_labels: r.match_labels.clone().into_iter().collect(),
        }),
        jwt_rules: r
            .jwt_rules
            .iter()
            .map(|j| JwtRule {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                jwks: j.jwks.clone(),
                from_headers: j
                    .from_headers
                    .iter()
                    .map(|h| JwtHeader {
                        name: h.name.clone(),
                        prefix: h.prefix.clone(),
                    })
                    .collect(),
                from_params: j.from_params.clone(),
                output_claim_to_headers: j
                    .output_claim_to_headers
                    .iter()
                    .map(|c| ClaimToHeader {
                        header: c.header.clone(),
                        claim: c.claim.clone(),
                    })
                    .collect(),
                forward_original_token: j.forward_original_token,
            })
            .collect(),
    }
}

fn rate_limit(name: &str, r: &pb::RateLimit) -> Result<ambit_mesh::RateLimit, ConvertError> {
    use ambit_mesh::RateLimitTarget;
    let target = match r.target_kind.as_str() {
        "Service" => RateLimitTarget::Service(r.target_name.clone()),
        "HTTPRoute" => RateLimitTarget::HttpRoute(r.target_name.clone()),
        "GRPCRoute" => RateLimitTarget::GrpcRoute(r.target_name.clone()),
        other => {
            return Err(ConvertError::Unknown {
                resource: name.to_owned(),
                field: "target kind",
                value: other.to_owned(),
            });
        }
    };
    Ok(ambit_mesh::RateLimit {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        target,
        requests: r.requests,
        interval_ms: r.interval_ms,
        burst: r.burst,
    })
}

/// The policy, and why it is not enforced as sent, if it is not: one that does not validate
/// is its fail-safe form; one whose action is unknown denies everything to the workloads it
/// selects (it may be a DENY: denying more is the safe side).
fn policy(name: &str, p: &pb::AuthorizationPolicy) -> (Policy, Option<String>) {
    let selector = (!p.match_labels.is_empty()).then(|| PolicyScope {
        match_labels: p.match_labels.clone().into_iter().collect(),
    });
    let action = match p.action.as_str() {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            let deny_all = Policy {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                action: Action::Deny,
                selector,
                // An empty rule matches everything.
                rules: vec![Rule::default()],
                provider: None,
            };
            let error = ConvertError::Action {
                resource: name.to_owned(),
                action: other.to_owned(),
            };
            return (deny_all, Some(error.to_string()));
        }
    };
    let mut out_of_range = None;
    let rules = p
        .rules
        .iter()
        .map(|r| Rule {
            principals: r.principals.clone(),
            namespaces: r.namespaces.clone(),
            ip_blocks: r.ip_blocks.iter().map(|b| b.as_str().into()).collect(),
            // A port past 65535 becomes 0, which is no port either: `fail_safe` treats both
            // alike (a DENY's field matches any port, an ALLOW's value none).
            ports: r
                .ports
                .iter()
                .map(|p| {
                    port(name, *p).unwrap_or_else(|e| {
                        out_of_range.get_or_insert(e);
                        0
                    })
                })
                .collect(),
            methods: r.methods.clone(),
            paths: r.paths.clone(),
            hosts: r.hosts.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| HeaderMatch {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            request_principals: r.request_principals.clone(),
            not_request_principals: r.not_request_principals.clone(),
            when: r
                .when
                .iter()
                .map(|c| Condition {
                    key: c.key.clone(),
                    values: c.values.clone(),
                    not_values: c.not_values.clone(),
                })
                .collect(),
        })
        .collect();
    let policy = Policy {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        action,
        selector,
        rules,
        provider: (!p.provider.is_empty()).then(|| p.provider.clone()),
    };
    let error = match (out_of_range, policy.validate()) {
        (Some(e), _) => e.to_string(),
        (None, Err(e)) => format!("{name}: {e}"),
        (None, Ok(())) => return (policy, None),
    };
    (policy.fail_safe(), Some(error))
}

fn ext_authz_provider(
    name: &str,
    p: &pb::ExtAuthzProvider,
) -> Result<ExtAuthzProvider, ConvertError> {
    let protocol = match p.protocol.as_str() {
        "grpc" => ExtAuthzProtocol::Grpc,
        "http" => ExtAuthzProtocol::Http,
        other => {
            return Err(ConvertError::Unknown {
                resource: name.to_owned(),
                field: "protocol",
                value: other.to_owned(),
            });
        }
    };
    let status_on_error = u16::try_from(p.status_on_error).map_err(|_| ConvertError::Range {
        resource: name.to_owned(),
        field: "status_on_error",
        value: p.status_on_error.into(),
    })?;
    Ok(ExtAuthzProvider {
        name: p.name.clone(),
        service: p.service.clone(),
        port: port(name, p.port)?,
        protocol,
        timeout_ms: p.timeout_ms,
        fail_open: p.fail_open,
        status_on_error,
        include_request_body_in_check: p.include_request_body_in_check.map(|b| ExtAuthzBody {
            max_request_bytes: b.max_request_bytes,
            allow_partial_message: b.allow_partial_message,
        }),
        path_prefix: p.path_prefix.clone(),
        include_request_headers_in_check: p.include_request_headers_in_check.clone(),
        headers_to_upstream_on_allow: p.headers_to_upstream_on_allow.clone(),
        headers_to_downstream_on_allow: p.headers_to_downstream_on_allow.clone(),
        headers_to_downstream_on_deny: p.headers_to_downstream_on_deny.clone(),
    })
}

/// A route, field for field; what the route's own types cannot say (an unknown match type, a
/// port out of range) is an error naming the resource. The rest is `Route::compile`'s to
/// check, in `Mesh::new`, which leaves a route that does not compile out alone.
/// The route model of a `Route` resource named `resource`: what a data plane compiles. The
/// controller uses it to check a route as the waypoints will before it says `Accepted`.
pub fn route_model(resource: &str, r: &pb::Route) -> Result<rt::Route, ConvertError> {
    let c = RouteConvert { resource };
    let kind = match r.kind.as_str() {
        "HTTPRoute" => rt::RouteKind::Http,
        "GRPCRoute" => rt::RouteKind::Grpc,
        other => return Err(c.unknown("kind", other)),
    };
    let parents = r
        .parents
        .iter()
        .map(|p| {
            Ok(rt::RouteParent {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                port: c.optional_u16("parent port", p.port)?,
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let rules = r
        .rules
        .iter()
        .map(|rule| c.rule(rule))
        .collect::<Result<_, _>>()?;
    Ok(rt::Route {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        kind,
        parents,
        hostnames: r.hostnames.clone(),
        rules,
        created_unix_ms: r.created_unix_ms,
    })
}

/// Proto 0 / "" mean "not set" for these fields.
fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn nonempty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

struct RouteConvert<'a> {
    resource: &'a str,
}

impl RouteConvert<'_> {
    fn unknown(&self, field: &'static str, value: &str) -> ConvertError {
        ConvertError::Unknown {
            resource: self.resource.to_owned(),
            field,
            value: value.to_owned(),
        }
    }

    fn u16(&self, field: &'static str, value: u32) -> Result<u16, ConvertError> {
        u16::try_from(value).map_err(|_| ConvertError::Range {
            resource: self.resource.to_owned(),
            field,
            value: value.into(),
        })
    }

    fn optional_u16(&self, field: &'static str, value: u32) -> Result<Option<u16>, ConvertError> {
        match value {
            0 => Ok(None),
            v => self.u16(field, v).map(Some),
        }
    }

    fn rule(&self, rule: &pb::RouteRule) -> Result<rt::RouteRule, ConvertError> {
        let retry = rule
            .retry
            .as_ref()
            .map(|r| {
                Ok(rt::RouteRetry {
                    codes: r
                        .codes
                        .iter()
                        .map(|&c| self.u16("retry code", c))
                        .collect::<Result<_, ConvertError>>()?,
                    attempts: r.attempts,
                    backoff_ms: nonzero(r.backoff_ms),
                })
            })
            .transpose()?;
        Ok(rt::RouteRule {
            name: nonempty(&rule.name),
            matches: rule
                .matches
                .iter()
                .map(|m| self.route_match(m))
                .collect::<Result<_, _>>()?,
            filters: self.filters(&rule.filters)?,
            backends: rule
                .backends
                .iter()
                .map(|b| self.backend(b))
                .collect::<Result<_, _>>()?,
            request_timeout_ms: nonzero(rule.request_timeout_ms),
            backend_request_timeout_ms: nonzero(rule.backend_request_timeout_ms),
            retry,
        })
    }

    fn match_type(&self, t: &str) -> Result<rt::MatchType, ConvertError> {
        match t {
            "" | "Exact" => Ok(rt::MatchType::Exact),
            "RegularExpression" => Ok(rt::MatchType::RegularExpression),
            other => Err(self.unknown("match type", other)),
        }
    }

    fn name_matches(&self, list: &[pb::NameMatch]) -> Result<Vec<rt::NameMatch>, ConvertError> {
        list.iter()
            .map(|m| {
                Ok(rt::NameMatch {
                    name: m.name.clone(),
                    kind: self.match_type(&m.r#type)?,
                    value: m.value.clone(),
                })
            })
            .collect()
    }

    fn route_match(&self, m: &pb::RouteMatch) -> Result<rt::RouteMatch, ConvertError> {
        let path = m
            .path
            .as_ref()
            .map(|p| {
                let kind = match p.r#type.as_str() {
                    "Exact" => rt::PathMatchType::Exact,
                    "" | "PathPrefix" => rt::PathMatchType::PathPrefix,
                    "RegularExpression" => rt::PathMatchType::RegularExpression,
                    other => return Err(self.unknown("path match type", other)),
                };
                Ok(rt::PathMatch {
                    kind,
                    value: p.value.clone(),
                })
            })
            .transpose()?;
        // GRPCRoute's one `method.type` travels with each of service and method.
        let grpc = match (&m.grpc_service, &m.grpc_method) {
            (None, None) => None,
            (service, method) => {
                let typed = service.as_ref().or(method.as_ref());
                let value = |v: &Option<pb::StringMatch>| {
                    v.as_ref().map(|x| x.value.clone()).unwrap_or_default()
                };
                Some(rt::GrpcMethodMatch {
                    kind: self.match_type(typed.map_or("", |x| &x.r#type))?,
                    service: value(service),
                    method: value(method),
                })
            }
        };
        Ok(rt::RouteMatch {
            path,
            headers: self.name_matches(&m.headers)?,
            query_params: self.name_matches(&m.query_params)?,
            method: nonempty(&m.method),
            grpc,
        })
    }

    fn filters(&self, list: &[pb::RouteFilter]) -> Result<Vec<rt::RouteFilter>, ConvertError> {
        list.iter()
            .filter_map(|f| f.kind.as_ref())
            .map(|kind| self.filter(kind))
            .collect()
    }

    fn filter(&self, kind: &pb::route_filter::Kind) -> Result<rt::RouteFilter, ConvertError> {
        use pb::route_filter::Kind;
        Ok(match kind {
            Kind::RequestHeaderModifier(m) => {
                rt::RouteFilter::RequestHeaderModifier(header_modifier(m))
            }
            Kind::ResponseHeaderModifier(m) => {
                rt::RouteFilter::ResponseHeaderModifier(header_modifier(m))
            }
            Kind::UrlRewrite(u) => rt::RouteFilter::UrlRewrite(rt::UrlRewrite {
                hostname: nonempty(&u.hostname),
                path: u.path.as_ref().map(|p| self.path_modifier(p)).transpose()?,
            }),
            Kind::RequestRedirect(r) => rt::RouteFilter::RequestRedirect(rt::RequestRedirect {
                scheme: nonempty(&r.scheme),
                hostname: nonempty(&r.hostname),
                path: r.path.as_ref().map(|p| self.path_modifier(p)).transpose()?,
                port: self.optional_u16("redirect port", r.port)?,
                status_code: self.optional_u16("redirect status", r.status_code)?,
            }),
            Kind::RequestMirror(m) => {
                let backend = m.backend.as_ref().ok_or_else(|| ConvertError::Missing {
                    resource: self.resource.to_owned(),
                    field: "requestMirror.backend",
                })?;
                rt::RouteFilter::RequestMirror(rt::RequestMirror {
                    backend: self.backend(backend)?,
                    fraction_ppm: (m.fraction_ppm != 0).then_some(m.fraction_ppm),
                })
            }
        })
    }

    fn path_modifier(&self, p: &pb::PathModifier) -> Result<rt::PathModifier, ConvertError> {
        match p.r#type.as_str() {
            "ReplaceFullPath" => Ok(rt::PathModifier::ReplaceFullPath(p.value.clone())),
            "ReplacePrefixMatch" => Ok(rt::PathModifier::ReplacePrefixMatch(p.value.clone())),
            other => Err(self.unknown("path modifier type", other)),
        }
    }

    fn backend(&self, b: &pb::RouteBackend) -> Result<rt::RouteBackend, ConvertError> {
        Ok(rt::RouteBackend {
            namespace: b.namespace.clone(),
            name: b.name.clone(),
            port: self.u16("backend port", b.port)?,
            weight: b.weight,
            filters: self.filters(&b.filters)?,
            invalid: b.invalid,
        })
    }
}

fn header_modifier(m: &pb::HeaderModifier) -> rt::HeaderModifier {
    let pairs = |list: &[pb::NameValue]| {
        list.iter()
            .map(|nv| rt::NameValue {
                name: nv.name.clone(),
                value: nv.value.clone(),
            })
            .collect()
    };
    rt::HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resource(name: &str, kind: pb::resource::Kind) -> (String, pb::Resource) {
        (
            name.to_owned(),
            pb::Resource {
                name: name.to_owned(),
                version: "v".into(),
                kind: Some(kind),
            },
        )
    }

    fn workload(uid: &str, ip: &str, opted_out: bool) -> pb::Workload {
        pb::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            service_account: "sa".into(),
            node: "n1".into(),
            ips: if ip.is_empty() {
                vec![]
            } else {
                vec![ip.into()]
            },
            identity: "spiffe://cluster.local/ns/demo/sa/sa".into(),
            services: [(
                "demo/echo".to_string(),
                pb::PortMap {
                    ports: [(80, 8080)].into(),
                },
            )]
            .into(),
            opted_out,
            ..Default::default()
        }
    }

    fn sample() -> Resources {
        use pb::resource::Kind;
        [
            resource(
                "namespace/demo",
                Kind::Namespace(pb::Namespace {
                    name: "demo".into(),
                }),
            ),
            resource(
                "workload/a",
                Kind::Workload(workload("a", "10.0.0.1", false)),
            ),
            resource("workload/b", Kind::Workload(workload("b", "", false))),
            resource(
                "workload/c",
                Kind::Workload(workload("c", "10.0.0.3", true)),
            ),
            resource(
                "service/demo/echo",
                Kind::Service(pb::Service {
                    name: "echo".into(),
                    namespace: "demo".into(),
                    vips: vec!["10.96.0.10".into()],
                    ports: vec![pb::ServicePort {
                        port: 80,
                        target_port: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            ),
            resource(
                "waypoint/demo/w",
                Kind::Waypoint(pb::Waypoint {
                    name: "w".into(),
                    namespace: "demo".into(),
                    for_service_account: "sa".into(),
                    identity: "spiffe://cluster.local/ns/demo/sa/w".into(),
                    vips: vec!["10.96.0.20".into()],
                }),
            ),
            resource(
                "waypoint/demo/pending",
                Kind::Waypoint(pb::Waypoint {
                    name: "pending".into(),
                    namespace: "demo".into(),
                    identity: "spiffe://cluster.local/ns/demo/sa/pending".into(),
                    ..Default::default()
                }),
            ),
            resource(
                "authorizationpolicy/demo/p",
                Kind::AuthorizationPolicy(pb::AuthorizationPolicy {
                    name: "p".into(),
                    namespace: "demo".into(),
                    action: "ALLOW".into(),
                    rules: vec![
                        pb::Rule {
                            principals: vec!["spiffe://cluster.local/ns/demo/sa/x".into()],
                            ..Default::default()
                        },
                        pb::Rule {
                            methods: vec!["GET".into()],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn builds_a_valid_mesh() {
        let Converted { config, rejected } = mesh_config("cluster.local", &sample());
        assert_eq!(rejected, []);
        assert_eq!(config.namespaces, ["demo"]);
        let hbone: Vec<_> = config
            .workloads
            .iter()
            .map(|w| (w.uid.as_str(), w.hbone, w.ips.len()))
            .collect();
        assert_eq!(hbone, [("a", true, 1), ("b", true, 0), ("c", false, 1)]);
        let echo = &config.services[0];
        assert_eq!(echo.endpoints, ["a", "b", "c"]);
        assert_eq!(
            echo.ports,
            [ServicePort {
                port: 80,
                target_port: 8080,
                name: String::new(),
                app_protocol: String::new(),
            }]
        );
        assert_eq!(config.waypoints.len(), 1, "the unaddressed waypoint waits");
        assert_eq!(config.waypoints[0].service_account, "w");
        assert_eq!(config.waypoints[0].address.to_string(), "10.96.0.20:15008");
        // L7 rules are kept (authorize evaluates them fail-safe at L4).
        let rules = &config.policies[0].rules;
        assert_eq!(rules.len(), 2);
        assert!(!rules[0].is_l7() && rules[1].is_l7());
        assert_eq!(rules[1].methods, ["GET"]);
        let mesh = ambit_mesh::Mesh::new(config).unwrap();
        assert!(mesh.namespace_enrolled("demo"));
        assert!(!mesh.namespace_enrolled("other"));
    }

    #[test]
    fn policies_keep_every_field_and_audit() {
        let p = pb::AuthorizationPolicy {
            name: "p".into(),
            namespace: "demo".into(),
            action: "AUDIT".into(),
            match_labels: [("app".to_string(), "echo".to_string())].into(),
            rules: vec![pb::Rule {
                principals: vec!["*".into()],
                namespaces: vec!["demo".into()],
                ip_blocks: vec!["10.0.0.0/8".into()],
                ports: vec![8080],
                methods: vec!["GET".into()],
                paths: vec!["/api/*".into()],
                hosts: vec!["*.example.com".into()],
                headers: vec![pb::HeaderMatch {
                    name: "x-user".into(),
                    value: "alice".into(),
                }],
                request_principals: vec!["https://idp.example/*".into()],
                not_request_principals: vec!["https://idp.example/mallory".into()],
                when: vec![pb::Condition {
                    key: "request.auth.claims[scope]".into(),
                    values: vec!["billing.read".into()],
                    not_values: vec!["admin".into()],
                }],
            }],
            provider: String::new(),
        };
        let (converted, error) = policy("authorizationpolicy/demo/p", &p);
        assert_eq!(error, None);
        assert_eq!(
            converted.rules[0].request_principals,
            ["https://idp.example/*"]
        );
        assert_eq!(converted.rules[0].not_request_principals.len(), 1);
        assert_eq!(converted.rules[0].when[0].not_values, ["admin"]);
        assert_eq!(converted.action, Action::Audit);
        let r = &converted.rules[0];
        assert_eq!(r.ip_blocks[0].as_str(), "10.0.0.0/8");
        assert_eq!(r.ports, [8080]);
        assert_eq!(r.hosts, ["*.example.com"]);
        assert_eq!(r.headers[0].value, "alice");
        converted.validate().unwrap();
        let mut bad_port = p;
        bad_port.rules[0].ports = vec![70000];
        let (audit, error) = policy("x", &bad_port);
        assert_eq!(error.as_deref(), Some("x: port 70000 is out of range"));
        assert!(
            audit.rules.is_empty(),
            "an AUDIT rule left without ports is dropped"
        );
    }

    #[test]
    fn custom_policies_and_ext_authz_providers() {
        let p = pb::AuthorizationPolicy {
            name: "ext".into(),
            namespace: "demo".into(),
            action: "CUSTOM".into(),
            provider: "authz".into(),
            ..Default::default()
        };
        let (converted, error) = policy("authorizationpolicy/demo/ext", &p);
        assert_eq!(error, None);
        assert_eq!(converted.action, Action::Custom);
        assert_eq!(converted.provider.as_deref(), Some("authz"));
        let pb_provider = pb::ExtAuthzProvider {
            name: "authz".into(),
            service: "authz.sec.svc.cluster.local".into(),
            port: 9000,
            protocol: "http".into(),
            timeout_ms: 250,
            fail_open: true,
            status_on_error: 503,
            include_request_body_in_check: Some(pb::ExtAuthzBody {
                max_request_bytes: 4096,
                allow_partial_message: true,
            }),
            path_prefix: "/check".into(),
            include_request_headers_in_check: vec!["x-ext-authz".into()],
            headers_to_upstream_on_allow: vec!["x-user".into()],
            headers_to_downstream_on_allow: vec!["x-trace".into()],
            headers_to_downstream_on_deny: vec!["x-reason".into()],
        };
        let converted = ext_authz_provider("extauthzprovider/authz", &pb_provider).unwrap();
        assert_eq!(converted.protocol, ExtAuthzProtocol::Http);
        assert_eq!((converted.port, converted.timeout_ms), (9000, 250));
        assert_eq!(converted.status_on_error, 503);
        assert_eq!(
            converted
                .include_request_body_in_check
                .map(|b| b.max_request_bytes),
            Some(4096)
        );
        assert_eq!(converted.headers_to_downstream_on_deny, ["x-reason"]);
        converted.validate().unwrap();
        let mut bad = pb_provider;
        bad.protocol = "thrift".into();
        assert!(matches!(
            ext_authz_provider("x", &bad),
            Err(ConvertError::Unknown {
                field: "protocol",
                ..
            })
        ));
    }

    #[test]
    fn request_authentications_keep_every_field() {
        let r = pb::RequestAuthentication {
            name: "idp".into(),
            namespace: "demo".into(),
            match_labels: [("app".to_string(), "echo".to_string())].into(),
            jwt_rules: vec![pb::JwtRule {
                issuer: "https://idp.example".into(),
                audiences: vec!["shop".into()],
                jwks: r#"{"keys":[]}"#.into(),
                from_headers: vec![pb::JwtHeader {
                    name: "x-jwt".into(),
                    prefix: "Token ".into(),
                }],
                from_params: vec!["access_token".into()],
                output_claim_to_headers: vec![pb::ClaimToHeader {
                    header: "x-user".into(),
                    claim: "sub".into(),
                }],
                forward_original_token: true,
            }],
        };
        let mut resources = sample();
        resources.insert(
            "requestauthentication/demo/idp".into(),
            pb::Resource {
                name: "requestauthentication/demo/idp".into(),
                version: "v".into(),
                kind: Some(pb::resource::Kind::RequestAuthentication(r)),
            },
        );
        let config = mesh_config("cluster.local", &resources).config;
        let ra = &config.request_authentications[0];
        assert_eq!(ra.selector.as_ref().unwrap().match_labels["app"], "echo");
        let j = &ra.jwt_rules[0];
        assert_eq!(j.jwks, r#"{"keys":[]}"#);
        assert_eq!(j.from_headers[0].prefix, "Token ");
        assert_eq!(j.from_params, ["access_token"]);
        assert_eq!(j.output_claim_to_headers[0].claim, "sub");
        assert!(j.forward_original_token);
        ambit_mesh::Mesh::new(config).unwrap();
    }

    fn with(
        mut resources: Resources,
        name: &str,
        edit: impl FnOnce(&mut pb::resource::Kind),
    ) -> Resources {
        edit(resources.get_mut(name).unwrap().kind.as_mut().unwrap());
        resources
    }

    fn rejected_names(c: &Converted) -> Vec<&str> {
        c.rejected.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn a_malformed_resource_is_left_out_alone_and_named() {
        let r = with(sample(), "workload/a", |k| {
            if let pb::resource::Kind::Workload(w) = k {
                w.ips = vec!["not-an-ip".into()];
            }
        });
        let c = mesh_config("cluster.local", &r);
        assert_eq!(
            c.rejected[0].error,
            "workload/a: \"not-an-ip\" is not an IP address"
        );
        assert_eq!(rejected_names(&c), ["workload/a"]);
        // The rest is a valid mesh, its service without the left-out endpoint.
        let mesh = ambit_mesh::Mesh::new(c.config).unwrap();
        assert!(mesh.workload_by_uid("a").is_none());
        assert!(mesh.workload_by_uid("b").is_some());

        let r = with(sample(), "service/demo/echo", |k| {
            if let pb::resource::Kind::Service(s) = k {
                s.ports[0].port = 70_000;
            }
        });
        let c = mesh_config("cluster.local", &r);
        assert_eq!(rejected_names(&c), ["service/demo/echo"]);
        assert!(c.config.services.is_empty());
        ambit_mesh::Mesh::new(c.config).unwrap();

        let r = with(sample(), "waypoint/demo/w", |k| {
            if let pb::resource::Kind::Waypoint(w) = k {
                w.identity = "not a spiffe id".into();
            }
        });
        let c = mesh_config("cluster.local", &r);
        assert_eq!(rejected_names(&c), ["waypoint/demo/w"]);
        ambit_mesh::Mesh::new(c.config).unwrap();
    }

    #[test]
    fn a_workload_claiming_a_held_ip_or_uid_is_left_out() {
        let mut r = sample();
        let (name, mut clash) = resource(
            "workload/z",
            Kind::Workload(workload("z", "10.0.0.1", false)),
        );
        r.insert(name, clash.clone());
        let c = mesh_config("cluster.local", &r);
        assert_eq!(rejected_names(&c), ["workload/z"]);
        assert!(
            c.rejected[0]
                .error
                .ends_with("IP 10.0.0.1 is already held by workload/a")
        );
        let mesh = ambit_mesh::Mesh::new(c.config).unwrap();
        assert_eq!(mesh.workload_by_uid("a").unwrap().ips.len(), 1);

        if let Some(Kind::Workload(w)) = &mut clash.kind {
            w.uid = "a".into();
            w.ips.clear();
        }
        r.insert("workload/z".into(), clash);
        let c = mesh_config("cluster.local", &r);
        assert_eq!(rejected_names(&c), ["workload/z"]);
        ambit_mesh::Mesh::new(c.config).unwrap();
    }
    use ambit_policy::Decision;
    use pb::resource::Kind;

    #[test]
    fn a_broken_policy_is_enforced_fail_safe_and_named() {
        let src = |ip: &str| ambit_policy::Source {
            identity: None,
            ip: ip.parse().unwrap(),
        };
        let policy_of = |action: &str, ip_blocks: Vec<String>| {
            let r = with(sample(), "authorizationpolicy/demo/p", |k| {
                if let Kind::AuthorizationPolicy(p) = k {
                    p.action = action.into();
                    p.rules = vec![pb::Rule {
                        ip_blocks,
                        ..Default::default()
                    }];
                }
            });
            let c = mesh_config("cluster.local", &r);
            assert_eq!(rejected_names(&c), ["authorizationpolicy/demo/p"]);
            (
                ambit_mesh::Mesh::new(c.config).unwrap(),
                c.rejected[0].error.clone(),
            )
        };
        // A DENY with an unreadable ipBlock denies every source.
        let (mesh, error) = policy_of("DENY", vec!["office".into()]);
        assert!(error.contains("rules[0].ipBlocks"), "{error}");
        assert!(error.ends_with("enforced fail-safe"), "{error}");
        let a = mesh.workload_by_uid("a").unwrap();
        assert!(matches!(
            mesh.authorize(a, 8080, &src("192.0.2.7")),
            Decision::Deny(_)
        ));
        // An unknown action denies every source to the workloads it selects.
        let (mesh, error) = policy_of("LOG", vec![]);
        assert!(error.contains("\"LOG\""), "{error}");
        let a = mesh.workload_by_uid("a").unwrap();
        assert!(matches!(
            mesh.authorize(a, 8080, &src("192.0.2.7")),
            Decision::Deny(_)
        ));
        // An ALLOW whose only block is unreadable allows nothing (not everything, as no
        // ALLOW policy at all would).
        let (mesh, _) = policy_of("ALLOW", vec!["office".into()]);
        let a = mesh.workload_by_uid("a").unwrap();
        assert!(matches!(
            mesh.authorize(a, 8080, &src("10.1.2.3")),
            Decision::Deny(_)
        ));
        // Its valid blocks still allow.
        let (mesh, _) = policy_of("ALLOW", vec!["office".into(), "10.0.0.0/8".into()]);
        let a = mesh.workload_by_uid("a").unwrap();
        assert_eq!(mesh.authorize(a, 8080, &src("10.1.2.3")), Decision::Allow);
        assert!(matches!(
            mesh.authorize(a, 8080, &src("192.0.2.7")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn routes_keep_every_field_and_reach_the_mesh() {
        let sm = |t: &str, v: &str| pb::StringMatch {
            r#type: t.into(),
            value: v.into(),
        };
        let backend = |name: &str, weight| pb::RouteBackend {
            namespace: "demo".into(),
            name: name.into(),
            port: 80,
            weight,
            ..Default::default()
        };
        let r = pb::Route {
            name: "r".into(),
            namespace: "demo".into(),
            kind: "HTTPRoute".into(),
            parents: vec![pb::RouteParent {
                namespace: "demo".into(),
                name: "echo".into(),
                port: 80,
            }],
            hostnames: vec!["*.example.com".into()],
            rules: vec![pb::RouteRule {
                name: "canary".into(),
                matches: vec![pb::RouteMatch {
                    path: Some(sm("PathPrefix", "/api")),
                    headers: vec![pb::NameMatch {
                        name: "x-v".into(),
                        r#type: "RegularExpression".into(),
                        value: "v[12]".into(),
                    }],
                    method: "GET".into(),
                    ..Default::default()
                }],
                filters: vec![pb::RouteFilter {
                    kind: Some(pb::route_filter::Kind::UrlRewrite(pb::UrlRewrite {
                        hostname: String::new(),
                        path: Some(pb::PathModifier {
                            r#type: "ReplacePrefixMatch".into(),
                            value: "/v2".into(),
                        }),
                    })),
                }],
                backends: vec![backend("echo-v1", 90), backend("echo-v2", 10)],
                request_timeout_ms: 1500,
                retry: Some(pb::RouteRetry {
                    codes: vec![503],
                    attempts: 2,
                    backoff_ms: 0,
                }),
                ..Default::default()
            }],
            created_unix_ms: 7,
        };
        let converted = route_model("route/demo/r", &r).unwrap();
        assert_eq!(converted.kind, rt::RouteKind::Http);
        assert_eq!(converted.parents[0].port, Some(80));
        let rule = &converted.rules[0];
        assert_eq!(rule.name.as_deref(), Some("canary"));
        assert_eq!(
            rule.matches[0].headers[0].kind,
            rt::MatchType::RegularExpression
        );
        assert_eq!(rule.matches[0].method.as_deref(), Some("GET"));
        assert_eq!(rule.request_timeout_ms, Some(1500));
        assert_eq!(rule.backend_request_timeout_ms, None);
        assert_eq!(rule.retry.as_ref().unwrap().backoff_ms, None);
        assert_eq!(
            rule.filters[0],
            rt::RouteFilter::UrlRewrite(rt::UrlRewrite {
                hostname: None,
                path: Some(rt::PathModifier::ReplacePrefixMatch("/v2".into())),
            })
        );
        converted.validate().unwrap();
        // Through mesh_config into a Mesh with its route table.
        let mut resources = sample();
        resources.insert(
            "route/demo/r".into(),
            pb::Resource {
                name: "route/demo/r".into(),
                version: "v".into(),
                kind: Some(pb::resource::Kind::Route(r.clone())),
            },
        );
        let mesh = ambit_mesh::Mesh::new(mesh_config("cluster.local", &resources).config).unwrap();
        assert!(mesh.route_table("demo", "echo", 80).is_some());
        assert!(mesh.route_errors().is_empty());
        // GRPCRoute: service and method travel apart, with one type.
        let mut g = r.clone();
        g.kind = "GRPCRoute".into();
        g.rules[0] = pb::RouteRule {
            matches: vec![pb::RouteMatch {
                grpc_service: Some(sm("Exact", "pkg.Echo")),
                grpc_method: Some(sm("Exact", "")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let grpc = route_model("route/demo/g", &g).unwrap();
        assert_eq!(
            grpc.rules[0].matches[0].grpc,
            Some(rt::GrpcMethodMatch {
                kind: rt::MatchType::Exact,
                service: "pkg.Echo".into(),
                method: String::new(),
            })
        );
        // What the route types cannot hold is named.
        let mut bad = r.clone();
        bad.rules[0].matches[0].path = Some(sm("Suffix", "/x"));
        assert_eq!(
            route_model("route/demo/r", &bad).unwrap_err().to_string(),
            "route/demo/r: path match type \"Suffix\" is not one this data plane knows"
        );
        let mut bad = r;
        bad.rules[0].backends[0].port = 70_000;
        assert!(matches!(
            route_model("route/demo/r", &bad),
            Err(ConvertError::Range { value: 70_000, .. })
        ));
        // ... and left out alone: the rest of the resources still make a mesh.
        let mut resources = sample();
        resources.insert(
            "httproute/demo/r".into(),
            pb::Resource {
                name: "httproute/demo/r".into(),
                version: "1".into(),
                kind: Some(pb::resource::Kind::Route(bad)),
            },
        );
        let Converted { config, rejected } = mesh_config("cluster.local", &resources);
        assert!(config.routes.is_empty());
        assert_eq!(rejected[0].name, "httproute/demo/r");
        assert_eq!(config.workloads.len(), 3);
    }
}
