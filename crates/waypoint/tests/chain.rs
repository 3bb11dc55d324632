//! Two waypoints on loopback over real TLS: a route on `back` (waypoint `waypoint-back`) sends
//! `/pay` to Service `pay`, whose pod runs as `pay` behind its own waypoint (`waypoint-pay`).
//! The first waypoint sends through the second, never around it: the pod's tunnel sees only
//! the second waypoint, and the second waypoint's policy (known to it alone) applies.

#![allow(clippy::unwrap_used)]

mod support;

use ambit_identity::testing::TestPki;
use std::net::SocketAddr;
use support::*;

const NET: u8 = 67;
/// Where the second waypoint listens (`127.68.0.1`).
const PAY_NET: u8 = 68;
const PAY_SA: &str = "pay";
const PAY_WAYPOINT_SA: &str = "waypoint-pay";

/// The pods and Services both waypoints know: back-1 (`back`) and pay-1 (`pay`, bound to
/// waypoint `pay-wp`).
fn common() -> String {
    format!(
        r#"
workloads:
{back_pods}  - {{uid: p1, name: pay-1, namespace: shop, serviceAccount: pay, node: n2, ips: ["127.{NET}.0.12"], waypoint: shop/pay-wp}}
services:
{back_service}  - name: pay
    namespace: shop
    vips: ["10.96.{NET}.12"]
    ports: [{{port: 80, targetPort: 8080, name: http}}]
    endpoints: [p1]
"#,
        back_pods = back_pods(NET, 1),
        back_service = back_service(NET, 1),
    )
}

/// The first waypoint's: the route, and where `pay`'s waypoint is.
fn back_mesh(pay_waypoint: SocketAddr) -> String {
    format!(
        r#"{common}waypoints:
  - {{name: pay-wp, namespace: shop, forServiceAccount: pay, serviceAccount: {PAY_WAYPOINT_SA}, address: "{pay_waypoint}"}}
routes:
  - name: back
    namespace: shop
    parents: [{{namespace: shop, name: back, port: 80}}]
    rules:
      - matches: [{{path: {{type: PathPrefix, value: /pay}}}}]
        backends: [{{namespace: shop, name: pay, port: 80}}]
      - matches: [{{path: {{type: PathPrefix, value: /}}}}]
"#,
        common = common(),
    )
}

/// The second waypoint's: a policy only it has.
fn pay_mesh() -> String {
    format!(
        r#"{common}policies:
  - name: no-pay-secret
    namespace: shop
    action: Deny
    rules: [{{paths: ["/pay/secret"]}}]
"#,
        common = common(),
    )
}

#[tokio::test]
async fn a_backend_behind_its_own_waypoint_is_reached_through_that_waypoint() {
    let pki = TestPki::new("cluster.local");
    pod(&pki, ip(NET, 11), SERVED_SA, "back-1").await;
    let pay_tunnel_saw = pod(&pki, ip(NET, 12), PAY_SA, "pay-1").await;
    let pay_waypoint = waypoint_for(&pki, PAY_NET, &pay_mesh(), (PAY_SA, PAY_WAYPOINT_SA)).await;
    let back_waypoint = waypoint(&pki, NET, &back_mesh(pay_waypoint.hbone_addr)).await;
    for w in [&pay_waypoint, &back_waypoint] {
        assert!(w.shared.mesh().route_errors().is_empty());
    }
    let mut http = Client::new(&pki, NS, "front", back_waypoint.hbone_addr)
        .http1(&format!("10.96.{NET}.1:80"))
        .await;

    let (status, _, body) = text(
        http.send_request(get("/pay/balance", "back"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "pay-1 GET /pay/balance"));
    // The pod's tunnel saw the second waypoint only.
    let saw = pay_tunnel_saw.lock().unwrap().clone();
    assert!(!saw.is_empty());
    assert!(
        saw.iter().all(|id| *id == pki.id(NS, PAY_WAYPOINT_SA)),
        "{saw:?}"
    );

    // The second waypoint's policy applies to what the first sends it.
    let (status, _, body) =
        text(http.send_request(get("/pay/secret", "back")).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("shop/no-pay-secret"), "{body}");

    // The rest: back-1 itself, directly.
    let (status, _, body) = text(http.send_request(get("/other", "back")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /other"));
}
