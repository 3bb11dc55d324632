//! What compile refuses, named by its place.

use super::routes;
use crate::Problem;

/// The first problem of the single route in `yaml`, as `place: problem kind`.
fn refused(yaml: &str) -> (String, Problem) {
    let e = routes(yaml).remove(0).compile().unwrap_err();
    (e.at, e.problem)
}

fn one_rule(rule: &str) -> (String, Problem) {
    refused(&format!("[{{name: r, rules: [{rule}]}}]"))
}

#[test]
fn bad_names_parents_and_hostnames() {
    assert_eq!(
        refused("[{name: R, rules: []}]"),
        ("name".into(), Problem::Name("R".into()))
    );
    assert_eq!(
        refused("[{name: r, parents: [], rules: []}]").1,
        Problem::NoParents
    );
    assert_eq!(
        refused("[{name: r, parents: [{namespace: demo, name: echo, port: 0}]}]"),
        ("parents[0].port".into(), Problem::Port)
    );
    for bad in [
        "\"*\"",
        "a.*.com",
        "Upper.com",
        "10.0.0.1",
        "-a.com",
        "a..com",
    ] {
        let (at, problem) = refused(&format!("[{{name: r, hostnames: [ok.com, {bad}]}}]"));
        assert_eq!(at, "hostnames[1]", "{bad}");
        assert!(matches!(problem, Problem::Hostname(_)), "{bad}");
    }
}

#[test]
fn bad_paths_regexes_methods_and_headers() {
    for path in ["foo", "/a//b", "/a?b", "/a#b", "/a b"] {
        let (at, problem) = one_rule(&format!(
            "{{matches: [{{path: {{type: PathPrefix, value: \"{path}\"}}}}]}}"
        ));
        assert_eq!(at, "rules[0].matches[0].path");
        assert_eq!(problem, Problem::Path(path.into()));
    }
    let long = format!("/{}", "a".repeat(1024));
    let (_, problem) = one_rule(&format!(
        "{{matches: [{{path: {{type: Exact, value: {long}}}}}]}}"
    ));
    assert_eq!(problem, Problem::Path(long), "paths are bounded");
    let (at, problem) =
        one_rule("{matches: [{}, {path: {type: RegularExpression, value: \"/(a\"}}]}");
    assert_eq!(at, "rules[0].matches[1].path");
    assert!(matches!(problem, Problem::Regex { .. }));
    // Balanced only once wrapped in the anchors: refused, not matched unanchored.
    let (_, problem) = one_rule("{matches: [{path: {type: RegularExpression, value: \"a)|(b\"}}]}");
    assert!(matches!(problem, Problem::Regex { .. }));
    // Too big to compile within the size limit.
    let (_, problem) = one_rule(
        "{matches: [{headers: [{name: x, type: RegularExpression, value: \"\\\\w{500}\\\\w{500}\"}]}]}",
    );
    assert!(matches!(problem, Problem::Regex { .. }), "{problem:?}");
    assert_eq!(
        one_rule("{matches: [{method: \"GE T\"}]}").1,
        Problem::Method("GE T".into())
    );
    assert_eq!(
        one_rule("{matches: [{headers: [{name: \"bad name\", value: x}]}]}").1,
        Problem::HeaderName("bad name".into())
    );
    assert!(matches!(
        one_rule("{matches: [{headers: [{name: x, value: \"a\\nb\"}]}]}").1,
        Problem::HeaderValue { .. }
    ));
    assert_eq!(
        one_rule("{matches: [{queryParams: [{name: \"\", value: x}]}]}").1,
        Problem::QueryName
    );
}

#[test]
fn matches_of_the_other_kind_and_bad_grpc_methods() {
    assert!(matches!(
        one_rule("{matches: [{grpc: {service: a.B}}]}").1,
        Problem::NotFor { .. }
    ));
    let grpc = |rule: &str| refused(&format!("[{{name: r, kind: GRPCRoute, rules: [{rule}]}}]")).1;
    assert!(matches!(
        grpc("{matches: [{path: {value: /a}}]}"),
        Problem::NotFor { .. }
    ));
    assert!(matches!(
        grpc("{matches: [{queryParams: [{name: a, value: b}]}]}"),
        Problem::NotFor { .. }
    ));
    assert_eq!(grpc("{matches: [{grpc: {}}]}"), Problem::Grpc);
    assert_eq!(grpc("{matches: [{grpc: {service: a/b}}]}"), Problem::Grpc);
    assert!(matches!(
        grpc("{filters: [{urlRewrite: {}}]}"),
        Problem::NotFor { .. }
    ));
    assert!(matches!(
        grpc("{filters: [{requestRedirect: {}}]}"),
        Problem::NotFor { .. }
    ));
}

#[test]
fn bad_filters_and_backends() {
    let backend = "{namespace: demo, name: b, port: 80}";
    assert_eq!(
        one_rule(
            "{matches: [{path: {type: Exact, value: /a}}], filters: [{urlRewrite: {path: {type: ReplacePrefixMatch, value: /b}}}]}"
        ),
        (
            "rules[0].filters[0].path".into(),
            Problem::PrefixWithoutPathPrefix
        )
    );
    assert_eq!(
        one_rule("{matches: [{path: {value: /a}}, {path: {value: /b}}], filters: [{requestRedirect: {path: {type: ReplacePrefixMatch, value: /b}}}]}").1,
        Problem::PrefixWithoutPathPrefix
    );
    assert_eq!(
        one_rule("{backends: [{namespace: demo, name: b, port: 80, filters: [{urlRewrite: {path: {type: ReplacePrefixMatch, value: /b}}}]}]}").0,
        "rules[0].backends[0].filters[0].path"
    );
    assert_eq!(
        one_rule("{filters: [{urlRewrite: {}}, {requestRedirect: {}}]}").1,
        Problem::RedirectAndRewrite
    );
    assert_eq!(
        one_rule(&format!(
            "{{filters: [{{requestRedirect: {{}}}}], backends: [{backend}]}}"
        ))
        .1,
        Problem::RedirectWithBackends
    );
    assert_eq!(
        one_rule("{filters: [{requestHeaderModifier: {}}, {requestHeaderModifier: {}}]}").1,
        Problem::Repeated("RequestHeaderModifier")
    );
    assert_eq!(
        one_rule("{filters: [{requestHeaderModifier: {set: [{name: x, value: a}], remove: [X]}}]}")
            .1,
        Problem::HeaderTwice("X".into())
    );
    assert_eq!(
        one_rule("{filters: [{requestRedirect: {scheme: ftp}}]}").1,
        Problem::Scheme("ftp".into())
    );
    assert_eq!(
        one_rule("{filters: [{requestRedirect: {statusCode: 200}}]}").1,
        Problem::RedirectStatus(200)
    );
    assert!(matches!(
        one_rule("{filters: [{requestRedirect: {hostname: \"*.a.com\"}}]}").1,
        Problem::Hostname(_)
    ));
    assert_eq!(
        one_rule(&format!(
            "{{filters: [{{requestMirror: {{backend: {backend}, fractionPpm: 1000001}}}}]}}"
        ))
        .1,
        Problem::Fraction(1_000_001)
    );
    assert_eq!(
        one_rule("{backends: [{namespace: demo, name: b, port: 80, weight: 1000001}]}").1,
        Problem::Weight(1_000_001)
    );
    assert_eq!(
        one_rule("{backends: [{namespace: demo, name: b, port: 0}]}").1,
        Problem::Port
    );
    assert_eq!(
        one_rule("{requestTimeoutMs: 100, backendRequestTimeoutMs: 200}").1,
        Problem::Timeouts
    );
    assert_eq!(
        one_rule("{retry: {codes: [200]}}").1,
        Problem::RetryCode(200)
    );
}

#[test]
fn limits_bound_a_route() {
    let rules = vec!["{}"; 17].join(", ");
    assert!(matches!(
        one_rule(&rules).1,
        Problem::TooMany { max: 16, .. }
    ));
    let matches = vec!["{}"; 65].join(", ");
    assert!(matches!(
        one_rule(&format!("{{matches: [{matches}]}}")).1,
        Problem::TooMany { max: 64, .. }
    ));
}

#[test]
fn a_valid_route_keeps_its_timeouts_and_retry() {
    let r = routes(
        r#"
- name: r
  rules:
    - requestTimeoutMs: 2000
      backendRequestTimeoutMs: 500
      retry: {codes: [503, 504], attempts: 2, backoffMs: 100}
    - requestTimeoutMs: 0
"#,
    )
    .remove(0)
    .compile()
    .unwrap();
    let rule = &r.rules()[0];
    assert_eq!(
        rule.request_timeout(),
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(
        rule.backend_request_timeout(),
        Some(std::time::Duration::from_millis(500))
    );
    let retry = rule.retry().unwrap();
    assert_eq!(
        retry.codes,
        [
            http::StatusCode::SERVICE_UNAVAILABLE,
            http::StatusCode::GATEWAY_TIMEOUT
        ]
    );
    assert_eq!(
        (retry.attempts, retry.backoff),
        (2, Some(std::time::Duration::from_millis(100)))
    );
    assert_eq!(r.rules()[1].request_timeout(), None, "0 is no timeout");
    assert!(r.route().validate().is_ok());
}

#[test]
fn routes_round_trip_through_yaml_and_filters_name_one_kind() {
    let yaml = r#"
- name: r
  kind: GRPCRoute
  hostnames: [a.example.com]
  rules:
    - name: named
      matches: [{grpc: {type: RegularExpression, service: "pkg\\..*"}, headers: [{name: x, value: "1"}]}]
      filters: [{requestHeaderModifier: {add: [{name: x-canary, value: "yes"}]}}]
      backends: [{namespace: demo, name: b, port: 80, weight: 3, invalid: true}]
"#;
    let parsed = routes(yaml);
    let text = serde_saphyr::to_string(&parsed).unwrap();
    assert!(text.contains("requestHeaderModifier:"), "{text}");
    assert_eq!(
        serde_saphyr::from_str::<Vec<crate::Route>>(&text).unwrap(),
        parsed
    );
    let two = "[{name: r, rules: [{filters: [{urlRewrite: {}, requestRedirect: {}}]}]}]";
    let e = serde_saphyr::from_str::<Vec<crate::Route>>(two)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one of"), "{e}");
    let unknown = "[{name: r, rules: [{timeout: 5}]}]";
    assert!(serde_saphyr::from_str::<Vec<crate::Route>>(unknown).is_err());
}
