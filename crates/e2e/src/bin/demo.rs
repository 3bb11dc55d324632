//! `ambit-demo` (run by `cargo xtask demo`): the user's path on the local testbed, narrated,
//! leaving the mesh installed to poke around.

use ambit_e2e::{NS, PACKAGES, SYSTEM_NS, Testbed, User};
use anyhow::{Context, Result};

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
    println!(
        "\n== Poke around (docs/quickstart.md)\n   eval \"$(cargo xtask testbed env)\"      # KUBECONFIG\n   \
         . /var/cache/ambit/testbed.env          # AMBIT_KUBECTL, AMBIT_HELM\n   \
         export PATH=\"$(dirname $AMBIT_KUBECTL):$(dirname $AMBIT_HELM):$PWD/target/debug:$PATH\"\n   \
         kubectl get pods -A -o wide\n   kubectl ambit status\n   kubectl ambit config dump --node {node}\n   \
         kubectl logs -n {SYSTEM_NS} -l app.kubernetes.io/name=ambit-node -c tunnel   # access log\n   \
         kubectl get authorizationpolicies -n {NS}\n   \
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
