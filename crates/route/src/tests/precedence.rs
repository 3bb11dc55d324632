//! Gateway API's precedence rules, one at a time, and GAMMA's consumer routes.

use super::{req, table};
use http::Method;

#[test]
fn exact_path_beats_any_prefix() {
    let t = table(
        r#"
- name: a
  rules:
    - matches: [{path: {type: PathPrefix, value: /foo/bar}}]
- name: b
  createdUnixMs: 10
  rules:
    - matches: [{path: {type: Exact, value: /foo}}]
    - matches: [{path: {type: PathPrefix, value: /foo}}]
"#,
    );
    assert_eq!(req("/foo").on(&t), "b#0");
    assert_eq!(
        req("/foo/").on(&t),
        "b#1",
        "exact is exact: /foo/ is not /foo"
    );
    assert_eq!(req("/foo/bar/baz").on(&t), "a#0");
}

#[test]
fn longest_prefix_wins_element_by_element() {
    let t = table(
        r#"
- name: r
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
    - matches: [{path: {type: PathPrefix, value: /a}}]
    - matches: [{path: {type: PathPrefix, value: /a/b/}}]
"#,
    );
    assert_eq!(req("/a/b/c").on(&t), "r#2");
    assert_eq!(
        req("/a/b").on(&t),
        "r#2",
        "a trailing / of a prefix is ignored"
    );
    assert_eq!(req("/a/b/").on(&t), "r#2");
    assert_eq!(req("/a/bc").on(&t), "r#1", "/a/b is not a prefix of /a/bc");
    assert_eq!(req("/a").on(&t), "r#1");
    assert_eq!(req("/ab").on(&t), "r#0");
    assert_eq!(req("/").on(&t), "r#0");
    assert_eq!(
        req("/a?x=1").on(&t),
        "r#1",
        "the query is not part of the path"
    );
}

#[test]
fn longer_prefix_beats_method_which_beats_headers_which_beat_query_params() {
    let t = table(
        r#"
- name: r
  rules:
    - name: query
      matches: [{path: {value: /x}, queryParams: [{name: a, value: "1"}, {name: b, value: "2"}]}]
    - name: headers
      matches: [{path: {value: /x}, headers: [{name: h, value: "1"}]}]
    - name: method
      matches: [{path: {value: /x}, method: GET}]
    - name: longer
      matches: [{path: {value: /x/y}}]
"#,
    );
    let full = || req("/x/y?a=1&b=2").header("h", "1");
    assert_eq!(full().on(&t), "r#longer");
    assert_eq!(req("/x?a=1&b=2").header("h", "1").on(&t), "r#method");
    assert_eq!(
        req("/x?a=1&b=2")
            .header("h", "1")
            .method(Method::POST)
            .on(&t),
        "r#headers"
    );
    assert_eq!(req("/x?a=1&b=2").method(Method::POST).on(&t), "r#query");
    assert_eq!(req("/x?a=1").method(Method::POST).on(&t), "404");
}

#[test]
fn more_headers_and_more_query_params_win() {
    let t = table(
        r#"
- name: r
  rules:
    - name: one-header
      matches: [{headers: [{name: a, value: "1"}]}]
    - name: two-headers
      matches: [{headers: [{name: a, value: "1"}, {name: b, value: "1"}]}]
    - name: one-param
      matches: [{queryParams: [{name: a, value: "1"}]}]
    - name: two-params
      matches: [{queryParams: [{name: a, value: "1"}, {name: b, value: "1"}]}]
"#,
    );
    assert_eq!(req("/").header("a", "1").on(&t), "r#one-header");
    assert_eq!(
        req("/?a=1&b=1").header("a", "1").header("b", "1").on(&t),
        "r#two-headers"
    );
    assert_eq!(req("/?a=1").on(&t), "r#one-param");
    assert_eq!(req("/?b=1&a=1").on(&t), "r#two-params");
}

#[test]
fn ties_go_to_the_oldest_route_then_by_namespace_and_name_then_rule_order() {
    let t = table(
        r#"
- name: young
  createdUnixMs: 200
  rules: [{matches: [{path: {value: /p}}]}]
- name: old-b
  createdUnixMs: 100
  rules:
    - name: first
      matches: [{path: {value: /p}}]
    - name: second
      matches: [{path: {value: /p}}]
- name: old-a
  createdUnixMs: 100
  rules: [{matches: [{path: {value: /q}}]}, {matches: [{path: {value: /p/}}]}]
"#,
    );
    // old-a and old-b are as old; old-a is first by name. Its /p/ prefix is /p.
    assert_eq!(req("/p").on(&t), "old-a#1");
    let t = table(
        r#"
- name: young
  createdUnixMs: 200
  rules: [{matches: [{path: {value: /p}}]}]
- name: old-b
  createdUnixMs: 100
  rules:
    - name: first
      matches: [{path: {value: /p}}]
    - name: second
      matches: [{path: {value: /p}}]
"#,
    );
    assert_eq!(req("/p").on(&t), "old-b#first");
}

#[test]
fn regexes_rank_below_prefixes_and_longest_pattern_first() {
    let t = table(
        r#"
- name: r
  rules:
    - name: short-regex
      matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}}]
    - name: long-regex
      matches: [{path: {type: RegularExpression, value: "/v[0-9]+/items/.*"}}]
    - name: prefix
      matches: [{path: {value: /v1/items/special}}]
    - name: exact
      matches: [{path: {type: Exact, value: /v2/items/x}}]
"#,
    );
    assert_eq!(req("/v1/items/special").on(&t), "r#prefix");
    assert_eq!(req("/v2/items/x").on(&t), "r#exact");
    assert_eq!(req("/v3/items/y").on(&t), "r#long-regex");
    assert_eq!(req("/v3/other").on(&t), "r#short-regex");
    assert_eq!(
        req("/x/v3/other").on(&t),
        "404",
        "a path regex matches the whole path"
    );
}

#[test]
fn grpc_exact_service_and_method_beat_service_only_beat_regex() {
    let t = table(
        r#"
- name: g
  kind: GRPCRoute
  rules:
    - name: any
      matches: []
    - name: regex-service
      matches: [{grpc: {type: RegularExpression, service: "pkg\\..*"}}]
    - name: service
      matches: [{grpc: {service: pkg.Echo}}]
    - name: service-and-method
      matches: [{grpc: {service: pkg.Echo, method: Say}}]
    - name: method-only
      matches: [{grpc: {method: Ping}}]
    - name: service-with-headers
      matches: [{grpc: {service: pkg.Echo}, headers: [{name: x, value: "1"}]}]
"#,
    );
    assert_eq!(req("/pkg.Echo/Say").on(&t), "g#service-and-method");
    assert_eq!(req("/pkg.Echo/Other").on(&t), "g#service");
    assert_eq!(
        req("/pkg.Echo/Other").header("x", "1").on(&t),
        "g#service-with-headers"
    );
    assert_eq!(req("/pkg.Other/Ping").on(&t), "g#regex-service");
    assert_eq!(req("/other.Svc/Ping").on(&t), "g#method-only");
    assert_eq!(req("/other.Svc/Pong").on(&t), "g#any");
    assert_eq!(
        req("/not-grpc").on(&t),
        "g#any",
        "no method match: every request"
    );
}

#[test]
fn the_most_specific_matching_hostname_wins_before_any_path_rule() {
    let t = table(
        r#"
- name: none
  rules: [{matches: [{path: {type: Exact, value: /x}}]}]
- name: wide
  hostnames: ["*.example.com"]
  rules: [{matches: [{path: {value: /}}]}]
- name: narrow
  hostnames: ["*.a.example.com"]
  rules: [{matches: [{path: {value: /}}]}]
- name: exact
  hostnames: [b.a.example.com]
  rules: [{matches: [{path: {value: /only}}]}]
"#,
    );
    assert_eq!(
        req("/x").host("b.a.example.com").on(&t),
        "narrow#0",
        "exact host has no /x"
    );
    assert_eq!(
        req("/only/1").host("B.a.Example.com:8080").on(&t),
        "exact#0"
    );
    assert_eq!(req("/x").host("c.a.example.com").on(&t), "narrow#0");
    assert_eq!(req("/x").host("z.example.com").on(&t), "wide#0");
    assert_eq!(
        req("/x").host("example.com").on(&t),
        "none#0",
        "*.d does not match d"
    );
    assert_eq!(req("/y").host("echo.demo").on(&t), "404");
    assert_eq!(req("/x").host("10.96.0.1:80").on(&t), "none#0");
}

#[test]
fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
    let t = table(
        r#"
- name: producer
  namespace: demo
  rules: [{matches: [{path: {value: /}}]}]
- name: consumer
  namespace: shop
  rules: [{matches: [{path: {value: /cart}}]}]
- name: other-consumer
  namespace: bank
  rules: [{matches: [{path: {value: /}}]}]
"#,
    );
    assert_eq!(req("/cart").from(Some("shop")).on(&t), "consumer#0");
    assert_eq!(
        req("/home").from(Some("shop")).on(&t),
        "404",
        "a namespace with consumer routes uses them alone"
    );
    assert_eq!(req("/cart").from(Some("demo")).on(&t), "producer#0");
    assert_eq!(req("/cart").from(Some("elsewhere")).on(&t), "producer#0");
    assert_eq!(req("/cart").from(None).on(&t), "producer#0");
    assert_eq!(req("/cart").from(Some("bank")).on(&t), "other-consumer#0");
    // Without producer routes, other namespaces' clients are not routed at all.
    let t = table(
        r#"
- name: consumer
  namespace: shop
  rules: [{matches: [{path: {value: /cart}}]}]
"#,
    );
    assert_eq!(req("/cart").from(Some("demo")).on(&t), "unrouted");
    assert_eq!(req("/cart").from(None).on(&t), "unrouted");
    assert_eq!(req("/cart").from(Some("shop")).on(&t), "consumer#0");
    assert_eq!(req("/").from(Some("shop")).on(&t), "404");
}

#[test]
fn http_and_grpc_routes_are_never_merged_the_older_kind_stays() {
    let t = table(
        r#"
- name: grpc
  kind: GRPCRoute
  createdUnixMs: 2
  rules: [{matches: [{grpc: {service: pkg.Echo}}]}]
- name: http
  createdUnixMs: 1
  rules: [{matches: [{path: {value: /api}}]}]
- name: grpc-elsewhere
  kind: GRPCRoute
  createdUnixMs: 3
  hostnames: [grpc.example.com]
  rules: []
"#,
    );
    assert_eq!(req("/pkg.Echo/Say").on(&t), "404");
    assert_eq!(req("/api").on(&t), "http#0");
    let conflicts: Vec<_> = t
        .conflicts()
        .iter()
        .map(|c| (c.route.as_str(), c.kept.as_str()))
        .collect();
    assert_eq!(
        conflicts,
        [
            ("demo/grpc", "demo/http"),
            ("demo/grpc-elsewhere", "demo/http")
        ]
    );
    let t = table(
        r#"
- name: http
  hostnames: [web.example.com]
  rules: [{}]
- name: grpc
  kind: GRPCRoute
  hostnames: [grpc.example.com]
  rules: [{}]
"#,
    );
    assert!(
        t.conflicts().is_empty(),
        "disjoint hostnames do not conflict"
    );
    assert_eq!(
        req("/pkg.Echo/Say").host("grpc.example.com").on(&t),
        "grpc#0"
    );
    assert_eq!(req("/").host("web.example.com").on(&t), "http#0");
}
