//! Leaf rotation under load (issue 15 item 3): with one-minute workload certificates, a steady
//! load from `client` (node 2) to the `echo` Service (its pod on node 1) through both tunnels
//! sees no failure while every tunnel renews its certificates at half-life. The namespace is
//! enrolled before the pods start (the CNI plugin captures them).
//!
//! The renewals are read from each tunnel's `/config_dump` (`certificates`: identity,
//! notBefore, notAfter of each served pod's certificate), sampled while the load runs. A
//! certificate's issuance is its `notAfter` less the granted lifetime, so the time from one
//! issuance to the next over that lifetime is the fraction of life at which it was renewed,
//! however coarse the sampling.
//!
//! `leaf_rotation_under_load` (CI) runs 50 requests/s for 90 s (three renewals of each
//! certificate); `bench_leaf_rotation` (`cargo xtask bench leaf-rotation`) the numbers,
//! 1,000 requests/s for 5 minutes (`AMBIT_BENCH_RATE`, `AMBIT_BENCH_SECONDS`), and writes
//! `target/ambit-bench/leaf-rotation.json`. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::load::{LoadReport, SteadyLoad};
use ambit_e2e::{CLIENT, NS, SERVER, Testbed, User, spiffe, tunnel_config_dump};
use anyhow::{Context, Result, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The chart's shortest leaf lifetime (`controller.certLifetimeSeconds`).
const LIFETIME_SECS: u64 = 60;
/// How far from half-life a renewal may land: the dump has whole seconds, and a renewal
/// waits for the CA's answer.
const HALF_LIFE_TOLERANCE: f64 = 0.08;
/// How often the tunnels' certificates are sampled: well under the 30 s between renewals.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_rotation_under_load() -> Result<()> {
    ambit_e2e::on_testbed("leaf_rotation_under_load", "leafrot", 67, async |tb| {
        let run = rotation_under_load(tb, 50, Duration::from_secs(90)).await?;
        run.check(2)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo xtask bench leaf-rotation"]
async fn bench_leaf_rotation() -> Result<()> {
    let env = |key: &str, default: u64| -> Result<u64> {
        std::env::var(key).map_or(Ok(default), |v| v.parse().context(key.to_owned()))
    };
    let rate = u32::try_from(env("AMBIT_BENCH_RATE", 1000)?)?;
    let seconds = env("AMBIT_BENCH_SECONDS", 300)?;
    ambit_e2e::on_testbed("bench_leaf_rotation", "leafb", 68, async |tb| {
        let run = rotation_under_load(tb, rate, Duration::from_secs(seconds)).await?;
        write_bench(rate, seconds, &run)?;
        // A run shorter than two renewals (a smoke run) can only check the rest.
        run.check(usize::from(seconds >= 2 * LIFETIME_SECS))
    })
    .await
}

/// What one run saw.
struct Run {
    load: LoadReport,
    /// Per tunnel (node) and identity, the certificates seen, as (notBefore, notAfter).
    certificates: BTreeMap<(u8, String), BTreeSet<(u64, u64)>>,
}

impl Run {
    /// The certificates of `client` on its tunnel and of `echo` on its: the two ends of every
    /// request.
    fn ends(&self) -> [(u8, String); 2] {
        [(2, spiffe(NS, CLIENT)), (1, spiffe(NS, SERVER))]
    }

    /// Issuance to next issuance over the lifetime, for each renewal of `end`.
    fn renewal_fractions(&self, end: &(u8, String)) -> Vec<f64> {
        let issued: Vec<u64> = self
            .certificates
            .get(end)
            .into_iter()
            .flatten()
            .map(|(_, not_after)| not_after - LIFETIME_SECS)
            .collect();
        issued
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / LIFETIME_SECS as f64)
            .collect()
    }

    /// Zero failed requests; at least `renewals` renewals at each end, each at half-life.
    fn check(&self, renewals: usize) -> Result<()> {
        ensure!(
            self.load.failed == 0 && self.load.requests > 0,
            "requests failed under rotation: {}",
            self.load
        );
        for end in self.ends() {
            let fractions = self.renewal_fractions(&end);
            ensure!(
                fractions.len() >= renewals,
                "node {}'s tunnel renewed {} {} time(s), expected {renewals}: {:?}",
                end.0,
                end.1,
                fractions.len(),
                self.certificates.get(&end)
            );
            ensure!(
                fractions
                    .iter()
                    .all(|f| (f - 0.5).abs() <= HALF_LIFE_TOLERANCE),
                "node {}'s tunnel renewed {} at fractions {fractions:?} of its life, not at half",
                end.0,
                end.1
            );
        }
        Ok(())
    }
}

/// Installs ambit with one-minute leaves, enrolls the samples, and runs `rate` requests/s
/// client -> echo for `duration`, sampling both tunnels' certificates meanwhile.
async fn rotation_under_load(tb: &Testbed, rate: u32, duration: Duration) -> Result<Run> {
    let user = User::new(tb).await?;
    let lifetime = format!("controller.certLifetimeSeconds={LIFETIME_SECS}");
    user.install_with(&[&lifetime]).await?;
    // Enrolled before the pods start: the CNI plugin captures them as they are created.
    user.kubectl(&["create", "namespace", NS])?;
    user.kubectl(&["label", "namespace", NS, "ambit.dev/dataplane-mode=ambient"])?;
    user.deploy_samples().await?;
    let samples = user.carried_by_tunnels().await?;
    user.say.step(&format!(
        "{rate} requests/s client -> echo ({}) for {} s, with {LIFETIME_SECS} s leaves",
        samples.svc,
        duration.as_secs()
    ));
    let load = SteadyLoad::start(tb, &samples.client, samples.svc, rate, duration)?;
    let mut certificates: BTreeMap<(u8, String), BTreeSet<(u64, u64)>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        for k in [1, 2] {
            // A missed sample only coarsens the record: the next one sees the same certificate.
            let Ok(dump) = tunnel_config_dump(tb, k) else {
                continue;
            };
            for c in dump["certificates"].as_array().into_iter().flatten() {
                let (Some(id), Some(nb), Some(na)) = (
                    c["identity"].as_str(),
                    c["notBefore"].as_u64(),
                    c["notAfter"].as_u64(),
                ) else {
                    continue;
                };
                certificates
                    .entry((k, id.to_owned()))
                    .or_default()
                    .insert((nb, na));
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let load = load.finish().await?;
    let run = Run { load, certificates };
    user.say.say(format!("load: {}", run.load));
    for end in run.ends() {
        user.say.say(format!(
            "node {}: {} renewed at {:?} of its life",
            end.0,
            end.1,
            run.renewal_fractions(&end)
        ));
    }
    Ok(run)
}

/// `target/ambit-bench/leaf-rotation.json`.
fn write_bench(rate: u32, seconds: u64, run: &Run) -> Result<()> {
    let fractions: Vec<f64> = run
        .ends()
        .iter()
        .flat_map(|end| run.renewal_fractions(end))
        .collect();
    let json = serde_json::json!({
        "rate": rate,
        "seconds": seconds,
        "lifetime_s": LIFETIME_SECS,
        "requests": run.load.requests,
        "failed_requests": run.load.failed,
        "errors": run.load.errors,
        "latency_ms": run.load.json["latency_ms"],
        "renewals": fractions.len(),
        "renewal_at_fraction_of_life": fractions,
    });
    let dir = ambit_e2e::repo_root().join("target/ambit-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("leaf-rotation.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("{json:#}\nwritten to {}", path.display());
    Ok(())
}
