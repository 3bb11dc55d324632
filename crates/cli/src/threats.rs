//! `kubectl ambit threats`: the mesh's settings read back from the install's objects, and the
//! report of TR-1..TR-10 per namespace (no IO here). The facts and scores are `ambit-risk`'s,
//! the same the controller computes.

use crate::table;
use ambit_k8s::names::RISK_PROFILE_LABEL;
use ambit_k8s::names::{
    CERT_LIFETIME_ENV, DEFAULT_CERT_LIFETIME_SECS, EXT_AUTHZ_PROVIDERS_ENV, TUNNEL_MODE_ENV,
    TUNNEL_MODE_FLAG,
};
use ambit_risk::{
    DataPlaneModel, ExtAuthzProviderFacts, MeshSettings, NamespaceFacts, ThreatScore, TunnelMode,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace};
use serde::Serialize;

/// What the install runs with: the leaf lifetime and providers from the controller
/// Deployment's environment, the tunnel mode from the node DaemonSet's `--mode` (else its
/// `AMBIT_MODE`). A setting whose object is missing, or whose value does not parse (or comes
/// from elsewhere than the pod template: a `valueFrom`), is unknown.
pub fn settings(controller: Option<&Deployment>, node: Option<&DaemonSet>) -> MeshSettings {
    let controller_env = |name: &str| -> Option<Option<String>> {
        let spec = controller?.spec.as_ref()?.template.spec.as_ref()?;
        env(&spec.containers, name)
    };
    let leaf_lifetime_seconds = controller_env(CERT_LIFETIME_ENV).and_then(|v| match v {
        None => Some(DEFAULT_CERT_LIFETIME_SECS),
        Some(v) => v.parse().ok(),
    });
    let ext_authz_providers = controller_env(EXT_AUTHZ_PROVIDERS_ENV).and_then(|v| match v {
        None => Some(Vec::new()),
        Some(v) if v.trim().is_empty() => Some(Vec::new()),
        Some(v) => providers(&v),
    });
    let tunnel_mode = node
        .and_then(|ds| ds.spec.as_ref()?.template.spec.as_ref())
        .and_then(|spec| {
            let mode = match spec.containers.iter().find_map(mode_arg) {
                Some(arg) => arg.to_owned(),
                // The tunnel's default, as its flag's (crates/tunnel's `--mode`).
                None => env(&spec.containers, TUNNEL_MODE_ENV)?
                    .unwrap_or_else(|| TunnelMode::Strict.to_string()),
            };
            mode.parse().ok()
        });
    MeshSettings {
        leaf_lifetime_seconds,
        tunnel_mode,
        ext_authz_providers,
    }
}

/// Variable `name` of the first container setting it: `Some(None)` when none does, `None`
/// when it is set from elsewhere (`valueFrom`), so not known here.
fn env(containers: &[Container], name: &str) -> Option<Option<String>> {
    match containers
        .iter()
        .find_map(|c| c.env.iter().flatten().find(|e| e.name == name))
    {
        None => Some(None),
        Some(e) => e.value_from.is_none().then(|| e.value.clone()),
    }
}

/// A container's `--mode X` or `--mode=X`.
fn mode_arg(c: &Container) -> Option<&str> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
        a if a == TUNNEL_MODE_FLAG => args.get(i + 1).map(String::as_str),
        a => a.strip_prefix(TUNNEL_MODE_FLAG)?.strip_prefix('='),
    })
}

/// Names and failure modes of the providers the chart rendered (docs/policies.md).
fn providers(json: &str) -> Option<Vec<ExtAuthzProviderFacts>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Provider {
        name: String,
        #[serde(default)]
        fail_open: bool,
    }
    let list: Vec<Provider> = serde_json::from_str(json).ok()?;
    Some(
        list.into_iter()
            .map(|p| ExtAuthzProviderFacts {
                name: p.name,
                fail_open: p.fail_open,
            })
            .collect(),
    )
}

/// The threats of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceThreats {
    pub namespace: String,
    /// Its `ambit.dev/risk-profile` label, as written (`None` without one).
    pub profile: Option<String>,
    /// Why its risk labels do not parse (the controller then evaluates and enforces nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_error: Option<String>,
    pub model: DataPlaneModel,
    pub threats: Vec<ThreatScore>,
}

impl NamespaceThreats {
    pub fn new(ns: &Namespace, facts: &NamespaceFacts) -> Self {
        let threats = ambit_risk::threats(facts);
        Self {
            namespace: facts.namespace.clone(),
            profile: ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(RISK_PROFILE_LABEL).cloned()),
            label_error: ambit_risk::labels(ns).err().map(|e| e.to_string()),
            model: DataPlaneModel::of(facts),
            threats,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub settings: MeshSettings,
    pub namespaces: Vec<NamespaceThreats>,
}

impl Report {
    /// One row per namespace and threat.
    pub fn render(&self) -> String {
        let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
        let rows: Vec<Vec<String>> = self
            .namespaces
            .iter()
            .flat_map(|n| {
                n.threats.iter().map(move |t| {
                    vec![
                        n.namespace.clone(),
                        n.model.to_string(),
                        t.threat.to_string(),
                        t.impact.to_string(),
                        t.likelihood.to_string(),
                        format!("{} ({})", t.score, t.rating),
                        dash(t.mitigations.join(", ")),
                        dash(t.fixes.join("; ")),
                    ]
                })
            })
            .collect();
        table::render(
            &[
                "NAMESPACE",
                "MODEL",
                "THREAT",
                "IMPACT",
                "LIKELIHOOD",
                "SCORE",
                "MITIGATIONS",
                "FIX",
            ],
            &rows,
        )
    }

    /// What the report could not know, for stderr.
    pub fn unknown_settings(&self) -> Vec<&'static str> {
        let s = &self.settings;
        [
            (s.leaf_lifetime_seconds.is_none(), "leaf lifetime"),
            (s.tunnel_mode.is_none(), "tunnel mode"),
            (s.ext_authz_providers.is_none(), "ext_authz providers"),
        ]
        .into_iter()
        .filter_map(|(unknown, what)| unknown.then_some(what))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_risk::NamespaceObjects;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn controller(env: serde_json::Value) -> Deployment {
        obj(json!({"metadata": {"name": "ambit-controller"}, "spec": {
            "selector": {}, "template": {"spec": {"containers": [{"name": "controller", "env": env}]}}
        }}))
    }

    fn node(args: serde_json::Value) -> DaemonSet {
        obj(json!({"metadata": {"name": "ambit-node"}, "spec": {
            "selector": {}, "template": {"spec": {"containers": [
                {"name": "capture"}, {"name": "tunnel", "args": args}
            ]}}
        }}))
    }

    #[test]
    fn settings_are_read_back_from_the_install() {
        let c = controller(json!([
            {"name": "AMBIT_CERT_LIFETIME_SECS", "value": "7200"},
            {"name": "AMBIT_EXT_AUTHZ_PROVIDERS",
             "value": r#"[{"name":"a","service":"s","port":1,"protocol":"grpc","failOpen":true},{"name":"b","service":"s","port":1,"protocol":"http"}]"#}
        ]));
        let n = node(json!(["--socket", "/s", "--mode", "permissive"]));
        let s = settings(Some(&c), Some(&n));
        assert_eq!(s.leaf_lifetime_seconds, Some(7200));
        assert_eq!(s.tunnel_mode, Some(TunnelMode::Permissive));
        let names: Vec<(String, bool)> = s
            .ext_authz_providers
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.fail_open))
            .collect();
        assert_eq!(names, [("a".into(), true), ("b".into(), false)]);

        // Unset: the defaults; `--mode=` form.
        let s = settings(
            Some(&controller(json!([]))),
            Some(&node(json!(["--mode=strict"]))),
        );
        assert_eq!(s.leaf_lifetime_seconds, Some(3600));
        assert_eq!(s.ext_authz_providers, Some(Vec::new()));
        assert_eq!(s.tunnel_mode, Some(TunnelMode::Strict));

        // No install, or values that do not parse: unknown.
        assert_eq!(settings(None, None), MeshSettings::default());
        let c = controller(json!([
            {"name": "AMBIT_CERT_LIFETIME_SECS", "value": "soon"},
            {"name": "AMBIT_EXT_AUTHZ_PROVIDERS", "value": "{"}
        ]));
        let s = settings(Some(&c), Some(&node(json!(["--mode", "loose"]))));
        assert_eq!(s.leaf_lifetime_seconds, None);
        assert_eq!(s.ext_authz_providers, None);
        assert_eq!(s.tunnel_mode, None);
    }

    #[test]
    fn the_tunnel_mode_without_the_flag_is_its_variable_and_unknown_when_not_written_here() {
        let with_env = |env: serde_json::Value| {
            let mut ds = node(json!(["--socket", "/s"]));
            let spec = ds.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
            spec.containers[1].env = Some(obj(env));
            settings(None, Some(&ds)).tunnel_mode
        };
        assert_eq!(
            with_env(json!([{"name": "AMBIT_MODE", "value": "permissive"}])),
            Some(TunnelMode::Permissive)
        );
        assert_eq!(with_env(json!([])), Some(TunnelMode::Strict));
        let from_configmap = json!([{"name": "AMBIT_MODE", "valueFrom":
            {"configMapKeyRef": {"name": "tunnel", "key": "mode"}}}]);
        assert_eq!(with_env(from_configmap), None);
        // The flag wins, as it does in the tunnel.
        let mut ds = node(json!(["--mode=strict"]));
        ds.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[1]
            .env = Some(obj(json!([{"name": "AMBIT_MODE", "value": "permissive"}])));
        assert_eq!(
            settings(None, Some(&ds)).tunnel_mode,
            Some(TunnelMode::Strict)
        );
    }

    #[test]
    fn a_mistyped_risk_label_is_reported() {
        let ns: Namespace = obj(json!({"metadata": {"name": "shop", "labels": {
            "ambit.dev/risk-profile": "high", "ambit.dev/risk-enforcement": "Enforce"}}}));
        let t = NamespaceThreats::new(&ns, &NamespaceFacts::default());
        assert_eq!(t.profile.as_deref(), Some("high"));
        assert_eq!(
            t.label_error.as_deref(),
            Some(
                "namespace shop: label ambit.dev/risk-enforcement=\"Enforce\" is not one of report, enforce"
            )
        );
        let v = serde_json::to_value(&t).unwrap();
        assert!(v["labelError"].as_str().unwrap().contains("Enforce"));
    }

    #[test]
    fn one_row_per_namespace_and_threat() {
        let ns: Namespace = obj(json!({"metadata": {"name": "shop",
            "labels": {"ambit.dev/risk-profile": "high"}}}));
        let settings = MeshSettings::default();
        let facts = NamespaceFacts::build(
            &NamespaceObjects {
                namespace: &ns,
                pods: &[],
                services: &[],
                gateways: &[],
                authorization_policies: &[],
                request_authentications: &[],
                http_routes: &[],
                grpc_routes: &[],
                rate_limit_policies: &[],
            },
            &settings,
        );
        let report = Report {
            namespaces: vec![NamespaceThreats::new(&ns, &facts)],
            settings,
        };
        assert_eq!(
            report.unknown_settings(),
            ["leaf lifetime", "tunnel mode", "ext_authz providers"]
        );
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert!(
            lines[0].starts_with("NAMESPACE   MODEL   THREAT   IMPACT"),
            "{text}"
        );
        // Not enrolled: TR-3 is high × high, and enrolling is the fix.
        let tr3: Vec<&str> = lines[3].split_whitespace().take(7).collect();
        assert_eq!(
            tr3,
            ["shop", "none", "TR-3", "high", "high", "9", "(high)"],
            "{text}"
        );
        assert!(
            lines[3].ends_with("kubectl label namespace shop ambit.dev/dataplane-mode=ambient")
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["namespaces"][0]["profile"], "high");
        assert_eq!(v["namespaces"][0]["threats"][2]["score"], 9);
    }
}
