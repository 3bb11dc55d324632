//! `kubectl ambit check` against the testbed's real apiserver: `--pre` on a bare cluster
//! passes, the real chart installed passes `check`, then one thing broken at a time (the
//! controller scaled to 0, an Istio control plane appearing) fails with its exact line and
//! exit 1, and a NetworkPolicy without port 15008 in an enrolled namespace warns. Needs root (the testbed); skips loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ambit_testbed::eventually;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const NAME: &str = "clichk";
const ID: u8 = 58;
const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_the_real_chart() -> Result<()> {
    if ambit_testbed::skip_without_root("check_against_the_real_chart") {
        return Ok(());
    }
    ambit_testbed::build_binaries(&[
        "ambit-testbed",
        "ambit-controller",
        "ambit-tunnel",
        "ambit-capture",
        "kubectl-ambit",
    ])?;
    let tb = ambit_testbed::Testbed::new(ambit_testbed::Config::new(NAME, ID)?.with_nodes(1)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(checks).await
}

/// One run of `kubectl-ambit check ARGS`: exit code, stdout.
fn check(tb: &ambit_testbed::Testbed, args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-ambit"))
        .env("KUBECONFIG", tb.config.kubeconfig())
        .arg("check")
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The `-o json` lines of a run, as `verdict check` strings, for messages.
fn verdicts(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| format!("{} {}: {}", l["verdict"], l["check"], l["detail"]))
        .collect()
}

/// Waits until `check ARGS` exits `code` with a line starting with `line` on stdout.
async fn until_line(
    tb: &ambit_testbed::Testbed,
    args: &[&str],
    code: i32,
    line: &str,
) -> Result<String> {
    let mut last = String::new();
    let found = eventually(&format!("check {args:?}: {line}"), WAIT, || {
        let run = check(tb, args);
        if let Ok((_, out)) = &run {
            last.clone_from(out);
        }
        async move {
            let (c, out) = run.ok()?;
            (c == code && out.lines().any(|l| l.starts_with(line))).then_some(out)
        }
    })
    .await;
    found.with_context(|| format!("last output:\n{last}"))
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let client = tb.client().await?;
    let node = tb.config.node_name(1);

    // A bare cluster: every pre-install check passes (the Gateway API CRDs are absent too).
    let (code, out) = check(tb, &["--pre", "-o", "json"])?;
    let report: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    ensure!(
        code == 0
            && report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["verdict"] == "pass"),
        "check --pre on a bare cluster: {:#?}",
        verdicts(&report)
    );
    let (code, out) = check(tb, &["--pre"])?;
    assert_eq!(code, 0, "{out}");
    for line in [
        "[ok] no Istio",
        "[ok] no Linkerd",
        "[ok] can create what the chart creates: 13 kinds, namespace ambit-system",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}:\n{out}");
    }
    assert!(
        out.contains("[ok] Kubernetes version supported by the chart: v1.")
            && out.contains("(chart: >=1.30.0-0)"),
        "{out}"
    );
    assert!(out.ends_with(" passed, 0 warnings, 0 failed\n"), "{out}");

    let user = ambit_e2e::User::new(tb).await?;
    user.install().await?;
    // The tunnel opens its admin port a moment after it is Ready.
    let out = until_line(
        tb,
        &[],
        0,
        &format!(
            "[ok] tunnel on {node}: config in sync, certificates valid, nothing rejected: pod {}",
            tunnel_pod(&client).await?
        ),
    )
    .await?;
    eprintln!("check of the installed chart:\n{out}");
    assert!(
        !out.contains("[fail]") && !out.contains("[warn]"),
        "an installed mesh passes every check:\n{out}"
    );
    for line in [
        "[ok] controller Deployment ready: 2/2 ready (Deployment ambit-system/ambit-controller)",
        "[ok] tunnel DaemonSet ready on every node: 1/1 ready and updated",
        "[ok] waypoints Programmed: 0 checked",
        "[ok] AuthorizationPolicies Enforced: 0 checked",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("[ok] mesh root valid: the root valid for 36")),
        "a fresh 10-year root:\n{out}"
    );
    // Installed: --pre warns (ambit's own CRDs are there), and still exits 0.
    let out = until_line(
        tb,
        &["--pre"],
        0,
        "[warn] no ambit CRDs from an earlier install: authorizationpolicies.ambit.dev (release ambit-system/ambit)",
    )
    .await?;
    assert!(!out.contains("[fail]"), "{out}");

    // An Istio control plane appears: --pre fails on it.
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &obj(json!({"metadata": {"name": "istio-system"}})))
        .await?;
    let istiod = json!({
        "metadata": {"name": "istiod"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {"metadata": {"labels": {"app": "istiod"}},
                         "spec": {"containers": [{"name": "discovery", "image": "istio/pilot"}]}},
        },
    });
    eventually("istio-system ready for objects", WAIT, || async {
        Api::<Deployment>::namespaced(client.clone(), "istio-system")
            .create(&pp, &obj(istiod.clone()))
            .await
            .ok()
    })
    .await?;
    let out = until_line(
        tb,
        &["--pre"],
        1,
        "[fail] no Istio: found istio-system/istiod, namespace istio-system",
    )
    .await?;
    assert!(
        out.contains("    hint: two meshes capturing the same pods break each other's traffic: uninstall Istio"),
        "{out}"
    );

    // An enrolled namespace whose policy admits only port 8080: HBONE would be blocked.
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "shop", "labels": {"ambit.dev/dataplane-mode": "ambient"}}})),
        )
        .await?;
    let policy = json!({
        "metadata": {"name": "web-only"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8080}]}]},
    });
    eventually("shop ready for objects", WAIT, || async {
        Api::<NetworkPolicy>::namespaced(client.clone(), "shop")
            .create(&pp, &obj(policy.clone()))
            .await
            .ok()
    })
    .await?;
    let out = until_line(
        tb,
        &[],
        0,
        "[warn] NetworkPolicies admit HBONE (TCP 15008): would block 15008: shop/web-only (ingress)",
    )
    .await?;
    assert!(out.contains("    hint: add TCP port 15008"), "{out}");

    // The controller scaled to 0: check fails on it, and on its Lease once that expires.
    Api::<Deployment>::namespaced(client.clone(), "ambit-system")
        .patch(
            "ambit-controller",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    let out = until_line(
        tb,
        &[],
        1,
        "[fail] controller Deployment ready: 0/0 ready (Deployment ambit-system/ambit-controller)",
    )
    .await?;
    assert!(
        out.contains("    hint: kubectl -n ambit-system describe deployment ambit-controller"),
        "{out}"
    );
    let (code, json) = check(tb, &["-o", "json"])?;
    let report: Value = serde_json::from_str(&json)?;
    assert_eq!((code, &report["success"]), (1, &json!(false)), "{json}");
    Ok(())
}

async fn tunnel_pod(client: &kube::Client) -> Result<String> {
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "ambit-system")
        .list(&kube::api::ListParams::default().labels(kubectl_ambit::health::NODE_POD_SELECTOR))
        .await?;
    pods.items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .context("no ambit-node pod")
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}
