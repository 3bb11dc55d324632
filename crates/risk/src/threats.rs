//! SP 800-233's threats TR-1..TR-10 scored for the data plane a namespace actually has.
//!
//! The method is the guideline's: each threat's impact and likelihood as low, medium or high,
//! the score their product on 1..9 (1-2 low, 3-4 medium, 6-9 high). The values are OURS, set
//! from how ambit's DPA-2 implementation answers each threat (docs/threat-model.md), pending a
//! check against the publication's section 5 tables, which we could not consult: each threat
//! starts from a base impact and likelihood, and each mitigation the namespace has lowers one
//! of them by one step (never below low). A threat against a mesh component that is not on the
//! namespace's path (no tunnel for a namespace outside the mesh, no L7 proxy without a
//! waypoint) scores low × low. docs/risk-profiles.md has the table.

use crate::facts::NamespaceFacts;
use crate::requirements::{MAX_HIGH_LEAF_LIFETIME_SECONDS, RequirementId, check};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Threat {
    Tr1,
    Tr2,
    Tr3,
    Tr4,
    Tr5,
    Tr6,
    Tr7,
    Tr8,
    Tr9,
    Tr10,
}

impl Threat {
    pub const ALL: [Threat; 10] = [
        Self::Tr1,
        Self::Tr2,
        Self::Tr3,
        Self::Tr4,
        Self::Tr5,
        Self::Tr6,
        Self::Tr7,
        Self::Tr8,
        Self::Tr9,
        Self::Tr10,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tr1 => "TR-1",
            Self::Tr2 => "TR-2",
            Self::Tr3 => "TR-3",
            Self::Tr4 => "TR-4",
            Self::Tr5 => "TR-5",
            Self::Tr6 => "TR-6",
            Self::Tr7 => "TR-7",
            Self::Tr8 => "TR-8",
            Self::Tr9 => "TR-9",
            Self::Tr10 => "TR-10",
        }
    }

    /// Our one-line reading (docs/threat-model.md).
    pub fn summary(self) -> &'static str {
        match self {
            Self::Tr1 => "compromised node tunnel (shared L4 proxy)",
            Self::Tr2 => "compromised application container",
            Self::Tr3 => "identities stolen or forged, traffic read in transit",
            Self::Tr4 => "compromised L7 proxy shared across services",
            Self::Tr5 => "exploited L7 processing (smuggling, header abuse)",
            Self::Tr6 => "compromised control plane or config path",
            Self::Tr7 => "denial of service, noisy neighbours",
            Self::Tr8 => "policy that lapses or is misapplied",
            Self::Tr9 => "excessive privileges of mesh components on the node",
            Self::Tr10 => "bypassing the mesh or the waypoint",
        }
    }
}

named!(Threat);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Level {
    Low = 1,
    Medium = 2,
    High = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    fn lowered(self) -> Self {
        match self {
            Self::High => Self::Medium,
            Self::Medium | Self::Low => Self::Low,
        }
    }

    /// The qualitative rating of a 1..9 score.
    pub fn of_score(score: u8) -> Self {
        match score {
            0..=2 => Self::Low,
            3..=4 => Self::Medium,
            _ => Self::High,
        }
    }
}

named!(Level);

/// The data plane a namespace's traffic gets: the weakest its HTTP service accounts have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum DataPlaneModel {
    /// Not enrolled: no mesh.
    NoMesh,
    /// Enrolled, node tunnels only (no HTTP service account, or one without its waypoint).
    L4,
    /// Enrolled, a waypoint per HTTP service account (DPA-2).
    Waypoint,
    /// DPA-2 with external authorization of every request.
    WaypointExtAuthz,
}

impl DataPlaneModel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMesh => "none",
            Self::L4 => "l4",
            Self::Waypoint => "waypoint",
            Self::WaypointExtAuthz => "waypoint+ext_authz",
        }
    }

    pub fn of(f: &NamespaceFacts) -> Self {
        let has = |m: Mitigation| m.present(f);
        if !f.enrolled {
            Self::NoMesh
        } else if f.http_accounts().next().is_none() || !has(Mitigation::WaypointPerHttpAccount) {
            Self::L4
        } else if has(Mitigation::ExtAuthzEveryRequest) {
            Self::WaypointExtAuthz
        } else {
            Self::Waypoint
        }
    }
}

named!(DataPlaneModel);

/// One threat, scored for one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreatScore {
    pub threat: Threat,
    pub summary: &'static str,
    pub model: DataPlaneModel,
    pub impact: Level,
    pub likelihood: Level,
    /// impact × likelihood, 1..9.
    pub score: u8,
    pub rating: Level,
    /// What lowered the score (or why the threat is off the namespace's path).
    pub mitigations: Vec<&'static str>,
    /// What to change to lower it further, a command where one exists.
    pub fixes: Vec<String>,
}

/// What lowers a threat's impact or likelihood, as found in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mitigation {
    /// The namespace is enrolled: captured traffic, fail-closed capture, bounded listeners,
    /// fail-safe policy evaluation.
    Enrolled,
    /// Enrolled, strict tunnels and no pod opted out (LOW-REQ1 and LOW-REQ2).
    StrictMtls,
    /// Leaf certificates of 1 h at most.
    ShortLeaves,
    /// Every service account has an ALLOW policy naming its peers (LOW-REQ3).
    PeerAllowLists,
    /// Enrolled, and a programmed waypoint of its own for every HTTP service account
    /// (MEDIUM-REQ1).
    WaypointPerHttpAccount,
    /// No waypoint carries another account's traffic.
    WaypointsNotShared,
    /// Enrolled, and every request to every HTTP service account checked by a fail-closed
    /// provider (HIGH-REQ1).
    ExtAuthzEveryRequest,
    /// Enrolled, and every HTTP Service of the namespace (or a route on it) rate limited.
    RateLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Factor {
    Impact,
    Likelihood,
}

/// A threat's base values and what lowers them.
struct Rule {
    impact: Level,
    likelihood: Level,
    /// Whether the component the threat is against is on the namespace's path.
    in_path: fn(&NamespaceFacts) -> bool,
    off_path: &'static str,
    mitigations: &'static [(Mitigation, Factor)],
}

fn always(_: &NamespaceFacts) -> bool {
    true
}

fn rule(t: Threat) -> Rule {
    use Factor::{Impact, Likelihood};
    use Level::{High, Low, Medium};
    use Mitigation::*;
    let r = |impact, likelihood, mitigations| Rule {
        impact,
        likelihood,
        in_path: always,
        off_path: "",
        mitigations,
    };
    match t {
        Threat::Tr1 => Rule {
            in_path: |f| f.enrolled,
            off_path: "no node tunnel holds this namespace's identities (not enrolled)",
            ..r(High, Low, &[(ShortLeaves, Impact)])
        },
        Threat::Tr2 => r(
            High,
            Medium,
            &[(PeerAllowLists, Impact), (ExtAuthzEveryRequest, Impact)],
        ),
        Threat::Tr3 => r(
            High,
            High,
            &[
                (Enrolled, Likelihood),
                (StrictMtls, Likelihood),
                (ShortLeaves, Impact),
            ],
        ),
        Threat::Tr4 => Rule {
            in_path: |f| f.enrolled && f.accounts.values().any(|a| a.waypoint.is_some()),
            off_path: "no waypoint on this namespace's path",
            ..r(High, Low, &[(WaypointsNotShared, Impact)])
        },
        Threat::Tr5 => r(Medium, Medium, &[(WaypointPerHttpAccount, Likelihood)]),
        Threat::Tr6 => Rule {
            in_path: |f| f.enrolled,
            off_path: "the controller configures nothing of this namespace (not enrolled)",
            ..r(High, Low, &[])
        },
        Threat::Tr7 => r(
            Medium,
            Medium,
            &[(Enrolled, Likelihood), (RateLimits, Impact)],
        ),
        Threat::Tr8 => r(
            High,
            High,
            &[
                (Enrolled, Likelihood),
                (PeerAllowLists, Likelihood),
                (ExtAuthzEveryRequest, Impact),
            ],
        ),
        Threat::Tr9 => r(High, Low, &[]),
        Threat::Tr10 => r(
            High,
            High,
            &[(Enrolled, Likelihood), (StrictMtls, Likelihood)],
        ),
    }
}

impl Mitigation {
    fn name(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::StrictMtls => "strict mTLS",
            Self::ShortLeaves => "leaves <= 1h",
            Self::PeerAllowLists => "peer allow-lists",
            Self::WaypointPerHttpAccount => "waypoint per HTTP account",
            Self::WaypointsNotShared => "waypoints not shared",
            Self::ExtAuthzEveryRequest => "ext_authz on every request",
            Self::RateLimits => "rate limits",
        }
    }

    /// The requirements that, all met, make this mitigation present, beside enrollment.
    fn requirements(self) -> &'static [RequirementId] {
        match self {
            Self::Enrolled | Self::ShortLeaves | Self::WaypointsNotShared | Self::RateLimits => &[],
            Self::StrictMtls => &[RequirementId::LowReq1, RequirementId::LowReq2],
            Self::PeerAllowLists => &[RequirementId::LowReq3],
            Self::WaypointPerHttpAccount => &[RequirementId::MediumReq1],
            Self::ExtAuthzEveryRequest => &[RequirementId::HighReq1],
        }
    }

    fn present(self, f: &NamespaceFacts) -> bool {
        self.fix(f).is_none()
    }

    /// What makes it present; `None` when it is.
    fn fix(self, f: &NamespaceFacts) -> Option<String> {
        let ns = &f.namespace;
        let enroll = check(RequirementId::LowReq1, f);
        if !f.enrolled {
            return enroll.fix;
        }
        let fixes: Vec<String> = match self {
            Self::ShortLeaves => match f.settings.leaf_lifetime_seconds {
                Some(s) if s <= MAX_HIGH_LEAF_LIFETIME_SECONDS => Vec::new(),
                _ => check(RequirementId::HighReq3, f).fix.into_iter().collect(),
            },
            Self::WaypointsNotShared => f
                .accounts
                .iter()
                .filter(|(_, a)| {
                    a.waypoint
                        .as_ref()
                        .is_some_and(|w| !w.shared_with.is_empty())
                })
                .map(|(sa, _)| format!("give {sa} a waypoint of its own"))
                .collect(),
            Self::RateLimits => f
                .http_accounts()
                .filter(|(_, a)| !a.rate_limited)
                .map(|(sa, _)| {
                    format!(
                        "kubectl apply -n {ns} a RateLimitPolicy targeting the Services of {sa}"
                    )
                })
                .collect(),
            _ => self
                .requirements()
                .iter()
                .filter_map(|id| check(*id, f).fix)
                .collect(),
        };
        (!fixes.is_empty()).then(|| fixes.join("; "))
    }
}

/// TR-1..TR-10 for `facts`' namespace.
pub fn threats(facts: &NamespaceFacts) -> Vec<ThreatScore> {
    let model = DataPlaneModel::of(facts);
    Threat::ALL
        .into_iter()
        .map(|t| score(t, model, facts))
        .collect()
}

fn score(threat: Threat, model: DataPlaneModel, f: &NamespaceFacts) -> ThreatScore {
    let rule = rule(threat);
    let (mut impact, mut likelihood) = (rule.impact, rule.likelihood);
    let mut mitigations = Vec::new();
    let mut fixes = Vec::new();
    if !(rule.in_path)(f) {
        (impact, likelihood) = (Level::Low, Level::Low);
        mitigations.push(rule.off_path);
    } else {
        for (m, factor) in rule.mitigations {
            match m.fix(f) {
                None => {
                    mitigations.push(m.name());
                    match factor {
                        Factor::Impact => impact = impact.lowered(),
                        Factor::Likelihood => likelihood = likelihood.lowered(),
                    }
                }
                Some(fix) if !fixes.contains(&fix) => fixes.push(fix),
                Some(_) => {}
            }
        }
    }
    let score = impact as u8 * likelihood as u8;
    ThreatScore {
        threat,
        summary: threat.summary(),
        model,
        impact,
        likelihood,
        score,
        rating: Level::of_score(score),
        mitigations,
        fixes,
    }
}
