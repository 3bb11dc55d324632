//! Risk profiles on the testbed (issue 18 item 4): namespace demo, enrolled and labelled
//! `ambit.dev/risk-profile=high` with `ambit.dev/risk-enforcement=enforce`, has no waypoint:
//! its RiskProfile says MEDIUM-REQ1 is unmet and traffic refused (a TrafficRefused Event; a
//! TrafficRefusalLifted one when the waypoint comes), and an HTTP request from
//! `client` to echo through the mesh is refused by echo's node tunnel. `kubectl ambit waypoint
//! apply` and a CUSTOM policy asking Istio's ext_authz sample on every request to echo clear
//! MEDIUM-REQ1 and HIGH-REQ1; the request then flows (allowed by the sample), and `kubectl
//! ambit threats` scores the namespace lower. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::authn::{PROVIDER, ext_authz_provider};
use ambit_e2e::waypoint::{count, until};
use ambit_e2e::{CLIENT, HTTP_SVC_PORT, NS, SERVER, SYSTEM_NS, Testbed, User, spiffe};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Instant;

const CUSTOM_POLICY: &str = "ext-authz-every-request";
const DENIED: &str = "ambit_tcp_denied_total";
/// What the controller's condition messages say of refused accounts (crates/controller risk.rs).
const REFUSED_NOTE: &str = "traffic refused (enforce)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforced_high_profile_refuses_until_waypoint_and_ext_authz() -> Result<()> {
    ambit_e2e::on_testbed(
        "an_enforced_high_profile_refuses_until_waypoint_and_ext_authz",
        "rctrl1",
        69,
        steps,
    )
    .await
}

async fn steps(tb: &Testbed) -> Result<()> {
    let started = Instant::now();
    let user = User::new(tb).await?;
    // The provider is declared from the start: no controller roll later.
    let provider: Vec<String> = ext_authz_provider()
        .as_object()
        .context("provider")?
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("extAuthz.providers[0].{k}={s}"),
            v => format!("extAuthz.providers[0].{k}={v}"),
        })
        .collect();
    let values: Vec<&str> = provider.iter().map(String::as_str).collect();
    user.install_with(&values).await?;
    user.deploy_samples().await?;
    user.ext_authz_server().await?;
    user.kubectl(&["label", "namespace", NS, "ambit.dev/dataplane-mode=ambient"])?;
    let samples = user.carried_by_tunnels().await?;
    let url = format!(
        "http://{}/risk",
        SocketAddr::new(samples.svc.ip(), HTTP_SVC_PORT)
    );
    let get = |header: &'static str| {
        let (user, client, url) = (&user, &samples.client, url.clone());
        move || {
            let url = url.clone();
            async move { user.curl_one(client, &["-H", header, &url]) }
        }
    };
    until("client -> echo over HTTP through the tunnels", || async {
        let reply = get("x-ext-authz: allow")().await?;
        (reply.code == 200)
            .then_some(())
            .ok_or(format!("{reply:?}"))
    })
    .await?;

    let denied_before = denied_by_echo_tunnel(&user, &samples.server).await?;
    user.say
        .step("Risk profile high, enforced, without a waypoint: traffic refused");
    user.kubectl(&[
        "label",
        "namespace",
        NS,
        "ambit.dev/risk-profile=high",
        "ambit.dev/risk-enforcement=enforce",
    ])?;
    let status = until("RiskProfile: MEDIUM-REQ1 unmet, echo refused", || async {
        let status = risk_profile(&user)?;
        let waypoint = condition(&status, "MEDIUM-REQ1")?;
        let refused = &status["refusedServiceAccounts"];
        let message = waypoint["message"].as_str().unwrap_or_default();
        (waypoint["status"] == "False"
            && message.contains(REFUSED_NOTE)
            && *refused == serde_json::json!([SERVER]))
        .then_some(status.clone())
        .ok_or(status.to_string())
    })
    .await?;
    for line in user.kubectl(&["get", "riskprofiles", "-A"])?.lines() {
        user.say.say(line);
    }
    user.say.say(format!(
        "MEDIUM-REQ1: {}",
        condition(&status, "MEDIUM-REQ1").map_err(anyhow::Error::msg)?["message"]
    ));
    let refused = until("client -> echo refused by the mesh", || async {
        match get("x-ext-authz: allow")().await {
            Err(why) => Ok(why),
            Ok(reply) => Err(format!("still answered: {reply:?}")),
        }
    })
    .await?;
    let event = profile_event(&user, "TrafficRefused", REFUSED_NOTE).await?;
    user.say.say(format!("Event TrafficRefused: {event}"));
    let denied = denied_by_echo_tunnel(&user, &samples.server).await?;
    ensure!(
        denied > denied_before,
        "echo's node tunnel should count the refusal ({DENIED} {denied_before} -> {denied})"
    );
    user.say.say(format!("curl {url}: {refused}"));
    user.say.say(format!(
        "echo's node tunnel: {DENIED} from client to echo {denied_before} -> {denied}"
    ));
    let gauge = "ambit_risk_requirement_unmet{namespace=\"demo\",profile=\"high\",requirement=\"MEDIUM-REQ1\"} 1";
    // Each replica evaluates on its own pace (at least every 10 s).
    let exported = until(
        "every controller replica exports the unmet requirement",
        || async {
            let exported = controller_metrics(&user).await.map_err(|e| e.to_string())?;
            exported
                .iter()
                .all(|m| m.contains(gauge))
                .then_some(exported.clone())
                .ok_or(format!("{gauge} not in every replica's /metrics"))
        },
    )
    .await?;
    user.say.say(format!(
        "{} controller replicas export {gauge}",
        exported.len()
    ));
    let before = threat_score(&user)?;

    user.say
        .step("A waypoint for echo and a CUSTOM policy asking ext_authz on every request");
    user.waypoint().await?;
    user.apply(
        &format!("AuthorizationPolicy {CUSTOM_POLICY}"),
        &format!(
            "apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {CUSTOM_POLICY}, namespace: {NS}}}\n\
             spec:\n  action: CUSTOM\n  provider: {{name: {PROVIDER}}}\n  \
             selector: {{matchLabels: {{app: {SERVER}}}}}\n  rules: [{{}}]\n"
        ),
    )?;
    let status = until(
        "RiskProfile: MEDIUM-REQ1 and HIGH-REQ1 met, nothing refused",
        || async {
            let status = risk_profile(&user)?;
            let met = |id| condition(&status, id).map(|c| c["status"] == "True");
            (met("MEDIUM-REQ1")? && met("HIGH-REQ1")? && status["refusedServiceAccounts"].is_null())
                .then_some(status.clone())
                .ok_or(status.to_string())
        },
    )
    .await?;
    user.say.say(format!(
        "RiskProfile {NS}/ambit: {} met, {} unmet, none refused",
        status["met"], status["unmet"]
    ));
    let event = profile_event(&user, "TrafficRefusalLifted", SERVER).await?;
    user.say.say(format!("Event TrafficRefusalLifted: {event}"));
    let reply = until(
        "client -> echo flows through the waypoint and ext_authz",
        || async {
            let reply = get("x-ext-authz: allow")().await?;
            (reply.code == 200)
                .then_some(reply.clone())
                .ok_or(format!("{reply:?}"))
        },
    )
    .await?;
    let denied = get("x-ext-authz: deny")()
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        denied.code == 403,
        "ext_authz should deny without its header: {denied:?}"
    );
    user.say.say(format!(
        "curl -H 'x-ext-authz: allow' {url}: {}; with deny: {}",
        reply.code, denied.code
    ));
    let after = threat_score(&user)?;
    ensure!(
        after < before,
        "kubectl ambit threats should score {NS} lower with a waypoint and ext_authz: {before} -> {after}"
    );
    user.say.say(format!(
        "kubectl ambit threats -n {NS}: total score {before} -> {after}"
    ));

    user.say.step("The label removed: the RiskProfile goes");
    user.kubectl(&["label", "namespace", NS, "ambit.dev/risk-profile-"])?;
    until("RiskProfile deleted", || async {
        let out =
            ambit_e2e::run(
                user.tb
                    .kubectl()
                    .args(["get", "riskprofiles", "-n", NS, "-o", "name"]),
            )
            .map_err(|e| e.to_string())?;
        out.trim().is_empty().then_some(()).ok_or(out)
    })
    .await?;
    user.say
        .say(format!("done in {} s", started.elapsed().as_secs()));
    Ok(())
}

/// Connections from client to echo that echo's node tunnel refused.
/// The messages of the RiskProfile's Events of `reason`, once one contains `wanted`.
async fn profile_event(user: &User<'_>, reason: &str, wanted: &str) -> Result<String> {
    let selector = format!("reason={reason},involvedObject.kind=RiskProfile");
    until(&format!("a {reason} Event on the RiskProfile"), || async {
        let out = ambit_e2e::run(user.tb.kubectl().args([
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={.items[*].message}",
        ]))
        .map_err(|e| e.to_string())?;
        out.contains(wanted)
            .then(|| out.trim().to_owned())
            .ok_or(format!("no such Event yet: {out:?}"))
    })
    .await
}

async fn denied_by_echo_tunnel(user: &User<'_>, server: &Pod) -> Result<u64> {
    let metrics = user.tunnel_metrics(server).await?;
    let (from, to) = (spiffe(NS, CLIENT), spiffe(NS, SERVER));
    let labels = [
        ("direction", "inbound"),
        ("source_identity", from.as_str()),
        ("destination_identity", to.as_str()),
    ];
    Ok(count(&metrics, DENIED, &labels))
}

/// Each controller replica's `/metrics`.
async fn controller_metrics(user: &User<'_>) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(user.client.clone(), SYSTEM_NS);
    let selector = ListParams::default().labels("app.kubernetes.io/name=ambit-controller");
    let mut out = Vec::new();
    for pod in pods.list(&selector).await?.items {
        let ip = ambit_e2e::pod_ip(&pod)?;
        out.push(ambit_e2e::http_get(&format!("{ip}:15014"), "/metrics").await?);
    }
    ensure!(!out.is_empty(), "no controller pod");
    Ok(out)
}

/// The status of demo's RiskProfile, as `kubectl get` shows it.
fn risk_profile(user: &User<'_>) -> Result<Value, String> {
    let out = ambit_e2e::run(user.tb.kubectl().args([
        "get",
        "riskprofile",
        "-n",
        NS,
        "ambit",
        "-o",
        "json",
    ]))
    .map_err(|e| e.to_string())?;
    let object: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(object["status"].clone())
}

/// The condition `id` of a RiskProfile status.
fn condition<'a>(status: &'a Value, id: &str) -> Result<&'a Value, String> {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == id))
        .ok_or(format!("no condition {id} in {status}"))
}

/// `kubectl ambit threats -n demo -o json`: the namespace's scores summed.
fn threat_score(user: &User<'_>) -> Result<u64> {
    let out = user.kubectl(&["ambit", "threats", "-n", NS, "-o", "json"])?;
    let report: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let threats = report["namespaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["namespace"] == NS))
        .and_then(|n| n["threats"].as_array())
        .with_context(|| format!("no threats of {NS}: {out}"))?;
    Ok(threats.iter().filter_map(|t| t["score"].as_u64()).sum())
}
