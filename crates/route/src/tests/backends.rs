//! Weighted backend choice, invalid backends and mirrors.

use super::routes;
use crate::{BackendChoice, CompiledRoute};

fn rule_of(yaml: &str) -> CompiledRoute {
    routes(yaml).remove(0).compile().unwrap()
}

/// Evenly spread draws over the whole u32 range, shuffled by a fixed LCG so the test is
/// repeatable and still exercises the mapping of arbitrary draws.
fn draws(n: u32) -> impl Iterator<Item = u32> {
    let mut state = 0x2545_f491_u32;
    (0..n).map(move |_| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state
    })
}

#[test]
fn a_90_10_split_lands_within_half_a_percent() {
    let route = rule_of(
        r#"
- name: r
  rules:
    - backends:
        - {namespace: demo, name: stable, port: 80, weight: 90}
        - {namespace: demo, name: canary, port: 80, weight: 10}
"#,
    );
    let rule = &route.rules()[0];
    let n = 100_000;
    let canary = draws(n)
        .filter(
            |&d| matches!(rule.choose_backend(d), BackendChoice::Backend(b) if b.name == "canary"),
        )
        .count();
    let share = canary as f64 / f64::from(n);
    assert!((share - 0.10).abs() < 0.005, "canary share {share}");
    // The extremes of the draw land on the first and last backends.
    assert!(matches!(rule.choose_backend(0), BackendChoice::Backend(b) if b.name == "stable"));
    assert!(
        matches!(rule.choose_backend(u32::MAX), BackendChoice::Backend(b) if b.name == "canary")
    );
}

#[test]
fn invalid_backends_answer_for_their_share_and_zero_weights_for_all() {
    let route = rule_of(
        r#"
- name: r
  rules:
    - backends:
        - {namespace: demo, name: good, port: 80}
        - {namespace: demo, name: missing, port: 80, invalid: true}
    - backends:
        - {namespace: demo, name: a, port: 80, weight: 0}
        - {namespace: demo, name: b, port: 80, weight: 0}
    - backends:
        - {namespace: demo, name: off, port: 80, weight: 0}
        - {namespace: demo, name: on, port: 80, weight: 3}
    - {}
"#,
    );
    let rules = route.rules();
    let n = 10_000;
    let invalid = draws(n)
        .filter(|&d| matches!(rules[0].choose_backend(d), BackendChoice::Invalid))
        .count();
    let share = invalid as f64 / f64::from(n);
    assert!((share - 0.5).abs() < 0.02, "invalid share {share}");
    assert!(draws(100).all(|d| matches!(rules[1].choose_backend(d), BackendChoice::Invalid)));
    assert!(draws(100).all(
        |d| matches!(rules[2].choose_backend(d), BackendChoice::Backend(b) if b.name == "on")
    ));
    assert!(matches!(rules[3].choose_backend(7), BackendChoice::Parent));
}

#[test]
fn mirrors_take_their_fraction() {
    let route = rule_of(
        r#"
- name: r
  rules:
    - filters:
        - requestMirror: {backend: {namespace: demo, name: shadow, port: 80}, fractionPpm: 250000}
        - requestMirror: {backend: {namespace: demo, name: all, port: 8080}}
"#,
    );
    let mirrors = &route.rules()[0].filters().mirrors;
    assert_eq!(mirrors[0].backend.name, "shadow");
    let n = 100_000;
    let mirrored = draws(n).filter(|&d| mirrors[0].mirrors(d)).count();
    let share = mirrored as f64 / f64::from(n);
    assert!((share - 0.25).abs() < 0.005, "mirrored share {share}");
    assert!(
        draws(1000).all(|d| mirrors[1].mirrors(d)),
        "no fraction: every request"
    );
    assert_eq!(mirrors[1].backend.port, 8080);
}
