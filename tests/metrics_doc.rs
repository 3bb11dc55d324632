//! docs/metrics.md's series table, and a scrape checked against it: every `ambit_` sample a part
//! exposes is documented for that part with its labels, and every series documented for the
//! part is exposed by its endpoint (but those the test's traffic cannot produce, named). Included by each part's tests with
//! `#[path = "../../../tests/metrics_doc.rs"] mod metrics_doc;` (std only, so any test can).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

const DOC: &str = include_str!("../docs/metrics.md");

/// One row of the table: `| `name` | type | `label`, ... | part | meaning |`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    pub labels: BTreeSet<String>,
    /// `tunnel`, `waypoint` or `controller`.
    pub part: String,
}

impl Series {
    /// The family name the exposition's `# TYPE` line carries (OpenMetrics: counters without
    /// `_total`).
    fn family(&self) -> &str {
        match self.kind.as_str() {
            "counter" => self.name.strip_suffix("_total").unwrap_or(&self.name),
            _ => &self.name,
        }
    }

    /// The label names a sample named `sample` of this series carries, or `None` when the
    /// sample is not this series'.
    fn sample_labels(&self, sample: &str) -> Option<BTreeSet<String>> {
        if sample == self.name {
            return Some(self.labels.clone());
        }
        if self.kind != "histogram" {
            return None;
        }
        let suffix = sample.strip_prefix(self.name.as_str())?;
        let mut labels = self.labels.clone();
        match suffix {
            "_sum" | "_count" => {}
            "_bucket" => {
                labels.insert("le".to_owned());
            }
            _ => return None,
        }
        Some(labels)
    }
}

/// Every series docs/metrics.md lists, in table order. Panics on a malformed row: the doc is
/// part of the build's contract.
pub fn documented() -> Vec<Series> {
    DOC.lines()
        .filter(|line| line.starts_with("| `ambit_"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [name, kind, labels, part, meaning] = cells[..] else {
                panic!("docs/metrics.md: a series row needs 5 cells: {line}");
            };
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "docs/metrics.md: unknown type {kind}: {line}"
            );
            assert!(!meaning.is_empty(), "docs/metrics.md: no meaning: {line}");
            Series {
                name: name.trim_matches('`').to_owned(),
                kind: kind.to_owned(),
                labels: labels
                    .split(',')
                    .map(|label| label.trim().trim_matches('`'))
                    .filter(|label| !label.is_empty() && *label != "none")
                    .map(str::to_owned)
                    .collect(),
                part: part.to_owned(),
            }
        })
        .collect()
}

/// The series docs/metrics.md lists for `part`.
pub fn documented_for(part: &str) -> Vec<Series> {
    let series: Vec<Series> = documented()
        .into_iter()
        .filter(|s| s.part == part)
        .collect();
    assert!(
        !series.is_empty(),
        "docs/metrics.md lists nothing for {part}"
    );
    series
}

/// A scrape's `# TYPE` declarations and its samples' names with their label names.
#[derive(Debug, Default)]
struct Scrape {
    declared: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<BTreeSet<String>>>,
}

fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (family, kind) = declaration.split_once(' ').unwrap_or((declaration, ""));
            scrape.declared.insert(family.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = match line[name_end..].strip_prefix('{') {
            Some(rest) => label_names(rest),
            None => BTreeSet::new(),
        };
        scrape
            .samples
            .entry(line[..name_end].to_owned())
            .or_default()
            .insert(labels);
    }
    scrape
}

/// The names in `a="x",b="y\"z"}...`, up to the closing brace.
fn label_names(mut rest: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    while let Some((name, value)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').to_owned());
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i);
        rest = &value[(end + 1).min(value.len())..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

/// Checks a scrape of `part`'s /metrics against docs/metrics.md. A series whose labels are
/// open-ended is exposed only once something was counted: `not_produced` names the documented
/// series the caller's traffic does not produce, and must name exactly those (so the list
/// cannot go stale). `Ok` holds the documented series that have at least one sample; `Err`
/// lists every disagreement.
pub fn check(part: &str, scrape: &str, not_produced: &[&str]) -> Result<BTreeSet<String>, String> {
    let series = documented_for(part);
    let scrape = parse(scrape);
    let mut problems = Vec::new();
    let mut sampled = BTreeSet::new();
    for name in not_produced {
        if !series.iter().any(|s| s.name == *name) {
            problems.push(format!("{name} is not documented for {part}"));
        }
    }
    for s in &series {
        let expected = !not_produced.contains(&s.name.as_str());
        match scrape.declared.get(s.family()) {
            Some(kind) if *kind != s.kind => problems.push(format!(
                "{} is documented as a {} but exposed as a {kind}",
                s.name, s.kind
            )),
            Some(_) if !expected => problems.push(format!(
                "{} is exposed: take it out of the series this test does not produce",
                s.name
            )),
            None if expected => problems.push(format!("{} is documented but not exposed", s.name)),
            _ => {}
        }
    }
    for family in scrape.declared.keys() {
        if family.starts_with("ambit_") && !series.iter().any(|s| s.family() == family) {
            problems.push(format!("{family} is exposed but not documented for {part}"));
        }
    }
    for (sample, label_sets) in &scrape.samples {
        if !sample.starts_with("ambit_") {
            continue;
        }
        let Some((s, expected)) = series
            .iter()
            .find_map(|s| Some((s, s.sample_labels(sample)?)))
        else {
            problems.push(format!("{sample} is exposed but not documented for {part}"));
            continue;
        };
        sampled.insert(s.name.clone());
        for labels in label_sets {
            if *labels != expected {
                problems.push(format!(
                    "{sample} carries labels {labels:?}, docs/metrics.md says {expected:?}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(sampled)
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn the_doc_table_parses_and_names_each_series_once() {
    let series = documented();
    let names: BTreeSet<&str> = series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), series.len(), "a series listed twice");
    for part in ["tunnel", "waypoint", "controller"] {
        documented_for(part);
    }
    assert!(
        parse("ambit_x_total{a=\"q\\\"},b=\\\"\",b=\"\"} 1\n").samples["ambit_x_total"]
            == BTreeSet::from([BTreeSet::from(["a".to_owned(), "b".to_owned()])])
    );
}

/// The `ambit_` names in a PromQL expression.
fn series_in(expr: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.match_indices("ambit_")
        .filter(|&(at, _)| !expr[..at].ends_with(is_name))
        .map(|(at, _)| {
            let rest = &expr[at..];
            &rest[..rest.find(|c| !is_name(c)).unwrap_or(rest.len())]
        })
        .collect()
}

#[test]
fn every_dashboard_query_names_documented_series() {
    let documented = documented();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/ambit/dashboards");
    let mut queries = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let json = std::fs::read_to_string(&path).unwrap();
        for line in json.lines() {
            let Some(expr) = line.trim().strip_prefix("\"expr\": \"") else {
                continue;
            };
            queries += 1;
            let names = series_in(expr);
            assert!(
                !names.is_empty(),
                "{}: {expr} names no ambit series",
                path.display()
            );
            for name in names {
                assert!(
                    documented.iter().any(|s| s.sample_labels(name).is_some()),
                    "{}: {name} is not in docs/metrics.md",
                    path.display()
                );
            }
        }
    }
    assert!(queries >= 3, "no dashboard queries found in {dir}");
}
