//! Config-stream resources into an [`ambit_mesh::MeshConfig`]. Pure: a malformed resource is
//! an error naming it, which the subscription turns into a NACK.

use crate::stream::Resources;
use ambit_mesh::{MeshConfig, Service, ServicePort};
use ambit_policy::{Action, HeaderMatch, Policy, PolicyScope, Rule};
use ambit_proto::config::v1 as pb;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{resource}: {value:?} is not an IP address")]
    Ip { resource: String, value: String },
    #[error("{resource}: port {port} is out of range")]
    Port { resource: String, port: u32 },
    #[error("{resource}: action {action:?} is not ALLOW, DENY or AUDIT")]
    Action { resource: String, action: String },
    #[error("{resource}: identity {identity:?} is not a SPIFFE id")]
    Identity { resource: String, identity: String },
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

/// The mesh model the resources describe.
///
/// - A waypoint with no address yet is left out (its Service has no cluster IP).
/// - A service port whose target is named (0 on the wire) takes the target its endpoints
///   report.
/// - Policies keep their L7 rules: `ambit_policy::authorize` evaluates them fail-safe at L4,
///   and in full at a waypoint.
pub fn mesh_config(trust_domain: &str, resources: &Resources) -> Result<MeshConfig, ConvertError> {
    let mut config = MeshConfig {
        trust_domain: trust_domain.to_owned(),
        ..MeshConfig::default()
    };
    let mut members: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
    for (name, resource) in resources {
        let Some(kind) = &resource.kind else { continue };
        match kind {
            pb::resource::Kind::Namespace(n) => config.namespaces.push(n.name.clone()),
            pb::resource::Kind::Workload(w) => {
                for (service, ports) in &w.services {
                    members
                        .entry(service.as_str())
                        .or_default()
                        .push((w.uid.as_str(), &ports.ports));
                }
                config.workloads.push(ambit_mesh::Workload {
                    uid: w.uid.clone(),
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    service_account: w.service_account.clone(),
                    node: w.node.clone(),
                    ips: ips(name, &w.ips)?,
                    hbone: !w.opted_out,
                    ready: !w.not_ready,
                    labels: w.labels.clone().into_iter().collect(),
                });
            }
            pb::resource::Kind::Waypoint(w) => {
                let Some(vip) = ips(name, &w.vips)?.into_iter().next() else {
                    continue;
                };
                let identity: ambit_identity::SpiffeId =
                    w.identity.parse().map_err(|_| ConvertError::Identity {
                        resource: name.clone(),
                        identity: w.identity.clone(),
                    })?;
                config.waypoints.push(ambit_mesh::Waypoint {
                    name: w.name.clone(),
                    namespace: w.namespace.clone(),
                    for_service_account: w.for_service_account.clone(),
                    service_account: identity.service_account().to_owned(),
                    address: SocketAddr::new(vip, ambit_hbone::HBONE_PORT),
                });
            }
            pb::resource::Kind::AuthorizationPolicy(p) => {
                config.policies.push(policy(name, p)?);
            }
            // Services are read in a second pass; routes are not in the model yet (issue 12).
            pb::resource::Kind::Service(_) | pb::resource::Kind::Route(_) => {}
        }
    }
    for (name, resource) in resources {
        let Some(pb::resource::Kind::Service(s)) = &resource.kind else {
            continue;
        };
        let key = format!("{}/{}", s.namespace, s.name);
        let endpoints = members.get(key.as_str()).map_or(&[][..], Vec::as_slice);
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
        config.services.push(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            vips: ips(name, &s.vips)?,
            ports,
            endpoints: endpoints.iter().map(|(uid, _)| (*uid).to_owned()).collect(),
        });
    }
    Ok(config)
}

fn policy(name: &str, p: &pb::AuthorizationPolicy) -> Result<Policy, ConvertError> {
    let action = match p.action.as_str() {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        other => {
            return Err(ConvertError::Action {
                resource: name.to_owned(),
                action: other.to_owned(),
            });
        }
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for r in &p.rules {
        rules.push(Rule {
            principals: r.principals.clone(),
            namespaces: r.namespaces.clone(),
            ip_blocks: r.ip_blocks.iter().map(|b| b.as_str().into()).collect(),
            ports: r
                .ports
                .iter()
                .map(|p| port(name, *p))
                .collect::<Result<_, _>>()?,
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
        });
    }
    Ok(Policy {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        action,
        selector: (!p.match_labels.is_empty()).then(|| PolicyScope {
            match_labels: p.match_labels.clone().into_iter().collect(),
        }),
        rules,
    })
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
        let config = mesh_config("cluster.local", &sample()).unwrap();
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
            }],
        };
        let converted = policy("authorizationpolicy/demo/p", &p).unwrap();
        assert_eq!(converted.action, Action::Audit);
        let r = &converted.rules[0];
        assert_eq!(r.ip_blocks[0].as_str(), "10.0.0.0/8");
        assert_eq!(r.ports, [8080]);
        assert_eq!(r.hosts, ["*.example.com"]);
        assert_eq!(r.headers[0].value, "alice");
        converted.validate().unwrap();
        let mut bad_port = p;
        bad_port.rules[0].ports = vec![70000];
        assert!(matches!(
            policy("x", &bad_port),
            Err(ConvertError::Port { port: 70000, .. })
        ));
    }

    #[test]
    fn malformed_resources_are_named() {
        let mut r = sample();
        if let Some(pb::resource::Kind::Workload(w)) = &mut r.get_mut("workload/a").unwrap().kind {
            w.ips = vec!["not-an-ip".into()];
        }
        let e = mesh_config("cluster.local", &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "workload/a: \"not-an-ip\" is not an IP address"
        );
        let mut r = sample();
        if let Some(pb::resource::Kind::AuthorizationPolicy(p)) =
            &mut r.get_mut("authorizationpolicy/demo/p").unwrap().kind
        {
            p.action = "LOG".into();
        }
        assert!(matches!(
            mesh_config("cluster.local", &r),
            Err(ConvertError::Action { .. })
        ));
    }
}
