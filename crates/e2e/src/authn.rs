//! End-user authentication and external authorization on the user's path, against servers
//! no one here wrote: nginx (Debian's, a host binary run as a pod) serves an identity
//! provider's JWKS over HTTPS under a test CA, which the chart's `jwks.caBundle` makes the
//! controller trust; Istio's ext_authz sample (built by `setup.sh`) is declared as a provider
//! in the chart's `extAuthz.providers`. Both run in namespace `idp`, which is not enrolled
//! (the controller and waypoints are not captured, so they reach it in plain TCP/TLS as they
//! would reach a server outside the mesh), and are found by the testbed's cluster DNS.

use crate::waypoint::{count, until};
use crate::{HTTP_PORT, HTTP_SVC_PORT, NS, SERVER, SYSTEM_NS, Samples, User, WAIT, eventually};
use ambit_authn::testing::{Algorithm, TestKey, jwks, now};
use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// Where the identity provider's JWKS server and the ext_authz server run.
pub const IDP_NS: &str = "idp";
const JWKS_SERVER: &str = "jwks";
const JWKS_PORT: u16 = 8443;
const JWKS_HOST: &str = "jwks.idp.svc.cluster.local";
const JWKS_URI: &str = "https://jwks.idp.svc.cluster.local/.well-known/jwks.json";
const ISSUER: &str = "https://idp.demo.example";
const AUDIENCE: &str = "echo";
/// The RequestAuthentication and the DENY policy of the JWT step.
const REQUEST_AUTHN: &str = "idp";
const JWT_POLICY: &str = "secure-needs-a-user";
/// Istio's ext_authz sample: its Service, its gRPC port (the sample's default) and the
/// provider's name in the mesh.
const EXT_AUTHZ: &str = "ext-authz";
const EXT_AUTHZ_GRPC_PORT: u16 = 9000;
pub const PROVIDER: &str = "ext-authz-grpc";
const CUSTOM_POLICY: &str = "ext-authz-on-ext";
/// What the sample answers a check it denies.
const DENY_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";
const EXT_AUTHZ_TOTAL: &str = "ambit_waypoint_ext_authz_total";
const JWT_TOTAL: &str = "ambit_waypoint_jwt_total";

/// The identity provider's side: a CA, the JWKS server's certificate under it, a signing key.
struct IdentityProvider {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    key: TestKey,
}

impl IdentityProvider {
    fn new() -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ambit e2e identity provider CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = rcgen::KeyPair::generate()?;
        let server = rcgen::CertificateParams::new(vec![JWKS_HOST.to_owned()])?
            .signed_by(&server_key, &rcgen::Issuer::new(ca_params, ca_key))?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            key: TestKey::generate(Algorithm::ES256, "idp-2026"),
        })
    }

    fn claims(&self, issuer: &str, exp: u64) -> Value {
        json!({"iss": issuer, "sub": "alice", "aud": AUDIENCE, "exp": exp, "scope": "read"})
    }

    fn valid(&self) -> String {
        self.key.sign(&self.claims(ISSUER, now() + 3600))
    }
}

/// The chart's `extAuthz.providers` entry declaring Istio's sample as [`PROVIDER`].
pub fn ext_authz_provider() -> Value {
    json!({
        "name": PROVIDER,
        "service": format!("{EXT_AUTHZ}.{IDP_NS}.svc.cluster.local"),
        "port": EXT_AUTHZ_GRPC_PORT,
        "protocol": "grpc",
        "timeoutMs": 500,
    })
}

/// Istio's ext_authz sample, a Pod and its Service in [`IDP_NS`]: it allows a request
/// carrying `x-ext-authz: allow`.
fn ext_authz_manifest() -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {EXT_AUTHZ}, namespace: {IDP_NS}, labels: {{app: {EXT_AUTHZ}}}}}\n\
         spec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  \
         - {{name: main, image: istio-extauthz, readinessProbe: {{tcpSocket: {{port: {EXT_AUTHZ_GRPC_PORT}}}}}}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {EXT_AUTHZ}, namespace: {IDP_NS}}}\n\
         spec: {{selector: {{app: {EXT_AUTHZ}}}, ports: [{{name: grpc, port: {EXT_AUTHZ_GRPC_PORT}, appProtocol: grpc}}, {{name: http, port: 8000}}]}}\n"
    )
}

/// The header carrying `token`.
fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

/// A YAML/JSON string literal.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

/// nginx serving the JWKS at `/.well-known/jwks.json` over TLS on [`JWKS_PORT`]; its temp
/// files and pid in an emptyDir.
fn nginx_conf() -> String {
    let run = "/etc/jwks-server/run";
    let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {run}/{t};\n"))
        .collect();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr notice;\n\
         pid {run}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n{temp}  access_log /dev/stdout;\n  server {{\n    listen {JWKS_PORT} ssl;\n    \
         ssl_protocols TLSv1.3;\n    ssl_certificate /etc/jwks-server/tls/tls.crt;\n    \
         ssl_certificate_key /etc/jwks-server/tls/tls.key;\n    \
         location = /.well-known/jwks.json {{ default_type application/json; \
         alias /etc/jwks-server/conf/jwks.json; }}\n  }}\n}}\n"
    )
}

impl User<'_> {
    /// Namespace [`IDP_NS`] (not enrolled) with Istio's ext_authz sample alone, Ready.
    pub async fn ext_authz_server(&self) -> Result<()> {
        ensure_ext_authz_built(self)?;
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {IDP_NS}}}\n{}",
            ext_authz_manifest()
        );
        self.apply(
            "namespace idp: Istio's ext_authz sample and its Service",
            &yaml,
        )?;
        self.ready(IDP_NS, EXT_AUTHZ).await
    }

    /// Both steps, with the servers and the chart values they need.
    pub async fn authn_steps(&self) -> Result<()> {
        let idp = IdentityProvider::new()?;
        self.auth_servers(&idp).await?;
        self.jwt_before_the_ca_is_trusted(&idp).await?;
        self.trust_the_idp_and_declare_ext_authz(&idp).await?;
        self.jwt_from_https_jwks(&idp).await?;
        self.ext_authz().await
    }

    /// Namespace `idp`: nginx serving the JWKS over HTTPS and Istio's ext_authz sample, each
    /// behind a Service.
    async fn auth_servers(&self, idp: &IdentityProvider) -> Result<()> {
        self.say.step(
            "An identity provider's JWKS over HTTPS (nginx) and an ext_authz server (Istio's sample), in namespace idp",
        );
        ensure_ext_authz_built(self)?;
        ensure!(
            std::path::Path::new("/usr/sbin/nginx").is_file(),
            "nginx is not installed: run `cargo xtask testbed setup` (crates/testbed/setup.sh)"
        );
        let document = jwks(&[idp.key.jwk()]);
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {IDP_NS}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: jwks-tls, namespace: {IDP_NS}}}\n\
             stringData: {{tls.crt: {cert}, tls.key: {key}}}\n\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: jwks-server, namespace: {IDP_NS}}}\n\
             data: {{nginx.conf: {conf}, jwks.json: {document}}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {JWKS_SERVER}, namespace: {IDP_NS}, labels: {{app: {JWKS_SERVER}}}}}\n\
             spec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  \
             - name: nginx\n    image: nginx\n    \
             command: [nginx, -e, stderr, -c, /etc/jwks-server/conf/nginx.conf]\n    \
             readinessProbe: {{tcpSocket: {{port: {JWKS_PORT}}}}}\n    \
             volumeMounts:\n    - {{name: conf, mountPath: /etc/jwks-server/conf, readOnly: true}}\n    \
             - {{name: tls, mountPath: /etc/jwks-server/tls, readOnly: true}}\n    \
             - {{name: run, mountPath: /etc/jwks-server/run}}\n  \
             volumes:\n  - {{name: conf, configMap: {{name: jwks-server}}}}\n  \
             - {{name: tls, secret: {{secretName: jwks-tls}}}}\n  - {{name: run, emptyDir: {{}}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {JWKS_SERVER}, namespace: {IDP_NS}}}\n\
             spec: {{selector: {{app: {JWKS_SERVER}}}, ports: [{{name: https, port: 443, targetPort: {JWKS_PORT}}}]}}\n\
             {ext_authz}",
            cert = quoted(&idp.server_cert_pem),
            key = quoted(&idp.server_key_pem),
            conf = quoted(&nginx_conf()),
            document = quoted(&document),
            ext_authz = ext_authz_manifest(),
        );
        self.apply(
            "namespace idp: nginx serving the JWKS over TLS, Istio's ext_authz sample, their Services",
            &yaml,
        )?;
        for pod in [JWKS_SERVER, EXT_AUTHZ] {
            self.ready(IDP_NS, pod).await?;
        }
        self.say.say(format!(
            "nginx serves {JWKS_URI} with a certificate of a test CA; ext-authz.{IDP_NS} answers Envoy ext_authz v3 gRPC on {EXT_AUTHZ_GRPC_PORT}"
        ));
        Ok(())
    }

    /// `helm upgrade` trusting the identity provider's CA for `jwksUri` fetches and declaring
    /// the ext_authz sample as a provider; the controller rolls.
    async fn trust_the_idp_and_declare_ext_authz(&self, idp: &IdentityProvider) -> Result<()> {
        self.say
            .step("helm upgrade: trust the identity provider's CA, declare the ext_authz provider");
        let ca_file = self.tb.config.state_dir.join("idp-ca.pem");
        std::fs::write(&ca_file, &idp.ca_pem)?;
        let providers = json!([ext_authz_provider()]);
        self.helm(&[
            "upgrade",
            "ambit",
            "charts/ambit",
            "-n",
            SYSTEM_NS,
            "--reset-then-reuse-values",
            "--wait",
            "--timeout",
            "3m",
            "--set-file",
            &format!("jwks.caBundle={}", ca_file.display()),
            "--set-json",
            &format!("extAuthz.providers={providers}"),
        ])?;
        self.say.say(
            "the controller rolled with the CA bundle (ConfigMap ambit-jwks-ca, AMBIT_JWKS_CA_BUNDLE) and the provider",
        );
        Ok(())
    }

    /// A Ready pod `namespace/name`.
    async fn ready(&self, namespace: &str, name: &str) -> Result<()> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), namespace);
        eventually(&format!("pod {namespace}/{name} Ready"), WAIT, || async {
            let pod = pods.get(name).await.ok()?;
            pod.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await?;
        Ok(())
    }

    /// A RequestAuthentication whose keys are at the `jwksUri` nginx serves, and a DENY
    /// policy on `/secure/*` for requests without a principal of the issuer, while the
    /// controller trusts only the system's roots: the fetch fails on the certificate, the
    /// resource says `KeysUnavailable`, and even a valid token is refused (401).
    async fn jwt_before_the_ca_is_trusted(&self, idp: &IdentityProvider) -> Result<()> {
        self.say.step(
            "A RequestAuthentication with a jwksUri under a CA the controller does not trust yet",
        );
        self.apply(
            "RequestAuthentication idp and AuthorizationPolicy secure-needs-a-user",
            &format!(
                "apiVersion: ambit.dev/v1alpha1\nkind: RequestAuthentication\n\
                 metadata: {{name: {REQUEST_AUTHN}, namespace: {NS}}}\n\
                 spec:\n  selector: {{matchLabels: {{app: {SERVER}}}}}\n  jwtRules:\n  \
                 - {{issuer: \"{ISSUER}\", audiences: [{AUDIENCE}], jwksUri: \"{JWKS_URI}\", \
                 outputClaimToHeaders: [{{header: x-user, claim: sub}}]}}\n\
                 ---\napiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {JWT_POLICY}, namespace: {NS}}}\n\
                 spec:\n  action: DENY\n  selector: {{matchLabels: {{app: {SERVER}}}}}\n  \
                 rules: [{{paths: [\"/secure/*\"], notRequestPrincipals: [\"{ISSUER}/*\"], ports: [{HTTP_PORT}]}}]\n"
            ),
        )?;
        let untrusted = self
            .ready_condition(
                "the fetch refused for the certificate",
                |status, reason, message| {
                    status == "False" && reason == "KeysUnavailable" && message.contains("TLS")
                },
            )
            .await?;
        self.say.say(format!(
            "kubectl get ra -n {NS} {REQUEST_AUTHN}: Ready {untrusted}"
        ));
        let (client, url) = self.secure_url().await?;
        let valid = bearer(&idp.valid());
        // Once the waypoint has the rule (without keys), the issuer's tokens are refused.
        let reply = until(
            "a valid token refused while the keys are unavailable",
            || async {
                let reply = self.curl_one(&client, &["-H", &valid, &url])?;
                if reply.code == 401 {
                    Ok(reply)
                } else {
                    Err(format!("{reply:?}"))
                }
            },
        )
        .await?;
        self.say
            .command(&format!("curl -H 'Authorization: Bearer <valid>' {url}"));
        self.say.say(format!(
            "{}: no keys, so no token of this issuer is accepted",
            reply.code
        ));
        Ok(())
    }

    /// The `Ready` condition of the RequestAuthentication once `accept(status, reason,
    /// message)` takes it: `status reason: message`.
    async fn ready_condition(
        &self,
        what: &str,
        accept: impl Fn(&str, &str, &str) -> bool,
    ) -> Result<String> {
        let condition = "{.status.conditions[?(@.type==\"Ready\")]";
        let jsonpath =
            format!("jsonpath={condition}.status}}|{condition}.reason}}|{condition}.message}}");
        let accept = &accept;
        until(what, || async {
            let out = self
                .tb_kubectl(&[
                    "get",
                    "requestauthentication",
                    "-n",
                    NS,
                    REQUEST_AUTHN,
                    "-o",
                    &jsonpath,
                ])
                .map_err(|e| e.to_string())?;
            match out.splitn(3, '|').collect::<Vec<_>>().as_slice() {
                [status, reason, message] if accept(status, reason, message) => {
                    Ok(format!("{status} {reason}: {message}"))
                }
                _ => Err(out),
            }
        })
        .await
    }

    /// The client pod and the URL of echo's `/secure/profile` on its HTTP Service port.
    async fn secure_url(&self) -> Result<(k8s_openapi::api::core::v1::Pod, String)> {
        let Samples { client, svc, .. } = self.samples().await?;
        let url = format!(
            "http://{}/secure/profile",
            SocketAddr::new(svc.ip(), HTTP_SVC_PORT)
        );
        Ok((client, url))
    }

    /// With the CA trusted, the controller fetches the keys: the RequestAuthentication is
    /// `Ready`, a valid token is answered 200 (the app gets its subject, not the token), none
    /// 403 (the DENY policy), an expired one, one of another issuer, one with a bad signature
    /// and one whose kid the key set lacks 401.
    async fn jwt_from_https_jwks(&self, idp: &IdentityProvider) -> Result<()> {
        self.say
            .step("JWT at the waypoint, keys fetched by the controller from the JWKS over HTTPS");
        let ready = self
            .ready_condition("RequestAuthentication idp Ready", |status, reason, _| {
                status == "True" && reason == "Resolved"
            })
            .await?;
        self.say.say(format!(
            "kubectl get ra -n {NS} {REQUEST_AUTHN}: Ready {ready}"
        ));
        let (client, url) = self.secure_url().await?;
        let valid = bearer(&idp.valid());
        // The key is delivered once the waypoint has the fetched set: until then the token
        // is refused (401, unknown key).
        let reply = until(
            "a valid token answered 200 through the waypoint",
            || async {
                let reply = self.curl_one(&client, &["-H", &valid, &url])?;
                if reply.code == 200 {
                    Ok(reply)
                } else {
                    Err(format!("{reply:?}"))
                }
            },
        )
        .await?;
        let body = reply.body.to_ascii_lowercase();
        ensure!(
            body.contains("x-user:alice") && !body.contains("authorization"),
            "the app should see x-user: alice and no Authorization header:\n{}",
            reply.body
        );
        self.say
            .command(&format!("curl -H 'Authorization: Bearer <valid>' {url}"));
        self.say
            .say("200: the app saw x-user: alice (the token's sub) and no Authorization header");

        let other_key = TestKey::generate(Algorithm::ES256, &idp.key.kid);
        // The issuer's next key, not published yet: refused until a refresh delivers it
        // (docs/policies.md, "A token whose kid is not in the delivered key set").
        let next_key = TestKey::generate(Algorithm::ES256, "idp-next");
        let cases = [
            ("no token", None, 403),
            (
                "expired (1 h ago)",
                Some(idp.key.sign(&idp.claims(ISSUER, now() - 3600))),
                401,
            ),
            (
                "another issuer",
                Some(
                    idp.key
                        .sign(&idp.claims("https://evil.example", now() + 3600)),
                ),
                401,
            ),
            (
                "bad signature (the same kid, another key)",
                Some(other_key.sign(&idp.claims(ISSUER, now() + 3600))),
                401,
            ),
            (
                "a kid not in the key set (the issuer's next key)",
                Some(next_key.sign(&idp.claims(ISSUER, now() + 3600))),
                401,
            ),
        ];
        let headers: Vec<Option<String>> = cases
            .iter()
            .map(|(_, t, _)| t.as_deref().map(bearer))
            .collect();
        let mut args: Vec<&str> = Vec::new();
        for (i, header) in headers.iter().enumerate() {
            if i > 0 {
                args.push("--next");
            }
            if let Some(h) = header {
                args.extend(["-H", h.as_str()]);
            }
            args.extend(["-D", "-", url.as_str()]);
        }
        let replies = self.curl(&client, &args).map_err(anyhow::Error::msg)?;
        ensure!(
            replies.len() == cases.len(),
            "expected {} replies: {replies:?}",
            cases.len()
        );
        for ((what, _, want), reply) in cases.iter().zip(&replies) {
            ensure!(
                reply.code == *want,
                "{what}: expected {want}, got {reply:?}"
            );
            if *want == 401 {
                ensure!(
                    reply
                        .body
                        .to_ascii_lowercase()
                        .contains("www-authenticate: bearer error=\"invalid_token\""),
                    "{what}: a 401 without WWW-Authenticate: {reply:?}"
                );
            }
            self.say.say(format!("{what}: {}", reply.code));
        }
        let metrics = self.waypoint_metrics().await?;
        for reason in ["expired", "unknown_issuer", "signature", "unknown_key"] {
            let labels = [("result", "invalid"), ("reason", reason)];
            ensure!(
                count(&metrics, JWT_TOTAL, &labels) >= 1,
                "the waypoint should count an invalid token for {reason}:\n{metrics}"
            );
        }
        self.say.say(format!(
            "{JWT_TOTAL}{{result=\"invalid\"}} counted with reason expired, unknown_issuer, signature and unknown_key"
        ));
        self.kubectl(&[
            "delete",
            "-n",
            NS,
            &format!("authorizationpolicy/{JWT_POLICY}"),
            &format!("requestauthentication/{REQUEST_AUTHN}"),
        ])?;
        Ok(())
    }

    /// A CUSTOM policy on echo's `/ext/*` asking Istio's ext_authz sample: `x-ext-authz:
    /// allow` is answered 200 (the app sees the server's verdict header), `deny` 403 with the
    /// server's body; with the server gone, the provider fails closed (403).
    async fn ext_authz(&self) -> Result<()> {
        self.say.step(
            "External authorization at the waypoint: a CUSTOM policy asks Istio's ext_authz sample",
        );
        self.apply(
            &format!("AuthorizationPolicy {CUSTOM_POLICY}"),
            &format!(
                "apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {CUSTOM_POLICY}, namespace: {NS}}}\n\
                 spec:\n  action: CUSTOM\n  provider: {{name: {PROVIDER}}}\n  \
                 selector: {{matchLabels: {{app: {SERVER}}}}}\n  \
                 rules: [{{paths: [\"/ext/*\"], ports: [{HTTP_PORT}]}}]\n"
            ),
        )?;
        let Samples { client, svc, .. } = self.samples().await?;
        let url = format!(
            "http://{}/ext/orders",
            SocketAddr::new(svc.ip(), HTTP_SVC_PORT)
        );
        let args = [
            "-H",
            "x-ext-authz: allow",
            url.as_str(),
            "--next",
            "-H",
            "x-ext-authz: deny",
            url.as_str(),
        ];
        let replies = until("the CUSTOM policy applied by the waypoint", || async {
            let replies = self.curl(&client, &args)?;
            match replies.as_slice() {
                [allowed, denied] if allowed.code == 200 && denied.code == 403 => Ok(replies),
                _ => Err(format!("{replies:?}")),
            }
        })
        .await?;
        let [allowed, denied] = replies.as_slice() else {
            bail!("expected two replies: {replies:?}");
        };
        ensure!(
            allowed
                .body
                .to_ascii_lowercase()
                .contains("x-ext-authz-check-result:allowed"),
            "the app should see the server's x-ext-authz-check-result: allowed:\n{}",
            allowed.body
        );
        ensure!(
            denied.body.trim() == DENY_BODY,
            "the 403 should carry the server's body: {denied:?}"
        );
        self.say.command(&format!(
            "curl -H 'x-ext-authz: allow' {url} --next -H 'x-ext-authz: deny' {url}"
        ));
        self.say
            .say("allow -> 200 (the app saw x-ext-authz-check-result: allowed from the server)");
        self.say.say(format!("deny  -> 403 {DENY_BODY}"));

        let by = |result: &'static str| [("provider", PROVIDER), ("result", result)];
        let error_denied_before = count(
            &self.waypoint_metrics().await?,
            EXT_AUTHZ_TOTAL,
            &by("error_denied"),
        );
        self.kubectl(&["delete", "pod", "-n", IDP_NS, EXT_AUTHZ, "--wait"])?;
        let reply = until("with the server gone, the check fails closed", || async {
            let reply = self.curl_one(&client, &["-H", "x-ext-authz: allow", &url])?;
            if reply.code == 403 {
                Ok(reply)
            } else {
                Err(format!("{reply:?}"))
            }
        })
        .await?;
        let metrics = self.waypoint_metrics().await?;
        let error_denied = count(&metrics, EXT_AUTHZ_TOTAL, &by("error_denied"));
        ensure!(
            error_denied > error_denied_before,
            "the waypoint should count the failed check as error_denied:\n{metrics}"
        );
        self.say.say(format!(
            "ext-authz pod deleted: allow -> {} (fail closed; {EXT_AUTHZ_TOTAL}{{result=\"error_denied\"}} {error_denied})",
            reply.code
        ));
        self.kubectl(&["delete", "authorizationpolicy", "-n", NS, CUSTOM_POLICY])?;
        Ok(())
    }

    /// kubectl, not echoed (polled).
    fn tb_kubectl(&self, args: &[&str]) -> Result<String> {
        crate::run(self.tb.kubectl().args(args))
    }
}

/// Istio's ext_authz sample is built by the testbed's setup.
fn ensure_ext_authz_built(user: &User<'_>) -> Result<()> {
    if user.tb.binary("istio-extauthz").is_none() {
        bail!(
            "istio-extauthz is not built: run `cargo xtask testbed setup` (crates/testbed/setup.sh)"
        );
    }
    Ok(())
}
