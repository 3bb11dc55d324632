//! The real `kubectl-ambit` binary against the testbed's real kube-apiserver (one node): the
//! exact Gateway `waypoint apply` writes, idempotence, `--wait` on Programmed (status patched
//! by the test, standing in for the controller), list/status/delete, `status` before and after
//! stand-ins for ambit's parts, enrollment counts, `config dump` through a port-forward (a
//! stand-in admin endpoint, then the real tunnel of `helm install charts/ambit`, whose admin
//! port is on the node's loopback), kubelet probes and plaintext in strict mode, with and
//! without a real waypoint (`strict`),
//! `-o json|yaml`, usage errors, and `kubectl ambit` as a real kubectl plugin, completion
//! included. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod strict;

use ambit_testbed::eventually;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NAME: &str = "clitest";
const ID: u8 = 51;
const NS: &str = "shop";
const SYSTEM_NS: &str = "ambit-system";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_ambit_against_the_real_apiserver() -> Result<()> {
    if ambit_testbed::skip_without_root("kubectl_ambit_against_the_real_apiserver") {
        return Ok(());
    }
    // The samples stand in for workloads; controller, tunnel and capture run from the chart.
    ambit_testbed::build_binaries(&[
        "ambit-testbed",
        "ambit-samples",
        "ambit-controller",
        "ambit-tunnel",
        "ambit-capture",
        "ambit-waypoint",
    ])?;
    let tb = ambit_testbed::Testbed::new(ambit_testbed::Config::new(NAME, ID)?.with_nodes(1)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(checks).await
}

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Result<Self> {
        ensure!(self.code == 0, "expected success: {self:#?}");
        Ok(self)
    }
    fn exits(self, code: i32, stderr_has: &str) -> Result<Self> {
        ensure!(
            self.code == code && self.stderr.contains(stderr_has),
            "expected exit {code} with {stderr_has:?} on stderr: {self:#?}"
        );
        Ok(self)
    }
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {self:#?}"))
    }
}

/// The cells of the first table row starting with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_default()
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kubectl-ambit")
}

fn ambit_cmd(tb: &ambit_testbed::Testbed, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("KUBECONFIG", tb.config.kubeconfig()).args(args);
    cmd
}

fn finish(out: std::process::Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ambit(tb: &ambit_testbed::Testbed, args: &str) -> Result<Run> {
    let args: Vec<&str> = args.split_whitespace().collect();
    Ok(finish(ambit_cmd(tb, &args).output()?))
}

fn gateways(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        NS,
        &kubectl_ambit::waypoint::gateway_resource(),
    )
}

/// The chart's CRDs: the vendored upstream Gateway API ones and ambit's own.
fn install_crds(tb: &ambit_testbed::Testbed) -> Result<()> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/ambit");
    for f in [
        "files/gateway-api/gateway.networking.k8s.io_gatewayclasses.yaml",
        "files/gateway-api/gateway.networking.k8s.io_gateways.yaml",
        "crds/authorizationpolicies.yaml",
    ] {
        // Server-side: the upstream CRDs are too big for client-side apply's annotation.
        let out = tb
            .kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(chart.join(f))
            .output()?;
        ensure!(out.status.success(), "kubectl apply {f}: {out:?}");
    }
    let out = tb
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=30s"])
        .args(kubectl_ambit::health::CRDS.map(|c| format!("crd/{c}")))
        .output()?;
    ensure!(out.status.success(), "CRDs established: {out:?}");
    Ok(())
}

/// Sets status conditions as a controller would (merge patch: the list is replaced).
async fn set_conditions(
    api: &Api<DynamicObject>,
    name: &str,
    conditions: &[(&str, &str, &str, &str)],
) -> Result<()> {
    let generation = api.get(name).await?.metadata.generation;
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(t, s, reason, message)| {
            json!({"type": t, "status": s, "reason": reason, "message": message,
                   "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
        })
        .collect();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await?;
    Ok(())
}

/// Accepted, and Programmed as given, as the controller writes them for a valid waypoint.
async fn programmed(
    api: &Api<DynamicObject>,
    status: &str,
    reason: &str,
    message: &str,
) -> Result<()> {
    let accepted = (
        "Accepted",
        "True",
        "Accepted",
        "waypoint for service account back",
    );
    set_conditions(
        api,
        "waypoint-back",
        &[accepted, ("Programmed", status, reason, message)],
    )
    .await
}

/// `apply --wait` running in the background, its stderr collected as it comes.
struct Background {
    child: Mutex<Child>,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Background {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(Self {
            child: Mutex::new(child),
            stderr,
            reader,
        })
    }

    async fn stderr_has(&self, what: &str, text: &str) -> Result<()> {
        eventually(what, Duration::from_secs(30), || async {
            self.stderr.lock().unwrap().contains(text).then_some(())
        })
        .await?;
        Ok(())
    }

    async fn finish(self) -> Result<Run> {
        eventually(
            "the background command to exit",
            Duration::from_secs(30),
            || async { self.child.lock().unwrap().try_wait().ok().flatten() },
        )
        .await?;
        let mut child = self.child.into_inner().unwrap();
        // Already reaped by try_wait: this returns its status at once.
        let status = child.wait()?;
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        // The child has exited, so its stderr pipe is at EOF and the reader ends.
        let _ = self.reader.join();
        let stderr = self.stderr.lock().unwrap().clone();
        Ok(Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        })
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let pp = PostParams::default();
    let node = tb.config.node_name(1);
    let scratch = std::env::temp_dir().join(format!("kubectl-ambit-test-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // Usage errors: exit 2, the culprit named, where help is.
    ambit(tb, "waypoint apply -n shop --service-acount back")?
        .exits(2, "unknown flag --service-acount")?
        .exits(2, "kubectl ambit --help")?;
    ambit(tb, "waypoint apply -n shop")?.exits(2, "needs --service-account SA")?;
    ambit(tb, "waypoint list --node x")?
        .exits(2, "does not apply to `kubectl ambit waypoint list`")?;
    ambit(tb, "status -o xml")?.exits(2, "json or yaml")?;
    let help = ambit(tb, "waypoint apply --help")?.ok()?;
    assert!(help.stdout.contains("--service-account SA"), "{help:?}");
    let run = ambit(tb, "--context nowhere waypoint list")?;
    run.exits(1, "nowhere")?;
    let run = finish(
        Command::new(binary())
            .env_remove("KUBECONFIG")
            .args(["--kubeconfig", "/nonexistent/kc", "status"])
            .output()?,
    );
    run.exits(1, "/nonexistent/kc")?;

    // Nothing installed yet.
    let run = ambit(tb, "status")?.exits(1, "does not look installed in namespace ambit-system")?;
    assert_eq!(
        row(&run.stdout, "controller")[..2],
        ["controller", "UNHEALTHY"],
        "{run:?}"
    );
    ambit(tb, "waypoint list -n shop")?.exits(1, "Gateway API is not installed")?;
    ambit(tb, &format!("config dump --node {node}"))?.exits(
        1,
        &format!("no ambit-node pod on node {node} in namespace ambit-system"),
    )?;
    ambit(tb, "config dump --node no-such-node")?.exits(1, "node no-such-node not found")?;

    install_crds(tb)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &obj(json!({"metadata": {"name": NS}})))
        .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    eventually(
        "namespace ready for service accounts",
        Duration::from_secs(10),
        || async {
            sas.create(&pp, &obj(json!({"metadata": {"name": "back"}})))
                .await
                .ok()
        },
    )
    .await?;

    // waypoint apply writes exactly the Gateway the controller expects.
    let run = ambit(
        tb,
        "waypoint apply -n shop --service-account back --wait=false -o json",
    )?
    .ok()?;
    let printed = run.json()?;
    assert_eq!(printed["kind"], "Gateway");
    let gws = gateways(&client);
    let gw = gws.get("waypoint-back").await?;
    assert_eq!(gw.data["spec"]["gatewayClassName"], "ambit-waypoint");
    let listeners = gw.data["spec"]["listeners"]
        .as_array()
        .context("listeners")?;
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    for (k, v) in [
        ("name", json!("mesh")),
        ("port", json!(15008)),
        ("protocol", json!("HBONE")),
    ] {
        assert_eq!(listeners[0][k], v, "{listeners:?}");
    }
    assert_eq!(
        gw.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ambit.dev/for-service-account")),
        Some(&"back".to_string())
    );
    let managers: Vec<(String, String)> = gw
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("kubectl-ambit".into(), "Apply".into())),
        "{managers:?}"
    );

    // Idempotent: applying again changes nothing. (The first write after a create may bump the
    // resourceVersion alone: the CRD's status defaults are persisted then, not by us.)
    let mut applied = Vec::new();
    for _ in 0..2 {
        ambit(
            tb,
            "waypoint apply -n shop --service-account back --wait=false",
        )?
        .ok()?;
        applied.push(gws.get("waypoint-back").await?);
    }
    let (second, third) = (&applied[0], &applied[1]);
    for again in [second, third] {
        assert_eq!(again.metadata.generation, gw.metadata.generation);
        assert_eq!(again.data["spec"], gw.data["spec"]);
        assert_eq!(again.metadata.annotations, gw.metadata.annotations);
        assert_eq!(again.metadata.managed_fields, gw.metadata.managed_fields);
    }
    assert_eq!(
        third.metadata.resource_version,
        second.metadata.resource_version
    );

    // Names the controller would trip on are refused before anything is written.
    ambit(
        tb,
        "waypoint apply -n shop --service-account back --name back",
    )?
    .exits(1, "service account's own name")?;
    ambit(
        tb,
        "waypoint apply -n shop --service-account back --name second --wait=false",
    )?
    .exits(1, "already has waypoint waypoint-back")?;
    ambit(tb, "waypoint apply -n shop --service-account Back")?.exits(1, "not a valid name")?;

    // list: table, -A, -o yaml, and the context's namespace as the default.
    let run = ambit(tb, "waypoint list -n shop")?.ok()?;
    assert_eq!(
        row(&run.stdout, "shop")[..3],
        ["shop", "waypoint-back", "back"],
        "{run:?}"
    );
    let run = ambit(tb, "waypoint list -A -o yaml")?.ok()?;
    let list: Value = serde_saphyr::from_str(&run.stdout)?;
    assert_eq!(
        list["items"][0]["metadata"]["name"], "waypoint-back",
        "{run:?}"
    );
    ambit(tb, "waypoint list -n default")?
        .ok()?
        .exits(0, "No waypoints found in namespace default")?;
    let mut kubeconfig: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(tb.config.kubeconfig())?)?;
    kubeconfig["contexts"][0]["context"]["namespace"] = "shop".into();
    let shop_kubeconfig = scratch.join("kubeconfig-shop");
    std::fs::write(&shop_kubeconfig, serde_saphyr::to_string(&kubeconfig)?)?;
    let run = ambit_cmd(tb, &["waypoint", "list", "--kubeconfig"])
        .arg(&shop_kubeconfig)
        .env_remove("KUBECONFIG")
        .output()?;
    let run = finish(run).ok()?;
    assert!(run.stdout.contains("waypoint-back"), "{run:?}");

    // --wait: times out without a controller, fails on the controller's Invalid verdict,
    // reports Pending while waiting, succeeds on Programmed=True.
    ambit(
        tb,
        "waypoint apply -n shop --service-account back --timeout 2s",
    )?
    .exits(
        1,
        "timed out after 2s waiting for waypoint shop/waypoint-back to be Programmed",
    )?;
    set_conditions(
        &gws,
        "waypoint-back",
        &[
            (
                "Accepted",
                "False",
                "Invalid",
                "listener \"mesh\" is 80/HBONE; a waypoint listens on 15008/HBONE",
            ),
            (
                "Programmed",
                "False",
                "Invalid",
                "listener \"mesh\" is 80/HBONE; a waypoint listens on 15008/HBONE",
            ),
        ],
    )
    .await?;
    ambit(
        tb,
        "waypoint apply -n shop --service-account back --timeout 30s",
    )?
    .exits(1, "80/HBONE")?;
    programmed(
        &gws,
        "False",
        "Pending",
        "waiting for the Service's cluster IP",
    )
    .await?;
    let waiting = Background::start(ambit_cmd(
        tb,
        &[
            "waypoint",
            "apply",
            "-n",
            NS,
            "--service-account",
            "back",
            "--timeout",
            "60s",
        ],
    ))?;
    waiting
        .stderr_has(
            "apply --wait to report Pending",
            "Programmed=False (Pending)",
        )
        .await?;
    programmed(
        &gws,
        "True",
        "Programmed",
        "Deployment, Service waypoint-back and ServiceAccount applied",
    )
    .await?;
    let run = waiting.finish().await?.ok()?;
    assert!(
        run.stdout
            .contains("waypoint shop/waypoint-back ready: Programmed=True (Programmed)"),
        "{run:?}"
    );

    // waypoint status: conditions, then the Deployment's readiness once it exists.
    let run = ambit(tb, "waypoint status -n shop waypoint-back")?.ok()?;
    assert!(run.stdout.contains("Programmed   True"), "{run:?}");
    assert!(
        run.stdout
            .contains("Deployment:      shop/waypoint-back not found"),
        "{run:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "waypoint-back"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "wp"}}, "template": {
                    "metadata": {"labels": {"app": "wp", "ambit.dev/dataplane-mode": "none"}},
                    "spec": {"containers": [{"name": "w", "image": "ambit-echo-server", "args": ["8080"],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]},
                }},
            })),
        )
        .await?;
    let run = eventually(
        "waypoint status to show the Deployment ready",
        Duration::from_secs(60),
        || async {
            ambit(tb, "waypoint status -n shop --service-account back")
                .ok()
                .filter(|r| r.stdout.contains("shop/waypoint-back 1/1 ready"))
        },
    )
    .await?;
    run.ok()?;
    let status = ambit(tb, "waypoint status -n shop waypoint-back -o json")?
        .ok()?
        .json()?;
    assert_eq!(status["deployment"]["readyReplicas"], 1);
    assert!(
        status["waypoint"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")),
        "{status}"
    );

    // A real kubectl plugin: kubectl finds kubectl-ambit on PATH.
    let bin_dir = Path::new(binary()).parent().context("binary dir")?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tb
        .kubectl()
        .env("PATH", &path)
        .args(["ambit", "waypoint", "list", "-n", NS])
        .output()?;
    let run = finish(out).ok()?;
    assert!(run.stdout.contains("waypoint-back"), "{run:?}");
    // kubectl's own completion of `kubectl ambit waypoint <TAB>` asks kubectl_complete-ambit.
    let out = tb
        .kubectl()
        .env("PATH", &path)
        .args(["__complete", "ambit", "waypoint", ""])
        .output()?;
    let run = finish(out).ok()?;
    let candidates: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    for c in ["apply", "list", "delete", "status"] {
        assert!(candidates.contains(&c), "{c}: {run:?}");
    }

    // delete, by name and by service account.
    ambit(tb, "waypoint delete -n shop waypoint-back")?.ok()?;
    assert!(gws.get_opt("waypoint-back").await?.is_none());
    ambit(tb, "waypoint delete -n shop waypoint-back")?
        .exits(1, "waypoint waypoint-back not found in namespace shop")?;
    ambit(
        tb,
        "waypoint apply -n shop --service-account back --name wp-back --wait=false",
    )?
    .ok()?;
    let run = ambit(tb, "waypoint delete -n shop --service-account back")?.ok()?;
    assert!(
        run.stdout.contains("waypoint shop/wp-back deleted"),
        "{run:?}"
    );
    assert!(gws.get_opt("wp-back").await?.is_none());
    ambit(tb, "waypoint delete -n shop --service-account back")?
        .exits(1, "no waypoint serves service account back")?;

    // Enrollment: a labeled namespace, its pods and its opted-out pods.
    namespaces
        .patch(
            NS,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ambit.dev/dataplane-mode": "ambient"}}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for (name, mode) in [("app-1", None), ("app-2", Some("none"))] {
        let mut labels = json!({"app": name});
        if let Some(m) = mode {
            labels["ambit.dev/dataplane-mode"] = m.into();
        }
        pods.create(
            &pp,
            &obj(json!({"metadata": {"name": name, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "ambit-echo-server", "args": ["8080"]}]}})),
        )
        .await?;
    }
    let run = ambit(tb, "status -o json")?;
    let report = run.json()?;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(report["healthy"], false);
    // The Deployment's pod (opted out) and the two pods.
    assert_eq!(
        report["enrolled"],
        json!([{"namespace": "shop", "pods": 3, "optedOut": 2}]),
        "{run:?}"
    );

    // threats: the enrolled namespace scored; ambit's settings unknown (not installed), the
    // kinds whose CRDs are not installed (routes, RequestAuthentication, RateLimitPolicy) none.
    let run = ambit(tb, "threats -n shop -o json")?.ok()?;
    assert!(
        run.stderr.contains(
            "not known, scored as missing: leaf lifetime, tunnel mode, ext_authz providers"
        ),
        "{run:?}"
    );
    let shop = &run.json()?["namespaces"][0];
    assert_eq!(
        (&shop["namespace"], &shop["model"]),
        (&json!("shop"), &json!("l4")),
        "{run:?}"
    );
    // TR-3: enrolled lowers its likelihood; strict mode and short leaves are not known.
    let tr3 = &shop["threats"][2];
    assert_eq!(
        (&tr3["threat"], &tr3["score"]),
        (&json!("TR-3"), &json!(6)),
        "{run:?}"
    );
    let run = ambit(tb, "threats -A")?.ok()?;
    assert_eq!(
        row(&run.stdout, "shop")[..3],
        ["shop", "l4", "TR-1"],
        "{run:?}"
    );
    assert_eq!(row(&run.stdout, "kube-system")[1], "none", "{run:?}");

    // Stand-ins for ambit's parts make `status` healthy, and `config dump` reach a node pod's
    // admin port through the apiserver.
    stand_in_ambit(tb, &client, &scratch).await?;
    let run = eventually("status healthy", Duration::from_secs(60), || async {
        ambit(tb, "status").ok().filter(|r| r.code == 0)
    })
    .await?;
    assert!(
        run.stdout
            .contains("node           ok       1/1 nodes ready"),
        "{run:?}"
    );
    assert!(run.stdout.contains("shop"), "{run:?}");
    if Path::new(PYTHON).exists() {
        let dump = ambit(tb, &format!("config dump --node {node}"))?
            .ok()?
            .json()?;
        assert_eq!(dump, stand_in_dump(), "config dump");
        let run = ambit(tb, &format!("config dump --node {node} -o yaml"))?.ok()?;
        let yaml: Value = serde_saphyr::from_str(&run.stdout)?;
        assert_eq!(yaml, stand_in_dump());
    } else {
        eprintln!(
            "\n!!!!! SKIPPED config dump through the pod proxy: no {PYTHON} for the stand-in admin endpoint !!!!!\n"
        );
    }

    real_chart(tb, &client, &scratch, &node).await?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// The stand-ins give way to the real chart: `config dump` reads the real tunnel's admin
/// endpoint through the apiserver, and `status` sees the real controller and GatewayClass.
async fn real_chart(
    tb: &ambit_testbed::Testbed,
    client: &kube::Client,
    scratch: &Path,
    node: &str,
) -> Result<()> {
    let out = tb
        .kubectl()
        .args(["delete", "--cascade=foreground", "--wait", "-f"])
        .arg(scratch.join("stand-in.json"))
        .output()?;
    ensure!(out.status.success(), "deleting the stand-ins: {out:?}");
    let out = tb
        .kubectl()
        .args(["delete", "--wait"])
        .args(kubectl_ambit::health::CRDS.map(|c| format!("crd/{c}")))
        .output()?;
    ensure!(out.status.success(), "deleting the CRDs: {out:?}");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/ambit");
    let out = tb
        .helm()
        .args(["install", "ambit"])
        .arg(&chart)
        .args(["-n", SYSTEM_NS])
        // The testbed runs CNI plugins in the host's filesystem, each node's files under its
        // own root: without this, a new pod of an enrolled namespace never starts.
        .arg("--set")
        .arg(format!(
            "node.cni.pluginRoot={}/nodes/$(NODE_NAME)/root",
            tb.config.state_dir.display()
        ))
        // A first install creates Gateway API's CRDs; helm maps the post-install GatewayClass
        // hook only once the apiserver serves them (docs/install.md).
        .args(["--wait", "--timeout", "5m"])
        .output()?;
    ensure!(out.status.success(), "helm install: {out:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    eventually(
        "the real ambit-node pod running",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=ambit-node"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        },
    )
    .await?;
    // The tunnel opens its admin port a moment after its process starts.
    let dump = eventually(
        "config dump from the real tunnel",
        Duration::from_secs(30),
        || async {
            let run = ambit(tb, &format!("config dump --node {node}")).ok()?;
            (run.code == 0).then(|| run.json().ok()).flatten()
        },
    )
    .await?;
    assert_eq!(dump["node"], node, "{dump}");
    if Path::new(PYTHON).exists() {
        strict::probes_and_plaintext(tb, client, NS, PYTHON).await?;
    } else {
        eprintln!(
            "\n!!!!! SKIPPED probes and plaintext in strict mode: no {PYTHON} for the outsider pod !!!!!\n"
        );
    }
    let run = eventually(
        "status: controller and GatewayClass of the real chart",
        Duration::from_secs(60),
        || async {
            let run = ambit(tb, "status").ok()?;
            let ok = |part: &str| row(&run.stdout, part).get(1) == Some(&"ok");
            (ok("controller") && ok("crds") && ok("gatewayclass")).then_some(run)
        },
    )
    .await?;
    assert!(
        row(&run.stdout, "node")
            .get(2)
            .is_some_and(|n| n.ends_with("/1")),
        "{run:?}"
    );
    // threats reads the real chart's settings back: its default leaf lifetime and mode.
    let run = ambit(tb, "threats -n shop -o json")?.ok()?;
    assert!(!run.stderr.contains("not known"), "{run:?}");
    assert_eq!(
        run.json()?["settings"],
        json!({"leafLifetimeSeconds": 3600, "tunnelMode": "strict", "extAuthzProviders": []}),
        "{run:?}"
    );
    Ok(())
}

const PYTHON: &str = "/usr/bin/python3";

fn stand_in_dump() -> Value {
    json!({"node": "stand-in", "workloads": [{"uid": "u1", "identity": "spiffe://cluster.local/ns/shop/sa/back"}]})
}

/// A controller Deployment, a node DaemonSet whose pod serves `/config_dump` on port 15000 of
/// the node network (as the chart's tunnel does), and an Accepted GatewayClass.
async fn stand_in_ambit(
    tb: &ambit_testbed::Testbed,
    client: &kube::Client,
    scratch: &Path,
) -> Result<()> {
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &obj(json!({"metadata": {"name": SYSTEM_NS}})))
        .await?;
    let admin_dir = scratch.join("admin");
    std::fs::create_dir_all(&admin_dir)?;
    std::fs::write(admin_dir.join("config_dump"), stand_in_dump().to_string())?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NS);
    eventually(
        "ambit-system ready for pods",
        Duration::from_secs(10),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await?;
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "ambit-controller", "namespace": SYSTEM_NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "ambit-controller"}}, "template": {
             "metadata": {"labels": {"app.kubernetes.io/name": "ambit-controller"}},
             "spec": {"containers": [{"name": "controller", "image": "ambit-echo-server", "args": ["15014"],
                 "readinessProbe": {"tcpSocket": {"port": 15014}, "periodSeconds": 1}}]}}}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet",
         "metadata": {"name": "ambit-node", "namespace": SYSTEM_NS},
         "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "ambit-node"}}, "template": {
             "metadata": {"labels": {"app.kubernetes.io/name": "ambit-node"}},
             "spec": {"hostNetwork": true, "containers": [{"name": "tunnel", "image": "debian",
                 "command": [PYTHON, "-m", "http.server", "15000", "--bind", "0.0.0.0", "--directory", admin_dir],
                 "readinessProbe": {"tcpSocket": {"port": 15000}, "periodSeconds": 1}}]}}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": "ambit-waypoint"},
         "spec": {"controllerName": "ambit.dev/waypoint-controller"}},
    ]});
    let path = scratch.join("stand-in.json");
    std::fs::write(&path, manifest.to_string())?;
    let out = tb.kubectl().args(["apply", "-f"]).arg(&path).output()?;
    ensure!(out.status.success(), "kubectl apply stand-ins: {out:?}");
    let classes: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource {
            kind: "GatewayClass".into(),
            plural: "gatewayclasses".into(),
            ..kubectl_ambit::waypoint::gateway_resource()
        },
    );
    classes
        .patch_status(
            "ambit-waypoint",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "stand-in",
                "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
        )
        .await?;
    Ok(())
}
