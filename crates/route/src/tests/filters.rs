//! Filters, with Gateway API's own examples.

use super::routes;
use crate::{CompiledRoute, RedirectFrom, Scheme};
use http::{HeaderMap, HeaderValue, StatusCode};

fn route(yaml: &str) -> CompiledRoute {
    routes(yaml).remove(0).compile().unwrap()
}

fn parts(target: &str) -> http::request::Parts {
    http::Request::get(target)
        .header("host", "echo.demo:80")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn header_modifiers_set_add_and_remove() {
    let r = route(
        r#"
- name: r
  rules:
    - filters:
        - requestHeaderModifier:
            set: [{name: X-Header-Set, value: set-overwrites-values}]
            add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
            remove: [X-Header-Remove]
        - responseHeaderModifier:
            set: [{name: x-served-by, value: canary}]
"#,
    );
    let filters = r.rules()[0].filters();
    let mut p = parts("/");
    for (k, v) in [
        ("x-header-set", "set-val"),
        ("x-header-add-append", "append-val-1"),
        ("x-header-remove", "remove-val"),
    ] {
        p.headers.insert(k, HeaderValue::from_static(v));
    }
    filters.apply_to_request(&mut p).unwrap();
    let all = |h: &HeaderMap, k: &str| {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all(&p.headers, "x-header-set"), ["set-overwrites-values"]);
    assert_eq!(all(&p.headers, "x-header-add"), ["header-val-1"]);
    assert_eq!(
        all(&p.headers, "x-header-add-append"),
        ["append-val-1", "header-val-2"]
    );
    assert!(p.headers.get("x-header-remove").is_none());
    let mut response = HeaderMap::new();
    response.insert("x-served-by", HeaderValue::from_static("stable"));
    filters.apply_to_response(&mut response);
    assert_eq!(all(&response, "x-served-by"), ["canary"]);
}

/// Gateway API's ReplacePrefixMatch table (HTTPPathModifier), every row.
#[test]
fn replace_prefix_match_follows_the_spec_table() {
    let rows = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        // Beyond the table: the root prefix, and the query kept.
        ("/a/b", "/", "/x", "/x/a/b"),
        ("/foo/bar?q=1&r", "/foo", "/xyz", "/xyz/bar?q=1&r"),
    ];
    for (path, prefix, replacement, expected) in rows {
        let r = route(&format!(
            r#"
- name: r
  rules:
    - matches: [{{path: {{type: PathPrefix, value: "{prefix}"}}}}]
      filters: [{{urlRewrite: {{path: {{type: ReplacePrefixMatch, value: "{replacement}"}}}}}}]
"#
        ));
        let mut p = parts(path);
        r.rules()[0].filters().apply_to_request(&mut p).unwrap();
        assert_eq!(
            p.uri.to_string(),
            expected,
            "{path} with {prefix} -> {replacement:?}"
        );
    }
}

#[test]
fn rewrite_full_path_and_hostname() {
    let r = route(
        r#"
- name: r
  rules:
    - matches: [{path: {value: /full}}]
      filters: [{urlRewrite: {hostname: elsewhere.example.com, path: {type: ReplaceFullPath, value: /one}}}]
"#,
    );
    let rewrite = r.rules()[0].filters().rewrite.as_ref().unwrap();
    // HTTP/1.1: origin-form target, host in Host (its port goes with it).
    let mut p = parts("/full/two?x=1");
    rewrite.apply(&mut p).unwrap();
    assert_eq!(p.uri.to_string(), "/one?x=1");
    assert_eq!(p.headers["host"], "elsewhere.example.com");
    // HTTP/2: the authority is in the URI.
    let (mut p, _) = http::Request::get("http://echo.demo:80/full")
        .body(())
        .unwrap()
        .into_parts();
    rewrite.apply(&mut p).unwrap();
    assert_eq!(p.uri.to_string(), "http://elsewhere.example.com/one");
    assert!(
        p.headers.get("host").is_none(),
        "no Host header is invented next to an authority"
    );
}

#[test]
fn redirect_locations_follow_the_port_and_scheme_rules() {
    let r = route(
        r#"
- name: r
  rules:
    - name: plain
      matches: [{path: {value: /plain}}]
      filters: [{requestRedirect: {}}]
    - name: host-and-status
      matches: [{path: {value: /host}}]
      filters: [{requestRedirect: {hostname: example.org, statusCode: 301}}]
    - name: port
      matches: [{path: {value: /port}}]
      filters: [{requestRedirect: {port: 8083}}]
    - name: https
      matches: [{path: {value: /https}}]
      filters: [{requestRedirect: {scheme: https}}]
    - name: https-port
      matches: [{path: {value: /https-port}}]
      filters: [{requestRedirect: {scheme: https, port: 8443}}]
    - name: http-443
      matches: [{path: {value: /http-443}}]
      filters: [{requestRedirect: {scheme: http, port: 443}}]
    - name: prefix
      matches: [{path: {value: /original-prefix}}]
      filters: [{requestRedirect: {path: {type: ReplacePrefixMatch, value: /replacement-prefix}, statusCode: 308}}]
    - name: full
      matches: [{path: {value: /full}}]
      filters: [{requestRedirect: {path: {type: ReplaceFullPath, value: /full-path-replacement}}}]
"#,
    );
    let location = |rule: usize, service_port: u16, host: &str, target: &str| {
        let redirect = r.rules()[rule].filters().redirect.as_ref().unwrap();
        let from = RedirectFrom {
            scheme: Scheme::Http,
            host,
            port: service_port,
            path_and_query: target,
        };
        (
            redirect.status().as_u16(),
            redirect
                .location(&from)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
        )
    };
    assert_eq!(
        location(0, 80, "echo:80", "/plain?a=b"),
        (302, "http://echo/plain?a=b".into())
    );
    assert_eq!(
        location(0, 8080, "echo", "/plain"),
        (302, "http://echo:8080/plain".into()),
        "the Service port when it is not the default"
    );
    assert_eq!(
        location(1, 80, "echo", "/host/x"),
        (301, "http://example.org/host/x".into())
    );
    assert_eq!(
        location(2, 80, "echo", "/port"),
        (302, "http://echo:8083/port".into())
    );
    assert_eq!(
        location(3, 8080, "echo", "/https"),
        (302, "https://echo/https".into()),
        "a new scheme brings its own port"
    );
    assert_eq!(
        location(4, 80, "echo", "/https-port"),
        (302, "https://echo:8443/https-port".into())
    );
    assert_eq!(
        location(5, 80, "echo", "/http-443"),
        (302, "http://echo:443/http-443".into())
    );
    assert_eq!(
        location(6, 80, "echo", "/original-prefix/lemon"),
        (308, "http://echo/replacement-prefix/lemon".into())
    );
    assert_eq!(
        location(7, 80, "echo", "/full/path/original"),
        (302, "http://echo/full-path-replacement".into())
    );
    assert_eq!(
        location(0, 80, "[fd00::1]:80", "/plain"),
        (302, "http://[fd00::1]/plain".into())
    );
    assert_eq!(
        StatusCode::FOUND.as_u16(),
        location(0, 80, "echo", "/plain").0
    );
}
