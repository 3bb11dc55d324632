#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backends;
mod filters;
mod matching;
mod precedence;
mod validate;

use crate::{Lookup, Request, Route, RouteTable};
use std::sync::Arc;

/// Routes from YAML (a list), each given `namespace: demo` and `parents: [demo/echo]` when it
/// names none.
fn routes(yaml: &str) -> Vec<Route> {
    // YAML 1.2 booleans: a backend named `off` stays a name in the untyped value.
    let yaml_12 = serde_saphyr::options! { strict_booleans: true };
    let mut values: Vec<serde_json::Value> =
        serde_saphyr::from_str_with_options(yaml, yaml_12).unwrap();
    for v in &mut values {
        let map = v.as_object_mut().unwrap();
        if !map.contains_key("namespace") {
            map.insert("namespace".into(), "demo".into());
        }
        if !map.contains_key("parents") {
            map.insert(
                "parents".into(),
                serde_saphyr::from_str("[{namespace: demo, name: echo}]").unwrap(),
            );
        }
    }
    values
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// The table of Service `demo/echo` holding `yaml`'s routes.
fn table(yaml: &str) -> RouteTable {
    RouteTable::new(
        "demo",
        routes(yaml).iter().map(|r| Arc::new(r.compile().unwrap())),
    )
}

/// A request to look up; `get` and friends fill the rest.
struct Req<'a> {
    ns: Option<&'a str>,
    host: &'a str,
    method: http::Method,
    path: &'a str,
    headers: http::HeaderMap,
}

fn req(path: &str) -> Req<'_> {
    Req {
        ns: Some("demo"),
        host: "echo",
        method: http::Method::GET,
        path,
        headers: http::HeaderMap::new(),
    }
}

impl<'a> Req<'a> {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers
            .append(name, http::HeaderValue::from_static(value));
        self
    }

    fn method(mut self, m: http::Method) -> Self {
        self.method = m;
        self
    }

    fn host(mut self, host: &'a str) -> Self {
        self.host = host;
        self
    }

    fn from(mut self, ns: Option<&'a str>) -> Self {
        self.ns = ns;
        self
    }

    /// `route#rule` (the rule's name when it has one, else its index), `404`, or `unrouted`.
    fn on(&self, table: &RouteTable) -> String {
        let request = Request {
            client_namespace: self.ns,
            host: self.host,
            method: &self.method,
            path_and_query: self.path,
            headers: &self.headers,
        };
        match table.lookup(&request) {
            Lookup::Matched(m) => format!(
                "{}#{}",
                m.route.route().name,
                m.rule
                    .name()
                    .map_or_else(|| m.rule.index().to_string(), str::to_owned)
            ),
            Lookup::NotFound => "404".into(),
            Lookup::Unrouted => "unrouted".into(),
        }
    }
}
