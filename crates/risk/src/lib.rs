//! SP 800-233 risk profiles for ambit namespaces: what the mesh knows about a namespace
//! ([`NamespaceFacts`], built from its Kubernetes objects by one function), the requirements
//! of the profile its `ambit.dev/risk-profile` label asks for ([`evaluate`]), what enforce mode
//! refuses ([`enforcement_targets`]), and the threats TR-1..TR-10 scored for the data plane it
//! actually has ([`threats`]).
//!
//! Pure: objects in, plain data out; no client, no runtime. The controller and
//! `kubectl ambit threats` both build facts here, so they never disagree.
//! docs/risk-profiles.md is the user's side of this crate.
#![forbid(unsafe_code)]

/// Serializes `$t` as, and displays it as, its `as_str()`: each name is written once.
macro_rules! named {
    ($($t:ty),+) => {$(
        impl From<$t> for &'static str {
            fn from(v: $t) -> Self {
                v.as_str()
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

pub mod facts;
pub mod profile;
pub mod requirements;
pub mod threats;

pub use facts::{
    AccountFacts, DeclaredBy, ExtAuthz, ExtAuthzProviderFacts, HttpPort, MeshSettings,
    NamespaceFacts, NamespaceObjects, TunnelMode, UnknownTunnelMode, WaypointFacts,
};
pub use profile::{Enforcement, LabelError, RiskProfile, labels};
pub use requirements::{
    MAX_HIGH_LEAF_LIFETIME_SECONDS, REFUSING_REQUIREMENT, RequirementId, RequirementStatus,
    enforcement_targets, evaluate,
};
pub use threats::{DataPlaneModel, Level, Threat, ThreatScore, threats};

#[cfg(test)]
mod tests;
