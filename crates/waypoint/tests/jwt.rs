//! End-user JWT authentication at the waypoint, on loopback over real TLS, with keys generated
//! per run and tokens signed by a real encoder: a RequestAuthentication on `back`'s pods (an
//! ES256 and an RS256 key), and an AuthorizationPolicy allowing `GET /billing` only to tokens
//! whose scope holds `billing.read` (and `/public` to anyone).
#![allow(clippy::unwrap_used)]

mod support;

use ambit_authn::testing::{Algorithm, TestKey, hs256, jwks, now, unsigned};
use ambit_identity::testing::TestPki;
use serde_json::{Value, json};
use support::*;

const ISS: &str = "https://idp.example";

struct Keys {
    es: TestKey,
    rs: TestKey,
}

impl Keys {
    fn new() -> Self {
        Self {
            es: TestKey::generate(Algorithm::ES256, "es-1"),
            rs: TestKey::generate(Algorithm::RS256, "rs-1"),
        }
    }
}

fn mesh(net: u8, keys: &Keys) -> String {
    let jwks = jwks(&[keys.es.jwk(), keys.rs.jwk()]);
    format!(
        r#"
workloads:
{back_pods}services:
{back_service}requestAuthentications:
  - name: idp
    namespace: shop
    selector: {{matchLabels: {{app: back}}}}
    jwtRules:
      - issuer: "{ISS}"
        audiences: [shop]
        jwks: '{jwks}'
        fromHeaders: [{{name: authorization, prefix: "Bearer "}}]
        fromParams: [access_token]
        outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
policies:
  - name: billing
    namespace: shop
    action: Allow
    rules:
      - methods: [GET]
        paths: ["/billing", "/billing/*"]
        requestPrincipals: ["{ISS}/*"]
        when: [{{key: "request.auth.claims[scope]", values: [billing.read]}}]
      - paths: ["/public"]
"#,
        back_pods = back_pods(net, 1),
        back_service = back_service(net, 1),
    )
}

fn claims(scope: &str) -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": now() + 300, "scope": scope})
}

struct Jwt {
    net: u8,
    pki: TestPki,
    keys: Keys,
    waypoint: ambit_waypoint::run::Running,
}

impl Jwt {
    async fn start(net: u8) -> Self {
        let pki = TestPki::new("cluster.local");
        let keys = Keys::new();
        pod(&pki, ip(net, 11), SERVED_SA, "back-1").await;
        let waypoint = waypoint(&pki, net, &mesh(net, &keys)).await;
        Self {
            net,
            pki,
            keys,
            waypoint,
        }
    }

    async fn http(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        Client::new(&self.pki, NS, "front", self.waypoint.hbone_addr)
            .http1(&format!("10.96.{}.1:80", self.net))
            .await
    }

    /// `GET path` with `token` as a bearer token (if any) and extra headers.
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> (u16, hyper::HeaderMap, String) {
        let mut request = get(path, "back");
        if let Some(t) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let mut http = self.http().await;
        text(http.send_request(request).await.unwrap()).await
    }

    fn metrics(&self) -> String {
        self.waypoint.shared.metrics.render(None)
    }
}

#[tokio::test]
async fn get_billing_needs_a_token_with_billing_read() {
    let t = Jwt::start(71).await;
    let reader = t.keys.es.sign(&claims("openid billing.read"));
    let (status, headers, body) = t.get("/billing/42", Some(&reader), &[]).await;
    assert_eq!((status, body.as_str()), (200, "back-1 GET /billing/42"));
    assert_eq!(headers["x-seen-authorization"], "", "token not stripped");
    assert_eq!(headers["x-seen-jwt-sub"], "alice", "claim not forwarded");
    // The other key of the issuer (RS256) works as well.
    let rsa_reader = t.keys.rs.sign(&claims("billing.read"));
    let (status, _, _) = t.get("/billing", Some(&rsa_reader), &[]).await;
    assert_eq!(status, 200);

    let other_scope = t.keys.es.sign(&claims("openid billing.write"));
    let (status, _, body) = t.get("/billing/42", Some(&other_scope), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no ALLOW policy matched"), "{body}");
    let (status, _, _) = t.get("/billing/42", None, &[]).await;
    assert_eq!(status, 403, "no token, no scope");

    // No token: unauthenticated, and policy lets it reach /public; a client's own claim
    // header never reaches the app.
    let (status, headers, _) = t.get("/public", None, &[("x-jwt-sub", "admin")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-seen-jwt-sub"], "");

    // A token in the query parameter is taken out of the query.
    let path = format!("/public?a=1&access_token={reader}");
    let (status, headers, _) = t.get(&path, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-seen-query"], "a=1");
    assert_eq!(headers["x-seen-jwt-sub"], "alice");

    let metrics = t.metrics();
    assert!(
        metrics.contains(r#"ambit_waypoint_jwt_total{result="authenticated",reason=""} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ambit_waypoint_jwt_total{result="no_token",reason=""} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_tokens_get_401_with_www_authenticate() {
    let t = Jwt::start(72).await;
    let stranger = TestKey::generate(Algorithm::ES256, "es-1");
    let mut expired = claims("billing.read");
    expired["exp"] = (now() - 600).into();
    let mut early = claims("billing.read");
    early["nbf"] = (now() + 600).into();
    let mut wrong_issuer = claims("billing.read");
    wrong_issuer["iss"] = "https://evil.example".into();
    let mut wrong_audience = claims("billing.read");
    wrong_audience["aud"] = "bank".into();
    let good = claims("billing.read");
    let cases = [
        ("expired", t.keys.es.sign(&expired)),
        ("not yet valid", t.keys.es.sign(&early)),
        ("wrong issuer", t.keys.es.sign(&wrong_issuer)),
        ("wrong audience", t.keys.rs.sign(&wrong_audience)),
        ("bad signature", stranger.sign(&good)),
        ("alg none", unsigned(&good)),
        (
            "HS256 with the RSA public key",
            hs256(t.keys.rs.public_pem.as_bytes(), "rs-1", &good),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in &cases {
        // Even /public, which anyone may reach without a token: a bad token is refused.
        let (status, headers, body) = t.get("/public", Some(token), &[]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            headers["www-authenticate"], r#"Bearer error="invalid_token""#,
            "{what}"
        );
    }
    // Two tokens are one too many.
    let token = t.keys.es.sign(&good);
    let (status, _, _) = t
        .get(&format!("/public?access_token={token}"), Some(&token), &[])
        .await;
    assert_eq!(status, 401);

    let metrics = t.metrics();
    for reason in [
        "expired",
        "not_yet_valid",
        "unknown_issuer",
        "audience",
        "signature",
    ] {
        let line = format!(r#"ambit_waypoint_jwt_total{{result="invalid",reason="{reason}"}} 1"#);
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn grpc_with_an_invalid_token_is_unauthenticated() {
    let t = Jwt::start(73).await;
    let mut http = Client::new(&t.pki, NS, "front", t.waypoint.hbone_addr)
        .http2(&format!("10.96.{}.1:81", t.net))
        .await;
    let request = hyper::Request::builder()
        .method("POST")
        .uri("http://back/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("authorization", format!("Bearer {}", unsigned(&claims(""))))
        .body(body(""))
        .unwrap();
    let (status, headers, _) = text(http.send_request(request).await.unwrap()).await;
    assert_eq!(status, 200, "gRPC answers in trailers-only form");
    assert_eq!(headers["grpc-status"], "16");
}
