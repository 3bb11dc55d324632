#![allow(clippy::unwrap_used)]
use super::*;
use crate::index::testing::{Cluster, grant, http_route, obj, service};
use serde_json::json;

fn resolve(c: &Cluster, route: &HTTPRoute) -> Resolution {
    let stores = c.stores();
    resolve_http(route, stores.lookup())
}

/// Services `shop/web` (port 80, named http) and `shop/api` (8080), `other/remote` (9090).
fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.apply(service("shop", "web", "10.96.0.1", 80));
    c.apply(service("shop", "api", "10.96.0.2", 8080));
    c.apply(service("other", "remote", "10.96.0.3", 9090));
    c
}

fn verdict(ok: bool, reason: &'static str) -> (bool, &'static str) {
    (ok, reason)
}

fn accepted(r: &Resolution) -> Vec<(bool, &'static str)> {
    r.parents
        .iter()
        .map(|p| (p.accepted.ok, p.accepted.reason))
        .collect()
}

#[test]
fn durations_are_gateway_api_durations() {
    for (text, ms) in [
        ("10s", 10_000),
        ("500ms", 500),
        ("0s", 0),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1h2m3s4ms", 3_723_004),
        ("99999ms", 99_999),
    ] {
        assert_eq!(duration_ms(text), Some(ms), "{text}");
    }
    for bad in [
        "",
        "10",
        "s",
        "1.5s",
        "-1s",
        "10S",
        "100000s",
        "1s2s3s4s5s",
        "1d",
        "10s ",
        " 10s",
        "1us",
    ] {
        assert_eq!(duration_ms(bad), None, "{bad:?}");
    }
}

#[test]
fn a_full_http_route_converts_field_by_field() {
    let mut c = cluster();
    c.apply(grant("other", "shop"));
    let route: HTTPRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "canary", "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "web", "sectionName": "http"},
                {"name": "some-gateway"},
            ],
            "hostnames": ["web.shop.svc.cluster.local"],
            "rules": [{
                "name": "canary",
                "matches": [
                    {"path": {"type": "Exact", "value": "/v2"}, "method": "POST",
                     "headers": [{"name": "x-canary", "value": "y.*", "type": "RegularExpression"}],
                     "queryParams": [{"name": "debug", "value": "1"}]},
                    {},
                ],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "x-a", "value": "1"}], "add": [{"name": "x-b", "value": "2"}], "remove": ["x-c"]}},
                    {"type": "URLRewrite", "urlRewrite": {"hostname": "api.local",
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/v1"}}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "api", "port": 8080}, "percent": 25}},
                ],
                "backendRefs": [
                    {"name": "api", "port": 8080, "weight": 90},
                    {"name": "remote", "namespace": "other", "port": 9090, "weight": 10,
                     "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-canary", "value": "yes"}]}}]},
                ],
                "timeouts": {"request": "10s", "backendRequest": "500ms"},
                "retry": {"codes": [503, 502], "attempts": 3, "backoff": "100ms"},
            }],
        },
    }));
    let r = resolve(&c, &route);
    assert_eq!(
        accepted(&r),
        [verdict(true, "Accepted")],
        "the Gateway parent is not ours"
    );
    assert!(r.resolved_refs.ok, "{:?}", r.resolved_refs);
    let services: Vec<String> = r.services.iter().map(|(n, s)| format!("{n}/{s}")).collect();
    assert_eq!(services, ["other/remote", "shop/api", "shop/web"]);
    let backend = |ns: &str, name: &str, port: u32, weight: u32| pb::RouteBackend {
        namespace: ns.into(),
        name: name.into(),
        port,
        weight,
        ..Default::default()
    };
    let nv = |n: &str, v: &str| pb::NameValue {
        name: n.into(),
        value: v.into(),
    };
    let mut remote = backend("other", "remote", 9090, 10);
    remote.filters = vec![pb::RouteFilter {
        kind: Some(pb::route_filter::Kind::ResponseHeaderModifier(
            pb::HeaderModifier {
                set: vec![nv("x-canary", "yes")],
                ..Default::default()
            },
        )),
    }];
    let want = pb::Route {
        name: "canary".into(),
        namespace: "shop".into(),
        kind: "HTTPRoute".into(),
        parents: vec![pb::RouteParent {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
        }],
        hostnames: vec!["web.shop.svc.cluster.local".into()],
        rules: vec![pb::RouteRule {
            name: "canary".into(),
            matches: vec![
                pb::RouteMatch {
                    path: Some(pb::StringMatch {
                        r#type: "Exact".into(),
                        value: "/v2".into(),
                    }),
                    headers: vec![pb::NameMatch {
                        name: "x-canary".into(),
                        r#type: "RegularExpression".into(),
                        value: "y.*".into(),
                    }],
                    query_params: vec![pb::NameMatch {
                        name: "debug".into(),
                        r#type: "Exact".into(),
                        value: "1".into(),
                    }],
                    method: "POST".into(),
                    ..Default::default()
                },
                pb::RouteMatch::default(),
            ],
            filters: vec![
                pb::RouteFilter {
                    kind: Some(pb::route_filter::Kind::RequestHeaderModifier(
                        pb::HeaderModifier {
                            set: vec![nv("x-a", "1")],
                            add: vec![nv("x-b", "2")],
                            remove: vec!["x-c".into()],
                        },
                    )),
                },
                pb::RouteFilter {
                    kind: Some(pb::route_filter::Kind::UrlRewrite(pb::UrlRewrite {
                        hostname: "api.local".into(),
                        path: Some(pb::PathModifier {
                            r#type: "ReplaceFullPath".into(),
                            value: "/v1".into(),
                        }),
                    })),
                },
                pb::RouteFilter {
                    kind: Some(pb::route_filter::Kind::RequestMirror(pb::RequestMirror {
                        backend: Some(backend("shop", "api", 8080, 0)),
                        fraction_ppm: 250_000,
                    })),
                },
            ],
            backends: vec![backend("shop", "api", 8080, 90), remote],
            request_timeout_ms: 10_000,
            backend_request_timeout_ms: 500,
            retry: Some(pb::RouteRetry {
                codes: vec![503, 502],
                attempts: 3,
                backoff_ms: 100,
            }),
        }],
        created_unix_ms: 1_767_323_045_000,
    };
    assert_eq!(r.route, Some(want));
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let mut c = cluster();
    let route = http_route(
        "shop",
        "split",
        &["shop/web"],
        &[("shop/api", 8080, 1), ("other/remote", 9090, 1)],
    );
    let invalid = |r: &Resolution| -> Vec<bool> {
        r.route.as_ref().unwrap().rules[0]
            .backends
            .iter()
            .map(|b| b.invalid)
            .collect()
    };
    let r = resolve(&c, &route);
    assert_eq!(accepted(&r), [verdict(true, "Accepted")]);
    assert_eq!(invalid(&r), [false, true]);
    assert_eq!(
        (r.resolved_refs.ok, r.resolved_refs.reason),
        (false, "RefNotPermitted")
    );
    assert!(
        r.resolved_refs.message.contains("other/remote"),
        "{}",
        r.resolved_refs.message
    );
    // A grant for another kind or from another namespace does not do.
    let mut wrong = grant("other", "elsewhere");
    wrong.metadata.name = Some("wrong-ns".into());
    c.apply(wrong);
    let mut grpc_only = grant("other", "shop");
    grpc_only.spec.from[0].kind = "GRPCRoute".into();
    c.apply(grpc_only);
    assert_eq!(invalid(&resolve(&c, &route)), [false, true]);
    // One naming another Service neither.
    let mut named = grant("other", "shop");
    named.metadata.name = Some("named".into());
    named.spec.to[0].name = Some("not-remote".into());
    c.apply(named);
    assert_eq!(invalid(&resolve(&c, &route)), [false, true]);
    let mut right = grant("other", "shop");
    right.metadata.name = Some("right".into());
    c.apply(right);
    let r = resolve(&c, &route);
    assert_eq!(invalid(&r), [false, false]);
    assert!(r.resolved_refs.ok);
}

#[test]
fn a_consumer_route_may_send_to_its_parent_without_a_grant() {
    let c = cluster();
    // In `client`, for `shop/web`, sending to `shop/web` itself: no ReferenceGrant needed
    // (GAMMA; Gateway API's MeshConsumerRoute); any other Service of `shop` still needs one.
    let route = http_route(
        "client",
        "consumer",
        &["shop/web"],
        &[("shop/web", 80, 1), ("shop/api", 8080, 1)],
    );
    let r = resolve(&c, &route);
    assert_eq!(accepted(&r), [verdict(true, "Accepted")]);
    let invalid: Vec<bool> = r.route.as_ref().unwrap().rules[0]
        .backends
        .iter()
        .map(|b| b.invalid)
        .collect();
    assert_eq!(invalid, [false, true]);
    assert_eq!(r.resolved_refs.reason, "RefNotPermitted");
}

#[test]
fn unresolved_backends_stay_invalid_with_the_first_reason() {
    let c = cluster();
    let mut route = http_route(
        "shop",
        "broken",
        &["shop/web"],
        &[
            ("shop/missing", 80, 1),
            ("shop/api", 1234, 1),
            ("shop/api", 8080, 1),
        ],
    );
    route.spec.rules[0].backend_refs.push(obj(
        json!({"group": "example.com", "kind": "Bucket", "name": "b"}),
    ));
    route.spec.rules[0]
        .backend_refs
        .push(obj(json!({"name": "Not-A-Name", "port": 80})));
    let r = resolve(&c, &route);
    let backends = &r.route.as_ref().unwrap().rules[0].backends;
    assert_eq!(
        backends
            .iter()
            .map(|b| (b.namespace.as_str(), b.name.as_str(), b.port, b.invalid))
            .collect::<Vec<_>>(),
        [
            ("shop", "missing", 80, true),
            ("shop", "api", 1234, true),
            ("shop", "api", 8080, false),
            // No Service name or port to send: the parent stands in, never dialed.
            ("shop", "web", 80, true),
            ("shop", "web", 80, true),
        ]
    );
    assert_eq!(
        (r.resolved_refs.ok, r.resolved_refs.reason),
        (false, "BackendNotFound")
    );
    for part in [
        "Service shop/missing does not exist",
        "has no port 1234",
        "Bucket.example.com is not a Service",
    ] {
        assert!(
            r.resolved_refs.message.contains(part),
            "{part}: {}",
            r.resolved_refs.message
        );
    }
}

#[test]
fn parents_must_exist_with_their_port() {
    let c = cluster();
    let route: HTTPRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "r"},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "nope"},
                {"group": "", "kind": "Service", "name": "web", "sectionName": "grpc"},
                {"group": "", "kind": "Service", "name": "web", "port": 81},
                {"group": "", "kind": "Service", "name": "api", "port": 8080},
                {"group": "", "kind": "Service", "name": "remote", "namespace": "other"},
            ],
            "rules": [{}],
        },
    }));
    let r = resolve(&c, &route);
    assert_eq!(
        accepted(&r),
        [
            verdict(false, "NoMatchingParent"),
            verdict(false, "NoMatchingParent"),
            verdict(false, "NoMatchingParent"),
            verdict(true, "Accepted"),
            verdict(true, "Accepted"),
        ]
    );
    assert!(
        r.parents[1]
            .accepted
            .message
            .contains("no port named \"grpc\"")
    );
    let parents = &r.route.as_ref().unwrap().parents;
    assert_eq!(
        parents
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        // A consumer route's parent (another namespace) needs no grant.
        [("shop", "api", 8080), ("other", "remote", 0)]
    );
    // No parent accepts it: nothing to deliver.
    let mut lonely = route.clone();
    lonely.spec.parent_refs.truncate(3);
    assert_eq!(resolve(&c, &lonely).route, None);
    // Only Gateway parents: not ours at all.
    let mut gateway = route;
    gateway.spec.parent_refs = vec![obj(json!({"name": "gw"}))];
    let r = resolve(&c, &gateway);
    assert!(r.parents.is_empty() && r.route.is_none());
}

#[test]
fn values_ambit_does_not_implement_reject_the_route() {
    let c = cluster();
    for (filter, said) in [
        (
            json!({"type": "CORS", "cors": {"allowOrigins": ["*"]}}),
            "filter type \"CORS\"",
        ),
        (
            json!({"type": "ExternalAuth"}),
            "filter type \"ExternalAuth\"",
        ),
        (
            json!({"type": "RequestHeaderModifier"}),
            "without its settings",
        ),
        (
            json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "Regex"}}}),
            "path modifier type \"Regex\"",
        ),
    ] {
        let mut route = http_route("shop", "r", &["shop/web"], &[("shop/api", 8080, 1)]);
        route.spec.rules[0].filters = vec![obj(filter)];
        let r = resolve(&c, &route);
        assert_eq!(accepted(&r), [verdict(false, "UnsupportedValue")], "{said}");
        assert!(
            r.parents[0].accepted.message.contains(said),
            "{}",
            r.parents[0].accepted.message
        );
        assert_eq!(r.route, None, "{said}");
    }
    let mut route = http_route("shop", "r", &["shop/web"], &[("shop/api", 8080, 1)]);
    route.spec.rules[0].timeouts = Some(obj(json!({"request": "1.5s"})));
    route.spec.rules[0].matches = vec![obj(json!({"path": {"type": "Glob", "value": "/*"}}))];
    let r = resolve(&c, &route);
    let message = &r.parents[0].accepted.message;
    assert!(
        message.contains("rules[0].timeouts.request: \"1.5s\"")
            && message.contains("rules[0].matches[0].path.type: \"Glob\""),
        "{message}"
    );
}

#[test]
fn a_route_the_waypoints_cannot_compile_is_not_accepted() {
    let c = cluster();
    let mut route = http_route("shop", "r", &["shop/web"], &[("shop/api", 8080, 1)]);
    route.spec.rules[0].matches = vec![obj(
        json!({"path": {"type": "RegularExpression", "value": "/(unclosed"}}),
    )];
    let r = resolve(&c, &route);
    assert_eq!(accepted(&r), [verdict(false, "UnsupportedValue")]);
    let message = &r.parents[0].accepted.message;
    assert!(
        message.contains("cannot apply") && message.contains("rules[0].matches[0].path"),
        "{message}"
    );
    assert_eq!(r.route, None);
}

#[test]
fn an_extension_ref_filter_fails_its_rule_closed() {
    let c = cluster();
    let mut route = http_route("shop", "r", &["shop/web"], &[("shop/api", 8080, 1)]);
    let mut second = route.spec.rules[0].clone();
    second.backend_refs.clear();
    second.filters = vec![obj(
        json!({"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "Thing", "name": "t"}}),
    )];
    route.spec.rules.push(second);
    let r = resolve(&c, &route);
    assert_eq!(accepted(&r), [verdict(true, "Accepted")]);
    assert_eq!(
        (r.resolved_refs.ok, r.resolved_refs.reason),
        (false, "InvalidKind")
    );
    let rules = &r.route.unwrap().rules;
    assert!(!rules[0].backends[0].invalid);
    let stand_in = &rules[1].backends;
    assert_eq!(
        stand_in
            .iter()
            .map(|b| (
                b.namespace.as_str(),
                b.name.as_str(),
                b.port,
                b.weight,
                b.invalid
            ))
            .collect::<Vec<_>>(),
        // The parent names no port: its Service's first stands in.
        [("shop", "web", 80, 1, true)],
        "the rule answers 500"
    );
    assert!(rules[1].filters.is_empty());
}

#[test]
fn mirror_fractions_are_millionths() {
    let c = cluster();
    let mirrored = |mirror: serde_json::Value| -> Option<u32> {
        let mut route = http_route("shop", "r", &["shop/web"], &[("shop/api", 8080, 1)]);
        let mut m = json!({"backendRef": {"name": "api", "port": 8080}});
        m.as_object_mut()
            .unwrap()
            .extend(mirror.as_object().unwrap().clone());
        route.spec.rules[0].filters =
            vec![obj(json!({"type": "RequestMirror", "requestMirror": m}))];
        let r = resolve(&c, &route).route.unwrap();
        r.rules[0].filters.first().map(|f| match &f.kind {
            Some(pb::route_filter::Kind::RequestMirror(m)) => m.fraction_ppm,
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(mirrored(json!({})), Some(1_000_000));
    assert_eq!(mirrored(json!({"percent": 100})), Some(1_000_000));
    assert_eq!(mirrored(json!({"percent": 1})), Some(10_000));
    assert_eq!(
        mirrored(json!({"fraction": {"numerator": 1}})),
        Some(10_000)
    );
    assert_eq!(
        mirrored(json!({"fraction": {"numerator": 1, "denominator": 3}})),
        Some(333_333)
    );
    assert_eq!(
        mirrored(json!({"percent": 0})),
        None,
        "mirroring none is no filter"
    );
}

#[test]
fn grpc_routes_match_service_and_method() {
    let c = cluster();
    let route: GRPCRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": "shop", "name": "g"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "rules": [{
                "matches": [
                    {"method": {"service": "shop.Cart", "method": "Add"}, "headers": [{"name": "x-v", "value": "2"}]},
                    {"method": {"type": "RegularExpression", "service": "shop\\..*"}},
                    {"headers": [{"name": "x-any", "value": "1"}]},
                ],
                "backendRefs": [{"name": "api", "port": 8080}],
            }],
        },
    }));
    let r = resolve_grpc(&route, c.stores().lookup());
    let route = r.route.unwrap();
    assert_eq!(route.kind, "GRPCRoute");
    let sm = |t: &str, v: &str| {
        Some(pb::StringMatch {
            r#type: t.into(),
            value: v.into(),
        })
    };
    let m = &route.rules[0].matches;
    assert_eq!(
        (m[0].grpc_service.clone(), m[0].grpc_method.clone()),
        (sm("Exact", "shop.Cart"), sm("Exact", "Add"))
    );
    assert_eq!(m[0].headers[0].r#type, "Exact");
    assert_eq!(
        (m[1].grpc_service.clone(), m[1].grpc_method.clone()),
        (
            sm("RegularExpression", "shop\\..*"),
            sm("RegularExpression", "")
        )
    );
    assert_eq!((m[2].grpc_service.clone(), m[2].path.clone()), (None, None));
    assert_eq!(route.rules[0].backends[0].weight, 1, "default weight");
    // HTTP-only filters are not GRPCRoute filters.
    let mut bad: GRPCRoute = obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": "shop", "name": "g"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}], "rules": [{}]},
    }));
    bad.spec.rules[0].filters = vec![obj(
        json!({"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}),
    )];
    let r = resolve_grpc(&bad, c.stores().lookup());
    assert_eq!(accepted(&r), [verdict(false, "UnsupportedValue")]);
}
