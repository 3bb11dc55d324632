//! Root CA rotation under load (issue 15 item 2), the procedure of docs/identity.md step by
//! step with kubectl: a steady load from `client` (node 2) to the `echo` Service (node 1)
//! through both tunnels and echo's waypoint, and one connection held open across the whole
//! rotation, while
//!
//! 1. the new root is added beside the old one (`trusted.crt`): wait until both tunnels and
//!    the waypoint accept a leaf of the new root;
//! 2. the new root signs (`ca.crt`/`ca.key`), the old one still trusted: wait until each
//!    presents a leaf of the new root;
//! 3. the old root is withdrawn: wait until each refuses a leaf of the old root; the held
//!    connection, carried by HBONE connections made under the old root, still echoes, and is
//!    then cut once their drain (30 s) has passed.
//!
//! Zero requests may fail meanwhile. Each wait watches what a
//! peer sees over HBONE (a fresh handshake per look), nothing internal. Needs root (the
//! testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::attacker::{Attacker, mesh_ca};
use ambit_e2e::load::SteadyLoad;
use ambit_e2e::waypoint::WAYPOINT;
use ambit_e2e::{
    CLIENT, LiveConnection, NS, SERVER, SERVER_PORT, SYSTEM_NS, TRUST_DOMAIN, Testbed, User,
    eventually,
};
use ambit_hbone::{HBONE_PORT, HboneError};
use ambit_identity::{CertificateAuthority, TrustBundle};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const RATE: u32 = 50;
/// Long enough for the three steps (each a ConfigMap sync, ~5 s on the testbed; ~20 s in all
/// measured) with margin; the load must outlast the rotation.
const LOAD: Duration = Duration::from_secs(60);
const STEP_WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_load() -> Result<()> {
    ambit_e2e::on_testbed("root_rotation_under_load", "rootrot", 71, async |tb| {
        rotate(tb).await
    })
    .await
}

async fn rotate(tb: &Testbed) -> Result<()> {
    let user = User::new(tb).await?;
    user.install().await?;
    user.deploy_samples().await?;
    user.enroll().await?;
    // Through a waypoint: the load crosses client's tunnel, the waypoint and echo's tunnel.
    user.waypoint().await?;
    let samples = user.samples().await?;
    let waypoint = user.waypoint_pod().await?;
    // Each HBONE server, its identity, and a target it serves (a tunnel: its pod; the
    // waypoint: echo's Service).
    let ends = [
        (&samples.client, CLIENT, None),
        (&waypoint, WAYPOINT, Some(samples.svc)),
        (&samples.server, SERVER, None),
    ];
    let old = mesh_ca(&user.client).await?;
    let new = CertificateAuthority::generate(
        TRUST_DOMAIN.parse()?,
        Duration::from_secs(365 * 24 * 3600),
    )?;
    let both = bundle(&[&old, &new])?;

    let mut held = LiveConnection::open(tb, &samples.client, samples.svc)?;
    user.say.step(&format!(
        "{RATE} requests/s client -> echo ({}) for {} s while the root rotates",
        samples.svc,
        LOAD.as_secs()
    ));
    let load = SteadyLoad::start(tb, &samples.client, samples.svc, RATE, LOAD)?;
    let started = Instant::now();

    user.say.step("1. Add the new root beside the old one");
    patch_root_secret(
        &user,
        &json!({"stringData": {"trusted.crt": new.root_pem()}}),
    )?;
    let only_old = bundle(&[&old])?;
    for (pod, sa, target) in ends {
        until(
            &format!("{sa}'s HBONE server accepts a leaf of the new root"),
            async || Ok(accepts(&new, &only_old, pod, sa, target).await? == Some(true)),
        )
        .await?;
    }
    held.exchange("after-add")?;

    user.say
        .step("2. Sign with the new root; the old one stays trusted");
    let material = new.to_material();
    patch_root_secret(
        &user,
        &json!({"stringData": {
            "ca.crt": material.certificate_pem,
            "ca.key": material.key_pem,
            "trusted.crt": old.root_pem(),
        }}),
    )?;
    let only_new = bundle(&[&new])?;
    for (pod, sa, target) in ends {
        // A client trusting the new root alone accepts the tunnel: its leaf is the new root's.
        until(
            &format!("{sa}'s HBONE server presents a leaf of the new root"),
            async || Ok(accepts(&new, &only_new, pod, sa, target).await? == Some(true)),
        )
        .await?;
    }
    held.exchange("after-switch")?;

    user.say.step("3. Withdraw the old root");
    patch_root_secret(&user, &json!({"data": {"trusted.crt": null}}))?;
    for (pod, sa, target) in ends {
        until(
            &format!("{sa}'s HBONE server refuses a leaf of the old root"),
            async || Ok(accepts(&old, &both, pod, sa, target).await? == Some(false)),
        )
        .await?;
        ensure!(
            accepts(&new, &only_new, pod, sa, target).await? == Some(true),
            "{sa}'s HBONE server refuses the new root's leaves too"
        );
    }
    held.exchange("after-withdrawal")?;
    user.say.say(format!(
        "rotated in {:.1} s; the connection opened before still echoes",
        started.elapsed().as_secs_f64()
    ));
    let held = std::cell::RefCell::new(held);
    until(
        "the held connection, carried under the withdrawn root, is cut after the drain",
        async || Ok(held.borrow_mut().exchange("still-trusted?").is_err()),
    )
    .await?;
    user.say.say(format!(
        "the held connection was cut {:.1} s into the load",
        started.elapsed().as_secs_f64()
    ));
    ensure!(
        started.elapsed() < LOAD,
        "the rotation took {:?}, longer than the load ({LOAD:?}): it was not all under load",
        started.elapsed()
    );

    let report = load.finish().await?;
    user.say.say(format!("load: {report}"));
    ensure!(
        report.failed == 0 && report.requests > 0,
        "requests failed during the root rotation: {report}"
    );
    Ok(())
}

/// `kubectl patch secret ambit-ca` as docs/identity.md has the operator do.
fn patch_root_secret(user: &User<'_>, patch: &serde_json::Value) -> Result<()> {
    let patch = patch.to_string();
    user.kubectl(&[
        "-n", SYSTEM_NS, "patch", "secret", "ambit-ca", "--type", "merge", "-p", &patch,
    ])?;
    Ok(())
}

fn bundle(cas: &[&CertificateAuthority]) -> Result<TrustBundle> {
    let roots = cas.iter().map(|ca| ca.root_certificate().clone());
    Ok(TrustBundle::new(TRUST_DOMAIN.parse()?, roots)?)
}

/// Whether `pod`'s HBONE server and a client with a fresh leaf of `ca`, trusting `trust`,
/// complete a handshake (asking for `target`, the pod's own echo port by default): a CONNECT answered at all (even refused by the app) means both sides accepted
/// the other's certificate. `None` when the probe failed otherwise (a limit, a timeout).
async fn accepts(
    ca: &CertificateAuthority,
    trust: &TrustBundle,
    pod: &Pod,
    sa: &str,
    target: Option<SocketAddr>,
) -> Result<Option<bool>> {
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("pod without an IP")?
        .parse()?;
    let prober = Attacker::minted_by(ca, trust.clone(), NS, CLIENT)?;
    let outcome = prober
        .connect_once(
            SocketAddr::new(ip, HBONE_PORT),
            (NS, sa),
            target.unwrap_or(SocketAddr::new(ip, SERVER_PORT)),
        )
        .await;
    Ok(match outcome {
        Ok(()) | Err(HboneError::Refused { .. }) => Some(true),
        // A certificate refused: by this client (TLS), or by the tunnel (its alert arrives as
        // the HTTP/2 handshake reads).
        Err(HboneError::Tls { .. } | HboneError::H2(_) | HboneError::Io(_)) => Some(false),
        Err(other) => {
            println!("   probe of {sa}'s HBONE server: {other}");
            None
        }
    })
}

/// Polls `check` until it holds, for at most [`STEP_WAIT`].
async fn until(what: &str, check: impl AsyncFn() -> Result<bool>) -> Result<()> {
    eventually(what, STEP_WAIT, || async {
        check().await.ok().filter(|ok| *ok).map(|_| ())
    })
    .await?;
    println!("   {what}");
    Ok(())
}
