//! The Helm chart `charts/ambit`: `helm lint` clean, values outside the schema refused, the
//! rendered objects least-privileged as docs/install.md says, and `manifests/` in step with it.
//!
//! Uses the testbed's helm (`cargo xtask testbed setup` builds it). Without it the tests skip
//! loudly, unless running as root (as CI does), where a missing helm is a failure.
//!
//! `AMBIT_BLESS=1 cargo test -p ambit-e2e --test chart` rewrites `manifests/` and the chart's
//! copy of the AuthorizationPolicy CRD instead of failing on a difference.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "ambit-system";
/// The testbed's helm is built without the version stamps a release build has, so it would
/// render for Kubernetes v1.20; the chart needs 1.30+.
const KUBE_VERSION: &str = "1.35.0";
const BLESS: &str = "AMBIT_BLESS";
const REGENERATE: &str = "AMBIT_BLESS=1 cargo test -p ambit-e2e --test chart";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn blessing() -> bool {
    std::env::var_os(BLESS).is_some_and(|v| v == "1")
}

/// The testbed's helm, or `None` (after saying so on stderr) when it is missing and we are
/// not root.
fn helm(test: &str) -> Result<Option<PathBuf>> {
    use ambit_testbed::config::{DEFAULT_CACHE_DIR, ENV_CACHE_DIR};
    let cache =
        std::env::var_os(ENV_CACHE_DIR).map_or_else(|| DEFAULT_CACHE_DIR.into(), PathBuf::from);
    let why = match ambit_testbed::Tools::load(&cache.join("testbed.env")) {
        Ok(tools) if tools.helm.is_file() => return Ok(Some(tools.helm)),
        Ok(tools) => format!("{} does not exist", tools.helm.display()),
        Err(e) => e.to_string(),
    };
    if rustix::process::geteuid().is_root() {
        bail!("helm is missing: {why}");
    }
    // Straight to the stderr handle: the harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! SKIPPED {test}: no helm ({why}). Run `cargo xtask testbed setup`; CI runs this as root, where it fails. !!!!!\n"
    );
    Ok(None)
}

/// Runs helm in the repository root; `Ok(stdout)` on success, `Err(stdout + stderr)` otherwise.
fn run(helm: &Path, args: &[&str]) -> Result<std::result::Result<String, String>> {
    let out = Command::new(helm)
        .current_dir(repo())
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    })
}

/// `helm template` of the chart as the release `ambit` in `ambit-system`.
fn render(helm: &Path, extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        "ambit",
        "charts/ambit",
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    run(helm, &args)?.map_err(|e| anyhow::anyhow!("helm {}:\n{e}", args.join(" ")))
}

fn docs(yaml: &str) -> Result<Vec<Value>> {
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(yaml)?;
    docs.retain(|v| !v.is_null());
    Ok(docs)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or_default()
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_array().map_or(&[], Vec::as_slice)
}

fn strings(v: &Value, path: &[&str]) -> Vec<String> {
    list(v, path)
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| text(o, &["kind"]) == kind && text(o, &["metadata", "name"]) == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

fn container<'a>(workload: &'a Value, name: &str) -> Result<&'a Value> {
    list(workload, &["spec", "template", "spec", "containers"])
        .iter()
        .find(|c| text(c, &["name"]) == name)
        .with_context(|| format!("no container {name}"))
}

/// Compares a generated file with its checked-in copy, or writes it when blessing.
fn check_file(path: &Path, want: &str) -> Result<()> {
    let have = std::fs::read_to_string(path).unwrap_or_default();
    if have == want {
        return Ok(());
    }
    if blessing() {
        std::fs::write(path, want).with_context(|| format!("writing {}", path.display()))?;
        let _ = writeln!(std::io::stderr(), "blessed {}", path.display());
        return Ok(());
    }
    let line = have
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
    bail!(
        "{} differs from the chart (first at line {}: {:?}, expected {:?}).\nRegenerate with\n  {REGENERATE}",
        path.display(),
        line + 1,
        have.lines().nth(line).unwrap_or("<end of file>"),
        want.lines().nth(line).unwrap_or("<end of file>"),
    )
}

const HEADER: &str = "\
# Generated from charts/ambit; do not edit. Regenerate with
#   AMBIT_BLESS=1 cargo test -p ambit-e2e --test chart
# which runs
#   helm template ambit charts/ambit --namespace ambit-system --kube-version 1.35.0 --no-hooks
# and splits the CRDs (crds.yaml) from the rest (ambit.yaml). docs/install.md tells how to apply.
";

const NAMESPACE_OBJECT: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: ambit-system
  labels:
    app.kubernetes.io/part-of: ambit
    # The node DaemonSet uses the host network, host paths, root and NET_ADMIN + SYS_ADMIN.
    pod-security.kubernetes.io/enforce: privileged
";

/// The rendered chart split into (crds.yaml, ambit.yaml), as `manifests/` holds them.
fn manifests(helm: &Path) -> Result<(String, String)> {
    let rendered = render(helm, &["--no-hooks"])?;
    let mut crds = String::from(HEADER);
    let mut rest = format!("{HEADER}---\n{NAMESPACE_OBJECT}");
    for doc in rendered.split("\n---\n") {
        let doc = doc.trim_start_matches("---\n").trim_end();
        if doc.is_empty() {
            continue;
        }
        let target = if doc.starts_with("# Source: ambit/templates/crds-") {
            &mut crds
        } else {
            &mut rest
        };
        target.push_str("---\n");
        target.push_str(doc);
        target.push('\n');
    }
    Ok((crds, rest))
}

#[test]
fn manifests_match_the_chart() -> Result<()> {
    let Some(helm) = helm("manifests_match_the_chart")? else {
        return Ok(());
    };
    let (crds, rest) = manifests(&helm)?;
    let dir = repo().join("manifests");
    check_file(&dir.join("crds.yaml"), &crds)?;
    check_file(&dir.join("ambit.yaml"), &rest)?;
    // Every object lands in exactly one file, and the CRDs only in the first.
    let crd_kinds: Vec<String> = docs(&crds)?
        .iter()
        .map(|d| text(d, &["kind"]).to_owned())
        .collect();
    assert!(
        crd_kinds.iter().all(|k| k == "CustomResourceDefinition"),
        "{crd_kinds:?}"
    );
    assert_eq!(
        crd_kinds.len(),
        10,
        "ambit's five CRDs and five Gateway API CRDs"
    );
    let rest = docs(&rest)?;
    assert!(
        rest.iter()
            .all(|d| text(d, &["kind"]) != "CustomResourceDefinition")
    );
    object(&rest, "Namespace", NAMESPACE)?;
    Ok(())
}

#[test]
fn chart_crd_is_the_generated_one() -> Result<()> {
    let charts = repo().join("charts/ambit");
    for file in [
        "authorizationpolicies.yaml",
        "requestauthentications.yaml",
        "ratelimitpolicies.yaml",
        "nodecaptures.yaml",
        "riskprofiles.yaml",
    ] {
        let generated = std::fs::read_to_string(charts.join("crds").join(file))?;
        check_file(&charts.join("files/crds").join(file), &generated)?;
    }
    Ok(())
}

#[test]
fn helm_lint_is_clean() -> Result<()> {
    let Some(helm) = helm("helm_lint_is_clean")? else {
        return Ok(());
    };
    for extra in [
        &[][..],
        &[
            "--set",
            "gatewayAPI.installCRDs=false,controller.replicas=1,node.priorityClassName=",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", "charts/ambit", "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        if let Err(out) = run(&helm, &args)? {
            bail!("helm {} failed:\n{out}", args.join(" "));
        }
    }
    Ok(())
}

#[test]
fn values_outside_the_schema_are_refused() -> Result<()> {
    let Some(helm) = helm("values_outside_the_schema_are_refused")? else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("ambit-chart-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cases = [
        ("typo.yaml", "controler:\n  replicas: 3\n", "controler"),
        ("mode.yaml", "node:\n  tunnel:\n    mode: lenient\n", "mode"),
        (
            "replicas.yaml",
            "controller:\n  replicas: \"two\"\n",
            "replicas",
        ),
        (
            "lifetime.yaml",
            "controller:\n  certLifetimeSeconds: 10\n",
            "certLifetimeSeconds",
        ),
        (
            "nested.yaml",
            "node:\n  tunnel:\n    adminPort: 15000\n",
            "adminPort",
        ),
        (
            "sampling.yaml",
            "tracing:\n  otlp:\n    sampling: 2\n",
            "sampling",
        ),
        (
            "collector.yaml",
            "tracing:\n  otlp:\n    endpoint: otel:4317\n",
            "endpoint",
        ),
    ];
    let mut failures = Vec::new();
    for (file, values, names) in cases {
        let path = dir.join(file);
        std::fs::write(&path, values)?;
        let path = path.display().to_string();
        match run(&helm, &["lint", "charts/ambit", "--values", &path])? {
            Ok(out) => failures.push(format!("{file}: lint passed:\n{out}")),
            Err(out) if out.contains("schema") && out.contains(names) => {}
            Err(out) => failures.push(format!("{file}: no schema error naming {names}:\n{out}")),
        }
    }
    std::fs::remove_dir_all(&dir)?;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn rendered_objects_are_least_privileged() -> Result<()> {
    let Some(helm) = helm("rendered_objects_are_least_privileged")? else {
        return Ok(());
    };
    let objects = docs(&render(&helm, &[])?)?;

    // Every container: no escalation, read-only root, nothing but the capabilities it names.
    let node = object(&objects, "DaemonSet", "ambit-node")?;
    let controller = object(&objects, "Deployment", "ambit-controller")?;
    for (workload, name, caps) in [
        (controller, "controller", &[][..]),
        (node, "capture", &["NET_ADMIN", "SYS_ADMIN"][..]),
        (node, "tunnel", &["NET_ADMIN", "SYS_ADMIN"][..]),
    ] {
        let sc = at(container(workload, name)?, &["securityContext"]);
        assert_eq!(
            at(sc, &["allowPrivilegeEscalation"]).as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            at(sc, &["readOnlyRootFilesystem"]).as_bool(),
            Some(true),
            "{name}"
        );
        assert_ne!(at(sc, &["privileged"]).as_bool(), Some(true), "{name}");
        assert_eq!(
            text(sc, &["seccompProfile", "type"]),
            "RuntimeDefault",
            "{name}"
        );
        assert_eq!(strings(sc, &["capabilities", "drop"]), ["ALL"], "{name}");
        assert_eq!(strings(sc, &["capabilities", "add"]), caps, "{name}");
    }
    let pod = at(controller, &["spec", "template", "spec"]);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(at(controller, &["spec", "replicas"]).as_u64(), Some(2));
    object(&objects, "PodDisruptionBudget", "ambit-controller")?;

    // The node pod: one service account, ambit-tunnel, whose identity the CA expects. No
    // container gets an API token but capture; the tunnel holds only its ambit-ca token.
    let pod = at(node, &["spec", "template", "spec"]);
    assert_eq!(text(pod, &["serviceAccountName"]), "ambit-tunnel");
    assert_eq!(
        at(pod, &["automountServiceAccountToken"]).as_bool(),
        Some(false)
    );
    assert_eq!(at(pod, &["hostNetwork"]).as_bool(), Some(true));
    let sa = object(&objects, "ServiceAccount", "ambit-tunnel")?;
    assert_eq!(
        at(sa, &["automountServiceAccountToken"]).as_bool(),
        Some(false)
    );
    let mounts = |name| -> Result<Vec<String>> {
        Ok(list(container(node, name)?, &["volumeMounts"])
            .iter()
            .map(|m| text(m, &["mountPath"]).to_owned())
            .collect())
    };
    let api_token = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert!(!mounts("tunnel")?.iter().any(|m| m == api_token));
    assert!(
        mounts("tunnel")?
            .iter()
            .any(|m| m == "/var/run/secrets/tokens")
    );
    assert!(mounts("capture")?.iter().any(|m| m == api_token));
    let token = list(pod, &["volumes"])
        .iter()
        .find(|v| text(v, &["name"]) == "ambit-ca-token")
        .context("no ambit-ca-token volume")?;
    let token = &list(token, &["projected", "sources"])[0];
    assert_eq!(
        text(token, &["serviceAccountToken", "audience"]),
        "ambit-ca"
    );

    // RBAC: no wildcards; Secrets only in the release namespace and only ambit-ca (besides
    // creating it); the node pod may only read its own DaemonSet.
    for o in &objects {
        if ["ClusterRole", "Role"].contains(&text(o, &["kind"])) {
            let rendered = serde_saphyr::to_string(at(o, &["rules"]))?;
            assert!(!rendered.contains('*'), "wildcard in {o:?}");
        }
    }
    let cluster_role = object(&objects, "ClusterRole", "ambit-controller")?;
    assert!(!serde_saphyr::to_string(cluster_role)?.contains("secrets"));
    // ConfigMaps cluster-wide: only the root certificate's (create cannot name it).
    for rule in list(cluster_role, &["rules"]) {
        if strings(rule, &["resources"])
            .iter()
            .any(|r| r == "configmaps")
        {
            assert!(
                strings(rule, &["verbs"]) == ["create"]
                    || strings(rule, &["resourceNames"]) == ["ambit-root-cert"],
                "configmaps rule not limited to ambit-root-cert: {rule:?}"
            );
        }
    }
    let role = object(&objects, "Role", "ambit-controller")?;
    for rule in list(role, &["rules"]) {
        let verbs = strings(rule, &["verbs"]);
        assert!(
            verbs == ["create"] || !list(rule, &["resourceNames"]).is_empty(),
            "namespaced rule not limited by name: {rule:?}"
        );
    }
    let node_role = object(&objects, "Role", "ambit-node")?;
    let rules = list(node_role, &["rules"]);
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0], &["resources"]), ["daemonsets"]);
    assert_eq!(strings(&rules[0], &["resourceNames"]), ["ambit-node"]);
    assert_eq!(strings(&rules[0], &["verbs"]), ["get"]);

    // kubectl-ambit finds the parts by these labels.
    for (workload, name) in [(controller, "ambit-controller"), (node, "ambit-node")] {
        let labels = at(workload, &["spec", "template", "metadata", "labels"]);
        assert_eq!(text(labels, &["app.kubernetes.io/name"]), name);
    }

    // No GatewayClass and no hook: the controller applies `ambit-waypoint` itself (a first
    // install that brings the Gateway API CRDs could not create it), and may apply and
    // create no other class.
    assert!(
        objects.iter().all(|o| text(o, &["kind"]) != "GatewayClass"),
        "the chart renders a GatewayClass"
    );
    assert!(
        objects
            .iter()
            .all(|o| at(o, &["metadata", "annotations", "helm.sh/hook"]).is_null()),
        "the chart has hooks"
    );
    for rule in list(cluster_role, &["rules"]) {
        if strings(rule, &["resources"]) == ["gatewayclasses"]
            && strings(rule, &["verbs"]) != ["list", "watch"]
        {
            assert_eq!(
                strings(rule, &["resourceNames"]),
                ["ambit-waypoint"],
                "{rule:?}"
            );
            assert_eq!(strings(rule, &["verbs"]), ["create", "patch"], "{rule:?}");
        }
    }
    let gateway_crds: Vec<&Value> = objects
        .iter()
        .filter(|o| text(o, &["spec", "group"]) == "gateway.networking.k8s.io")
        .collect();
    assert_eq!(gateway_crds.len(), 5);
    for crd in &gateway_crds {
        let keep = text(crd, &["metadata", "annotations", "helm.sh/resource-policy"]);
        assert_eq!(keep, "keep");
    }
    Ok(())
}

/// TR-1: the capture agent publishes the pods its state directory holds as captured (pod
/// records, handoff marks), so the tunnel container mounts no host path that holds it or lies
/// inside it; the state is on a host path (the CNI plugin writes it from the host).
#[test]
fn the_tunnel_mounts_nothing_that_holds_the_capture_state() -> Result<()> {
    let Some(helm) = helm("the_tunnel_mounts_nothing_that_holds_the_capture_state")? else {
        return Ok(());
    };
    let objects = docs(&render(&helm, &[])?)?;
    let node = object(&objects, "DaemonSet", "ambit-node")?;
    let volumes = list(node, &["spec", "template", "spec", "volumes"]);
    // (mount path, host path) of each hostPath volume the container mounts.
    let host_mounts = |name| -> Result<Vec<(PathBuf, PathBuf)>> {
        let mut out = Vec::new();
        for m in list(container(node, name)?, &["volumeMounts"]) {
            let volume = volumes
                .iter()
                .find(|v| text(v, &["name"]) == text(m, &["name"]))
                .with_context(|| format!("no volume for mount {m:?}"))?;
            if let Some(host) = at(volume, &["hostPath", "path"]).as_str() {
                out.push((text(m, &["mountPath"]).into(), host.into()));
            }
        }
        Ok(out)
    };
    let command = strings(container(node, "capture")?, &["command"]);
    let state = command
        .iter()
        .skip_while(|a| *a != "--state")
        .nth(1)
        .context("capture has no --state")?;
    let host_state = host_mounts("capture")?
        .into_iter()
        .find_map(|(mount, host)| Some(host.join(Path::new(state).strip_prefix(mount).ok()?)))
        .with_context(|| format!("--state {state} is on no hostPath"))?;
    let tunnel = host_mounts("tunnel")?;
    assert!(
        !tunnel.is_empty(),
        "the tunnel mounts its socket's directory"
    );
    for (mount, host) in tunnel {
        assert!(
            !host_state.starts_with(&host) && !host.starts_with(&host_state),
            "the tunnel's {} (host {}) overlaps the capture state {}",
            mount.display(),
            host.display(),
            host_state.display()
        );
    }
    Ok(())
}

/// The node tunnel runs with glibc's heap trimming raised (docs/tunnel.md, "Memory
/// allocator"): the static binary reads `GLIBC_TUNABLES` like a dynamic one. The capture
/// agent and the controller carry no bulk data and keep glibc's default.
#[test]
fn the_node_tunnel_keeps_freed_heap_for_its_data_path() -> Result<()> {
    let Some(helm) = helm("the_node_tunnel_keeps_freed_heap_for_its_data_path")? else {
        return Ok(());
    };
    let objects = docs(&render(&helm, &[])?)?;
    let tunables = |workload: &Value, name: &str| -> Result<Vec<String>> {
        Ok(list(container(workload, name)?, &["env"])
            .iter()
            .filter(|e| text(e, &["name"]) == "GLIBC_TUNABLES")
            .map(|e| text(e, &["value"]).to_owned())
            .collect())
    };
    let node = object(&objects, "DaemonSet", "ambit-node")?;
    assert_eq!(
        tunables(node, "tunnel")?,
        ["glibc.malloc.trim_threshold=1048576"]
    );
    assert!(tunables(node, "capture")?.is_empty());
    let controller = object(&objects, "Deployment", "ambit-controller")?;
    assert!(tunables(controller, "controller")?.is_empty());
    Ok(())
}

#[test]
fn gateway_api_values_take_effect() -> Result<()> {
    let Some(helm) = helm("gateway_api_values_take_effect")? else {
        return Ok(());
    };
    let crds = |extra: &[&str]| -> Result<Vec<Value>> {
        Ok(docs(&render(&helm, extra)?)?
            .into_iter()
            .filter(|o| text(o, &["spec", "group"]) == "gateway.networking.k8s.io")
            .collect())
    };
    assert!(crds(&["--set", "gatewayAPI.installCRDs=false"])?.is_empty());
    for crd in crds(&["--set", "gatewayAPI.keepCRDsOnUninstall=false"])? {
        assert!(
            at(
                &crd,
                &["metadata", "annotations", "helm.sh/resource-policy"]
            )
            .is_null()
        );
    }
    Ok(())
}

#[test]
fn the_experimental_channel_installs_crds_that_keep_httproute_retry() -> Result<()> {
    let Some(helm) = helm("the_experimental_channel_installs_crds_that_keep_httproute_retry")?
    else {
        return Ok(());
    };
    // HTTPRoute's CRD of each channel: its channel annotation, and whether the v1 schema of a
    // rule has `retry` (the standard one prunes it).
    let httproute = |extra: &[&str]| -> Result<(String, bool)> {
        let objects = docs(&render(&helm, extra)?)?;
        let crd = object(
            &objects,
            "CustomResourceDefinition",
            "httproutes.gateway.networking.k8s.io",
        )?;
        let channel = text(
            crd,
            &[
                "metadata",
                "annotations",
                "gateway.networking.k8s.io/channel",
            ],
        );
        let v1 = list(crd, &["spec", "versions"])
            .iter()
            .find(|v| text(v, &["name"]) == "v1")
            .context("no v1 in the HTTPRoute CRD")?;
        let rule = at(
            v1,
            &[
                "schema",
                "openAPIV3Schema",
                "properties",
                "spec",
                "properties",
                "rules",
                "items",
                "properties",
            ],
        );
        Ok((channel.to_owned(), !at(rule, &["retry"]).is_null()))
    };
    assert_eq!(httproute(&[])?, ("standard".to_owned(), false));
    assert_eq!(
        httproute(&["--set", "gatewayAPI.channel=experimental"])?,
        ("experimental".to_owned(), true)
    );
    let refused = run(
        &helm,
        &["lint", "charts/ambit", "--set", "gatewayAPI.channel=beta"],
    )?;
    assert!(
        refused.is_err_and(|out| out.contains("channel")),
        "an unknown channel is refused"
    );
    Ok(())
}

#[test]
fn tracing_renders_only_with_an_endpoint() -> Result<()> {
    let Some(helm) = helm("tracing_renders_only_with_an_endpoint")? else {
        return Ok(());
    };
    // The controller's OTLP variables (it writes them into each waypoint as OTEL_*).
    let otlp = |extra: &[&str]| -> Result<Vec<(String, String)>> {
        let objects = docs(&render(&helm, extra)?)?;
        let controller = container(
            object(&objects, "Deployment", "ambit-controller")?,
            "controller",
        )?;
        Ok(list(controller, &["env"])
            .iter()
            .filter(|e| text(e, &["name"]).contains("OTLP"))
            .map(|e| {
                (
                    text(e, &["name"]).to_owned(),
                    text(e, &["value"]).to_owned(),
                )
            })
            .collect())
    };
    assert_eq!(otlp(&[])?, [], "off by default");
    let endpoint = "tracing.otlp.endpoint=https://otel.observability:4317";
    let want = |path: &str| {
        [
            (
                "AMBIT_WAYPOINT_OTLP_ENDPOINT",
                "https://otel.observability:4317",
            ),
            ("AMBIT_WAYPOINT_OTLP_SAMPLING", "0.1"),
            ("AMBIT_WAYPOINT_OTLP_PATH", path),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    };
    let sampled = ["--set", endpoint, "--set", "tracing.otlp.sampling=0.1"];
    assert_eq!(
        otlp(&sampled)?,
        want("route"),
        "spans name routes, not paths"
    );
    let full = [&sampled[..], &["--set", "tracing.otlp.path=full"]].concat();
    assert_eq!(otlp(&full)?, want("full"));
    let refused = run(
        &helm,
        &[
            "lint",
            "charts/ambit",
            "--set",
            endpoint,
            "--set",
            "tracing.otlp.path=raw",
        ],
    )?;
    assert!(
        refused.is_err_and(|out| out.contains("path")),
        "an unknown path setting is refused"
    );
    assert_eq!(
        otlp(&["--set", endpoint, "--set", "tracing.otlp.waypoints=false"])?,
        [],
        "the waypoints' switch"
    );
    Ok(())
}

#[test]
fn monitoring_objects_and_dashboards_render_only_when_enabled() -> Result<()> {
    let Some(helm) = helm("monitoring_objects_and_dashboards_render_only_when_enabled")? else {
        return Ok(());
    };
    let monitoring = |o: &Value| {
        text(o, &["apiVersion"]) == "monitoring.coreos.com/v1"
            || text(o, &["metadata", "name"]) == "ambit-dashboards"
    };
    assert!(!docs(&render(&helm, &[])?)?.iter().any(monitoring));
    let objects = docs(&render(
        &helm,
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
            "--set",
            "metrics.dashboards.enabled=true",
        ],
    )?)?;
    let controller = object(&objects, "ServiceMonitor", "ambit-controller")?;
    assert_eq!(
        text(controller, &["metadata", "labels", "release"]),
        "prometheus"
    );
    assert_eq!(
        text(
            controller,
            &["spec", "selector", "matchLabels", "app.kubernetes.io/name"]
        ),
        "ambit-controller"
    );
    // The node pod declares no ports (an upgrade's new pod starts beside the old one, and
    // host ports would keep it from being scheduled): its monitor scrapes 15020 by number.
    let node = object(&objects, "PodMonitor", "ambit-node")?;
    let endpoints = list(node, &["spec", "podMetricsEndpoints"]);
    assert_eq!(at(&endpoints[0], &["targetPort"]).as_u64(), Some(15020));
    let waypoints = object(&objects, "PodMonitor", "ambit-waypoints")?;
    let endpoints = list(waypoints, &["spec", "podMetricsEndpoints"]);
    assert_eq!(text(&endpoints[0], &["port"]), "metrics");
    let dashboards = object(&objects, "ConfigMap", "ambit-dashboards")?;
    assert_eq!(
        text(dashboards, &["metadata", "labels", "grafana_dashboard"]),
        "1"
    );
    let data = at(dashboards, &["data"]).as_object().context("no data")?;
    assert_eq!(data.len(), 3, "{data:?}");
    for (file, json) in data {
        let dashboard: serde_json::Value = serde_json::from_str(json.as_str().unwrap_or_default())
            .with_context(|| format!("{file:?} is not JSON"))?;
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{file:?}"
        );
    }
    Ok(())
}

#[test]
fn a_jwks_ca_bundle_reaches_the_controller_and_only_when_set() -> Result<()> {
    let Some(helm) = helm("a_jwks_ca_bundle_reaches_the_controller_and_only_when_set")? else {
        return Ok(());
    };
    const ENV: &str = "AMBIT_JWKS_CA_BUNDLE";
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG...\n-----END CERTIFICATE-----\n";
    let file = std::env::temp_dir().join(format!("ambit-chart-jwks-ca-{}.pem", std::process::id()));
    std::fs::write(&file, pem)?;
    let set_file = format!("jwks.caBundle={}", file.display());
    let rendered = render(&helm, &["--set-file", &set_file]);
    std::fs::remove_file(&file)?;
    let objects = docs(&rendered?)?;
    let bundle = object(&objects, "ConfigMap", "ambit-jwks-ca")?;
    assert_eq!(text(bundle, &["data", "ca.crt"]), pem);
    let controller = object(&objects, "Deployment", "ambit-controller")?;
    let c = container(controller, "controller")?;
    let path = list(c, &["env"])
        .iter()
        .find(|e| text(e, &["name"]) == ENV)
        .map(|e| text(e, &["value"]))
        .context("the controller is not told where the bundle is")?;
    let mount = list(c, &["volumeMounts"])
        .iter()
        .find(|m| path.starts_with(text(m, &["mountPath"])))
        .context("the bundle's path is not mounted")?;
    let volume = list(controller, &["spec", "template", "spec", "volumes"])
        .iter()
        .find(|v| text(v, &["name"]) == text(mount, &["name"]))
        .context("the mount has no volume")?;
    assert_eq!(text(volume, &["configMap", "name"]), "ambit-jwks-ca");
    assert_eq!(path.rsplit('/').next(), Some("ca.crt"));
    // A changed bundle rolls the controller: it reads the file once, at start.
    assert!(
        !at(
            controller,
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "checksum/jwks-ca"
            ]
        )
        .is_null()
    );

    // Unset: no ConfigMap, no variable (the system's roots only).
    let objects = docs(&render(&helm, &[])?)?;
    assert!(object(&objects, "ConfigMap", "ambit-jwks-ca").is_err());
    let controller = object(&objects, "Deployment", "ambit-controller")?;
    assert!(
        list(container(controller, "controller")?, &["env"])
            .iter()
            .all(|e| text(e, &["name"]) != ENV)
    );
    // Not a certificate: refused by the schema, naming the value.
    let refused = run(
        &helm,
        &["lint", "charts/ambit", "--set", "jwks.caBundle=not-a-pem"],
    )?;
    assert!(refused.is_err_and(|out| out.contains("caBundle")));
    Ok(())
}

/// The capture agent sets captured pods' `tcp_tw_reuse` (docs/capture.md, "TIME_WAIT reuse")
/// as `node.capture.timeWaitReuse` says, through the node's `/proc/sys/net` (the container's own
/// `/proc/sys` is read-only), which no other container mounts; the value is a boolean.
#[test]
fn the_capture_agent_sets_time_wait_reuse_through_the_nodes_proc() -> Result<()> {
    let Some(helm) = helm("the_capture_agent_sets_time_wait_reuse_through_the_nodes_proc")? else {
        return Ok(());
    };
    let env = |extra: &[&str], name: &str| -> Result<String> {
        let objects = docs(&render(&helm, extra)?)?;
        let node = object(&objects, "DaemonSet", "ambit-node")?;
        Ok(list(container(node, "capture")?, &["env"])
            .iter()
            .find(|e| text(e, &["name"]) == name)
            .map(|e| text(e, &["value"]).to_owned())
            .unwrap_or_default())
    };
    assert_eq!(env(&[], "AMBIT_TIME_WAIT_REUSE")?, "on");
    let off = ["--set", "node.capture.timeWaitReuse=false"];
    assert_eq!(env(&off, "AMBIT_TIME_WAIT_REUSE")?, "off");
    let proc = env(&[], "AMBIT_PROC_DIR")?;
    let objects = docs(&render(&helm, &[])?)?;
    let node = object(&objects, "DaemonSet", "ambit-node")?;
    let volumes = list(node, &["spec", "template", "spec", "volumes"]);
    let mounting = |name: &str| -> Result<Vec<String>> {
        Ok(list(container(node, name)?, &["volumeMounts"])
            .iter()
            .filter(|m| {
                volumes.iter().any(|v| {
                    text(v, &["name"]) == text(m, &["name"])
                        && text(v, &["hostPath", "path"]) == "/proc/sys/net"
                })
            })
            .map(|m| text(m, &["mountPath"]).to_owned())
            .collect())
    };
    assert_eq!(mounting("capture")?, [format!("{proc}/sys/net")]);
    assert!(mounting("tunnel")?.is_empty());
    let bad = run(
        &helm,
        &[
            "lint",
            "charts/ambit",
            "--set-string",
            "node.capture.timeWaitReuse=yes",
        ],
    )?;
    assert!(
        bad.as_ref().is_err_and(|e| e.contains("timeWaitReuse")),
        "{bad:?}"
    );
    Ok(())
}
