//! The namespace labels: which profile, and whether it is enforced.

use ambit_k8s::names::{RISK_ENFORCEMENT_LABEL, RISK_PROFILE_LABEL};
use k8s_openapi::api::core::v1::Namespace;
use serde::Serialize;

/// The SP 800-233 requirement set a namespace is held to; each includes the one below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum RiskProfile {
    Low,
    Medium,
    High,
}

/// What a violated profile does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Enforcement {
    /// Violations are reported, traffic is unchanged.
    #[default]
    Report,
    /// Violations are reported, and the mesh refuses what [`crate::enforcement_targets`] names.
    Enforce,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {namespace}: label {label}={value:?} is not one of {expected}")]
pub struct LabelError {
    pub namespace: String,
    pub label: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The profile and enforcement a namespace's labels ask for, both checked: `None` without a
/// profile label, an error when either label holds a value that is not one of its own (an
/// `Enforce` or `on` would otherwise enforce nothing, unseen). The controller and
/// `kubectl ambit threats` read labels through this one function, and show the error.
pub fn labels(ns: &Namespace) -> Result<Option<(RiskProfile, Enforcement)>, LabelError> {
    let profile = RiskProfile::of(ns)?;
    let enforcement = Enforcement::of(ns)?;
    Ok(profile.map(|p| (p, enforcement)))
}

impl RiskProfile {
    pub const ALL: [RiskProfile; 3] = [Self::Low, Self::Medium, Self::High];

    /// The profile a namespace's label asks for; `None` without the label.
    pub fn of(ns: &Namespace) -> Result<Option<Self>, LabelError> {
        let Some(value) = label(ns, RISK_PROFILE_LABEL) else {
            return Ok(None);
        };
        match value {
            "low" => Ok(Some(Self::Low)),
            "medium" => Ok(Some(Self::Medium)),
            "high" => Ok(Some(Self::High)),
            _ => Err(label_error(
                ns,
                RISK_PROFILE_LABEL,
                value,
                "low, medium, high",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

impl Enforcement {
    /// What a namespace's label asks for; `Report` without the label.
    pub fn of(ns: &Namespace) -> Result<Self, LabelError> {
        match label(ns, RISK_ENFORCEMENT_LABEL) {
            None | Some("report") => Ok(Self::Report),
            Some("enforce") => Ok(Self::Enforce),
            Some(value) => Err(label_error(
                ns,
                RISK_ENFORCEMENT_LABEL,
                value,
                "report, enforce",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Enforce => "enforce",
        }
    }
}

named!(RiskProfile, Enforcement);

fn label<'a>(ns: &'a Namespace, name: &str) -> Option<&'a str> {
    ns.metadata.labels.as_ref()?.get(name).map(String::as_str)
}

fn label_error(
    ns: &Namespace,
    label: &'static str,
    value: &str,
    expected: &'static str,
) -> LabelError {
    LabelError {
        namespace: ns.metadata.name.clone().unwrap_or_default(),
        label,
        value: value.to_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn labels_parse_and_bad_values_are_named() {
        assert_eq!(RiskProfile::of(&ns(&[])), Ok(None));
        assert_eq!(
            RiskProfile::of(&ns(&[(RISK_PROFILE_LABEL, "high")])),
            Ok(Some(RiskProfile::High))
        );
        let err = RiskProfile::of(&ns(&[(RISK_PROFILE_LABEL, "High")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "namespace shop: label ambit.dev/risk-profile=\"High\" is not one of low, medium, high"
        );
        assert_eq!(Enforcement::of(&ns(&[])), Ok(Enforcement::Report));
        assert_eq!(
            Enforcement::of(&ns(&[(RISK_ENFORCEMENT_LABEL, "enforce")])),
            Ok(Enforcement::Enforce)
        );
        assert!(Enforcement::of(&ns(&[(RISK_ENFORCEMENT_LABEL, "on")])).is_err());
    }

    #[test]
    fn a_mistyped_enforcement_label_is_an_error_with_or_without_a_profile() {
        let high = (RISK_PROFILE_LABEL, "high");
        let typo = (RISK_ENFORCEMENT_LABEL, "Enforce");
        assert_eq!(
            labels(&ns(&[high, (RISK_ENFORCEMENT_LABEL, "enforce")])),
            Ok(Some((RiskProfile::High, Enforcement::Enforce)))
        );
        assert_eq!(
            labels(&ns(&[high])),
            Ok(Some((RiskProfile::High, Enforcement::Report)))
        );
        assert_eq!(labels(&ns(&[])), Ok(None));
        for labelled in [ns(&[high, typo]), ns(&[typo])] {
            let e = labels(&labelled).unwrap_err();
            assert_eq!(
                (e.label, e.value.as_str()),
                (RISK_ENFORCEMENT_LABEL, "Enforce")
            );
            assert_eq!(
                e.to_string(),
                "namespace shop: label ambit.dev/risk-enforcement=\"Enforce\" is not one of report, enforce"
            );
        }
    }

    #[test]
    fn labels_serialize_as_written() {
        assert_eq!(serde_json::to_value(RiskProfile::Medium).unwrap(), "medium");
        assert_eq!(
            serde_json::to_value(Enforcement::Enforce).unwrap(),
            "enforce"
        );
    }

    #[test]
    fn profiles_are_ordered_by_what_they_ask() {
        assert!(RiskProfile::Low < RiskProfile::Medium && RiskProfile::Medium < RiskProfile::High);
    }
}
