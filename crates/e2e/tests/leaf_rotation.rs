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
//! `leaf_rotation_under_load` (CI) runs 50 requests/s for 90 s, each a new connection (three
//! renewals of each certificate). `bench_leaf_rotation` (`cargo xtask bench leaf-rotation`)
//! runs the numbers both ways on one testbed, leaves rotating throughout:
//! - kept-alive connections (as real clients send most requests): 1,000 requests/s for 5
//!   minutes (`AMBIT_BENCH_RATE`, `AMBIT_BENCH_SECONDS`) over [`KEEP_ALIVE_CONNECTIONS`]
//!   connections: the target, zero failures;
//! - a new connection per request: a staircase of rates up to the same rate, each for
//!   `AMBIT_BENCH_STEP_SECONDS` (20), stopping at the first step with failures: the rate
//!   sustained without failure, and where it saturates. Reported, not judged.
//!
//! It prints a table and writes `target/ambit-bench/leaf-rotation.json`: the top-level keys
//! are the kept-alive run's, `new_connection` the staircase's. Needs root (the testbed); skips
//! loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::load::{LoadReport, SteadyLoad};
use ambit_e2e::{CLIENT, NS, SERVER, Samples, Testbed, User, spiffe, tunnel_config_dump};
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
/// The kept-alive run's connections: at a few milliseconds a request, each carries a few
/// hundred requests a second, so the rate needs a handful; more absorb latency spikes of a
/// busy machine without queueing.
const KEEP_ALIVE_CONNECTIONS: usize = 32;
/// The new-connection staircase climbs to the bench's rate in this many equal steps.
const STEPS: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_rotation_under_load() -> Result<()> {
    ambit_e2e::on_testbed("leaf_rotation_under_load", "leafrot", 67, async |tb| {
        let mesh = Mesh::up(tb).await?;
        let mut certificates = Certificates::default();
        let load = mesh
            .load(&mut certificates, 50, Duration::from_secs(90), None)
            .await?;
        ensure!(
            load.failed == 0 && load.requests > 0,
            "requests failed under rotation: {load}"
        );
        certificates.check(2)
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
    let step_seconds = env("AMBIT_BENCH_STEP_SECONDS", 20)?;
    ambit_e2e::on_testbed("bench_leaf_rotation", "leafb", 68, async |tb| {
        let mesh = Mesh::up(tb).await?;
        let mut certificates = Certificates::default();
        let kept = mesh
            .load(
                &mut certificates,
                rate,
                Duration::from_secs(seconds),
                Some(KEEP_ALIVE_CONNECTIONS),
            )
            .await?;
        let mut steps = Vec::new();
        for step in 1..=STEPS {
            let step_rate = (rate * step / STEPS).max(1);
            let load = mesh
                .load(
                    &mut certificates,
                    step_rate,
                    Duration::from_secs(step_seconds),
                    None,
                )
                .await?;
            let failed = load.failed > 0;
            steps.push((step_rate, load));
            if failed {
                break;
            }
        }
        let bench = Bench {
            rate,
            seconds,
            step_seconds,
            kept,
            steps,
            certificates,
        };
        bench.print();
        bench.write()?;
        ensure!(
            bench.kept.failed == 0 && bench.kept.requests > 0,
            "kept-alive requests failed under rotation: {}",
            bench.kept
        );
        // A run shorter than two renewals (a smoke run) can only check the rest.
        let total = seconds + step_seconds * bench.steps.len() as u64;
        bench
            .certificates
            .check(usize::from(total >= 2 * LIFETIME_SECS))
    })
    .await
}

/// ambit installed with one-minute leaves, the samples enrolled and carried by the tunnels.
struct Mesh<'a> {
    user: User<'a>,
    samples: Samples,
}

impl<'a> Mesh<'a> {
    async fn up(tb: &'a Testbed) -> Result<Self> {
        let user = User::new(tb).await?;
        let lifetime = format!("controller.certLifetimeSeconds={LIFETIME_SECS}");
        user.install_with(&[&lifetime]).await?;
        // Enrolled before the pods start: the CNI plugin captures them as they are created.
        user.kubectl(&["create", "namespace", NS])?;
        user.kubectl(&["label", "namespace", NS, "ambit.dev/dataplane-mode=ambient"])?;
        user.deploy_samples().await?;
        let samples = user.carried_by_tunnels().await?;
        Ok(Self { user, samples })
    }

    /// Runs `rate` requests/s client -> echo for `duration` (on `keep_alive` connections, or
    /// each on a new one), sampling both tunnels' certificates into `certificates` meanwhile.
    async fn load(
        &self,
        certificates: &mut Certificates,
        rate: u32,
        duration: Duration,
        keep_alive: Option<usize>,
    ) -> Result<LoadReport> {
        let how = keep_alive.map_or("each on a new connection".to_owned(), |n| {
            format!("on {n} kept-alive connections")
        });
        self.user.say.step(&format!(
            "{rate} requests/s client -> echo ({}) for {} s, {how}, with {LIFETIME_SECS} s leaves",
            self.samples.svc,
            duration.as_secs()
        ));
        let tb = self.user.tb;
        let load = SteadyLoad::start_with(
            tb,
            &self.samples.client,
            self.samples.svc,
            rate,
            duration,
            keep_alive,
        )?;
        let started = Instant::now();
        while started.elapsed() < duration {
            certificates.sample(tb);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let load = load.finish().await?;
        self.user.say.say(format!("load: {load}"));
        Ok(load)
    }
}

/// Per tunnel (node) and identity, the certificates seen, as (notBefore, notAfter).
#[derive(Default)]
struct Certificates(BTreeMap<(u8, String), BTreeSet<(u64, u64)>>);

impl Certificates {
    /// The certificates of `client` on its tunnel and of `echo` on its: the two ends of every
    /// request.
    fn ends() -> [(u8, String); 2] {
        [(2, spiffe(NS, CLIENT)), (1, spiffe(NS, SERVER))]
    }

    /// Records the certificates both tunnels serve now.
    fn sample(&mut self, tb: &Testbed) {
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
                self.0
                    .entry((k, id.to_owned()))
                    .or_default()
                    .insert((nb, na));
            }
        }
    }

    /// Issuance to next issuance over the lifetime, for each renewal of `end`.
    fn renewal_fractions(&self, end: &(u8, String)) -> Vec<f64> {
        let issued: Vec<u64> = self
            .0
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

    /// Every renewal at both ends.
    fn all_fractions(&self) -> Vec<f64> {
        Self::ends()
            .iter()
            .flat_map(|end| self.renewal_fractions(end))
            .collect()
    }

    /// At least `renewals` renewals at each end, each at half-life.
    fn check(&self, renewals: usize) -> Result<()> {
        for end in Self::ends() {
            let fractions = self.renewal_fractions(&end);
            println!(
                "node {}: {} renewed at {fractions:?} of its life",
                end.0, end.1
            );
            ensure!(
                fractions.len() >= renewals,
                "node {}'s tunnel renewed {} {} time(s), expected {renewals}: {:?}",
                end.0,
                end.1,
                fractions.len(),
                self.0.get(&end)
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

/// The benchmark's runs: kept-alive, then the new-connection staircase.
struct Bench {
    rate: u32,
    seconds: u64,
    step_seconds: u64,
    kept: LoadReport,
    /// (rate, what it saw) per step climbed.
    steps: Vec<(u32, LoadReport)>,
    certificates: Certificates,
}

impl Bench {
    /// The highest step without failures, and the first with some.
    fn staircase(&self) -> (Option<u32>, Option<u32>) {
        let sustained = self
            .steps
            .iter()
            .filter(|(_, l)| l.failed == 0)
            .map(|(rate, _)| *rate)
            .max();
        let saturated = self
            .steps
            .iter()
            .find(|(_, l)| l.failed > 0)
            .map(|(rate, _)| *rate);
        (sustained, saturated)
    }

    fn print(&self) {
        println!(
            "\n{:<15} {:>7} {:>7} {:>9} {:>8} {:>10} {:>8} {:>8} {:>9}",
            "mode",
            "rate/s",
            "seconds",
            "requests",
            "failed",
            "reconnects",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
        let row = |mode: &str, rate: u32, seconds: u64, l: &LoadReport| {
            println!(
                "{mode:<15} {rate:>7} {seconds:>7} {:>9} {:>8} {:>10} {:>8.1} {:>8.1} {:>9.1}",
                l.requests, l.failed, l.reconnects, l.p50_ms, l.p99_ms, l.max_ms
            );
        };
        row("keep-alive", self.rate, self.seconds, &self.kept);
        for (rate, load) in &self.steps {
            row("new-connection", *rate, self.step_seconds, load);
        }
        let (sustained, saturated) = self.staircase();
        println!(
            "new connection per request: sustained {} requests/s without failures; {}",
            sustained.map_or("no".into(), |r| r.to_string()),
            saturated.map_or(format!("no failures up to {} requests/s", self.rate), |r| {
                format!("failures from {r} requests/s")
            })
        );
        let fractions = self.certificates.all_fractions();
        println!("renewals: {} at {:?} of life\n", fractions.len(), fractions);
    }

    /// `target/ambit-bench/leaf-rotation.json`.
    fn write(&self) -> Result<()> {
        let fractions = self.certificates.all_fractions();
        let (sustained, saturated) = self.staircase();
        let steps: Vec<_> = self
            .steps
            .iter()
            .map(|(rate, l)| {
                serde_json::json!({
                    "rate": rate,
                    "requests": l.requests,
                    "failed_requests": l.failed,
                    "errors": l.errors,
                    "latency_ms": l.json["latency_ms"],
                })
            })
            .collect();
        let json = serde_json::json!({
            "rate": self.rate,
            "seconds": self.seconds,
            "lifetime_s": LIFETIME_SECS,
            "mode": "keep_alive",
            "connections": KEEP_ALIVE_CONNECTIONS,
            "reconnects": self.kept.reconnects,
            "requests": self.kept.requests,
            "failed_requests": self.kept.failed,
            "errors": self.kept.errors,
            "latency_ms": self.kept.json["latency_ms"],
            "renewals": fractions.len(),
            "renewal_at_fraction_of_life": fractions,
            "new_connection": {
                "step_seconds": self.step_seconds,
                "sustained_rate": sustained,
                "saturated_at_rate": saturated,
                "steps": steps,
            },
        });
        let dir = ambit_e2e::repo_root().join("target/ambit-bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("leaf-rotation.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("{json:#}\nwritten to {}", path.display());
        Ok(())
    }
}
