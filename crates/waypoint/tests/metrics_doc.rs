//! The real waypoint binary's `/metrics` after traffic, against docs/metrics.md: every `ambit_`
//! series it exposes is listed there for the waypoint with its labels, and every series listed
//! for the waypoint is exposed. Net `127.118.0.0/16`.
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/metrics_doc.rs"]
mod metrics_doc;
mod support;

use ambit_identity::testing::TestPki;
use std::time::Duration;
use support::*;

const NET: u8 = 118;

/// What one plain request to a standalone waypoint (a mesh file, no config stream) does not
/// count; jwt.rs, extauthz.rs and routing.rs check those.
const NOT_PRODUCED: [&str; 6] = [
    "ambit_waypoint_config_deltas_total",
    "ambit_waypoint_retries_total",
    "ambit_waypoint_mirrors_total",
    "ambit_waypoint_jwt_total",
    "ambit_waypoint_ext_authz_total",
    "ambit_waypoint_ext_authz_duration_seconds",
];

#[tokio::test]
async fn the_scrape_matches_docs_metrics_md() {
    let pki = TestPki::new("cluster.local");
    let _app = recording_pod(&pki, ip(NET, 11), SERVED_SA, "back-1").await;
    let mesh = format!(
        "workloads:\n{}services:\n{}",
        back_pods(NET, 1),
        back_service(NET, 1)
    );
    let waypoint = ChildWaypoint::start(&pki, NET, &mesh, &[]).await;
    let client = Client::new(&pki, NS, "front", waypoint.hbone_addr());
    let mut http = client.http1(&format!("10.96.{NET}.1:80")).await;
    let (status, _, body) = text(http.send_request(get("/", "back")).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = waypoint.get(15020, "/metrics").await;
        let (head, scrape) = answer.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
        let sampled = metrics_doc::check("waypoint", scrape, &NOT_PRODUCED)
            .unwrap_or_else(|problems| panic!("{problems}\n{scrape}"));
        if [
            "ambit_waypoint_requests_total",
            "ambit_waypoint_request_duration_seconds",
        ]
        .iter()
        .all(|s| sampled.contains(*s))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request was not counted in 10 s:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
