//! The user's whole path on the testbed, with the real helm and kubectl: install, enroll a
//! namespace of running pods, mutual TLS with the expected SPIFFE ids, a deny policy, the
//! controller away and back under live traffic, a waypoint (HTTP/1.1, h2c and gRPC through
//! it, an L7 deny, no way around it, fail closed at 0 replicas, delete), uninstall back to
//! plain TCP.
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::{PACKAGES, Testbed, User};
use anyhow::{Context, Result};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_path() -> Result<()> {
    if ambit_testbed::skip_without_root("the_users_path") {
        return Ok(());
    }
    ambit_testbed::build_binaries(PACKAGES)?;
    let tb = Testbed::new(ambit_testbed::Config::new("usertest", 47)?.with_nodes(2)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(async |tb| {
        let result = steps(tb).await;
        if result.is_err() {
            eprintln!("logs kept in {}", tb.config.log_dir().display());
        }
        result
    })
    .await
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
