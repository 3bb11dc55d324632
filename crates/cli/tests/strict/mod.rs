//! On the real chart (strict mode by default): the kubelet stand-in's startup, liveness and
//! readiness probes of enrolled pods reach their app from the node (a live app passes, a
//! dead one gets its container restarted), also for pods whose service account is bound to a
//! real waypoint, while a pod outside the mesh gets no plaintext answer from an enrolled pod,
//! with or without a waypoint (an opted-out pod answers it: the control), and nothing on the
//! node's network reaches the tunnel's admin port (its metrics port it does reach).

use ambit_testbed::{Testbed, eventually};
use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn container_status(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a pod outside the mesh finds: `{"enrolled": ..., "behindWaypoint": ..., "optedOut": ...,
/// "admin": ..., "metrics": ...}` as the first line of its log, each "answered", "refused",
/// "reset" or "no answer".
const OUTSIDER: &str = r#"
import json, socket, sys
def http(host, port):
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        return "answered" if s.recv(16).startswith(b"HTTP/1.1") else "no answer"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return "no answer: %s" % e
enrolled, behind_waypoint, opted_out, node = sys.argv[1:5]
print(json.dumps({"enrolled": http(enrolled, 8080), "behindWaypoint": http(behind_waypoint, 8080),
                  "optedOut": http(opted_out, 8080), "admin": http(node, 15000),
                  "metrics": http(node, 15020)}), flush=True)
"#;

/// What a failed probe check needs to be understood: the node's and the agent's view.
fn diagnose(tb: &Testbed) {
    let node_netns = tb.config.node_netns(1);
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output();
        out.map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| e.to_string())
    };
    let ruleset = run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &node_netns,
        "nft",
        "list",
        "ruleset",
    ]));
    let capture = run(tb.kubectl().args([
        "logs",
        "-n",
        "ambit-system",
        "-l",
        "app.kubernetes.io/name=ambit-node",
        "-c",
        "capture",
        "--tail",
        "100",
    ]));
    let pods = run(tb.kubectl().args(["get", "pods", "-A", "-o", "wide"]));
    eprintln!(
        "---- node ruleset ----\n{ruleset}\n---- capture agent ----\n{capture}\n---- pods ----\n{pods}"
    );
}

/// Two echo pods of `service_account` (the namespace's default when `None`), `<prefix>probed`
/// with live startup (tcpSocket), liveness and readiness (httpGet) probes, and
/// `<prefix>dead-liveness` whose liveness probe finds nothing: the first becomes Ready and is
/// never restarted, the second is restarted. Returns the live one.
async fn probed_pair(
    tb: &Testbed,
    pods: &Api<Pod>,
    prefix: &str,
    service_account: Option<&str>,
) -> Result<Pod> {
    let pp = PostParams::default();
    let echo = |name: &str, probes: serde_json::Value| {
        let mut container = json!({"name": "app", "image": "ambit-echo-server", "args": ["8080"]});
        for (k, v) in probes.as_object().into_iter().flatten() {
            container[k] = v.clone();
        }
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "serviceAccountName": service_account,
                     "containers": [container]},
        }))
    };
    let http = json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1});
    let tcp = json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
    let dead = json!({"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2});
    let (live, dead_name) = (format!("{prefix}probed"), format!("{prefix}dead-liveness"));
    pods.create(
        &pp,
        &echo(
            &live,
            json!({"startupProbe": tcp, "livenessProbe": http, "readinessProbe": http}),
        )?,
    )
    .await?;
    pods.create(&pp, &echo(&dead_name, json!({"livenessProbe": dead}))?)
        .await?;

    let probed = match eventually(&format!("{live} Ready in strict mode"), WAIT, || async {
        pods.get(&live).await.ok().filter(ready)
    })
    .await
    {
        Ok(p) => p,
        Err(e) => {
            diagnose(tb);
            return Err(e.into());
        }
    };
    eventually(
        &format!("{dead_name} restarted by its liveness probe"),
        WAIT,
        || async {
            let p = pods.get(&dead_name).await.ok()?;
            (container_status(&p)?.restart_count >= 1).then_some(())
        },
    )
    .await?;
    let probed = pods.get(&live).await.unwrap_or(probed);
    let status = container_status(&probed);
    ensure!(
        status.is_some_and(|s| s.restart_count == 0 && s.started == Some(true)),
        "{live}: a live app's probes passed and it was never restarted: {status:?}"
    );
    Ok(probed)
}

/// A new service account `sa` bound to a real waypoint (`kubectl ambit waypoint apply`): done
/// once the controller marks the Gateway `ambit.dev/serving-since` (the waypoint's pod is
/// Ready), so pods of `sa` created afterwards are behind the waypoint from their start.
async fn waypoint_for(
    tb: &Testbed,
    client: &kube::Client,
    namespace: &str,
    sa: &str,
) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}}))?,
        )
        .await?;
    super::ambit(
        tb,
        &format!("waypoint apply -n {namespace} --service-account {sa} --timeout 90s"),
    )?
    .ok()?;
    let gateway = format!("waypoint-{sa}");
    let bound = eventually(&format!("{sa} bound to {gateway}"), WAIT, || async {
        let gw = super::gateways(client).get(&gateway).await.ok()?;
        gw.metadata
            .annotations?
            .get("ambit.dev/serving-since")
            .cloned()
    })
    .await;
    match bound {
        Ok(since) => {
            eprintln!("{namespace}/{sa} bound to waypoint {gateway} since {since}");
            Ok(())
        }
        Err(e) => {
            diagnose(tb);
            Err(e.into())
        }
    }
}

pub async fn probes_and_plaintext(
    tb: &Testbed,
    client: &kube::Client,
    namespace: &str,
    python: &str,
) -> Result<()> {
    let pp = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let probed = probed_pair(tb, &pods, "", None).await?;
    // The destination tunnel takes a bound account's traffic only from its waypoint; the
    // node's probes must still reach the app, and nothing else in plaintext.
    waypoint_for(tb, client, namespace, "guarded").await?;
    let guarded = probed_pair(tb, &pods, "guarded-", Some("guarded")).await?;

    // The pod outside the mesh.
    let ip = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    };
    let opted_out = pods.get("app-2").await?;
    let node_ip = tb.config.node_ip(1).to_string();
    let outsider: Pod = serde_json::from_value(json!({
        "metadata": {"name": "outsider"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "probe", "image": "debian",
            "command": [python, "-c", OUTSIDER, ip(&probed), ip(&guarded), ip(&opted_out),
                        node_ip]}]},
    }))?;
    let default: Api<Pod> = Api::namespaced(client.clone(), "default");
    default.create(&pp, &outsider).await?;
    eventually("the outsider done", WAIT, || async {
        let p = default.get("outsider").await.ok()?;
        matches!(p.status?.phase.as_deref(), Some("Succeeded" | "Failed")).then_some(())
    })
    .await?;
    let out = tb
        .kubectl()
        .args(["logs", "-n", "default", "outsider"])
        .output()?;
    let found: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("outsider's log: {e}: {out:?}"))?;
    ensure!(
        found["optedOut"] == "answered" && found["metrics"] == "answered",
        "the controls: {found}"
    );
    ensure!(
        found["enrolled"] != "answered" && found["behindWaypoint"] != "answered",
        "plaintext from outside the mesh reached an enrolled pod in strict mode: {found}"
    );
    ensure!(
        found["admin"] == "refused",
        "the tunnel's admin port is on the node's network: {found}"
    );
    Ok(())
}
