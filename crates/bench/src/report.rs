//! Writing benchmark results: a table for people, JSON for machines.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Writes `value` to `target/ambit-bench/NAME.json` and returns the path.
pub fn write_json(name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let dir = target_dir().join("ambit-bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // The binary lives in target/release/; fall back to ./target.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `measured` against a target, as a table cell: "0.52 (target >= 0.45, met)".
pub fn against(measured: f64, target: f64, higher_is_better: bool) -> String {
    let met = if higher_is_better {
        measured >= target
    } else {
        measured <= target
    };
    let op = if higher_is_better { ">=" } else { "<=" };
    format!(
        "{measured:.2} (target {op} {target}, {})",
        if met { "met" } else { "NOT met" }
    )
}

/// The middle sample (the upper one of an even count); 0 when there is none.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// `value` rounded to `digits` decimals, for JSON that people read too.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// How many interleaved rounds a benchmark runs: `AMBIT_BENCH_ROUNDS`, default 3. Each round
/// measures every path once, so a noisy moment of a shared machine lands on one round of every
/// path rather than on one path.
pub fn rounds() -> Result<usize> {
    const DEFAULT: usize = 3;
    match std::env::var("AMBIT_BENCH_ROUNDS") {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT),
        Err(e) => Err(e).context("AMBIT_BENCH_ROUNDS"),
        Ok(text) => match text.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => anyhow::bail!("AMBIT_BENCH_ROUNDS={text:?}: expected a whole number >= 1"),
        },
    }
}

/// A per-round quantity: its median and its range over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// 0 for all three when there are no samples.
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        let median = median(&mut sorted);
        Self {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// `[min, max]` rounded, the JSON form of `<key>_spread`.
    pub fn range_json(&self, digits: i32) -> serde_json::Value {
        serde_json::json!([round(self.min, digits), round(self.max, digits)])
    }
}

/// Per-round samples against a target, as a table cell:
/// "0.52  0.47–0.55  (target >= 0.45, met in 3/3 rounds)".
pub fn against_rounds(samples: &[f64], target: f64, higher_is_better: bool) -> String {
    let spread = Spread::of(samples);
    let met = samples
        .iter()
        .filter(|&&s| {
            if higher_is_better {
                s >= target
            } else {
                s <= target
            }
        })
        .count();
    let op = if higher_is_better { ">=" } else { "<=" };
    format!(
        "{:>7.2}  {:>5.2}–{:<5.2}  (target {op} {target}, met in {met}/{} rounds)",
        spread.median,
        spread.min,
        spread.max,
        samples.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_and_the_ends() {
        let s = Spread::of(&[0.31, 0.24, 0.45]);
        assert_eq!((s.median, s.min, s.max), (0.31, 0.24, 0.45));
        assert_eq!(s.range_json(2), serde_json::json!([0.24, 0.45]));
    }

    #[test]
    fn rounds_are_counted_against_the_target_each() {
        let cell = against_rounds(&[0.5, 0.4, 0.46], 0.45, true);
        assert!(cell.contains("met in 2/3 rounds"), "{cell}");
        let cell = against_rounds(&[2.0, 2.2], 2.1, false);
        assert!(cell.contains("met in 1/2 rounds"), "{cell}");
    }
}
