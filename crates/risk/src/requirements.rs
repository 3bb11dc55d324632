//! The requirements of each profile, checked against a namespace's facts, and what enforce mode
//! refuses. docs/risk-profiles.md has the table these functions implement.

use crate::facts::{AccountFacts, ExtAuthz, NamespaceFacts, TunnelMode};
use crate::profile::RiskProfile;
use serde::Serialize;
use std::collections::BTreeSet;

/// The leaf lifetime HIGH-REQ3 allows.
pub const MAX_HIGH_LEAF_LIFETIME_SECONDS: u64 = 3600;

/// One requirement of SP 800-233's low, medium and high risk sets, as ambit makes it concrete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum RequirementId {
    LowReq1,
    LowReq2,
    LowReq3,
    MediumReq1,
    MediumReq2,
    MediumReq3,
    HighReq1,
    HighReq2,
    HighReq3,
}

impl RequirementId {
    pub const ALL: [RequirementId; 9] = [
        Self::LowReq1,
        Self::LowReq2,
        Self::LowReq3,
        Self::MediumReq1,
        Self::MediumReq2,
        Self::MediumReq3,
        Self::HighReq1,
        Self::HighReq2,
        Self::HighReq3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowReq1 => "LOW-REQ1",
            Self::LowReq2 => "LOW-REQ2",
            Self::LowReq3 => "LOW-REQ3",
            Self::MediumReq1 => "MEDIUM-REQ1",
            Self::MediumReq2 => "MEDIUM-REQ2",
            Self::MediumReq3 => "MEDIUM-REQ3",
            Self::HighReq1 => "HIGH-REQ1",
            Self::HighReq2 => "HIGH-REQ2",
            Self::HighReq3 => "HIGH-REQ3",
        }
    }

    /// The lowest profile that asks for it.
    pub fn profile(self) -> RiskProfile {
        match self {
            Self::LowReq1 | Self::LowReq2 | Self::LowReq3 => RiskProfile::Low,
            Self::MediumReq1 | Self::MediumReq2 | Self::MediumReq3 => RiskProfile::Medium,
            Self::HighReq1 | Self::HighReq2 | Self::HighReq3 => RiskProfile::High,
        }
    }

    /// What it asks, in a few words.
    pub fn title(self) -> &'static str {
        match self {
            Self::LowReq1 => "every pod enrolled",
            Self::LowReq2 => "strict mutual TLS",
            Self::LowReq3 => "L4 authorization naming peers",
            Self::MediumReq1 => "a waypoint per HTTP service account (request metrics and logs)",
            Self::MediumReq2 => "L7 authorization at method level",
            Self::MediumReq3 => "request authentication where an issuer is declared",
            Self::HighReq1 => "external authorization of every request",
            Self::HighReq2 => "request timeouts on every route",
            Self::HighReq3 => "leaf certificates of 1 h at most, waypoints never shared",
        }
    }
}

named!(RequirementId);

/// How a namespace stands against one requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementStatus {
    pub id: RequirementId,
    pub met: bool,
    /// CamelCase, stable: a condition's `reason`, a metric label.
    pub reason: &'static str,
    /// One line for a person.
    pub message: String,
    /// What to change to meet it (a command where one exists); `None` when met.
    pub fix: Option<String>,
    /// The service accounts falling short of it, for a requirement checked per account (the
    /// message names them too, for a person); empty when met or not checked per account.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub short_accounts: Vec<String>,
}

/// The one requirement enforce mode refuses on: [`enforcement_targets`] names exactly the
/// accounts short of it (under `high`, in an enrolled namespace); no other unmet requirement
/// refuses anything.
pub const REFUSING_REQUIREMENT: RequirementId = RequirementId::MediumReq1;

/// One entry per requirement of `profile` (its own and those of the profiles below it).
pub fn evaluate(profile: RiskProfile, facts: &NamespaceFacts) -> Vec<RequirementStatus> {
    RequirementId::ALL
        .into_iter()
        .filter(|id| id.profile() <= profile)
        .map(|id| check(id, facts))
        .collect()
}

/// The service accounts of the namespace whose inbound traffic the mesh must refuse when
/// `profile` is enforced: under `high`, those serving HTTP without a programmed waypoint of
/// their own, since their requests would otherwise reach them unchecked at L7. Empty when the
/// namespace is not enrolled: no tunnel is on its pods' path to refuse anything.
pub fn enforcement_targets(profile: RiskProfile, facts: &NamespaceFacts) -> BTreeSet<String> {
    if profile < RiskProfile::High || !facts.enrolled {
        return BTreeSet::new();
    }
    facts
        .http_accounts()
        .filter(|(sa, a)| waypoint_problem(&facts.namespace, sa, a).is_some())
        .map(|(sa, _)| sa.clone())
        .collect()
}

/// Why one account falls short of a requirement.
struct Shortfall {
    reason: &'static str,
    detail: String,
    fix: String,
}

pub(crate) fn check(id: RequirementId, f: &NamespaceFacts) -> RequirementStatus {
    let ns = f.namespace.as_str();
    match id {
        RequirementId::LowReq1 => {
            if !f.enrolled {
                not_enrolled(id, ns)
            } else if !f.opted_out_pods.is_empty() {
                unmet(
                    id,
                    "PodsOptedOut",
                    format!(
                        "pods {} are opted out of the mesh ({}=none)",
                        f.opted_out_pods.join(", "),
                        ambit_k8s::names::DATAPLANE_MODE_LABEL
                    ),
                    format!(
                        "remove the label {}=none from their pod template and restart them",
                        ambit_k8s::names::DATAPLANE_MODE_LABEL
                    ),
                )
            } else {
                met(
                    id,
                    "Enrolled",
                    format!("namespace {ns} and all its pods are in the mesh"),
                )
            }
        }
        RequirementId::LowReq2 => match (f.enrolled, f.settings.tunnel_mode) {
            (false, _) => not_enrolled(id, ns),
            (true, Some(TunnelMode::Strict)) => met(
                id,
                "StrictMtls",
                "node tunnels accept only mutual TLS (HBONE) into enrolled pods".into(),
            ),
            (true, Some(TunnelMode::Permissive)) => unmet(
                id,
                "Permissive",
                "node tunnels let plaintext into enrolled pods (tunnel mode permissive)".into(),
                "helm upgrade ambit <chart> --reuse-values --set node.tunnel.mode=strict".into(),
            ),
            (true, None) => unmet(
                id,
                "ModeUnknown",
                "tunnel mode unknown: whether node tunnels let plaintext into enrolled pods is not known".into(),
                "check node.tunnel.mode in the ambit install: helm get values ambit".into(),
            ),
        },
        RequirementId::LowReq3 => {
            if !f.enrolled {
                return not_enrolled(id, ns);
            }
            per_account(
                id,
                f.accounts.iter(),
                "PeerAllowLists",
                "application",
                |sa, a| {
                    (!a.peer_allow_list).then(|| Shortfall {
                    reason: "NoPeerAllowList",
                    detail: "a pod of it has no ALLOW policy, or an ALLOW rule naming neither principals nor namespaces".into(),
                    fix: format!(
                        "kubectl apply -n {ns} an AuthorizationPolicy (action ALLOW, rules[].principals) selecting the pods of {sa}"
                    ),
                })
                },
            )
        }
        RequirementId::MediumReq1 => per_account(
            id,
            f.http_accounts(),
            "WaypointPerHttpAccount",
            "HTTP",
            |sa, a| waypoint_problem(ns, sa, a),
        ),
        RequirementId::MediumReq2 => {
            per_account(
                id,
                f.http_accounts(),
                "MethodLevelRules",
                "HTTP",
                |sa, a| {
                    if !a.method_rules {
                        Some(Shortfall {
                        reason: "NoMethodRules",
                        detail: "a pod of it has no ALLOW policy, or an ALLOW rule naming no methods".into(),
                        fix: format!(
                            "kubectl apply -n {ns} an AuthorizationPolicy (action ALLOW, rules[].methods) selecting the pods of {sa}"
                        ),
                    })
                    } else {
                        a.waypoint.is_none().then(|| waypoint_required(ns, sa))
                    }
                },
            )
        }
        RequirementId::MediumReq3 => {
            if !f.issuer_declared {
                return met(
                    id,
                    "NoIssuerDeclared",
                    format!("no RequestAuthentication in {ns} declares an issuer"),
                );
            }
            per_account(
                id,
                f.http_accounts(),
                "RequestsAuthenticated",
                "HTTP",
                |sa, a| {
                    if !a.request_authentication {
                        Some(Shortfall {
                            reason: "NotAuthenticated",
                            detail: "no RequestAuthentication selects all its pods".into(),
                            fix: format!(
                                "kubectl apply -n {ns} a RequestAuthentication selecting the pods of {sa}"
                            ),
                        })
                    } else if !a.request_principal_required {
                        Some(Shortfall {
                        reason: "TokenNotRequired",
                        detail: "requests without a token are let in: an ALLOW rule names no requestPrincipals and no DENY refuses notRequestPrincipals [\"*\"]".into(),
                        fix: format!(
                            "kubectl apply -n {ns} an AuthorizationPolicy (action ALLOW, rules[].requestPrincipals: [\"*\"]) selecting the pods of {sa}"
                        ),
                    })
                    } else {
                        a.waypoint.is_none().then(|| waypoint_required(ns, sa))
                    }
                },
            )
        }
        RequirementId::HighReq1 => per_account(
            id,
            f.http_accounts(),
            "ExtAuthzEveryRequest",
            "HTTP",
            |sa, a| ext_authz_problem(ns, sa, a),
        ),
        RequirementId::HighReq2 => {
            per_account(id, f.http_accounts(), "RouteTimeouts", "HTTP", |sa, a| {
                (!a.route_timeouts).then(|| Shortfall {
                    reason: "NoRouteTimeouts",
                    detail: "a Service of it has no HTTPRoute, or a rule without timeouts.request".into(),
                    fix: format!(
                        "kubectl apply -n {ns} an HTTPRoute with the Services of {sa} as parent and timeouts.request on every rule"
                    ),
                })
            })
        }
        RequirementId::HighReq3 => high_req3(f),
    }
}

fn high_req3(f: &NamespaceFacts) -> RequirementStatus {
    let id = RequirementId::HighReq3;
    let shared: Vec<String> = f
        .accounts
        .iter()
        .filter_map(|(sa, a)| {
            let w = a.waypoint.as_ref()?;
            (!w.shared_with.is_empty()).then(|| {
                format!(
                    "{sa}'s waypoint {} also carries {}",
                    w.gateway,
                    w.shared_with.join(", ")
                )
            })
        })
        .collect();
    match f.settings.leaf_lifetime_seconds {
        None => unmet(
            id,
            "LeafLifetimeUnknown",
            "the mesh's leaf certificate lifetime is not known".into(),
            "check controller.certLifetimeSeconds in the ambit install: helm get values ambit".into(),
        ),
        Some(s) if s > MAX_HIGH_LEAF_LIFETIME_SECONDS => unmet(
            id,
            "LeafLifetimeTooLong",
            format!("leaf certificates live {s} s, more than {MAX_HIGH_LEAF_LIFETIME_SECONDS} s"),
            format!(
                "helm upgrade ambit <chart> --reuse-values --set controller.certLifetimeSeconds={MAX_HIGH_LEAF_LIFETIME_SECONDS}"
            ),
        ),
        Some(_) if !shared.is_empty() => unmet(
            id,
            "WaypointShared",
            shared.join("; "),
            "give each service account a waypoint of its own and run no application as a waypoint's service account".into(),
        ),
        Some(s) => met(
            id,
            "ShortLeavesUnsharedWaypoints",
            format!("leaf certificates live {s} s; no waypoint is shared"),
        ),
    }
}

fn waypoint_problem(ns: &str, sa: &str, a: &AccountFacts) -> Option<Shortfall> {
    let apply = format!("kubectl ambit waypoint apply -n {ns} --service-account {sa}");
    let (reason, detail, fix) = match &a.waypoint {
        None => ("WaypointMissing", "no waypoint".to_string(), apply),
        Some(w) if !w.shared_with.is_empty() => (
            "WaypointShared",
            format!(
                "waypoint {} also carries {}",
                w.gateway,
                w.shared_with.join(", ")
            ),
            apply,
        ),
        Some(w) if !w.programmed => (
            "WaypointNotProgrammed",
            format!("waypoint {} is not Programmed", w.gateway),
            format!("kubectl ambit waypoint status -n {ns} --service-account {sa}"),
        ),
        Some(_) => return None,
    };
    Some(Shortfall {
        reason,
        detail,
        fix,
    })
}

fn waypoint_required(ns: &str, sa: &str) -> Shortfall {
    Shortfall {
        reason: "WaypointRequired",
        detail: "its L7 rules need a waypoint to be enforced".into(),
        fix: format!("kubectl ambit waypoint apply -n {ns} --service-account {sa}"),
    }
}

fn ext_authz_problem(ns: &str, sa: &str, a: &AccountFacts) -> Option<Shortfall> {
    let custom_fix = format!(
        "kubectl apply -n {ns} an AuthorizationPolicy (action CUSTOM, provider, rules: [{{}}]) selecting the pods of {sa}"
    );
    let helm_fix = |p: &str| {
        format!("declare provider {p} with failOpen: false in the Helm value extAuthz.providers")
    };
    let (reason, detail, fix) = match &a.ext_authz {
        ExtAuthz::None => (
            "NoExtAuthz",
            "no CUSTOM policy selects all its pods".to_string(),
            custom_fix,
        ),
        ExtAuthz::SomeRequests => (
            "NotEveryRequest",
            "its CUSTOM policies match only some requests (no empty rule)".into(),
            custom_fix,
        ),
        ExtAuthz::ProviderNotDeclared { provider } => (
            "ProviderNotDeclared",
            format!("provider {provider} is not declared by the mesh"),
            helm_fix(provider),
        ),
        ExtAuthz::FailOpen { provider } => (
            "ProviderFailsOpen",
            format!("provider {provider} lets requests through when it fails"),
            helm_fix(provider),
        ),
        ExtAuthz::ProvidersUnknown { .. } => (
            "ProvidersUnknown",
            "the mesh's ext_authz providers are not known".into(),
            "check extAuthz.providers in the ambit install: helm get values ambit".into(),
        ),
        ExtAuthz::EveryRequest { .. } => {
            return a.waypoint.is_none().then(|| waypoint_required(ns, sa));
        }
    };
    Some(Shortfall {
        reason,
        detail,
        fix,
    })
}

/// A requirement every account of `accounts` must meet: met with `met_reason` when none falls
/// short, else unmet with the first shortfall's reason, every account named in the message.
fn per_account<'a>(
    id: RequirementId,
    accounts: impl Iterator<Item = (&'a String, &'a AccountFacts)>,
    met_reason: &'static str,
    kind: &str,
    shortfall: impl Fn(&str, &AccountFacts) -> Option<Shortfall>,
) -> RequirementStatus {
    let mut checked = 0;
    let mut short: Vec<(String, Shortfall)> = Vec::new();
    for (sa, a) in accounts {
        checked += 1;
        if let Some(s) = shortfall(sa, a) {
            short.push((sa.clone(), s));
        }
    }
    let Some((_, first)) = short.first() else {
        return if checked == 0 {
            met(
                id,
                "NoServiceAccounts",
                format!("no {kind} service accounts"),
            )
        } else {
            met(
                id,
                met_reason,
                format!("all {checked} {kind} service accounts"),
            )
        };
    };
    let reason = first.reason;
    let message = short
        .iter()
        .map(|(sa, s)| format!("{sa}: {}", s.detail))
        .collect::<Vec<_>>()
        .join("; ");
    let mut fixes: Vec<&str> = short.iter().map(|(_, s)| s.fix.as_str()).collect();
    fixes.dedup();
    let status = unmet(id, reason, message, fixes.join("; "));
    RequirementStatus {
        short_accounts: short.into_iter().map(|(sa, _)| sa).collect(),
        ..status
    }
}

fn not_enrolled(id: RequirementId, ns: &str) -> RequirementStatus {
    unmet(
        id,
        "NotEnrolled",
        format!("namespace {ns} is not enrolled: the mesh does not carry its traffic"),
        format!(
            "kubectl label namespace {ns} {}={}",
            ambit_k8s::names::DATAPLANE_MODE_LABEL,
            ambit_k8s::names::DATAPLANE_MODE_AMBIENT
        ),
    )
}

fn met(id: RequirementId, reason: &'static str, message: String) -> RequirementStatus {
    RequirementStatus {
        id,
        met: true,
        reason,
        message,
        fix: None,
        short_accounts: Vec::new(),
    }
}

fn unmet(
    id: RequirementId,
    reason: &'static str,
    message: String,
    fix: String,
) -> RequirementStatus {
    RequirementStatus {
        id,
        met: false,
        reason,
        message,
        fix: Some(fix),
        short_accounts: Vec::new(),
    }
}
