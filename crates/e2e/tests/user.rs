//! The user's whole path on the testbed, with the real helm and kubectl: install, enroll a
//! namespace of running pods, mutual TLS with the expected SPIFFE ids, a deny policy, the
//! controller away and back under live traffic, a waypoint (HTTP/1.1, h2c and gRPC through
//! it, an L7 deny, no way around it, fail closed at 0 replicas, delete), uninstall back to
//! plain TCP.
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::{Testbed, User};
use anyhow::Result;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_path() -> Result<()> {
    ambit_e2e::on_testbed("the_users_path", "usertest", 47, steps).await
}

async fn steps(tb: &Testbed) -> Result<()> {
    let user = User::new(tb).await?;
    user.install().await?;
    user.deploy_samples().await?;
    user.plain_before_enrollment().await?;
    user.enroll().await?;
    user.controller_restart().await?;
    user.deny_one_client().await?;
    user.waypoint_steps().await?;
    user.uninstall().await?;
    Ok(())
}
