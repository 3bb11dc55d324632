//! A rolling upgrade of the node tunnels refuses no connection (issue 15 item 1): `helm
//! upgrade` changes the tunnel's pod template, the real kube-controller-manager rolls the
//! DaemonSet (maxSurge 1, maxUnavailable 0) node after node, and on each node the new tunnel
//! takes every enrolled pod's listeners over from the old one (docs/tunnel.md, "Upgrades").
//!
//! Meanwhile new connections go both ways across the two nodes, one after another (client on
//! node 2 -> echo on node 1, echo -> client), and none may fail; connections opened before the
//! upgrade keep answering after the old tunnel handed its pods over, while it drains.
//! Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_e2e::{SERVER_PORT, SYSTEM_NS, Samples, Testbed, User, pod_ip};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The line echo `client` runs (as in node_boot.rs).
const CLIENT_PORT: u16 = 9090;
/// Under the testbed's 5 s cap on a pod's termination grace, so the old tunnel's drain, not a
/// SIGKILL, is what ends the connections it still carries.
const DRAIN_SECS: u64 = 4;
const ROLLOUT: Duration = Duration::from_secs(120);
/// Bounds on each load loop besides the stop flag.
const MAX_CONNECTIONS: u64 = 20_000;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_upgrade_refuses_no_connection() -> Result<()> {
    ambit_e2e::on_testbed("tunnel_upgrade_refuses_no_connection", "upgrade", 97, steps).await
}

async fn steps(tb: &Testbed) -> Result<()> {
    let user = User::new(tb).await?;
    let drain = format!("node.tunnel.drainSeconds={DRAIN_SECS}");
    user.install_with(&[&drain]).await?;
    user.deploy_samples().await?;
    user.enroll().await?;
    let Samples { server, client, .. } = user.samples().await?;
    let echo = SocketAddr::new(pod_ip(&server)?.parse()?, SERVER_PORT);
    let back = SocketAddr::new(pod_ip(&client)?.parse()?, CLIENT_PORT);
    let ends = [
        (tb.pod_netns(&client).context("client netns")?, echo),
        (tb.pod_netns(&server).context("echo netns")?, back),
    ];
    let last_error = std::sync::Mutex::new(String::new());
    let up = ambit_e2e::eventually(
        "client -> echo and echo -> client through the mesh",
        ROLLOUT,
        || {
            let failed = ends.iter().find_map(|(netns, to)| {
                let to = *to;
                in_netns(netns, move || exchange_once(to, "up"))
                    .err()
                    .map(|e| format!("{netns} -> {to}: {e}"))
            });
            let ok = failed.is_none();
            *last_error.lock().unwrap() = failed.unwrap_or_default();
            async move { ok.then_some(()) }
        },
    )
    .await;
    up.with_context(|| last_error.lock().unwrap().clone())?;

    let pods: Api<Pod> = Api::namespaced(user.client.clone(), SYSTEM_NS);
    let tunnels = ListParams::default().labels("app.kubernetes.io/name=ambit-node");
    let old: HashSet<String> = pods
        .list(&tunnels)
        .await?
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let held: Vec<Held> = ends
        .iter()
        .map(|(netns, to)| Held::start(netns, *to, &stop))
        .collect::<Result<_>>()?;
    let loads: Vec<_> = ends
        .iter()
        .map(|(netns, to)| load(netns, *to, &stop))
        .collect();

    user.say.step(&format!(
        "helm upgrade (the tunnel's drain window {DRAIN_SECS} s -> {} s) while new connections \
         go both ways and two connections stay open",
        DRAIN_SECS + 1
    ));
    let started = Instant::now();
    let drain_after = format!("node.tunnel.drainSeconds={}", DRAIN_SECS + 1);
    user.helm(&[
        "upgrade",
        "ambit",
        "charts/ambit",
        "-n",
        SYSTEM_NS,
        "--reuse-values",
        "--set",
        &drain_after,
    ])?;
    // When the first old tunnel was told to stop: by then it has handed its pods over.
    let first_stopped = std::sync::Mutex::new(None);
    let daemonsets: Api<DaemonSet> = Api::namespaced(user.client.clone(), SYSTEM_NS);
    ambit_e2e::eventually("every node's tunnel replaced", ROLLOUT, || {
        let (pods, daemonsets, tunnels, old) = (&pods, &daemonsets, &tunnels, &old);
        let first_stopped = &first_stopped;
        async move {
            let list = pods.list(tunnels).await.ok()?;
            let old_left: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| old.contains(p.metadata.uid.as_deref().unwrap_or_default()))
                .collect();
            if old_left.len() < old.len()
                || old_left
                    .iter()
                    .any(|p| p.metadata.deletion_timestamp.is_some())
            {
                first_stopped
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
            let ds = daemonsets.get("ambit-node").await.ok()?;
            let s = ds.status?;
            (old_left.is_empty()
                && s.observed_generation >= ds.metadata.generation
                && s.updated_number_scheduled == Some(s.desired_number_scheduled)
                && s.number_ready == s.desired_number_scheduled)
                .then_some(())
        }
    })
    .await?;
    let rollout = started.elapsed();
    // Not vacuous: each node's new tunnel got its pods from the old one, not from a restart.
    for pod in pods.list(&tunnels).await?.items {
        let name = pod.metadata.name.unwrap_or_default();
        let log = std::fs::read_to_string(tb.container_log(SYSTEM_NS, &name, "tunnel"))?;
        ensure!(
            log.contains("took every pod over from the running tunnel"),
            "{name}'s tunnel took no pod over:\n{log}"
        );
    }
    let first_stopped = first_stopped
        .into_inner()
        .unwrap()
        .context("no old tunnel pod was seen stopping")?;
    // A little more load on the new tunnels alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for ((netns, to), load) in ends.iter().zip(loads) {
        let (ok, failures) = load.join().expect("load thread");
        user.say.say(format!(
            "{netns} -> {to}: {ok} new connections, {} failed",
            failures.len()
        ));
        ensure!(
            failures.is_empty(),
            "new connections failed during the rolling upgrade: {failures:#?}"
        );
        total += ok;
    }
    ensure!(total > 0, "no connection was made during the upgrade");
    for (h, (_, to)) in held.into_iter().zip(&ends) {
        let answered = h.finish();
        // Well into the old tunnel's drain: the takeover itself cut nothing.
        let into_drain = first_stopped + Duration::from_secs(1);
        let after = answered.iter().filter(|t| **t > into_drain).count();
        user.say.say(format!(
            "connection to {to} opened before the upgrade: {} lines answered, {after} of them over \
             1 s after the first old tunnel was stopped, its pods handed over",
            answered.len()
        ));
        ensure!(
            after > 0,
            "the connection to {to} opened before the upgrade did not answer once the old \
             tunnel had handed its pods over (inside its drain window)"
        );
    }
    user.say.say(format!(
        "rolled both nodes in {rollout:?}; {total} new connections, none failed"
    ));
    Ok(())
}

/// Runs `f` on a thread inside netns `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(netns, f).join().expect("netns thread")
}

fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("pod netns");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("entering the pod netns");
        f()
    })
}

fn connect(to: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(BufReader::new(stream))
}

/// One line there and back through a line echo (`ambit-echo-server`), which greets once,
/// before its first echo.
fn line(stream: &mut BufReader<TcpStream>, text: &str) -> std::io::Result<()> {
    stream.get_mut().write_all(format!("{text}\n").as_bytes())?;
    loop {
        let mut reply = String::new();
        stream.read_line(&mut reply)?;
        match reply.trim_end() {
            echoed if echoed == text => return Ok(()),
            greeting if greeting.starts_with("hello from ") => {}
            other => return Err(std::io::Error::other(format!("answered {other:?}"))),
        }
    }
}

fn exchange_once(to: SocketAddr, text: &str) -> std::io::Result<()> {
    line(&mut connect(to)?, text)
}

/// New connections from `netns` to `to`, one after another, until `stop`: how many answered,
/// and each failure.
fn load(
    netns: &str,
    to: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    let stop = stop.clone();
    let deadline = Instant::now() + ROLLOUT + Duration::from_secs(30);
    spawn_in_netns(netns, move || {
        let (mut ok, mut failures) = (0, Vec::new());
        for i in 0..MAX_CONNECTIONS {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            match exchange_once(to, &format!("upgrade-{i}")) {
                Ok(()) => ok += 1,
                Err(e) => failures.push(format!("connection {i} to {to}: {e}")),
            }
        }
        (ok, failures)
    })
}

/// A connection opened before the upgrade, exchanging a line every 200 ms until it fails or
/// the test stops; when each line was answered.
struct Held {
    thread: std::thread::JoinHandle<Vec<Instant>>,
}

impl Held {
    fn start(netns: &str, to: SocketAddr, stop: &Arc<AtomicBool>) -> Result<Self> {
        let mut stream = in_netns(netns, move || connect(to))?;
        line(&mut stream, "held-open")?;
        let stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = Vec::new();
            for i in 0..(ROLLOUT.as_millis() / 200) {
                if stop.load(Ordering::Relaxed) || line(&mut stream, &format!("held-{i}")).is_err()
                {
                    break;
                }
                answered.push(Instant::now());
                std::thread::sleep(Duration::from_millis(200));
            }
            answered
        });
        Ok(Self { thread })
    }

    fn finish(self) -> Vec<Instant> {
        self.thread.join().expect("held connection thread")
    }
}
