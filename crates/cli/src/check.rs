//! `kubectl ambit check`: verdicts computed from objects alone (no IO here), one [`Line`] per
//! check, grouped by category and printed as `linkerd check` prints them.

use crate::health;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The chart this CLI was built with: its `kubeVersion` is the supported range.
const CHART_YAML: &str = include_str!("../../../charts/ambit/Chart.yaml");
/// The capture's rules live in an `inet` table with nat chains: kernel 5.2 or newer.
pub const MIN_KERNEL: (u32, u32) = (5, 2);
/// The mesh root is warned about this long before it expires.
pub const ROOT_EXPIRY_WARNING_SECS: i64 = 60 * 24 * 3600;
pub const HBONE_PORT: i32 = ambit_k8s::waypoint::HBONE_PORT as i32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub category: String,
    pub check: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl Line {
    pub fn pass(category: &str, check: &str, detail: impl Into<String>) -> Self {
        Self::new(category, check, Verdict::Pass, detail.into(), String::new())
    }
    pub fn warn(
        category: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(category, check, Verdict::Warn, detail.into(), hint.into())
    }
    pub fn fail(
        category: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(category, check, Verdict::Fail, detail.into(), hint.into())
    }
    fn new(category: &str, check: &str, verdict: Verdict, detail: String, hint: String) -> Self {
        Self {
            category: category.into(),
            check: check.into(),
            verdict,
            detail,
            hint,
        }
    }
}

/// Every check's line, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub success: bool,
    pub checks: Vec<Line>,
}

impl Report {
    pub fn new(checks: Vec<Line>) -> Self {
        Self {
            success: checks.iter().all(|l| l.verdict != Verdict::Fail),
            checks,
        }
    }

    /// Categories as headings, one line a check (`√`/`‼`/`×`, or `[ok]`/`[warn]`/`[fail]`
    /// without `symbols`), a hint under each that did not pass, a summary last.
    pub fn render(&self, symbols: bool) -> String {
        let mark = |v: Verdict| match (v, symbols) {
            (Verdict::Pass, true) => "√",
            (Verdict::Warn, true) => "‼",
            (Verdict::Fail, true) => "×",
            (Verdict::Pass, false) => "[ok]",
            (Verdict::Warn, false) => "[warn]",
            (Verdict::Fail, false) => "[fail]",
        };
        let mut out = String::new();
        let mut category = None;
        for line in &self.checks {
            if category != Some(&line.category) {
                if category.is_some() {
                    out.push('\n');
                }
                out.push_str(&format!(
                    "{}\n{}\n",
                    line.category,
                    "-".repeat(line.category.chars().count())
                ));
                category = Some(&line.category);
            }
            out.push_str(&format!("{} {}", mark(line.verdict), line.check));
            if !line.detail.is_empty() {
                out.push_str(&format!(": {}", line.detail));
            }
            out.push('\n');
            if line.verdict != Verdict::Pass && !line.hint.is_empty() {
                out.push_str(&format!("    hint: {}\n", line.hint));
            }
        }
        let count = |v| self.checks.iter().filter(|l| l.verdict == v).count();
        out.push_str(&format!(
            "\n{} passed, {} warnings, {} failed\n",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail)
        ));
        out
    }
}

/// `status`'s verdict on a part as a check line.
pub fn from_health(category: &str, check: &str, h: &health::Check, hint: &str) -> Line {
    let mut detail = h.detail.clone();
    if !h.problems.is_empty() {
        detail.push_str(&format!("; {}", h.problems.join("; ")));
    }
    if h.healthy {
        Line::pass(category, check, detail)
    } else {
        Line::fail(category, check, detail, hint)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("charts/ambit/Chart.yaml has no kubeVersion")]
    NoKubeVersion,
    #[error("kubeVersion {range:?} is not a version range: {reason}")]
    BadRange { range: String, reason: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChartYaml {
    kube_version: Option<String>,
}

/// The chart's `kubeVersion`, the Kubernetes versions it supports.
pub fn chart_kube_version() -> Result<String, RangeError> {
    serde_saphyr::from_str::<ChartYaml>(CHART_YAML)
        .ok()
        .and_then(|c| c.kube_version)
        .ok_or(RangeError::NoKubeVersion)
}

/// A Helm `kubeVersion` constraint (`>=1.30.0-0`, `>= 1.30 < 1.36`, `a || b`) as semver
/// requirements, any of which may match.
fn parse_range(range: &str) -> Result<Vec<semver::VersionReq>, RangeError> {
    let bad = |reason: String| RangeError::BadRange {
        range: range.into(),
        reason,
    };
    range
        .split("||")
        .map(|alternative| {
            // Helm separates comparators by spaces or commas, and allows `>= 1.30`.
            let mut comparators: Vec<String> = Vec::new();
            let mut operator = String::new();
            for token in alternative.split([' ', ',']).filter(|t| !t.is_empty()) {
                if token.chars().all(|c| "<>=!~^".contains(c)) {
                    operator = token.into();
                } else {
                    comparators.push(format!("{}{token}", std::mem::take(&mut operator)));
                }
            }
            semver::VersionReq::parse(&comparators.join(", ")).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// The apiserver's `gitVersion` (`v1.34.1`, `v1.31.2+k3s1`) within the chart's range.
pub fn kube_version(range: &str, git_version: &str) -> Line {
    const CATEGORY: &str = "kubernetes-version";
    const CHECK: &str = "Kubernetes version supported by the chart";
    let requirements = match parse_range(range) {
        Ok(r) => r,
        Err(e) => return Line::fail(CATEGORY, CHECK, e.to_string(), "fix the chart"),
    };
    let Ok(version) = semver::Version::parse(git_version.trim_start_matches('v')) else {
        return Line::warn(
            CATEGORY,
            CHECK,
            format!("cannot read the server version {git_version:?}"),
            format!("make sure the cluster runs Kubernetes {range}"),
        );
    };
    // Vendor suffixes (`-eks-...`, `+k3s1`) are not pre-releases of the upstream version.
    let release = semver::Version::new(version.major, version.minor, version.patch);
    if requirements.iter().any(|r| r.matches(&release)) {
        Line::pass(CATEGORY, CHECK, format!("{git_version} (chart: {range})"))
    } else {
        Line::fail(
            CATEGORY,
            CHECK,
            format!("{git_version}, the chart needs {range}"),
            "upgrade the cluster (docs/install.md, Prerequisites)",
        )
    }
}

/// What of other meshes the API shows: namespaces, workloads, CRDs, Cilium's config.
#[derive(Debug, Clone, Default)]
pub struct ClusterInventory {
    pub namespaces: Vec<String>,
    /// `namespace/name` of every Deployment and DaemonSet.
    pub deployments: Vec<String>,
    pub daemonsets: Vec<String>,
    pub crds: Vec<String>,
    /// `kube-system/cilium-config`, if present.
    pub cilium_config: Option<BTreeMap<String, String>>,
}

const MESHES: &str = "other meshes";

/// Istio, Linkerd and Cilium's mesh each capture pod traffic too: one line each.
pub fn conflicting_meshes(inv: &ClusterInventory) -> Vec<Line> {
    let named = |list: &[String], name: &str| -> Vec<String> {
        list.iter()
            .filter(|q| q.rsplit('/').next() == Some(name))
            .cloned()
            .collect()
    };
    let crds_of = |suffix: &str| -> Vec<String> {
        inv.crds
            .iter()
            .filter(|c| c.ends_with(suffix))
            .cloned()
            .collect()
    };
    let mesh = |check: &str, mut evidence: Vec<String>, uninstall: &str| {
        evidence.sort();
        evidence.dedup();
        if evidence.is_empty() {
            Line::pass(MESHES, check, "")
        } else {
            let shown: Vec<&str> = evidence.iter().take(3).map(String::as_str).collect();
            let more = evidence.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Line::fail(
                MESHES,
                check,
                format!("found {}{more}", shown.join(", ")),
                format!(
                    "two meshes capturing the same pods break each other's traffic: {uninstall} first, or install ambit on another cluster"
                ),
            )
        }
    };
    let has_ns = |ns: &str| inv.namespaces.iter().any(|n| n == ns);
    let mut istio: Vec<String> = named(&inv.deployments, "istiod");
    istio.extend(named(&inv.daemonsets, "ztunnel"));
    istio.extend(named(&inv.daemonsets, "istio-cni-node"));
    if has_ns("istio-system") {
        istio.push("namespace istio-system".into());
    }
    if !crds_of(".istio.io").is_empty() {
        istio.push(format!("{} istio.io CRDs", crds_of(".istio.io").len()));
    }
    let mut linkerd: Vec<String> = named(&inv.deployments, "linkerd-destination");
    if has_ns("linkerd") {
        linkerd.push("namespace linkerd".into());
    }
    if !crds_of(".linkerd.io").is_empty() {
        linkerd.push(format!("{} linkerd.io CRDs", crds_of(".linkerd.io").len()));
    }
    let mut lines = vec![
        mesh(
            "no Istio",
            istio,
            "uninstall Istio (istioctl uninstall --purge)",
        ),
        mesh(
            "no Linkerd",
            linkerd,
            "uninstall Linkerd (linkerd uninstall)",
        ),
    ];
    const CILIUM: &str = "no Cilium service mesh";
    let cilium = named(&inv.daemonsets, "cilium");
    let mesh_on: Vec<String> = inv
        .cilium_config
        .iter()
        .flatten()
        .filter(|(k, v)| {
            ["mesh-auth-enabled", "enable-envoy-config"].contains(&k.as_str()) && *v == "true"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    lines.push(match (cilium.is_empty(), mesh_on.is_empty()) {
        (true, _) => Line::pass(MESHES, CILIUM, ""),
        (false, true) => Line::pass(MESHES, CILIUM, "Cilium runs as the CNI, its mesh features off"),
        (false, false) => Line::warn(
            MESHES,
            CILIUM,
            format!("Cilium's mesh features are on (kube-system/cilium-config {})", mesh_on.join(", ")),
            "Cilium's mutual auth or Envoy config and ambit may both act on the same traffic: turn them off for enrolled namespaces",
        ),
    });
    lines
}

/// A CRD's name and the Helm release owning it (`meta.helm.sh/release-*` annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdOwner {
    pub name: String,
    /// `namespace/release`, `None` when no Helm release owns it.
    pub release: Option<String>,
}

const CRDS: &str = "existing CRDs";

/// ambit's CRDs from an earlier install, Gateway API's from elsewhere: `helm install` refuses
/// to adopt CRDs another release (or none) owns.
pub fn existing_crds(found: &[CrdOwner]) -> Vec<Line> {
    let describe = |c: &CrdOwner| match &c.release {
        Some(r) => format!("{} (release {r})", c.name),
        None => format!("{} (no Helm release)", c.name),
    };
    let ambit: Vec<String> = found
        .iter()
        .filter(|c| c.name.ends_with(".ambit.dev"))
        .map(describe)
        .collect();
    let gateway: Vec<String> = found
        .iter()
        .filter(|c| c.name.ends_with(".gateway.networking.k8s.io"))
        .map(describe)
        .collect();
    vec![
        if ambit.is_empty() {
            Line::pass(CRDS, "no ambit CRDs from an earlier install", "")
        } else {
            Line::warn(
                CRDS,
                "no ambit CRDs from an earlier install",
                ambit.join(", "),
                "ambit is installed already (helm upgrade that release), or an earlier install left its CRDs: delete them (kubectl delete crd ...) before helm install",
            )
        },
        if gateway.is_empty() {
            Line::pass(CRDS, "Gateway API CRDs", "none: the chart installs them")
        } else {
            Line::warn(
                CRDS,
                "Gateway API CRDs",
                format!("present: {}", gateway.join(", ")),
                "install with --set gatewayAPI.installCRDs=false unless they are this release's (helm refuses to adopt CRDs it did not create)",
            )
        },
    ]
}

/// Whether a rule's `ports` admit TCP 15008: no ports means every port; named ports are not
/// resolved (they name a pod's container port, which HBONE's is not).
fn ports_admit_hbone(ports: Option<&Vec<NetworkPolicyPort>>) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
        let port = match &p.port {
            None => true,
            Some(IntOrString::Int(first)) => {
                let last = p.end_port.unwrap_or(*first);
                (*first..=last).contains(&HBONE_PORT)
            }
            Some(IntOrString::String(_)) => false,
        };
        tcp && port
    })
}

/// The policy's name and why it would block HBONE, if it would.
///
/// An approximation, documented in docs/cli.md: a policy that selects pods for ingress (or
/// egress) blocks HBONE unless one of its rules admits TCP 15008 on any port list; who the
/// rule admits (`from`/`to`) is not weighed.
pub fn blocks_hbone(policy: &NetworkPolicy) -> Option<String> {
    let spec = policy.spec.as_ref()?;
    let types = spec.policy_types.clone().unwrap_or_else(|| {
        // Kubernetes' default: Ingress always, Egress when egress rules are given.
        let mut t = vec!["Ingress".to_owned()];
        if spec.egress.is_some() {
            t.push("Egress".into());
        }
        t
    });
    let name = format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default()
    );
    let mut blocked = Vec::new();
    if types.iter().any(|t| t == "Ingress")
        && !spec
            .ingress
            .iter()
            .flatten()
            .any(|r| ports_admit_hbone(r.ports.as_ref()))
    {
        blocked.push("ingress");
    }
    if types.iter().any(|t| t == "Egress")
        && !spec
            .egress
            .iter()
            .flatten()
            .any(|r| ports_admit_hbone(r.ports.as_ref()))
    {
        blocked.push("egress");
    }
    (!blocked.is_empty()).then(|| format!("{name} ({})", blocked.join(", ")))
}

/// NetworkPolicies of the namespaces to be meshed that would block port 15008.
pub fn network_policies(namespaces: &[String], policies: &[NetworkPolicy]) -> Line {
    const CATEGORY: &str = "network";
    const CHECK: &str = "NetworkPolicies admit HBONE (TCP 15008)";
    let blocking: Vec<String> = policies.iter().filter_map(blocks_hbone).collect();
    let scope = if namespaces.is_empty() {
        "; no namespace enrolled yet".to_owned()
    } else {
        format!(" in {}", namespaces.join(", "))
    };
    if blocking.is_empty() {
        Line::pass(
            CATEGORY,
            CHECK,
            format!("{} policies{scope}", policies.len()),
        )
    } else {
        Line::warn(
            CATEGORY,
            CHECK,
            format!("would block 15008: {}", blocking.join(", ")),
            "add TCP port 15008 to their ingress/egress rules: mesh traffic between enrolled pods arrives on it (docs/install.md, Prerequisites)",
        )
    }
}

/// What the chart creates, as (API group, resource, namespaced).
pub const CHART_RESOURCES: [(&str, &str, bool); 13] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io", "roles", true),
    ("rbac.authorization.k8s.io", "rolebindings", true),
    ("", "serviceaccounts", true),
    ("", "configmaps", true),
    ("", "services", true),
    ("apps", "deployments", true),
    ("apps", "daemonsets", true),
    ("policy", "poddisruptionbudgets", true),
    // Keeps each node's capture agent to its own NodeCapture record.
    (
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
        false,
    ),
];

/// The kinds the caller may not create (from SelfSubjectAccessReviews).
pub fn permissions(namespace: &str, denied: &[String]) -> Line {
    const CATEGORY: &str = "permissions";
    const CHECK: &str = "can create what the chart creates";
    if denied.is_empty() {
        Line::pass(
            CATEGORY,
            CHECK,
            format!("{} kinds, namespace {namespace}", CHART_RESOURCES.len()),
        )
    } else {
        Line::fail(
            CATEGORY,
            CHECK,
            format!("not allowed to create {}", denied.join(", ")),
            "install as a cluster admin, or have one grant these (kubectl auth can-i create KIND)",
        )
    }
}

/// What a Node's `status.nodeInfo` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub os: String,
    pub kernel: String,
    pub runtime: String,
}

fn kernel_release(kernel: &str) -> Option<(u32, u32)> {
    let mut parts = kernel.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Linux nodes with a kernel the capture's nftables rules load on. Whether the CNI config dir
/// is writable, and nftables modules loaded, only the capture agent on the node can tell (it
/// checks at startup and fails its readiness).
pub fn nodes(nodes: &[NodeFacts]) -> Line {
    const CATEGORY: &str = "nodes";
    const CHECK: &str = "Linux, kernel 5.2 or newer";
    if nodes.is_empty() {
        return Line::warn(
            CATEGORY,
            CHECK,
            "no nodes",
            "ambit's node DaemonSet needs nodes to run on",
        );
    }
    let wrong: Vec<String> = nodes
        .iter()
        .filter(|n| n.os != "linux" || kernel_release(&n.kernel).is_none_or(|k| k < MIN_KERNEL))
        .map(|n| format!("{} ({} {})", n.name, n.os, n.kernel))
        .collect();
    if wrong.is_empty() {
        let mut runtimes: Vec<&str> = nodes.iter().map(|n| n.runtime.as_str()).collect();
        runtimes.sort_unstable();
        runtimes.dedup();
        Line::pass(
            CATEGORY,
            CHECK,
            format!("{} nodes ({})", nodes.len(), runtimes.join(", ")),
        )
    } else {
        Line::fail(
            CATEGORY,
            CHECK,
            format!("not supported: {}", wrong.join(", ")),
            "the capture loads nftables rules in an inet table with nat chains (5.2+): upgrade those nodes or keep ambit off them (node.nodeSelector)",
        )
    }
}

/// The Lease `ambit-controller`: held, and renewed within its duration.
pub fn lease(
    namespace: &str,
    holder: Option<&str>,
    renewed_secs_ago: Option<i64>,
    duration_secs: i64,
) -> Line {
    const CATEGORY: &str = "control plane";
    const CHECK: &str = "controller Lease held";
    let hint = format!(
        "no controller leads: status and waypoints are not written (kubectl -n {namespace} logs deployment/{})",
        health::CONTROLLER_DEPLOYMENT
    );
    match (holder.filter(|h| !h.is_empty()), renewed_secs_ago) {
        (Some(h), Some(ago)) if ago <= duration_secs => {
            Line::pass(CATEGORY, CHECK, format!("by {h}, renewed {ago}s ago"))
        }
        (Some(h), Some(ago)) => Line::fail(
            CATEGORY,
            CHECK,
            format!("{h} last renewed {ago}s ago (duration {duration_secs}s)"),
            hint,
        ),
        _ => Line::fail(CATEGORY, CHECK, "nobody holds it", hint),
    }
}

/// A DaemonSet's `status` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
}

/// The tunnel DaemonSet: ready and up to date on every node it should run on.
pub fn node_rollout(namespace: &str, rollout: Option<Rollout>) -> Line {
    const CATEGORY: &str = "data plane";
    const CHECK: &str = "tunnel DaemonSet ready on every node";
    let ds = format!("{namespace}/{}", health::NODE_DAEMONSET);
    let hint = format!(
        "kubectl ambit status lists the nodes whose pod is not ready; kubectl -n {namespace} describe daemonset {}",
        health::NODE_DAEMONSET
    );
    match rollout {
        None => Line::fail(CATEGORY, CHECK, format!("DaemonSet {ds} not found"), hint),
        Some(r) if r.desired > 0 && r.ready == r.desired && r.updated == r.desired => Line::pass(
            CATEGORY,
            CHECK,
            format!("{}/{} ready and updated", r.ready, r.desired),
        ),
        Some(r) => Line::fail(
            CATEGORY,
            CHECK,
            format!(
                "desired {}, ready {}, updated {} (DaemonSet {ds})",
                r.desired, r.ready, r.updated
            ),
            hint,
        ),
    }
}

/// How long a certificate has left, as `check` judges it.
pub fn validity(
    category: &str,
    check: &str,
    subject: &str,
    secs_left: i64,
    warn_below: i64,
    hint: &str,
) -> Line {
    let days = secs_left / 86_400;
    if secs_left <= 0 {
        Line::fail(
            category,
            check,
            format!("{subject} expired {}s ago", -secs_left),
            hint,
        )
    } else if secs_left < warn_below {
        Line::warn(
            category,
            check,
            format!("{subject} expires in {days} days ({secs_left}s)"),
            hint,
        )
    } else {
        Line::pass(
            category,
            check,
            format!("{subject} valid for {days} more days"),
        )
    }
}

/// What a tunnel's admin and metrics endpoints say of its config and certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelState {
    pub pod: String,
    pub node: String,
    pub synced: bool,
    pub ready: bool,
    /// Identities whose leaf has expired.
    pub expired_leaves: Vec<String>,
    /// Identities whose leaf is past three quarters of its lifetime: tunnels renew at half,
    /// so renewal has been failing for a quarter of it.
    pub unrenewed_leaves: Vec<String>,
    /// `ambit_tunnel_config_rejected_resources`, `None` when the metric was not read.
    pub rejected_resources: Option<u64>,
}

/// Reads what `check` needs from a tunnel's `/config_dump` (`now` in Unix seconds).
pub fn tunnel_state(pod: &str, node: &str, dump: &serde_json::Value, now: i64) -> TunnelState {
    let leaves = |past: &dyn Fn(i64, i64) -> bool| -> Vec<String> {
        dump["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(
                |c| match (c["notBefore"].as_i64(), c["notAfter"].as_i64()) {
                    (Some(from), Some(to)) => past(from, to),
                    (None, Some(to)) => past(to, to),
                    _ => false,
                },
            )
            .filter_map(|c| c["identity"].as_str().map(str::to_owned))
            .collect()
    };
    let expired_leaves = leaves(&|_, to| to <= now);
    let unrenewed_leaves = leaves(&|from, to| to > now && now >= from + (to - from) / 4 * 3);
    TunnelState {
        pod: pod.into(),
        node: node.into(),
        synced: dump["synced"].as_bool().unwrap_or(false),
        ready: dump["ready"].as_bool().unwrap_or(false),
        expired_leaves,
        unrenewed_leaves,
        rejected_resources: None,
    }
}

/// The tunnel's count of resources it holds but rejected (NACKed).
pub const REJECTED_METRIC: &str = "ambit_tunnel_config_rejected_resources";

/// A Prometheus text exposition's value of an unlabelled gauge or counter.
pub fn metric_value(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|l| {
        let (series, value) = l.split_once(' ')?;
        if series != name {
            return None;
        }
        // Gauges and counters of counts print as integers.
        value.trim().parse::<u64>().ok()
    })
}

/// One line a tunnel: config stream in sync, leaves valid, nothing rejected.
pub fn tunnel(namespace: &str, state: Result<TunnelState, (String, String)>) -> Line {
    const CATEGORY: &str = "data plane";
    let state = match state {
        Ok(s) => s,
        Err((node, error)) => {
            return Line::fail(
                CATEGORY,
                &format!("tunnel on {node}: config in sync"),
                format!("cannot read its admin endpoint: {error}"),
                format!(
                    "kubectl ambit config dump --node {node}; kubectl -n {namespace} logs on that node's ambit-node pod"
                ),
            );
        }
    };
    let check = format!(
        "tunnel on {}: config in sync, certificates valid, nothing rejected",
        state.node
    );
    let logs = format!("kubectl -n {namespace} logs {} -c tunnel", state.pod);
    let mut problems = Vec::new();
    if !state.synced {
        problems.push("not synced with the controller (config stream not connected)".to_owned());
    } else if !state.ready {
        problems.push("not ready (draining?)".to_owned());
    }
    if !state.expired_leaves.is_empty() {
        problems.push(format!(
            "expired certificates: {}",
            state.expired_leaves.join(", ")
        ));
    }
    if let Some(n) = state.rejected_resources.filter(|n| *n > 0) {
        problems.push(format!("{n} resources rejected (NACKed) by the tunnel"));
    }
    let mut doubts = Vec::new();
    if !state.unrenewed_leaves.is_empty() {
        doubts.push(format!(
            "certificates past 3/4 of their lifetime, not renewed: {}",
            state.unrenewed_leaves.join(", ")
        ));
    }
    if state.rejected_resources.is_none() {
        doubts.push(format!(
            "its metrics (port 15020, {REJECTED_METRIC}) could not be read"
        ));
    }
    let hint = format!("{logs} says why; the controller's logs name rejected resources");
    match (problems.is_empty(), doubts.is_empty()) {
        (true, true) => Line::pass(CATEGORY, &check, format!("pod {}", state.pod)),
        (true, false) => Line::warn(
            CATEGORY,
            &check,
            format!("pod {}: {}", state.pod, doubts.join("; ")),
            hint,
        ),
        (false, _) => {
            problems.extend(doubts);
            Line::fail(
                CATEGORY,
                &check,
                format!("pod {}: {}", state.pod, problems.join("; ")),
                hint,
            )
        }
    }
}

/// Names of the objects a condition check found wanting, as one line.
pub fn conditions(
    category: &str,
    check: &str,
    total: usize,
    wanting: &[String],
    hint: &str,
) -> Line {
    if wanting.is_empty() {
        Line::pass(category, check, format!("{total} checked"))
    } else {
        Line::fail(
            category,
            check,
            format!("{} of {total}: {}", wanting.len(), wanting.join("; ")),
            hint,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_chart_range_parses_and_judges_versions() {
        let range = chart_kube_version().unwrap();
        assert_eq!(range, ">=1.30.0-0");
        for ok in ["v1.30.0", "v1.34.1", "v1.31.2+k3s1", "v1.32.3-eks-4b4b7bd"] {
            assert_eq!(kube_version(&range, ok).verdict, Verdict::Pass, "{ok}");
        }
        let old = kube_version(&range, "v1.29.9");
        assert_eq!(old.verdict, Verdict::Fail);
        assert_eq!(old.detail, "v1.29.9, the chart needs >=1.30.0-0");
        assert_eq!(kube_version(&range, "weird").verdict, Verdict::Warn);
        // Helm's own forms: spaces, `||`.
        let helm = ">= 1.28 < 1.31 || >=1.33";
        assert_eq!(kube_version(helm, "v1.30.5").verdict, Verdict::Pass);
        assert_eq!(kube_version(helm, "v1.31.0").verdict, Verdict::Fail);
        assert_eq!(kube_version(helm, "v1.33.0").verdict, Verdict::Pass);
        assert_eq!(kube_version("~>banana", "v1.30.0").verdict, Verdict::Fail);
    }

    #[test]
    fn other_meshes_are_named() {
        let clean = ClusterInventory {
            namespaces: vec!["default".into(), "kube-system".into()],
            deployments: vec!["kube-system/coredns".into()],
            daemonsets: vec!["kube-system/kube-proxy".into()],
            crds: vec!["gateways.gateway.networking.k8s.io".into()],
            cilium_config: None,
        };
        let lines = conflicting_meshes(&clean);
        assert!(
            lines.iter().all(|l| l.verdict == Verdict::Pass),
            "{lines:?}"
        );
        let istio = ClusterInventory {
            namespaces: vec!["istio-system".into()],
            deployments: vec!["istio-system/istiod".into()],
            daemonsets: vec!["istio-system/ztunnel".into()],
            crds: vec!["peerauthentications.security.istio.io".into()],
            ..clean.clone()
        };
        let lines = conflicting_meshes(&istio);
        assert_eq!(lines[0].verdict, Verdict::Fail);
        assert_eq!(
            lines[0].detail,
            "found 1 istio.io CRDs, istio-system/istiod, istio-system/ztunnel and 1 more"
        );
        assert_eq!(lines[1].verdict, Verdict::Pass, "Linkerd absent");
        let linkerd = ClusterInventory {
            crds: vec!["servers.policy.linkerd.io".into()],
            ..clean.clone()
        };
        assert_eq!(conflicting_meshes(&linkerd)[1].verdict, Verdict::Fail);
        let cilium = |mesh: &str| ClusterInventory {
            daemonsets: vec!["kube-system/cilium".into()],
            cilium_config: Some(BTreeMap::from([("mesh-auth-enabled".into(), mesh.into())])),
            ..clean.clone()
        };
        assert_eq!(
            conflicting_meshes(&cilium("false"))[2].verdict,
            Verdict::Pass
        );
        assert_eq!(
            conflicting_meshes(&cilium("true"))[2].verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn crds_of_earlier_installs() {
        let lines = existing_crds(&[]);
        assert!(lines.iter().all(|l| l.verdict == Verdict::Pass));
        let lines = existing_crds(&[
            CrdOwner {
                name: "authorizationpolicies.ambit.dev".into(),
                release: Some("ambit-system/ambit".into()),
            },
            CrdOwner {
                name: "gateways.gateway.networking.k8s.io".into(),
                release: None,
            },
        ]);
        assert_eq!(lines[0].verdict, Verdict::Warn);
        assert_eq!(
            lines[0].detail,
            "authorizationpolicies.ambit.dev (release ambit-system/ambit)"
        );
        assert_eq!(lines[1].verdict, Verdict::Warn);
        assert!(lines[1].hint.contains("gatewayAPI.installCRDs=false"));
    }

    fn policy(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn network_policy_approximation() {
        let admits = [
            // Allow-all ingress rule; no ports means every port.
            json!({"podSelector": {}, "ingress": [{}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 15008}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 15000, "endPort": 15010}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 15008}, {"port": 53, "protocol": "UDP"}]}]}),
        ];
        for spec in admits {
            assert_eq!(blocks_hbone(&policy(spec.clone())), None, "{spec}");
        }
        let blocks = [
            (json!({"podSelector": {}}), "shop/p (ingress)"),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8080}]}]}),
                "shop/p (ingress)",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
                "shop/p (ingress)",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 15008, "protocol": "UDP"}]}]}),
                "shop/p (ingress)",
            ),
            (
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [{"ports": [{"port": 53}]}], "ingress": [{}]}),
                "shop/p (egress)",
            ),
        ];
        for (spec, why) in blocks {
            assert_eq!(
                blocks_hbone(&policy(spec.clone())).as_deref(),
                Some(why),
                "{spec}"
            );
        }
        let line = network_policies(&["shop".into()], &[policy(json!({"podSelector": {}}))]);
        assert_eq!(line.verdict, Verdict::Warn);
        assert_eq!(line.detail, "would block 15008: shop/p (ingress)");
        assert_eq!(network_policies(&[], &[]).verdict, Verdict::Pass);
        assert_eq!(
            network_policies(&[], &[]).detail,
            "0 policies; no namespace enrolled yet"
        );
        assert_eq!(
            network_policies(&["shop".into()], &[]).detail,
            "0 policies in shop"
        );
    }

    /// The kinds the chart's templates create are the ones `check --pre` asks about.
    #[test]
    fn permissions_cover_the_charts_kinds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/ambit/templates");
        let plural = |kind: &str| match kind {
            "PodDisruptionBudget" => "poddisruptionbudgets".to_owned(),
            "ValidatingAdmissionPolicy" => "validatingadmissionpolicies".to_owned(),
            k => format!("{}s", k.to_lowercase()),
        };
        // The crds-*.yaml templates render files of CustomResourceDefinitions.
        let mut created =
            std::collections::BTreeSet::from(["customresourcedefinitions".to_owned()]);
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            // Top-level kinds only (an indented `kind:` is a roleRef's or subject's).
            for kind in text.lines().filter_map(|l| l.strip_prefix("kind: ")) {
                // Prometheus Operator objects are optional (only when its CRDs exist).
                if !["ServiceMonitor", "PodMonitor"].contains(&kind.trim()) {
                    created.insert(plural(kind.trim()));
                }
            }
        }
        let asked: std::collections::BTreeSet<String> = CHART_RESOURCES
            .iter()
            .map(|(_, r, _)| (*r).to_owned())
            .collect();
        assert_eq!(asked, created);
        assert_eq!(permissions("ambit-system", &[]).verdict, Verdict::Pass);
        let denied = permissions("ambit-system", &["clusterroles".into()]);
        assert_eq!(denied.verdict, Verdict::Fail);
        assert_eq!(denied.detail, "not allowed to create clusterroles");
    }

    #[test]
    fn node_kernels() {
        let node = |kernel: &str, os: &str| NodeFacts {
            name: "n1".into(),
            os: os.into(),
            kernel: kernel.into(),
            runtime: "containerd://2.0".into(),
        };
        assert_eq!(nodes(&[node("6.18.44-fc", "linux")]).verdict, Verdict::Pass);
        assert_eq!(nodes(&[node("5.2.0", "linux")]).verdict, Verdict::Pass);
        let old = nodes(&[node("4.19.0-25-amd64", "linux")]);
        assert_eq!(old.verdict, Verdict::Fail);
        assert_eq!(old.detail, "not supported: n1 (linux 4.19.0-25-amd64)");
        assert_eq!(
            nodes(&[node("10.0.17763", "windows")]).verdict,
            Verdict::Fail
        );
        assert_eq!(nodes(&[]).verdict, Verdict::Warn);
    }

    #[test]
    fn lease_rollout_and_validity() {
        assert_eq!(
            lease("a", Some("pod-1"), Some(3), 15).verdict,
            Verdict::Pass
        );
        assert_eq!(
            lease("a", Some("pod-1"), Some(60), 15).verdict,
            Verdict::Fail
        );
        assert_eq!(lease("a", None, None, 15).detail, "nobody holds it");
        let r = |desired, ready, updated| {
            node_rollout(
                "a",
                Some(Rollout {
                    desired,
                    ready,
                    updated,
                }),
            )
            .verdict
        };
        assert_eq!(r(2, 2, 2), Verdict::Pass);
        assert_eq!(r(2, 2, 1), Verdict::Fail, "a node still runs the old pod");
        assert_eq!(r(2, 1, 2), Verdict::Fail);
        assert_eq!(r(0, 0, 0), Verdict::Fail);
        assert_eq!(node_rollout("a", None).verdict, Verdict::Fail);
        let day = 86_400;
        assert_eq!(
            validity("c", "k", "x", 400 * day, 60 * day, "h").verdict,
            Verdict::Pass
        );
        let soon = validity("c", "k", "the root", 10 * day, 60 * day, "h");
        assert_eq!(soon.verdict, Verdict::Warn);
        assert_eq!(soon.detail, "the root expires in 10 days (864000s)");
        assert_eq!(
            validity("c", "k", "x", -5, 60 * day, "h").verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn tunnels_from_their_dumps_and_metrics() {
        let dump = json!({"synced": true, "ready": true, "certificates": [
            {"identity": "spiffe://cluster.local/ns/shop/sa/a", "notBefore": 900, "notAfter": 2000},
            {"identity": "spiffe://cluster.local/ns/shop/sa/b", "notBefore": 0, "notAfter": 900},
            {"identity": "spiffe://cluster.local/ns/shop/sa/c", "notBefore": 0, "notAfter": 1200},
        ]});
        let mut state = tunnel_state("ambit-node-x", "n1", &dump, 1000);
        assert_eq!(
            state.expired_leaves,
            ["spiffe://cluster.local/ns/shop/sa/b"]
        );
        assert_eq!(
            state.unrenewed_leaves,
            ["spiffe://cluster.local/ns/shop/sa/c"]
        );
        assert_eq!(
            tunnel("ambit-system", Ok(state.clone())).verdict,
            Verdict::Fail
        );
        state.expired_leaves.clear();
        let not_read = tunnel("ambit-system", Ok(state.clone()));
        assert_eq!(not_read.verdict, Verdict::Warn);
        assert_eq!(
            not_read.detail,
            "pod ambit-node-x: certificates past 3/4 of their lifetime, not renewed: \
             spiffe://cluster.local/ns/shop/sa/c; its metrics (port 15020, \
             ambit_tunnel_config_rejected_resources) could not be read"
        );
        state.unrenewed_leaves.clear();
        state.rejected_resources = metric_value(
            "# TYPE ambit_tunnel_config_rejected_resources gauge\nambit_tunnel_config_rejected_resources 0\n",
            "ambit_tunnel_config_rejected_resources",
        );
        assert_eq!(state.rejected_resources, Some(0));
        assert_eq!(
            tunnel("ambit-system", Ok(state.clone())).verdict,
            Verdict::Pass
        );
        state.rejected_resources = Some(2);
        let nack = tunnel("ambit-system", Ok(state.clone()));
        assert_eq!(nack.verdict, Verdict::Fail);
        assert_eq!(
            nack.detail,
            "pod ambit-node-x: 2 resources rejected (NACKed) by the tunnel"
        );
        let unsynced = tunnel_state("p", "n1", &json!({"synced": false}), 0);
        assert!(tunnel("s", Ok(unsynced)).detail.contains("not synced"));
        let unreachable = tunnel("s", Err(("n1".into(), "refused".into())));
        assert_eq!(unreachable.check, "tunnel on n1: config in sync");
    }

    #[test]
    fn rendering_and_exit() {
        let report = Report::new(vec![
            Line::pass(
                "kubernetes-api",
                "can reach the apiserver",
                "https://k:6443",
            ),
            Line::warn("network", "NetworkPolicies", "shop/p", "add 15008"),
            Line::fail("network", "other", "", "do this"),
        ]);
        assert!(!report.success);
        assert_eq!(
            report.render(false),
            "kubernetes-api\n--------------\n[ok] can reach the apiserver: https://k:6443\n\n\
             network\n-------\n[warn] NetworkPolicies: shop/p\n    hint: add 15008\n[fail] other\n    hint: do this\n\n\
             1 passed, 1 warnings, 1 failed\n"
        );
        assert!(report.render(true).contains("‼ NetworkPolicies"));
        assert!(
            Report::new(vec![Line::warn("a", "b", "", "")]).success,
            "warnings pass"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["verdict"], "warn");
        assert_eq!(json["success"], false);
    }
}
