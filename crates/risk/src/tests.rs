//! Facts, requirements and scores against namespaces written as their objects.

use crate::*;
use ambit_k8s::crd::{AuthorizationPolicy, Gateway, RequestAuthentication};
use ambit_k8s::ratelimit_crd::RateLimitPolicy;
use ambit_k8s::route_crd::{GRPCRoute, HTTPRoute};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const NS: &str = "shop";

/// A namespace's objects, owned, and the mesh's settings.
#[derive(Default, Clone)]
struct Fixture {
    namespace: Vec<Namespace>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    gateways: Vec<Gateway>,
    policies: Vec<AuthorizationPolicy>,
    authns: Vec<RequestAuthentication>,
    http_routes: Vec<HTTPRoute>,
    grpc_routes: Vec<GRPCRoute>,
    limits: Vec<RateLimitPolicy>,
    settings: MeshSettings,
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": NS})
}

impl Fixture {
    fn empty(enrolled: bool) -> Self {
        let labels = if enrolled {
            json!({"ambit.dev/dataplane-mode": "ambient"})
        } else {
            json!({})
        };
        Fixture {
            namespace: vec![object(json!({"metadata": {"name": NS, "labels": labels}}))],
            settings: MeshSettings {
                leaf_lifetime_seconds: Some(3600),
                tunnel_mode: Some(TunnelMode::Strict),
                ext_authz_providers: Some(vec![ExtAuthzProviderFacts {
                    name: "ext-authz".into(),
                    fail_open: false,
                }]),
            },
            ..Default::default()
        }
    }

    /// SP 800-233's DPA-2 as ambit runs it, everything the high profile asks: `frontend` (TCP)
    /// calls `backend` (HTTP) behind its own programmed waypoint, with peer, method, token and
    /// ext_authz policies, a route with timeouts, strict tunnels and 1 h leaves.
    fn dpa2() -> Self {
        let mut f = Self::empty(true);
        f.pod("front-1", "frontend", json!({"app": "front"}));
        f.pod("back-1", "backend", json!({"app": "back"}));
        f.waypoint_pod("waypoint-backend-6d4b9-x2x7q", "waypoint-backend");
        f.service("front", "front", json!([{"name": "tcp", "port": 9000}]));
        f.service("back", "back", json!([{"name": "http", "port": 80}]));
        f.waypoint("waypoint-backend", "backend", true);
        f.policy(
            "peers",
            json!({"selector": {"matchLabels": {"app": "front"}},
                   "rules": [{"namespaces": ["shop"]}]}),
        );
        f.policy(
            "methods",
            back_allow(json!({"methods": ["GET"], "requestPrincipals": ["*"]})),
        );
        f.policy(
            "ext",
            json!({"selector": {"matchLabels": {"app": "back"}}, "action": "CUSTOM",
                   "provider": {"name": "ext-authz"}, "rules": [{}]}),
        );
        f.authns.push(object(json!({
            "metadata": meta("jwt"),
            "spec": {"selector": {"matchLabels": {"app": "back"}},
                     "jwtRules": [{"issuer": "https://idp.example", "jwks": "{}"}]}
        })));
        f.http_routes.push(object(json!({
            "metadata": meta("back"),
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "back"}],
                     "rules": [{"timeouts": {"request": "5s"},
                                "backendRefs": [{"name": "back", "port": 80}]}]}
        })));
        f
    }

    fn pod(&mut self, name: &str, sa: &str, labels: Value) {
        self.pods.push(object(json!({
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"serviceAccountName": sa, "containers": []}
        })));
    }

    /// A pod as the controller's waypoint Deployment `gateway` makes it, through its
    /// ReplicaSet.
    fn waypoint_pod(&mut self, name: &str, gateway: &str) {
        self.pods.push(object(json!({
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"gateway.networking.k8s.io/gateway-name": gateway,
                                    "ambit.dev/dataplane-mode": "none"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("{gateway}-6d4b9"), "uid": "u",
                                              "controller": true}]},
            "spec": {"serviceAccountName": gateway, "containers": []}
        })));
    }

    /// The waypoint Gateways gone, and their pods with them (owned, through their
    /// Deployment, by the Gateway).
    fn remove_waypoints(&mut self) {
        self.gateways.clear();
        self.pods.retain(|p| p.metadata.owner_references.is_none());
    }

    fn service(&mut self, name: &str, app: &str, ports: Value) {
        self.services.push(object(json!({
            "metadata": meta(name),
            "spec": {"selector": {"app": app}, "ports": ports}
        })));
    }

    fn waypoint(&mut self, name: &str, sa: &str, programmed: bool) {
        let status = if programmed { "True" } else { "False" };
        self.gateways.push(object(json!({
            "metadata": {"name": name, "namespace": NS,
                         "annotations": {"ambit.dev/for-service-account": sa}},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
            "status": {"conditions": [{"type": "Programmed", "status": status, "reason": "r",
                                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        })));
    }

    fn policy(&mut self, name: &str, spec: Value) {
        self.policies
            .push(object(json!({"metadata": meta(name), "spec": spec})));
    }

    fn without_policy(mut self, name: &str) -> Self {
        self.policies
            .retain(|p| p.metadata.name.as_deref() != Some(name));
        self
    }

    fn facts(&self) -> NamespaceFacts {
        let pods: Vec<&Pod> = self.pods.iter().collect();
        let services: Vec<&Service> = self.services.iter().collect();
        let gateways: Vec<&Gateway> = self.gateways.iter().collect();
        let policies: Vec<&AuthorizationPolicy> = self.policies.iter().collect();
        let authns: Vec<&RequestAuthentication> = self.authns.iter().collect();
        let http_routes: Vec<&HTTPRoute> = self.http_routes.iter().collect();
        let grpc_routes: Vec<&GRPCRoute> = self.grpc_routes.iter().collect();
        let limits: Vec<&RateLimitPolicy> = self.limits.iter().collect();
        NamespaceFacts::build(
            &NamespaceObjects {
                namespace: &self.namespace[0],
                pods: &pods,
                services: &services,
                gateways: &gateways,
                authorization_policies: &policies,
                request_authentications: &authns,
                http_routes: &http_routes,
                grpc_routes: &grpc_routes,
                rate_limit_policies: &limits,
            },
            &self.settings,
        )
    }

    fn status(&self, id: RequirementId) -> RequirementStatus {
        evaluate(RiskProfile::High, &self.facts())
            .into_iter()
            .find(|s| s.id == id)
            .unwrap()
    }

    fn scores(&self) -> Vec<(u8, u8, u8)> {
        threats(&self.facts())
            .iter()
            .map(|t| (t.impact as u8, t.likelihood as u8, t.score))
            .collect()
    }
}

/// An ALLOW policy on backend's pods letting frontend in with `rule`'s L7 fields.
fn back_allow(mut rule: Value) -> Value {
    rule["principals"] = json!(["spiffe://cluster.local/ns/shop/sa/frontend"]);
    json!({"selector": {"matchLabels": {"app": "back"}}, "rules": [rule]})
}

// ---- facts ----

#[test]
fn facts_of_the_reference_namespace() {
    let f = Fixture::dpa2().facts();
    assert!(f.enrolled);
    assert!(f.issuer_declared);
    // The waypoint's own pod is not an application.
    assert_eq!(
        f.accounts.keys().collect::<Vec<_>>(),
        ["backend", "frontend"]
    );
    let back = &f.accounts["backend"];
    assert_eq!(
        back.http_ports,
        [HttpPort {
            service: "back".into(),
            port: 80,
            protocol: "http".into(),
            declared_by: DeclaredBy::NamePrefix
        }]
    );
    let w = back.waypoint.as_ref().unwrap();
    assert_eq!(
        (w.gateway.as_str(), w.programmed),
        ("waypoint-backend", true)
    );
    assert!(w.shared_with.is_empty());
    assert!(back.peer_allow_list && back.method_rules && back.request_authentication);
    assert!(back.request_principal_required && back.route_timeouts && !back.rate_limited);
    assert_eq!(
        back.ext_authz,
        ExtAuthz::EveryRequest {
            provider: "ext-authz".into()
        }
    );
    let front = &f.accounts["frontend"];
    assert!(!front.serves_http() && front.waypoint.is_none() && front.peer_allow_list);
    assert!(!front.method_rules && front.ext_authz == ExtAuthz::None);
}

#[test]
fn http_is_what_the_waypoint_parses_by_app_protocol_or_name_prefix() {
    let mut fx = Fixture::empty(true);
    fx.pod("p", "sa", json!({"app": "a"}));
    fx.service(
        "a",
        "a",
        json!([
            {"name": "web", "port": 1, "appProtocol": "kubernetes.io/h2c"},
            {"name": "grpc-api", "port": 2},
            {"name": "http2", "port": 3},
            {"name": "http-admin", "port": 4, "appProtocol": "tcp"},
            {"name": "tcp", "port": 5},
            {"name": "metrics", "port": 6, "appProtocol": "GRPC"}
        ]),
    );
    let ports: Vec<(i32, String, DeclaredBy)> = fx.facts().accounts["sa"]
        .http_ports
        .iter()
        .map(|p| (p.port, p.protocol.clone(), p.declared_by))
        .collect();
    assert_eq!(
        ports,
        [
            (1, "kubernetes.io/h2c".into(), DeclaredBy::AppProtocol),
            (2, "grpc".into(), DeclaredBy::NamePrefix),
            (3, "http2".into(), DeclaredBy::NamePrefix),
            (6, "grpc".into(), DeclaredBy::AppProtocol),
        ]
    );
}

#[test]
fn other_namespaces_finished_and_opted_out_pods() {
    let mut fx = Fixture::dpa2();
    fx.pods.push(object(json!({
        "metadata": {"name": "elsewhere", "namespace": "other"},
        "spec": {"serviceAccountName": "intruder", "containers": []}
    })));
    fx.pods.push(object(json!({
        "metadata": {"name": "job", "namespace": NS},
        "spec": {"serviceAccountName": "batch", "containers": []},
        "status": {"phase": "Succeeded"}
    })));
    fx.pod(
        "legacy",
        "frontend",
        json!({"app": "legacy", "ambit.dev/dataplane-mode": "none"}),
    );
    let f = fx.facts();
    assert_eq!(
        f.accounts.keys().collect::<Vec<_>>(),
        ["backend", "frontend"]
    );
    assert_eq!(f.opted_out_pods, ["legacy"]);
}

#[test]
fn a_policy_must_select_every_pod_of_the_account() {
    let mut fx = Fixture::dpa2();
    fx.pod("back-2", "backend", json!({"app": "back-canary"}));
    let back = &fx.facts().accounts["backend"];
    assert!(!back.peer_allow_list && !back.method_rules && !back.request_authentication);
    assert_eq!(back.ext_authz, ExtAuthz::None);
}

#[test]
fn one_allow_rule_without_the_field_lets_requests_without_it_through() {
    let mut fx = Fixture::dpa2();
    fx.policy("health", back_allow(json!({"paths": ["/healthz"]})));
    let back = &fx.facts().accounts["backend"];
    assert!(back.peer_allow_list, "the new rule names the peer too");
    assert!(!back.method_rules && !back.request_principal_required);
    let mut fx = Fixture::dpa2();
    fx.policy(
        "anyone",
        json!({"selector": {"matchLabels": {"app": "back"}}, "rules": [{}]}),
    );
    assert!(!fx.facts().accounts["backend"].peer_allow_list);
}

#[test]
fn ext_authz_states() {
    let ext = |fx: &Fixture| fx.facts().accounts["backend"].ext_authz.clone();
    let mut fx = Fixture::dpa2().without_policy("ext");
    fx.policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext-authz"},
               "rules": [{"paths": ["/transfer"]}]}),
    );
    assert_eq!(ext(&fx), ExtAuthz::SomeRequests);

    let mut fx = Fixture::dpa2();
    fx.settings.ext_authz_providers = Some(Vec::new());
    let provider = "ext-authz".to_string();
    assert_eq!(
        ext(&fx),
        ExtAuthz::ProviderNotDeclared {
            provider: provider.clone()
        }
    );
    fx.settings.ext_authz_providers = Some(vec![ExtAuthzProviderFacts {
        name: provider.clone(),
        fail_open: true,
    }]);
    assert_eq!(
        ext(&fx),
        ExtAuthz::FailOpen {
            provider: provider.clone()
        }
    );
    fx.settings.ext_authz_providers = None;
    assert_eq!(ext(&fx), ExtAuthz::ProvidersUnknown { provider });
}

#[test]
fn an_application_running_as_the_waypoints_account_shares_it() {
    let mut fx = Fixture::dpa2();
    fx.pod("sneaky", "waypoint-backend", json!({"app": "sneaky"}));
    let w = fx.facts().accounts["backend"].waypoint.clone().unwrap();
    assert_eq!(w.shared_with, ["waypoint-backend"]);
}

#[test]
fn only_the_controllers_waypoint_pods_are_not_applications_whatever_their_labels() {
    let mut fx = Fixture::dpa2();
    let waypoint_labels = json!({"gateway.networking.k8s.io/gateway-name": "waypoint-backend",
                                 "ambit.dev/dataplane-mode": "none", "app": "back"});
    // A tenant's pod labelled as the waypoint's: still backend's, opted out, and refused with
    // it (it is one of its pods).
    fx.pod("impostor", "backend", waypoint_labels.clone());
    // Running as the waypoint's account, but not made by its ReplicaSet.
    fx.pod("squatter", "waypoint-backend", waypoint_labels);
    fx.pods.last_mut().unwrap().metadata.owner_references = Some(vec![object(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other-6d4b9", "uid": "u",
        "controller": true
    }))]);
    let f = fx.facts();
    assert!(f.accounts["backend"].pods.contains(&"impostor".to_string()));
    assert_eq!(f.opted_out_pods, ["impostor", "squatter"]);
    let w = f.accounts["backend"].waypoint.clone().unwrap();
    assert_eq!(w.shared_with, ["waypoint-backend"]);
    assert_eq!(
        fx.status(RequirementId::LowReq1).reason,
        "PodsOptedOut",
        "the labels hide no pod from LOW-REQ1"
    );
}

#[test]
fn a_wildcard_names_no_peer_and_no_method() {
    let mut fx = Fixture::dpa2().without_policy("peers");
    fx.policy(
        "peers",
        json!({"selector": {"matchLabels": {"app": "front"}},
               "rules": [{"principals": ["*"]}, {"namespaces": ["shop", "*"]}]}),
    );
    fx.policy(
        "methods",
        back_allow(json!({"methods": ["*"], "requestPrincipals": ["*"]})),
    );
    let f = fx.facts();
    assert!(!f.accounts["frontend"].peer_allow_list);
    let back = &f.accounts["backend"];
    assert!(!back.method_rules, "methods [*] is no method rule");
    assert!(back.peer_allow_list && back.request_principal_required);
}

// ---- requirements ----

#[test]
fn each_profile_asks_its_own_and_those_below() {
    let f = Fixture::dpa2().facts();
    let ids = |p| -> Vec<&str> { evaluate(p, &f).iter().map(|s| s.id.as_str()).collect() };
    assert_eq!(ids(RiskProfile::Low), ["LOW-REQ1", "LOW-REQ2", "LOW-REQ3"]);
    assert_eq!(ids(RiskProfile::Medium).len(), 6);
    assert_eq!(
        ids(RiskProfile::High)[6..],
        ["HIGH-REQ1", "HIGH-REQ2", "HIGH-REQ3"]
    );
}

#[test]
fn the_reference_namespace_meets_every_requirement() {
    for s in evaluate(RiskProfile::High, &Fixture::dpa2().facts()) {
        assert!(s.met, "{s:?}");
        assert_eq!(s.fix, None);
    }
}

/// A change to the reference namespace that fails `id` with `reason`, the fix naming `fix`.
fn assert_unmet(fx: Fixture, id: RequirementId, reason: &str, fix: &str) {
    let s = fx.status(id);
    assert!(!s.met, "{s:?}");
    assert_eq!(s.reason, reason, "{s:?}");
    let given = s.fix.unwrap_or_default();
    assert!(given.contains(fix), "{id}: {given:?} lacks {fix:?}");
}

#[test]
fn low_req1_enrolled_and_no_pod_opted_out() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::LowReq1).reason,
        "Enrolled"
    );
    let mut fx = Fixture::dpa2();
    fx.namespace[0].metadata.labels = None;
    assert_unmet(
        fx,
        RequirementId::LowReq1,
        "NotEnrolled",
        "kubectl label namespace shop ambit.dev/dataplane-mode=ambient",
    );
    let mut fx = Fixture::dpa2();
    fx.pod(
        "legacy",
        "frontend",
        json!({"ambit.dev/dataplane-mode": "none"}),
    );
    assert_unmet(
        fx,
        RequirementId::LowReq1,
        "PodsOptedOut",
        "ambit.dev/dataplane-mode=none",
    );
}

#[test]
fn low_req2_strict_mtls() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::LowReq2).reason,
        "StrictMtls"
    );
    let mut fx = Fixture::dpa2();
    fx.settings.tunnel_mode = Some(TunnelMode::Permissive);
    assert_unmet(
        fx,
        RequirementId::LowReq2,
        "Permissive",
        "node.tunnel.mode=strict",
    );
    let mut fx = Fixture::dpa2();
    fx.settings.tunnel_mode = None;
    assert_unmet(fx, RequirementId::LowReq2, "ModeUnknown", "helm get values");
}

#[test]
fn low_req3_peer_allow_lists() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::LowReq3).reason,
        "PeerAllowLists"
    );
    let s = Fixture::dpa2()
        .without_policy("peers")
        .status(RequirementId::LowReq3);
    assert!(!s.met);
    assert_eq!(s.reason, "NoPeerAllowList");
    assert!(s.message.starts_with("frontend:"), "{s:?}");
    assert!(s.fix.unwrap().contains("selecting the pods of frontend"));
}

#[test]
fn medium_req1_a_programmed_waypoint_per_http_account() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::MediumReq1).reason,
        "WaypointPerHttpAccount"
    );
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    assert_unmet(
        fx,
        RequirementId::MediumReq1,
        "WaypointMissing",
        "kubectl ambit waypoint apply -n shop --service-account backend",
    );
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    fx.waypoint("waypoint-backend", "backend", false);
    assert_unmet(
        fx,
        RequirementId::MediumReq1,
        "WaypointNotProgrammed",
        "kubectl ambit waypoint status -n shop --service-account backend",
    );
}

#[test]
fn medium_req2_method_level_rules() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::MediumReq2).reason,
        "MethodLevelRules"
    );
    assert_unmet(
        Fixture::dpa2().without_policy("methods"),
        RequirementId::MediumReq2,
        "NoMethodRules",
        "rules[].methods",
    );
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    assert_unmet(
        fx,
        RequirementId::MediumReq2,
        "WaypointRequired",
        "kubectl ambit waypoint apply",
    );
}

#[test]
fn medium_req3_request_authentication_where_an_issuer_is_declared() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::MediumReq3).reason,
        "RequestsAuthenticated"
    );
    let mut fx = Fixture::dpa2();
    fx.authns.clear();
    let s = fx.status(RequirementId::MediumReq3);
    assert!(s.met);
    assert_eq!(s.reason, "NoIssuerDeclared");

    let mut fx = Fixture::dpa2();
    fx.authns[0].spec.selector = Some(ambit_k8s::crd::WorkloadSelector {
        match_labels: [("app".to_string(), "other".to_string())].into(),
    });
    assert_unmet(
        fx,
        RequirementId::MediumReq3,
        "NotAuthenticated",
        "RequestAuthentication",
    );

    let mut fx = Fixture::dpa2().without_policy("methods");
    fx.policy("methods", back_allow(json!({"methods": ["GET"]})));
    assert_unmet(
        fx.clone(),
        RequirementId::MediumReq3,
        "TokenNotRequired",
        "requestPrincipals",
    );
    // Or a DENY of requests without a token, Istio's way.
    fx.policy(
        "tokens",
        json!({"action": "DENY", "rules": [{"notRequestPrincipals": ["*"]}]}),
    );
    assert!(fx.status(RequirementId::MediumReq3).met);
}

#[test]
fn high_req1_ext_authz_on_every_request() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::HighReq1).reason,
        "ExtAuthzEveryRequest"
    );
    assert_unmet(
        Fixture::dpa2().without_policy("ext"),
        RequirementId::HighReq1,
        "NoExtAuthz",
        "action CUSTOM",
    );
    let mut fx = Fixture::dpa2();
    fx.settings.ext_authz_providers = Some(vec![ExtAuthzProviderFacts {
        name: "ext-authz".into(),
        fail_open: true,
    }]);
    assert_unmet(
        fx,
        RequirementId::HighReq1,
        "ProviderFailsOpen",
        "failOpen: false",
    );
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    assert_unmet(
        fx,
        RequirementId::HighReq1,
        "WaypointRequired",
        "waypoint apply",
    );
}

#[test]
fn high_req2_route_timeouts() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::HighReq2).reason,
        "RouteTimeouts"
    );
    let mut fx = Fixture::dpa2();
    fx.http_routes[0].spec.rules[0].timeouts = None;
    assert_unmet(
        fx,
        RequirementId::HighReq2,
        "NoRouteTimeouts",
        "timeouts.request",
    );
    // A parent named in the route's own namespace is the same parent; another one's is not.
    let mut fx = Fixture::dpa2();
    fx.http_routes[0].spec.parent_refs[0].namespace = Some(NS.into());
    assert!(fx.status(RequirementId::HighReq2).met);
    fx.http_routes[0].spec.parent_refs[0].namespace = Some("other".into());
    assert_unmet(fx, RequirementId::HighReq2, "NoRouteTimeouts", "HTTPRoute");
}

#[test]
fn high_req3_short_leaves_and_unshared_waypoints() {
    assert_eq!(
        Fixture::dpa2().status(RequirementId::HighReq3).reason,
        "ShortLeavesUnsharedWaypoints"
    );
    let mut fx = Fixture::dpa2();
    fx.settings.leaf_lifetime_seconds = Some(3601);
    assert_unmet(
        fx,
        RequirementId::HighReq3,
        "LeafLifetimeTooLong",
        "controller.certLifetimeSeconds=3600",
    );
    let mut fx = Fixture::dpa2();
    fx.pod("sneaky", "waypoint-backend", json!({}));
    assert_unmet(
        fx,
        RequirementId::HighReq3,
        "WaypointShared",
        "a waypoint of its own",
    );
}

#[test]
fn requirements_about_http_accounts_hold_where_there_is_none() {
    let mut fx = Fixture::dpa2();
    fx.services
        .retain(|s| s.metadata.name.as_deref() != Some("back"));
    for id in [
        RequirementId::MediumReq1,
        RequirementId::MediumReq2,
        RequirementId::HighReq1,
        RequirementId::HighReq2,
    ] {
        let s = fx.status(id);
        assert!(s.met && s.reason == "NoServiceAccounts", "{s:?}");
    }
}

// ---- enforcement ----

#[test]
fn enforce_refuses_http_accounts_without_their_own_programmed_waypoint_under_high_only() {
    let none = BTreeSet::new();
    assert_eq!(
        enforcement_targets(RiskProfile::High, &Fixture::dpa2().facts()),
        none
    );
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    let f = fx.facts();
    assert_eq!(
        enforcement_targets(RiskProfile::High, &f),
        BTreeSet::from(["backend".to_string()])
    );
    assert_eq!(enforcement_targets(RiskProfile::Medium, &f), none);
    fx.namespace[0].metadata.labels = None;
    assert_eq!(enforcement_targets(RiskProfile::High, &fx.facts()), none);
}

#[test]
fn the_refused_accounts_are_the_refusing_requirements_short_accounts_as_data() {
    let mut fx = Fixture::dpa2();
    assert!(fx.status(REFUSING_REQUIREMENT).short_accounts.is_empty());
    fx.remove_waypoints();
    let f = fx.facts();
    let refusing = fx.status(REFUSING_REQUIREMENT);
    assert!(!refusing.met);
    assert_eq!(
        refusing
            .short_accounts
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>(),
        enforcement_targets(RiskProfile::High, &f)
    );
    // Other unmet requirements name their own accounts, and only per-account ones any.
    for s in evaluate(RiskProfile::High, &f) {
        if s.met {
            assert!(s.short_accounts.is_empty(), "{s:?}");
        }
        for sa in &s.short_accounts {
            assert!(s.message.contains(&format!("{sa}: ")), "{s:?}");
        }
    }
}

// ---- threats ----

/// The values docs/risk-profiles.md documents for the reference case, TR-1..TR-10, as
/// (impact, likelihood, score).
const DPA2_REFERENCE: [(u8, u8, u8); 10] = [
    (2, 1, 2),
    (1, 2, 2),
    (2, 1, 2),
    (2, 1, 2),
    (2, 1, 2),
    (3, 1, 3),
    (2, 1, 2),
    (2, 1, 2),
    (3, 1, 3),
    (3, 1, 3),
];

#[test]
fn the_dpa2_reference_case_scores_as_documented() {
    let fx = Fixture::dpa2();
    assert_eq!(fx.scores(), DPA2_REFERENCE);
    let t = threats(&fx.facts());
    assert!(
        t.iter()
            .all(|t| t.model == DataPlaneModel::WaypointExtAuthz)
    );
    assert_eq!(
        t.iter().map(|t| t.threat.as_str()).collect::<Vec<_>>(),
        [
            "TR-1", "TR-2", "TR-3", "TR-4", "TR-5", "TR-6", "TR-7", "TR-8", "TR-9", "TR-10"
        ]
    );
    // Only TR-7 can go lower in the namespace (rate limits); TR-6 and TR-9 are the install's.
    let fixable: Vec<&str> = t
        .iter()
        .filter(|t| !t.fixes.is_empty())
        .map(|t| t.threat.as_str())
        .collect();
    assert_eq!(fixable, ["TR-7"]);
}

#[test]
fn outside_the_mesh_scores_as_documented() {
    let fx = Fixture::dpa2();
    let mut fx = fx;
    fx.namespace[0].metadata.labels = None;
    assert_eq!(
        fx.scores().iter().map(|s| s.2).collect::<Vec<_>>(),
        [1, 6, 9, 1, 4, 1, 4, 9, 3, 9]
    );
    let t = threats(&fx.facts());
    assert!(t.iter().all(|t| t.model == DataPlaneModel::NoMesh));
    assert!(
        t[2].fixes[0].contains("kubectl label namespace shop ambit.dev/dataplane-mode=ambient")
    );
}

/// Removing one mitigation from the reference case raises exactly `raised` threats (1-based)
/// and lowers none.
fn assert_raises(fx: Fixture, raised: &[usize]) {
    assert_changes(fx, raised, &[]);
}

fn assert_changes(fx: Fixture, raised: &[usize], lowered: &[usize]) {
    let before = Fixture::dpa2().scores();
    let after = fx.scores();
    for i in 1..=10 {
        let (b, a) = (before[i - 1].2, after[i - 1].2);
        let expected = if raised.contains(&i) {
            a > b
        } else if lowered.contains(&i) {
            a < b
        } else {
            a == b
        };
        assert!(expected, "TR-{i}: {before:?} -> {after:?}");
    }
}

#[test]
fn each_mitigation_lowers_what_it_should() {
    let mut fx = Fixture::dpa2();
    fx.settings.tunnel_mode = Some(TunnelMode::Permissive);
    assert_raises(fx, &[3, 10]);

    let mut fx = Fixture::dpa2();
    fx.settings.leaf_lifetime_seconds = Some(86400);
    assert_raises(fx, &[1, 3]);

    assert_raises(Fixture::dpa2().without_policy("peers"), &[2, 8]);
    assert_raises(Fixture::dpa2().without_policy("ext"), &[2, 8]);

    // Without the waypoint, ext_authz goes too, and no L7 proxy is left to compromise.
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    assert_changes(fx, &[2, 5, 8], &[4]);
    let mut fx = Fixture::dpa2();
    fx.remove_waypoints();
    assert_eq!(fx.scores()[3], (1, 1, 1), "TR-4 off the path");

    let mut fx = Fixture::dpa2();
    fx.pod("sneaky", "waypoint-backend", json!({}));
    let s = fx.scores();
    assert_eq!(s[3], (3, 1, 3), "a shared waypoint raises TR-4");

    let mut fx = Fixture::dpa2();
    fx.limits.push(object(json!({
        "metadata": meta("back"),
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "back"}],
                 "local": {"requests": 100, "unit": "Second"}}
    })));
    let s = fx.scores();
    assert_eq!(s[6], (1, 1, 1), "rate limits lower TR-7");
    assert!(threats(&fx.facts()).iter().all(|t| t.fixes.is_empty()));
}

#[test]
fn the_model_is_the_weakest_in_use() {
    let model = |fx: &Fixture| DataPlaneModel::of(&fx.facts());
    let mut fx = Fixture::dpa2();
    assert_eq!(model(&fx), DataPlaneModel::WaypointExtAuthz);
    fx = fx.without_policy("ext");
    assert_eq!(model(&fx), DataPlaneModel::Waypoint);
    fx.remove_waypoints();
    assert_eq!(model(&fx), DataPlaneModel::L4);
    fx.namespace[0].metadata.labels = None;
    assert_eq!(model(&fx), DataPlaneModel::NoMesh);
}

#[test]
fn every_name_serializes_as_it_displays() {
    fn same<T: serde::Serialize + std::fmt::Display>(values: impl IntoIterator<Item = T>) {
        for v in values {
            assert_eq!(serde_json::to_value(&v).unwrap(), v.to_string());
        }
    }
    same(RequirementId::ALL);
    same(Threat::ALL);
    same(RiskProfile::ALL);
    same([Level::Low, Level::Medium, Level::High]);
    same([TunnelMode::Strict, TunnelMode::Permissive]);
    assert_eq!(RequirementId::HighReq3.to_string(), "HIGH-REQ3");
    assert_eq!(Threat::Tr10.to_string(), "TR-10");
}

#[test]
fn an_unknown_tunnel_mode_is_reported_unknown_never_strict() {
    assert_eq!("strict".parse(), Ok(TunnelMode::Strict));
    assert_eq!("permissive".parse(), Ok(TunnelMode::Permissive));
    let e = "Strict".parse::<TunnelMode>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "tunnel mode \"Strict\" is not one of strict, permissive"
    );
    let mut fx = Fixture::dpa2();
    fx.settings.tunnel_mode = "loose".parse().ok();
    let s = fx.status(RequirementId::LowReq2);
    assert_eq!((s.met, s.reason), (false, "ModeUnknown"));
    assert!(s.message.starts_with("tunnel mode unknown"), "{s:?}");
    // Scored as missing: TR-3 and TR-10 lose strict mTLS.
    assert_raises(fx, &[3, 10]);
}

#[test]
fn scores_serialize_with_the_guidelines_names() {
    let t = threats(&Fixture::dpa2().facts());
    let v = serde_json::to_value(&t[9]).unwrap();
    assert_eq!(v["threat"], "TR-10");
    assert_eq!(v["model"], "waypoint+ext_authz");
    assert_eq!(
        (v["impact"].as_str(), v["score"].as_u64()),
        (Some("high"), Some(3))
    );
    let s = serde_json::to_value(evaluate(RiskProfile::Low, &Fixture::dpa2().facts())).unwrap();
    assert_eq!(s[0]["id"], "LOW-REQ1");
    assert_eq!(s[0]["met"], true);
}

#[test]
fn rate_limits_on_the_service_or_a_route_attached_to_it() {
    let limited = |kind: &str, group: &str, name: &str| {
        let mut fx = Fixture::dpa2();
        fx.limits.push(object(json!({
            "metadata": meta("limit"),
            "spec": {"targetRefs": [{"group": group, "kind": kind, "name": name}],
                     "local": {"requests": 10, "unit": "Second"}}
        })));
        fx.facts().accounts["backend"].rate_limited
    };
    assert!(limited("Service", "", "back"));
    assert!(limited("HTTPRoute", "gateway.networking.k8s.io", "back"));
    assert!(!limited("HTTPRoute", "gateway.networking.k8s.io", "other"));
    assert!(!limited("GRPCRoute", "gateway.networking.k8s.io", "back"));
    assert!(!limited("Service", "", "front"));
}
