#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use ambit_policy::{Action, Policy, Rule};

const YAML: &str = r#"
trustDomain: cluster.local
workloads:
  - {uid: a, name: client, namespace: demo, serviceAccount: client, node: n1, ips: [10.1.0.2], labels: {app: client}}
  - {uid: b1, name: server-1, namespace: demo, serviceAccount: server, node: n1, ips: [10.1.0.3], labels: {app: server}}
  - {uid: b2, name: server-2, namespace: demo, serviceAccount: server, node: n2, ips: [10.2.0.2], labels: {app: server}}
  - {uid: x, name: legacy, namespace: other, serviceAccount: default, node: n2, ips: [10.2.0.3], hbone: false}
services:
  - {name: server, namespace: demo, vips: [10.96.0.10], ports: [{port: 80, targetPort: 8080}], endpoints: [b1, b2]}
waypoints:
  - {name: wp, namespace: demo, forServiceAccount: client, serviceAccount: wp, address: "10.1.0.9:15008"}
policies:
  - name: no-legacy
    namespace: demo
    action: Deny
    selector: {matchLabels: {app: server}}
    rules: [{principals: ["spiffe://cluster.local/ns/other/sa/default"]}]
"#;

fn mesh() -> Mesh {
    Mesh::new(MeshConfig::from_yaml(YAML).unwrap()).unwrap()
}

fn src(id: Option<&str>, ip: &str) -> Source {
    Source {
        identity: id.map(|i| i.parse().unwrap()),
        ip: ip.parse().unwrap(),
    }
}

#[test]
fn indexes_by_uid_ip_and_hostname() {
    let m = mesh();
    assert_eq!(m.workload_by_uid("b2").unwrap().name, "server-2");
    assert_eq!(
        m.workload_by_ip("10.1.0.3".parse().unwrap()).unwrap().uid,
        "b1"
    );
    assert!(m.workload_by_ip("10.9.9.9".parse().unwrap()).is_none());
    assert_eq!(
        m.service_by_hostname("server.demo.svc.cluster.local")
            .unwrap()
            .vips,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        m.identity(m.workload_by_uid("a").unwrap())
            .unwrap()
            .to_string(),
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    let on_n1: Vec<_> = m.workloads_on("n1").map(|w| w.uid.as_str()).collect();
    assert_eq!(on_n1, ["a", "b1"]);
}

#[test]
fn vip_round_robins_and_maps_target_port() {
    let m = mesh();
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        match m.resolve(vip) {
            Destination::Workload(w, port) => {
                assert_eq!(port, 8080);
                seen.push(w.uid.clone());
            }
            Destination::Unknown => panic!("VIP did not resolve"),
        }
    }
    assert_eq!(seen, ["b1", "b2", "b1", "b2"]);
    assert_eq!(
        m.resolve("10.96.0.10:81".parse().unwrap()),
        Destination::Unknown
    );
    assert_eq!(
        m.resolve("8.8.8.8:53".parse().unwrap()),
        Destination::Unknown
    );
    assert!(matches!(
        m.resolve("10.2.0.3:22".parse().unwrap()),
        Destination::Workload(w, 22) if !w.hbone
    ));
}

#[test]
fn vip_picks_ready_endpoints_only() {
    let mut config = MeshConfig::from_yaml(YAML).unwrap();
    config.workloads[1].ready = false; // b1
    let m = Mesh::new(config.clone()).unwrap();
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    for _ in 0..3 {
        assert!(matches!(m.resolve(vip), Destination::Workload(w, 8080) if w.uid == "b2"));
    }
    // The pod itself stays reachable by its IP.
    assert!(matches!(
        m.resolve("10.1.0.3:8080".parse().unwrap()),
        Destination::Workload(w, 8080) if w.uid == "b1"
    ));
    // No ready endpoint: as if there were none.
    config.workloads[2].ready = false; // b2
    let m = Mesh::new(config).unwrap();
    assert_eq!(m.resolve(vip), Destination::Unknown);
    // Readiness defaults to true in a mesh file.
    assert!(mesh().workload_by_uid("b1").unwrap().ready);
}

#[test]
fn waypoint_lookup() {
    let m = mesh();
    let wp = m.waypoint_for("demo", "client").unwrap();
    assert_eq!(
        m.waypoint_identity(wp).unwrap().to_string(),
        "spiffe://cluster.local/ns/demo/sa/wp"
    );
    assert!(m.waypoint_for("demo", "server").is_none());
}

#[test]
fn deny_wins_and_allow_defaults_to_deny() {
    let mut config = MeshConfig::from_yaml(YAML).unwrap();
    let m = Mesh::new(config.clone()).unwrap();
    let server = m.workload_by_uid("b1").unwrap();
    let client = m.workload_by_uid("a").unwrap();
    let legacy = src(
        Some("spiffe://cluster.local/ns/other/sa/default"),
        "10.2.0.3",
    );
    let friend = src(Some("spiffe://cluster.local/ns/demo/sa/client"), "10.1.0.2");
    assert_eq!(
        m.authorize(server, 8080, &legacy),
        Decision::Deny(Some("no-legacy".into()))
    );
    assert_eq!(m.authorize(server, 8080, &friend), Decision::Allow);
    // The deny selects app=server only.
    assert_eq!(m.authorize(client, 8080, &legacy), Decision::Allow);

    config.policies.push(Policy {
        name: "only-port-8080-from-demo".into(),
        namespace: "demo".into(),
        action: Action::Allow,
        selector: None,
        provider: None,
        rules: vec![Rule {
            namespaces: vec!["demo".into()],
            ports: vec![8080],
            ..Default::default()
        }],
    });
    let m = Mesh::new(config).unwrap();
    let server = m.workload_by_uid("b1").unwrap();
    assert_eq!(m.authorize(server, 8080, &friend), Decision::Allow);
    assert_eq!(m.authorize(server, 9090, &friend), Decision::Deny(None));
    // Plaintext has no namespace: the allow cannot match.
    assert_eq!(
        m.authorize(server, 8080, &src(None, "10.1.0.2")),
        Decision::Deny(None)
    );
    // Deny still wins over the allow.
    assert_eq!(
        m.authorize(server, 8080, &legacy),
        Decision::Deny(Some("no-legacy".into()))
    );
}

#[test]
fn requests_are_authorized_with_l7_rules() {
    let mut config = MeshConfig::from_yaml(YAML).unwrap();
    config.policies.push(Policy {
        name: "get-only".into(),
        namespace: "demo".into(),
        action: Action::Allow,
        selector: None,
        provider: None,
        rules: vec![Rule {
            methods: vec!["GET".into()],
            ..Default::default()
        }],
    });
    let m = Mesh::new(config).unwrap();
    let server = m.workload_by_uid("b1").unwrap();
    let friend = src(Some("spiffe://cluster.local/ns/demo/sa/client"), "10.1.0.2");
    let headers = http::HeaderMap::new();
    let request = |method| HttpRequest {
        method,
        path: "/",
        host: "server.demo",
        headers: &headers,
        auth: None,
    };
    let verdict = m.authorize_request(server, 8080, &friend, &request(&http::Method::GET));
    assert_eq!(verdict.decision, Decision::Allow);
    let verdict = m.authorize_request(server, 8080, &friend, &request(&http::Method::POST));
    assert_eq!(verdict.decision, Decision::Deny(None));
    // At L4 the GET-only rule cannot be checked: it allows nothing.
    assert_eq!(m.authorize(server, 8080, &friend), Decision::Deny(None));
}

#[test]
fn invalid_configs_are_refused_with_the_culprit_named() {
    let dup = YAML.replace("ips: [10.2.0.3]", "ips: [10.1.0.3]");
    let err = Mesh::new(MeshConfig::from_yaml(&dup).unwrap()).unwrap_err();
    assert!(err.to_string().contains("10.1.0.3"), "{err}");
    let unknown = YAML.replace("endpoints: [b1, b2]", "endpoints: [b1, nope]");
    let err = Mesh::new(MeshConfig::from_yaml(&unknown).unwrap()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let bad_block = YAML.replace("rules: [{", "rules: [{ipBlocks: [\"10.0.0.0/40\"], ");
    let err = Mesh::new(MeshConfig::from_yaml(&bad_block).unwrap()).unwrap_err();
    assert!(err.to_string().contains("demo/no-legacy"), "{err}");
    assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
    let bad_path = YAML.replace("rules: [{", "rules: [{paths: [\"api\"], ");
    let err = Mesh::new(MeshConfig::from_yaml(&bad_path).unwrap()).unwrap_err();
    assert!(err.to_string().contains("paths"), "{err}");
    assert!(MeshConfig::from_yaml("workloads: [{uid: 1}]").is_err());
}

#[test]
fn round_trips_through_yaml() {
    let config = MeshConfig::from_yaml(YAML).unwrap();
    let again = MeshConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
    assert_eq!(config, again);
}

const ROUTES: &str = r#"
routes:
  - name: canary
    namespace: demo
    parents: [{namespace: demo, name: server, port: 80}]
    rules:
      - matches: [{path: {type: PathPrefix, value: /api}}]
        backends: [{namespace: demo, name: server-v2, port: 80}]
  - name: everywhere
    namespace: demo
    parents: [{namespace: demo, name: server}]
    rules:
      - matches: [{path: {type: Exact, value: /health}}]
  - name: broken
    namespace: demo
    parents: [{namespace: demo, name: server}]
    rules:
      - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
"#;

#[test]
fn routes_are_tabled_per_service_port_and_a_broken_one_is_left_out_alone() {
    let m = Mesh::new(MeshConfig::from_yaml(&format!("{YAML}{ROUTES}")).unwrap()).unwrap();
    let errors: Vec<String> = m.route_errors().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("route demo/broken: rules[0].matches[0].path"),
        "{errors:?}"
    );
    let get = |table: &ambit_route::RouteTable, path: &str| {
        let headers = http::HeaderMap::new();
        let request = ambit_route::Request {
            client_namespace: Some("demo"),
            host: "server",
            method: &http::Method::GET,
            path_and_query: path,
            headers: &headers,
        };
        match table.lookup(&request) {
            ambit_route::Lookup::Matched(m) => Some(m.route.route().name.clone()),
            ambit_route::Lookup::NotFound | ambit_route::Lookup::Unrouted => None,
        }
    };
    // Port 80: its own route and the every-port one.
    let t80 = m.route_table("demo", "server", 80).unwrap();
    assert_eq!(get(t80, "/api/x").as_deref(), Some("canary"));
    assert_eq!(get(t80, "/health").as_deref(), Some("everywhere"));
    assert_eq!(get(t80, "/other"), None);
    // Another port: only the every-port route.
    let t81 = m.route_table("demo", "server", 81).unwrap();
    assert_eq!(get(t81, "/api/x"), None);
    assert_eq!(get(t81, "/health").as_deref(), Some("everywhere"));
    assert!(m.route_table("demo", "client", 80).is_none());
    assert!(m.route_table("other", "server", 80).is_none());
    // The mesh file carries routes both ways.
    let config = MeshConfig::from_yaml(&format!("{YAML}{ROUTES}")).unwrap();
    assert_eq!(
        config,
        MeshConfig::from_yaml(&config.to_yaml().unwrap()).unwrap()
    );
}

#[test]
fn ext_authz_providers_are_checked_and_found_by_name() {
    let providers =
        "extAuthzProviders:\n  - {name: authz, service: 127.0.0.1, port: 9000, protocol: grpc}\n";
    let m = Mesh::new(MeshConfig::from_yaml(&format!("{YAML}{providers}")).unwrap()).unwrap();
    assert_eq!(m.ext_authz_provider("authz").map(|p| p.port), Some(9000));
    assert!(m.ext_authz_provider("other").is_none());
    let bad = providers.replace("port: 9000", "port: 0");
    let err = Mesh::new(MeshConfig::from_yaml(&format!("{YAML}{bad}")).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ext_authz provider authz: port 0 is not a port"
    );
}
