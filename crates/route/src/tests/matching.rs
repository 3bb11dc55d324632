//! Each match type on its own.

use super::{req, table};
use http::Method;

#[test]
fn headers_match_by_case_insensitive_name_and_exact_or_full_regex_value() {
    let t = table(
        r#"
- name: r
  rules:
    - name: exact
      matches: [{headers: [{name: X-Version, value: v1}]}]
    - name: regex
      matches: [{headers: [{name: x-tier, type: RegularExpression, value: "gold|silver"}]}]
    - name: first-entry-counts
      matches: [{headers: [{name: x-dup, value: a}, {name: X-DUP, value: b}]}]
"#,
    );
    assert_eq!(req("/").header("x-version", "v1").on(&t), "r#exact");
    assert_eq!(
        req("/").header("x-version", "V1").on(&t),
        "404",
        "values are case-sensitive"
    );
    assert_eq!(req("/").header("x-tier", "gold").on(&t), "r#regex");
    assert_eq!(
        req("/").header("x-tier", "golden").on(&t),
        "404",
        "a regex matches the whole value"
    );
    assert_eq!(
        req("/")
            .header("x-tier", "bronze")
            .header("x-tier", "silver")
            .on(&t),
        "r#regex"
    );
    assert_eq!(req("/").header("x-dup", "a").on(&t), "r#first-entry-counts");
    assert_eq!(req("/").header("x-dup", "b").on(&t), "404");
}

#[test]
fn query_params_match_the_first_value_by_exact_name() {
    let t = table(
        r#"
- name: r
  rules:
    - name: exact
      matches: [{queryParams: [{name: animal, value: whale}]}]
    - name: regex
      matches: [{queryParams: [{name: color, type: RegularExpression, value: "bl.*"}]}]
"#,
    );
    assert_eq!(req("/?animal=whale").on(&t), "r#exact");
    assert_eq!(req("/?x=1&animal=whale&y").on(&t), "r#exact");
    assert_eq!(
        req("/?Animal=whale").on(&t),
        "404",
        "names are case-sensitive"
    );
    assert_eq!(
        req("/?animal=dolphin&animal=whale").on(&t),
        "404",
        "the first value counts"
    );
    assert_eq!(req("/?color=blue").on(&t), "r#regex");
    assert_eq!(req("/?color=red").on(&t), "404");
    assert_eq!(req("/?animal").on(&t), "404");
}

#[test]
fn methods_and_exact_paths() {
    let t = table(
        r#"
- name: r
  rules:
    - name: post
      matches: [{path: {type: Exact, value: /items}, method: POST}]
    - name: any-of
      matches: [{path: {type: Exact, value: /a}}, {path: {type: Exact, value: /b}}]
"#,
    );
    assert_eq!(req("/items").method(Method::POST).on(&t), "r#post");
    assert_eq!(req("/items").on(&t), "404");
    assert_eq!(req("/items/").method(Method::POST).on(&t), "404");
    assert_eq!(req("/a").on(&t), "r#any-of");
    assert_eq!(req("/b?x").on(&t), "r#any-of");
    assert_eq!(req("/c").on(&t), "404");
}

#[test]
fn a_rule_without_matches_matches_everything() {
    let t = table("[{name: r, rules: [{}]}]");
    assert_eq!(
        req("/anything/at/all?x=1").method(Method::DELETE).on(&t),
        "r#0"
    );
    let t = table("[{name: r, rules: []}]");
    assert_eq!(
        req("/").on(&t),
        "404",
        "a route without rules matches nothing"
    );
}

#[test]
fn request_from_parts_reads_the_authority_or_the_host_header() {
    let t = table(
        r#"
- name: r
  hostnames: [a.example.com]
  rules: [{}]
"#,
    );
    let lookup = |parts: &http::request::Parts| {
        matches!(
            t.lookup(&crate::Request::from_parts(Some("demo"), parts)),
            crate::Lookup::Matched(_)
        )
    };
    let (h2, _) = http::Request::get("http://a.example.com:80/x")
        .body(())
        .unwrap()
        .into_parts();
    assert!(lookup(&h2));
    let (h1, _) = http::Request::get("/x")
        .header("host", "a.example.com")
        .body(())
        .unwrap()
        .into_parts();
    assert!(lookup(&h1));
    let (other, _) = http::Request::get("/x")
        .header("host", "b.example.com")
        .body(())
        .unwrap()
        .into_parts();
    assert!(!lookup(&other));
}
