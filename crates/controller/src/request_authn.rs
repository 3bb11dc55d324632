//! `RequestAuthentication`: into the JWT rules waypoints apply, with each rule's key set
//! resolved here (waypoints make no outbound calls for keys): inline, from a labelled Secret
//! of the resource's namespace, or fetched from its HTTPS `jwksUri` (the system roots plus an
//! optional CA bundle), kept and refreshed by [`run_fetcher`]. A rule whose keys cannot be had
//! is still sent, without keys: its tokens are refused (fail closed), and the `Ready`
//! condition says why. A resource that does not validate is sent in its fail-safe form
//! (`ambit_policy::RequestAuthentication::fail_safe`), so one tenant's mistake never makes a
//! waypoint refuse everyone's config.

use crate::crd::{JwtRuleSpec, RequestAuthentication};
use crate::index::{Change, ChangeQueue, Snapshot};
use crate::status::{self, Verdict};
use ambit_authn::Jwks;
use ambit_policy::{ClaimToHeader, JwtHeader, JwtRule, PolicyScope};
use ambit_proto::config::v1 as pb;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The label a Secret holding a key set must carry: the controller watches only those.
pub const JWKS_SECRET_LABEL: &str = "ambit.dev/jwks";
/// The Secret's data key when `jwksSecretRef.key` is not set.
pub const DEFAULT_SECRET_KEY: &str = "jwks";
/// The condition type the controller writes.
pub const READY: &str = "Ready";
/// How often a fetched key set is fetched again (issuers rotate keys with overlap).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// After a failed fetch.
const RETRY: Duration = Duration::from_secs(30);
/// How often the fetcher looks for new `jwksUri`s.
const POLL: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A key set is a few KiB; anything much larger is not one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One `jwksUri`'s key set: the last good document, and the last error.
#[derive(Debug, Clone, Default)]
struct FetchState {
    document: Option<String>,
    error: Option<String>,
}

/// Key sets fetched from `jwksUri`s, shared by the fetcher (writes) and the index (reads).
#[derive(Debug, Clone, Default)]
pub struct Fetched(Arc<RwLock<BTreeMap<String, FetchState>>>);

impl Fetched {
    /// The document of `uri`, or why there is none.
    fn get(&self, uri: &str) -> Result<String, String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        match map.get(uri) {
            Some(FetchState {
                document: Some(d), ..
            }) => Ok(d.clone()),
            Some(FetchState { error: Some(e), .. }) => Err(e.clone()),
            _ => Err(format!("{uri} not fetched yet")),
        }
    }

    /// Records a fetch; whether the document the index reads changed.
    fn record(&self, uri: &str, result: Result<String, String>) -> bool {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let state = map.entry(uri.to_owned()).or_default();
        let before = (
            state.document.clone(),
            state.error.is_some() && state.document.is_none(),
        );
        match result {
            Ok(document) => {
                state.document = Some(document);
                state.error = None;
            }
            // The last good key set stays: an issuer's outage does not lock its users out.
            Err(e) => state.error = Some(e),
        }
        before
            != (
                state.document.clone(),
                state.error.is_some() && state.document.is_none(),
            )
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uri, _| keep(uri));
    }
}

/// Where the index reads key sets from.
#[derive(Debug, Clone)]
pub struct KeySources {
    /// Secrets labelled [`JWKS_SECRET_LABEL`].
    pub secrets: Store<Secret>,
    pub fetched: Fetched,
}

/// The key set of `rule` of a resource in `namespace`, checked to hold a usable key.
fn key_set(rule: &JwtRuleSpec, namespace: &str, sources: &KeySources) -> Result<String, String> {
    let document = if let Some(inline) = &rule.jwks {
        inline.clone()
    } else if let Some(r) = &rule.jwks_secret_ref {
        let key = r.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
        let secret = sources
            .secrets
            .get(&ObjectRef::new(&r.name).within(namespace))
            .ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} not found (it must carry the label {JWKS_SECRET_LABEL}: \"true\")",
                    r.name
                )
            })?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| format!("Secret {namespace}/{} has no key {key:?}", r.name))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| format!("Secret {namespace}/{} key {key:?} is not UTF-8", r.name))?
    } else if let Some(uri) = &rule.jwks_uri {
        sources.fetched.get(uri)?
    } else {
        return Err("no jwks, jwksUri or jwksSecretRef".into());
    };
    Jwks::parse(&document).map_err(|e| e.to_string())?;
    Ok(document)
}

/// The rules as the resource says them, with their key sets; and, per rule, why its keys could
/// not be had.
pub fn model(
    ra: &RequestAuthentication,
    sources: &KeySources,
) -> (ambit_policy::RequestAuthentication, Vec<String>) {
    let namespace = ra.namespace().unwrap_or_default();
    let mut problems = Vec::new();
    let jwt_rules = ra
        .spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let jwks = key_set(r, &namespace, sources).unwrap_or_else(|e| {
                problems.push(format!("jwtRules[{i}] ({}): {e}", r.issuer));
                String::new()
            });
            JwtRule {
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                jwks,
                from_headers: r
                    .from_headers
                    .iter()
                    .map(|h| JwtHeader {
                        name: h.name.clone(),
                        prefix: h.prefix.clone(),
                    })
                    .collect(),
                from_params: r.from_params.clone(),
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .map(|c| ClaimToHeader {
                        header: c.header.clone(),
                        claim: c.claim.clone(),
                    })
                    .collect(),
                forward_original_token: r.forward_original_token,
            }
        })
        .collect();
    let model = ambit_policy::RequestAuthentication {
        name: ra.name_any(),
        namespace,
        selector: ra.spec.selector.as_ref().map(|s| PolicyScope {
            match_labels: s.match_labels.clone(),
        }),
        jwt_rules,
    };
    (model, problems)
}

/// What the config stream carries for `ra`.
pub fn config(ra: &RequestAuthentication, sources: &KeySources) -> pb::RequestAuthentication {
    let (model, _) = model(ra, sources);
    let model = match model.validate() {
        Ok(()) => model,
        Err(_) => model.fail_safe(),
    };
    pb::RequestAuthentication {
        name: model.name,
        namespace: model.namespace,
        match_labels: model
            .selector
            .map(|s| s.match_labels.into_iter().collect())
            .unwrap_or_default(),
        jwt_rules: model
            .jwt_rules
            .into_iter()
            .map(|r| pb::JwtRule {
                issuer: r.issuer,
                audiences: r.audiences,
                jwks: r.jwks,
                from_headers: r
                    .from_headers
                    .into_iter()
                    .map(|h| pb::JwtHeader {
                        name: h.name,
                        prefix: h.prefix,
                    })
                    .collect(),
                from_params: r.from_params,
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .into_iter()
                    .map(|c| pb::ClaimToHeader {
                        header: c.header,
                        claim: c.claim,
                    })
                    .collect(),
                forward_original_token: r.forward_original_token,
            })
            .collect(),
    }
}

/// The `Ready` condition `ra` should have: `(ready, reason, message)`.
pub fn decide(ra: &RequestAuthentication, sources: &KeySources) -> (bool, &'static str, String) {
    let (model, problems) = model(ra, sources);
    if let Err(e) = model.validate() {
        return (false, "Invalid", e.to_string());
    }
    if !problems.is_empty() {
        return (
            false,
            "KeysUnavailable",
            format!(
                "tokens of these issuers are refused until their keys come: {}",
                problems.join("; ")
            ),
        );
    }
    (true, "Resolved", "every rule has its keys".into())
}

// ---- fetching jwksUri ----

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the JWKS CA bundle {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the JWKS CA bundle holds no certificate")]
    EmptyBundle,
    #[error("the JWKS CA bundle: {0}")]
    Bundle(String),
    #[error("TLS client: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS client for `jwksUri`s: the system roots, plus `bundle` (PEM) when given.
pub fn client_tls(bundle: Option<&str>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without roots still fetches from issuers under the bundle.
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = bundle {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Bundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsSetupError::EmptyBundle);
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| TlsSetupError::Bundle(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// [`client_tls`] with the bundle read from `path` (`AMBIT_JWKS_CA_BUNDLE`).
pub fn client_tls_file(
    path: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let bundle = path
        .map(|p| {
            std::fs::read_to_string(p).map_err(|source| TlsSetupError::Read {
                path: p.display().to_string(),
                source,
            })
        })
        .transpose()?;
    client_tls(bundle.as_deref())
}

/// `GET uri` over HTTPS (HTTP/1.1), the body if 200 and at most [`MAX_JWKS_BYTES`].
pub async fn fetch(tls: &Arc<rustls::ClientConfig>, uri: &str) -> Result<String, String> {
    let work = async {
        let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
        if parsed.scheme_str() != Some("https") {
            return Err(format!("{uri}: only https is fetched"));
        }
        let host = parsed.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = parsed.port_u16().unwrap_or(443);
        let name = rustls_pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("{uri}: {e}"))?;
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("{uri}: connect: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{uri}: TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("{uri}: {e}"))?;
        tokio::spawn(conn);
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let authority = parsed.authority().map_or(host, |a| a.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{uri}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{uri}: HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{uri}: body: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| format!("{uri}: body is not UTF-8"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("{uri}: no answer within {FETCH_TIMEOUT:?}")))
}

/// Keeps `fetched` holding the key set of every `jwksUri` the resources name: a new URI is
/// fetched within [`POLL`], a good one again every [`REFRESH`], a failing one every
/// [`RETRY`]; a change of what the index reads is pushed as [`Change::KeySets`].
pub async fn run_fetcher(
    resources: Store<RequestAuthentication>,
    fetched: Fetched,
    changes: Arc<ChangeQueue>,
    tls: Arc<rustls::ClientConfig>,
) {
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let uris: std::collections::BTreeSet<String> = resources
            .state()
            .iter()
            .flat_map(|ra| ra.spec.jwt_rules.iter().filter_map(|r| r.jwks_uri.clone()))
            .collect();
        due.retain(|uri, _| uris.contains(uri));
        fetched.retain(|uri| uris.contains(uri));
        let now = Instant::now();
        for uri in &uris {
            if due.get(uri).is_some_and(|at| *at > now) {
                continue;
            }
            let result = fetch(&tls, uri).await;
            let result = result.and_then(|doc| {
                Jwks::parse(&doc)
                    .map(|_| doc)
                    .map_err(|e| format!("{uri}: {e}"))
            });
            let wait = if result.is_ok() { REFRESH } else { RETRY };
            if let Err(e) = &result {
                tracing::warn!(error = %e, "fetching a JWKS");
            }
            if fetched.record(uri, result) {
                changes.push(Change::KeySets);
            }
            due.insert(uri.clone(), Instant::now() + wait);
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---- status ----

/// Inputs of the status writer.
#[derive(Clone)]
pub struct StatusContext {
    pub client: kube::Client,
    pub leader: watch::Receiver<bool>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub resources: Store<RequestAuthentication>,
    pub sources: KeySources,
}

impl std::fmt::Debug for StatusContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusContext").finish_non_exhaustive()
    }
}

/// Writes every RequestAuthentication's `Ready` condition while this replica holds the Lease.
pub async fn run_status(ctx: StatusContext) {
    crate::policy::paced(ctx.leader.clone(), ctx.snapshots.clone(), |_| {
        let ctx = ctx.clone();
        async move { write_statuses(&ctx).await }
    })
    .await;
}

async fn write_statuses(ctx: &StatusContext) {
    for ra in ctx.resources.state() {
        let (ok, reason, message) = decide(&ra, &ctx.sources);
        let previous = ra
            .status
            .as_ref()
            .and_then(|s| status::find(&s.conditions, READY));
        let verdict = Verdict {
            ok,
            reason,
            message,
        };
        status::apply_condition(
            &ctx.client,
            &*ra,
            previous,
            READY,
            &verdict,
            "request authentication",
        )
        .await;
    }
}

#[cfg(test)]
#[path = "request_authn_tests.rs"]
mod tests;
