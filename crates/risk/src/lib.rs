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

pub mod facts;
pub mod profile;
pub mod requirements;
pub mod threats;

pub use facts::{
    AccountFacts, DeclaredBy, ExtAuthz, ExtAuthzProviderFacts, HttpPort, MeshSettings,
    NamespaceFacts, NamespaceObjects, TunnelMode, WaypointFacts,
};
pub use profile::{Enforcement, LabelError, RiskProfile};
pub use requirements::{
    MAX_HIGH_LEAF_LIFETIME_SECONDS, RequirementId, RequirementStatus, enforcement_targets, evaluate,
};
pub use threats::{DataPlaneModel, Level, Threat, ThreatScore, threats};

#[cfg(test)]
mod tests;
