//! `cargo xtask bench route`: the cost of one route lookup with 10 and with 10,000 rules on one
//! Service, per kind of rule hit (exact path, path prefix, no match), and the ratio between the
//! two sizes. Lookup must not grow with the number of path rules beyond O(log n) (issue 12):
//! exact paths are a hash map and prefixes a trie of path elements, so the ratio should stay
//! near 1 (what grows is cache misses, not work).
//!
//! `ambit-bench route --quick` runs a few iterations only, to check that it works.

use crate::report::{median, round, write_json};
use ambit_route::{Lookup, Request, Route, RouteTable};
use anyhow::{Result, ensure};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const SIZES: [usize; 2] = [10, 10_000];
/// Gateway API's limit of rules per route.
const RULES_PER_ROUTE: usize = 16;
const ROUNDS: usize = 7;
const LOOKUPS_PER_ROUND: usize = 200_000;
const QUICK_LOOKUPS_PER_ROUND: usize = 2_000;
/// Distinct request paths per kind, cycled through, so one path's cache lines do not carry
/// the measurement.
const PATHS: usize = 1_024;

const KINDS: [&str; 3] = ["exact", "prefix", "miss"];

pub fn run(quick: bool) -> Result<()> {
    let lookups = if quick {
        QUICK_LOOKUPS_PER_ROUND
    } else {
        LOOKUPS_PER_ROUND
    };
    let rounds = if quick { 1 } else { ROUNDS };
    let mut rows = Vec::new();
    for rules in SIZES {
        let table = table(rules)?;
        let mut ns = Vec::new();
        for kind in KINDS {
            let paths = paths(kind, rules);
            let mut samples: Vec<f64> = (0..rounds)
                .map(|_| measure(&table, &paths, lookups, kind))
                .collect::<Result<_>>()?;
            ns.push(median(&mut samples));
        }
        rows.push((rules, ns));
    }
    println!("route lookup, ns per lookup (median of {rounds} rounds of {lookups}):");
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "rules", KINDS[0], KINDS[1], KINDS[2]
    );
    for (rules, ns) in &rows {
        println!("{rules:>8} {:>10.1} {:>10.1} {:>10.1}", ns[0], ns[1], ns[2]);
    }
    let ratios: Vec<f64> = (0..KINDS.len())
        .map(|k| rows[1].1[k] / rows[0].1[k])
        .collect();
    println!(
        "{:>8} {:>10.2} {:>10.2} {:>10.2}",
        "10k/10", ratios[0], ratios[1], ratios[2]
    );
    let per_size = |i: usize| {
        let (rules, ns) = &rows[i];
        json!({
            "rules": rules,
            "ns_per_lookup": KINDS.iter().zip(ns).map(|(k, v)| (k.to_string(), json!(round(*v, 1)))).collect::<serde_json::Map<_, _>>(),
        })
    };
    let path = write_json(
        "route",
        &json!({
            "quick": quick,
            "rounds": rounds,
            "lookups_per_round": lookups,
            "sizes": [per_size(0), per_size(1)],
            "ratio_10k_over_10": KINDS.iter().zip(&ratios).map(|(k, v)| (k.to_string(), json!(round(*v, 2)))).collect::<serde_json::Map<_, _>>(),
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Service `bench/svc` with `rules` rules: half exact paths, half prefixes two elements deep,
/// a third of them also asking for a header, spread over routes of 16 rules.
fn table(rules: usize) -> Result<RouteTable> {
    let mut routes = Vec::new();
    for r in 0..rules.div_ceil(RULES_PER_ROUTE) {
        let first = r * RULES_PER_ROUTE;
        let rules_yaml: String = (first..rules.min(first + RULES_PER_ROUTE))
            .map(|i| {
                let path = if i % 2 == 0 {
                    format!("{{type: Exact, value: /exact/{i}}}")
                } else {
                    format!("{{type: PathPrefix, value: /prefix/{i}}}")
                };
                let headers = if i % 3 == 0 {
                    ", headers: [{name: x-tier, value: gold}]"
                } else {
                    ""
                };
                format!("  - matches: [{{path: {path}{headers}}}]\n")
            })
            .collect();
        let yaml = format!(
            "name: r{r}\nnamespace: bench\ncreatedUnixMs: {r}\nparents: [{{namespace: bench, name: svc}}]\nrules:\n{rules_yaml}"
        );
        let route: Route = serde_saphyr::from_str(&yaml)?;
        routes.push(Arc::new(route.compile()?));
    }
    Ok(RouteTable::new("bench", routes))
}

/// Request paths that hit rules of `kind` (spread over the whole table), or miss.
fn paths(kind: &str, rules: usize) -> Vec<String> {
    (0..PATHS)
        .map(|n| {
            // Rules of the right parity, spread over the table.
            let i = (n * 7919) % rules;
            match kind {
                "exact" => format!("/exact/{}", i - i % 2),
                "prefix" => format!("/prefix/{}/items/{n}?page=2", i | 1),
                _ => format!("/nothing/{n}"),
            }
        })
        .collect()
}

/// ns per lookup over `lookups` lookups of `paths` in turn.
fn measure(table: &RouteTable, paths: &[String], lookups: usize, kind: &str) -> Result<f64> {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tier", http::HeaderValue::from_static("gold"));
    let method = http::Method::GET;
    let request = |path| request(path, &method, &headers);
    // What each path gets, checked once outside the timing: a benchmark of wrong answers
    // measures nothing.
    for p in paths {
        let matched = matches!(table.lookup(&request(p)), Lookup::Matched(_));
        ensure!(matched == (kind != "miss"), "{p}: lookup answered wrong");
    }
    let start = Instant::now();
    for n in 0..lookups {
        let path = &paths[n % paths.len()];
        black_box(table.lookup(black_box(&request(path))));
    }
    Ok(start.elapsed().as_nanos() as f64 / lookups as f64)
}

fn request<'a>(
    path: &'a str,
    method: &'a http::Method,
    headers: &'a http::HeaderMap,
) -> Request<'a> {
    Request {
        client_namespace: Some("bench"),
        host: "svc.bench.svc.cluster.local",
        method,
        path_and_query: path,
        headers,
    }
}
