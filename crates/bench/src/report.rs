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
