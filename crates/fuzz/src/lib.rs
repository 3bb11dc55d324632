//! The bodies of the fuzz targets. Each takes the fuzzer's bytes and panics only on a bug: a
//! panic in the code under test, or a property below that does not hold. `fuzz/` runs them
//! under libFuzzer (`cargo xtask fuzz`); `tests/replay.rs` runs every seed and every saved
//! crash through them under `cargo test`, so a crash once found stays a regression test.
//!
//! Structured inputs (policies, routes) are JSON documents: the seed corpus is the crates' own
//! test cases in that form, and libFuzzer's comparison tracing finds its way through the
//! parser to the fields.

use ambit_authn::Authenticator;
use ambit_authn::testing::{Algorithm, TestKey, jwks};
use ambit_policy::{
    HttpRequest, JwtRule, Policy, RequestAuthentication, Source, Target, authorize,
};
use ambit_proto::config::v1 as pb;
use ambit_route::{Lookup, Route, RouteTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prost::Message;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// A target's body: the fuzzer's bytes in, a panic only on a bug.
pub type FuzzBody = fn(&[u8]);

/// Every target: its name (a file under `fuzz/fuzz_targets/`, a directory under
/// `fuzz/corpus/` and `fuzz/regressions/`) and its body.
pub const TARGETS: &[(&str, FuzzBody)] = &[
    ("spiffe_id", spiffe_id),
    ("config_delta", config_delta),
    ("hbone_connect", hbone_connect),
    ("policy_authorize", policy_authorize),
    ("route_lookup", route_lookup),
    ("jwt_authenticate", jwt_authenticate),
];

/// A SPIFFE id that parses prints back to the same text, which parses to the same id.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<ambit_identity::SpiffeId>() {
        assert_eq!(id.to_uri(), text, "a parsed SPIFFE id prints differently");
        assert_eq!(
            id.to_uri().parse::<ambit_identity::SpiffeId>().ok(),
            Some(id)
        );
    }
    let _ = text.parse::<ambit_identity::TrustDomain>();
}

/// A config stream message as the controller would send it (protobuf), held and converted to
/// the mesh model: every resource is either in the model or named as rejected, never a panic.
pub fn config_delta(data: &[u8]) {
    let Ok(delta) = pb::Delta::decode(data) else {
        return;
    };
    let mut resources = ambit_controller_client::Resources::new();
    for name in &delta.removals {
        resources.remove(name);
    }
    for upsert in delta.upserts {
        resources.insert(upsert.name.clone(), upsert);
    }
    let converted = ambit_controller_client::mesh_config("cluster.local", &resources);
    for rejected in &converted.rejected {
        assert!(
            resources.contains_key(&rejected.name),
            "rejected {:?}, which was never sent",
            rejected.name
        );
    }
}

/// A request head, as h2 hands it to the HBONE server: `METHOD URI` on the first line, then
/// `name: value` lines. What the head checks accept is a CONNECT with an `ip:port` target.
pub fn hbone_connect(data: &[u8]) {
    let Some(request) = request_head(data) else {
        return;
    };
    if let Ok((target, headers)) = ambit_hbone::check_connect(&request) {
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(
            request.uri().authority().map(|a| a.as_str().parse().ok()),
            Some(Some(target))
        );
        assert!(headers.as_map().len() <= request.headers().len());
    }
}

fn request_head(data: &[u8]) -> Option<http::Request<()>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut request = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        request = request.header(name.trim(), value.trim());
    }
    request.body(()).ok()
}

/// An HTTP request in a fuzz case; headers that are not valid HTTP are left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCase {
    method: String,
    host: String,
    path: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

impl HttpCase {
    fn method(&self) -> Option<Method> {
        Method::from_bytes(self.method.as_bytes()).ok()
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyCase {
    policies: Vec<Policy>,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    port: u16,
    #[serde(default)]
    source_identity: Option<String>,
    source_ip: IpAddr,
    #[serde(default)]
    request: Option<HttpCase>,
}

/// Policies (valid or not) and a connection or request: deciding never panics, every policy's
/// fail-safe form validates, and it decides as the policy does (`ambit_policy`'s contract).
pub fn policy_authorize(data: &[u8]) {
    let Ok(case) = serde_json::from_slice::<PolicyCase>(data) else {
        return;
    };
    let target = Target {
        namespace: &case.namespace,
        labels: &case.labels,
        port: case.port,
    };
    let source = Source {
        identity: case.source_identity.and_then(|id| id.parse().ok()),
        ip: case.source_ip,
    };
    let (method, headers) = match &case.request {
        Some(r) => match r.method() {
            Some(method) => (method, r.header_map()),
            None => return,
        },
        None => (Method::GET, HeaderMap::new()),
    };
    let request = case.request.as_ref().map(|r| HttpRequest {
        method: &method,
        path: &r.path,
        host: &r.host,
        headers: &headers,
        auth: None,
    });
    let fail_safe: Vec<Policy> = case.policies.iter().map(Policy::fail_safe).collect();
    for p in &fail_safe {
        if let Err(e) = p.validate() {
            panic!("the fail-safe form of {:?} does not validate: {e}", p.name);
        }
    }
    for request in [None, request.as_ref()] {
        assert_eq!(
            authorize(&case.policies, &target, &source, request),
            authorize(&fail_safe, &target, &source, request),
            "a policy and its fail-safe form decide differently"
        );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteCase {
    routes: Vec<Route>,
    #[serde(default)]
    client_namespace: Option<String>,
    request: HttpCase,
    #[serde(default)]
    draw: u32,
}

/// Routes (those that compile) of Service `demo/echo` and a request: looking it up and
/// choosing a backend never panics, and a match is a rule of a route in the table.
pub fn route_lookup(data: &[u8]) {
    let Ok(case) = serde_json::from_slice::<RouteCase>(data) else {
        return;
    };
    let Some(method) = case.request.method() else {
        return;
    };
    let headers = case.request.header_map();
    let compiled: Vec<_> = case
        .routes
        .iter()
        .filter_map(|r| r.compile().ok().map(Arc::new))
        .collect();
    let table = RouteTable::new("demo", compiled.iter().cloned());
    let request = ambit_route::Request {
        client_namespace: case.client_namespace.as_deref(),
        host: &case.request.host,
        method: &method,
        path_and_query: &case.request.path,
        headers: &headers,
    };
    if let Lookup::Matched(matched) = table.lookup(&request) {
        assert!(
            compiled
                .iter()
                .any(|r| std::ptr::eq(r.as_ref(), matched.route)),
            "matched a route the table was not given"
        );
        let _ = matched.rule.choose_backend(case.draw);
    }
}

const JWT_ISSUER: &str = "https://issuer.fuzz";

/// One RequestAuthentication whose JWKS holds a key made at start, so no input can carry a
/// valid signature.
fn authenticator() -> &'static Authenticator {
    static AUTHENTICATOR: OnceLock<Authenticator> = OnceLock::new();
    AUTHENTICATOR.get_or_init(|| {
        let key = TestKey::generate(Algorithm::ES256, "fuzz");
        let resource = RequestAuthentication {
            name: "fuzz".into(),
            namespace: "demo".into(),
            selector: None,
            jwt_rules: vec![JwtRule {
                issuer: JWT_ISSUER.into(),
                audiences: vec!["demo".into()],
                jwks: jwks(&[key.jwk()]),
                from_headers: Vec::new(),
                from_params: vec!["access_token".into()],
                output_claim_to_headers: Vec::new(),
                forward_original_token: false,
            }],
        };
        Authenticator::new(&[resource]).0
    })
}

/// A token in `Authorization: Bearer` and in `?access_token=`, and the same bytes as a JWKS
/// document: parsing never panics, and no token authenticates, since none can be signed with
/// the key made at start.
pub fn jwt_authenticate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ambit_authn::Jwks::parse(text);
    let labels = BTreeMap::new();
    let target = Target {
        namespace: "demo",
        labels: &labels,
        port: 80,
    };
    let rules = authenticator().rules_for(&target);
    let now = 1_800_000_000;
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {text}")) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let mut uri = http::Uri::from_static("/");
        let outcome = rules.authenticate(&mut headers, &mut uri, now);
        assert!(
            !matches!(outcome, Ok(Some(_))),
            "a token no key signed authenticated"
        );
    }
    if let Ok(mut uri) = format!("/?access_token={text}").parse::<http::Uri>() {
        let mut headers = HeaderMap::new();
        let outcome = rules.authenticate(&mut headers, &mut uri, now);
        assert!(
            !matches!(outcome, Ok(Some(_))),
            "a token no key signed authenticated"
        );
    }
}
