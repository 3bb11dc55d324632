//! `ambit-demo` (run by `cargo xtask demo`): the user's path on the local testbed, narrated,
//! leaving the mesh installed to poke around.

use ambit_e2e::{NS, PACKAGES, SYSTEM_NS, Testbed, User};
use anyhow::{Context, Result};
use std::time::Duration;

/// How long the demo waits for the controller to report on a namespace it just labelled.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "the demo needs root: it creates network namespaces and a local control plane"
    );
    ambit_testbed::build_binaries(PACKAGES)?;
    let config =
        ambit_testbed::Config::new(ambit_testbed::config::DEFAULT_NAME, 1)?.with_nodes(2)?;
    let tb =
        Testbed::new(config).context("is the testbed set up? run `cargo xtask testbed setup`")?;
    println!("== Bringing up the local testbed (a real kube-apiserver, 2 network-namespace nodes)");
    tb.up().await?;
    let user = User::new(&tb).await?;
    user.install().await?;
    user.deploy_samples().await?;
    user.plain_before_enrollment().await?;
    user.enroll().await?;
    user.deny_one_client().await?;
    user.waypoint_steps().await?;
    // Put the waypoint back, so the testbed is left with one to look at.
    user.say.step("The waypoint again, to poke around");
    user.waypoint_command("apply")?;
    user.waypoint_pod().await?;
    // The L7 policy went with the waypoint; it comes back with it.
    user.l7_deny().await?;
    let samples = user.samples().await?;
    let status = user
        .kubectl(&["ambit", "status"])
        .unwrap_or_else(|e| e.to_string());
    user.say.step("kubectl ambit status");
    for line in status.lines() {
        user.say.say(line);
    }
    captured_and_risk(&user).await?;
    println!(
        "\n== Poke around (docs/quickstart.md)\n   eval \"$(cargo xtask testbed env)\"      # KUBECONFIG\n   \
         . /var/cache/ambit/testbed.env          # AMBIT_KUBECTL, AMBIT_HELM\n   \
         export PATH=\"$(dirname $AMBIT_KUBECTL):$(dirname $AMBIT_HELM):$PWD/target/debug:$PATH\"\n   \
         kubectl get pods -A -o wide\n   kubectl ambit status\n   kubectl ambit config dump --node {node}\n   \
         kubectl logs -n {SYSTEM_NS} -l app.kubernetes.io/name=ambit-node -c tunnel   # access log\n   \
         kubectl get authorizationpolicies -n {NS}\n   \
         kubectl get riskprofiles -A; kubectl ambit threats -n {NS}\n   \
         kubectl ambit waypoint status -n {NS} --service-account echo\n   \
         kubectl logs -n {NS} deploy/{waypoint}     # the waypoint's access log (JSON)\n   \
         ip netns exec {client_netns} curl -X DELETE http://{http}/admin/x   # as the client pod: 403\n\n\
         == Tear down\n   cargo xtask testbed down\n",
        node = tb.config.node_name(1),
        waypoint = ambit_e2e::waypoint::WAYPOINT,
        client_netns = tb.pod_netns(&samples.client).unwrap_or_default(),
        http = std::net::SocketAddr::new(samples.svc.ip(), ambit_e2e::HTTP_SVC_PORT),
    );
    Ok(())
}

/// What the CA checks before it signs for a node tunnel (each node's captured pods), and the
/// namespace against SP 800-233's high-risk requirements, reported (not enforced: the demo's
/// other services have no waypoint) with its threat scores.
async fn captured_and_risk(user: &User<'_>) -> Result<()> {
    user.say
        .step("NodeCapture: the pods each node's capture agent handed to its tunnel");
    show(user, &["get", "nodecaptures"])?;
    user.say
        .step("Risk profile high on namespace demo, reported (docs/risk-profiles.md)");
    user.kubectl(&["label", "namespace", NS, "ambit.dev/risk-profile=high"])?;
    let status = [
        "get",
        "riskprofiles",
        "-n",
        NS,
        "ambit",
        "-o",
        "jsonpath={.status.unmet}",
    ];
    // Polled quietly: the narration shows the result, not each try.
    ambit_e2e::eventually("the RiskProfile of demo evaluated", WAIT, || async {
        ambit_e2e::run(user.tb.kubectl().args(status))
            .ok()
            .filter(|unmet| !unmet.is_empty())
    })
    .await?;
    show(user, &["get", "riskprofiles", "-A"])?;
    show(
        user,
        &[
            "get",
            "riskprofiles",
            "-n",
            NS,
            "ambit",
            "-o",
            "jsonpath={range .status.conditions[?(@.status==\"False\")]}{.type}: {.message}{\"\\n\"}{end}",
        ],
    )?;
    user.say.step("kubectl ambit threats -n demo");
    show(user, &["ambit", "threats", "-n", NS])?;
    Ok(())
}

/// Runs kubectl with `args` and narrates its output.
fn show(user: &User<'_>, args: &[&str]) -> Result<()> {
    for line in user.kubectl(args)?.lines() {
        user.say.say(line);
    }
    Ok(())
}
