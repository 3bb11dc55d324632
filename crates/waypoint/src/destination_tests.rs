#![allow(clippy::unwrap_used)]
use super::*;
use ambit_mesh::MeshConfig;

const MESH: &str = r#"
workloads:
  - {uid: b1, name: back-1, namespace: shop, serviceAccount: back, node: n1, ips: [10.1.0.1]}
  - {uid: b2, name: back-2, namespace: shop, serviceAccount: back, node: n2, ips: [10.1.0.2], ready: false}
  - {uid: b3, name: back-3, namespace: shop, serviceAccount: back, node: n2, ips: [10.1.0.3], hbone: false}
  - {uid: f1, name: front-1, namespace: shop, serviceAccount: front, node: n1, ips: [10.1.0.9]}
services:
  - name: back
    namespace: shop
    vips: [10.96.0.1]
    ports:
      - {port: 80, targetPort: 8080, name: http}
      - {port: 9090, targetPort: 9090, name: grpc-api}
      - {port: 5432, targetPort: 5432, appProtocol: postgres}
      - {port: 81, targetPort: 8081, name: web, appProtocol: kubernetes.io/h2c}
    endpoints: [b1, b2, b3]
  - name: front
    namespace: shop
    vips: [10.96.0.9]
    ports: [{port: 80, targetPort: 8080, name: http}]
    endpoints: [f1]
"#;

fn mesh() -> Mesh {
    Mesh::new(MeshConfig::from_yaml(MESH).unwrap()).unwrap()
}

const SERVED: (&str, &str) = ("shop", "back");

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_service_vip_of_the_served_account_is_served_with_its_port_protocol() {
    let mesh = mesh();
    let d = resolve(&mesh, SERVED, addr("10.96.0.1:80")).unwrap();
    assert_eq!(
        d.target,
        Target::Service {
            namespace: "shop".into(),
            name: "back".into(),
            port: 80
        }
    );
    assert_eq!(d.protocol, Protocol::Http);
    assert_eq!(d.service(), "back.shop");
    let proto = |a: &str| resolve(&mesh, SERVED, addr(a)).unwrap().protocol;
    assert_eq!(proto("10.96.0.1:9090"), Protocol::Grpc);
    assert_eq!(proto("10.96.0.1:5432"), Protocol::Tcp);
    assert_eq!(
        proto("10.96.0.1:81"),
        Protocol::Http2,
        "appProtocol wins over the name"
    );
    assert!(matches!(
        resolve(&mesh, SERVED, addr("10.96.0.1:82")),
        Err(NotServed::ServicePort { .. })
    ));
}

#[test]
fn pods_of_the_served_account_are_served_and_nothing_else() {
    let mesh = mesh();
    let d = resolve(&mesh, SERVED, addr("10.1.0.1:8080")).unwrap();
    assert_eq!(
        d.target,
        Target::Workload {
            uid: "b1".into(),
            port: 8080
        }
    );
    assert_eq!(
        d.protocol,
        Protocol::Http,
        "from the Service port targeting it"
    );
    assert_eq!(
        resolve(&mesh, SERVED, addr("10.1.0.1:7000"))
            .unwrap()
            .protocol,
        Protocol::Tcp
    );
    // Another account's Service, another account's pod, an unknown address: not served.
    for other in ["10.96.0.9:80", "10.1.0.9:8080", "192.0.2.1:80"] {
        let e = resolve(&mesh, SERVED, addr(other)).unwrap_err();
        assert!(matches!(e, NotServed::Elsewhere { .. }), "{other}: {e}");
    }
    assert_eq!(
        resolve(&mesh, SERVED, addr("10.1.0.1:15008")),
        Err(NotServed::TunnelPort(15008))
    );
    assert!(matches!(
        resolve(&mesh, SERVED, addr("10.1.0.3:8080")),
        Err(NotServed::NotEnrolled(_))
    ));
}

#[test]
fn only_ready_enrolled_endpoints_of_the_account_take_service_traffic() {
    let mesh = mesh();
    let service = resolve(&mesh, SERVED, addr("10.96.0.1:80")).unwrap();
    let eps = endpoints(&mesh, SERVED, &service.target);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].addr, addr("10.1.0.1:8080"));
    assert_eq!(
        eps[0].identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/back"
    );
    // A pod asked for by address gets the request even when not ready.
    let pod = resolve(&mesh, SERVED, addr("10.1.0.2:8080")).unwrap();
    let eps = endpoints(&mesh, SERVED, &pod.target);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].addr, addr("10.1.0.2:8080"));
}

#[test]
fn protocols_by_name_prefix_or_app_protocol() {
    let port = |name: &str, app: &str| ServicePort {
        port: 1,
        target_port: 1,
        name: name.into(),
        app_protocol: app.into(),
    };
    assert_eq!(Protocol::of(&port("http", "")), Protocol::Http);
    assert_eq!(Protocol::of(&port("http-web", "")), Protocol::Http);
    assert_eq!(Protocol::of(&port("http2", "")), Protocol::Http2);
    assert_eq!(Protocol::of(&port("grpc-api", "")), Protocol::Grpc);
    assert_eq!(Protocol::of(&port("web", "HTTP")), Protocol::Http);
    assert_eq!(Protocol::of(&port("httpx", "")), Protocol::Tcp);
    assert_eq!(Protocol::of(&port("", "")), Protocol::Tcp);
    assert_eq!(Protocol::of(&port("redis", "")), Protocol::Tcp);
}

#[test]
fn backend_pods_behind_their_own_waypoint_are_reached_through_it_never_around_it() {
    let mesh = Mesh::new(
        MeshConfig::from_yaml(
            r#"
workloads:
  - {uid: p1, name: pay-1, namespace: bank, serviceAccount: pay, node: n1, ips: [10.1.1.1]}
  - {uid: p2, name: pay-2, namespace: bank, serviceAccount: pay, node: n2, ips: [10.1.1.2]}
  - {uid: l1, name: ledger-1, namespace: bank, serviceAccount: ledger, node: n1, ips: [10.1.1.3], waypoint: bank/ledger-wp}
  - {uid: o1, name: open-1, namespace: bank, serviceAccount: open, node: n1, ips: [10.1.1.4]}
services:
  - {name: pay, namespace: bank, vips: [10.96.1.1], ports: [{port: 80, targetPort: 8080}], endpoints: [p1, p2, o1]}
  - {name: ledger, namespace: bank, vips: [10.96.1.2], ports: [{port: 80, targetPort: 8080}], endpoints: [l1]}
  - {name: pay-pods, namespace: bank, ports: [{port: 80, targetPort: 8080}], endpoints: [p1]}
waypoints:
  - {name: pay-wp, namespace: bank, forServiceAccount: pay, serviceAccount: pay-wp, address: "10.1.9.9:15008"}
"#,
        )
        .unwrap(),
    )
    .unwrap();
    let backend = |name: &str| {
        let target = Target::Service {
            namespace: "bank".into(),
            name: name.into(),
            port: 80,
        };
        backend_endpoints(&mesh, SERVED, &target)
    };
    // Two pods behind pay-wp: one hop, to the waypoint, CONNECT to the Service VIP; the pod
    // without a waypoint directly.
    let pay = backend("pay");
    assert_eq!(pay.len(), 2, "{pay:?}");
    assert_eq!(pay[0].uid, "waypoint:bank/pay-wp");
    assert_eq!(pay[0].addr, addr("10.96.1.1:80"));
    assert_eq!(pay[0].hbone_peer(), addr("10.1.9.9:15008"));
    assert_eq!(
        pay[0].identity.to_string(),
        "spiffe://cluster.local/ns/bank/sa/pay-wp"
    );
    assert_eq!(pay[1].uid, "o1");
    assert_eq!(pay[1].hbone_peer(), addr("10.1.1.4:15008"));
    // Bound to a waypoint without an address: not reachable at all.
    assert!(backend("ledger").is_empty());
    // No VIP: the pod's address, through its waypoint.
    let pods = backend("pay-pods");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].addr, addr("10.1.1.1:8080"));
    assert_eq!(pods[0].hbone_peer(), addr("10.1.9.9:15008"));
}
