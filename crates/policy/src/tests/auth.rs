use super::*;

pub(super) const ALICE: &str = "https://idp.example/alice";

/// `r` with a validated token of alice whose `scope` is `scope`.
pub(super) fn with_token(mut r: Req, scope: &str) -> Req {
    let claims = serde_json::json!({
        "iss": "https://idp.example",
        "sub": "alice",
        "scope": scope,
        "groups": ["dev", "billing-admins"],
        "org": {"team": {"name": "payments"}, "level": 3},
    });
    r.auth = Some(RequestAuth {
        principal: ALICE.into(),
        claims: claims.as_object().unwrap().clone(),
    });
    r
}

pub(super) fn claim(name: &str, values: &[&str], not_values: &[&str]) -> Condition {
    Condition {
        key: format!("request.auth.claims[{name}]"),
        values: strings(values),
        not_values: strings(not_values),
    }
}

fn when(conditions: Vec<Condition>) -> Rule {
    rule(|r| r.when = conditions)
}

fn allow(rules: Vec<Rule>) -> Vec<Policy> {
    vec![policy("p", Action::Allow, rules)]
}

fn deny(rules: Vec<Rule>) -> Vec<Policy> {
    vec![policy("p", Action::Deny, rules)]
}

#[test]
fn request_principals_match_exact_prefix_suffix_and_any_authenticated() {
    let token = with_token(get("/"), "openid");
    let anonymous = get("/");
    for (pattern, matches) in [
        (ALICE, true),
        ("https://idp.example/*", true),
        ("*/alice", true),
        ("*", true),
        ("https://idp.example/bob", false),
        ("https://other/*", false),
    ] {
        let p = allow(vec![rule(|r| r.request_principals = strings(&[pattern]))]);
        assert_eq!(allowed(&p, &token), matches, "{pattern}");
        assert!(
            !allowed(&p, &anonymous),
            "{pattern}: no token, no principal"
        );
    }
}

#[test]
fn not_request_principals_match_requests_without_that_principal() {
    let p = allow(vec![rule(|r| {
        r.not_request_principals = strings(&["https://idp.example/bob"])
    })]);
    assert!(allowed(&p, &with_token(get("/"), "")));
    assert!(allowed(&p, &get("/")));
    // notRequestPrincipals: ["*"] is "only requests without a token".
    let p = deny(vec![rule(|r| r.not_request_principals = strings(&["*"]))]);
    assert!(!allowed(&p, &get("/")));
    assert!(allowed(&p, &with_token(get("/"), "")));
}

#[test]
fn scope_is_split_on_spaces_and_lists_match_any_element() {
    let billing = allow(vec![rule(|r| {
        r.methods = strings(&["GET"]);
        r.paths = strings(&["/billing/*"]);
        r.when = vec![claim("scope", &["billing.read"], &[])];
    })]);
    assert!(allowed(
        &billing,
        &with_token(get("/billing/42"), "openid billing.read")
    ));
    assert!(!allowed(
        &billing,
        &with_token(get("/billing/42"), "openid billing.readonly")
    ));
    assert!(!allowed(&billing, &with_token(get("/billing/42"), "")));
    assert!(!allowed(&billing, &get("/billing/42")), "no token");
    assert!(
        !allowed(&billing, &with_token(get("/other"), "billing.read")),
        "other path"
    );
    // Only scope-like claims are split: a space in another claim is part of the value.
    let mut spaced = with_token(get("/"), "");
    spaced
        .auth
        .as_mut()
        .unwrap()
        .claims
        .insert("role".into(), "a b".into());
    assert!(!allowed(
        &allow(vec![when(vec![claim("role", &["a"], &[])])]),
        &spaced
    ));
    assert!(allowed(
        &allow(vec![when(vec![claim("role", &["a b"], &[])])]),
        &spaced
    ));
    let groups = allow(vec![when(vec![claim("groups", &["billing-*"], &[])])]);
    assert!(allowed(&groups, &with_token(get("/"), "")));
    let groups = allow(vec![when(vec![claim("groups", &["ops"], &[])])]);
    assert!(!allowed(&groups, &with_token(get("/"), "")));
}

#[test]
fn nested_claims_and_not_values() {
    let token = with_token(get("/"), "openid");
    let nested = |values: &[&str]| {
        allow(vec![when(vec![Condition {
            key: "request.auth.claims[org][team][name]".into(),
            values: strings(values),
            not_values: vec![],
        }])])
    };
    assert!(allowed(&nested(&["payments"]), &token));
    assert!(!allowed(&nested(&["search"]), &token));
    // A path through a non-object, or a number, matches nothing.
    let through_string = allow(vec![when(vec![Condition {
        key: "request.auth.claims[sub][x]".into(),
        values: strings(&["*"]),
        not_values: vec![],
    }])]);
    assert!(!allowed(&through_string, &token));
    let number = allow(vec![when(vec![Condition {
        key: "request.auth.claims[org][level]".into(),
        values: strings(&["3"]),
        not_values: vec![],
    }])]);
    assert!(!allowed(&number, &token));
    let not_admin = allow(vec![when(vec![claim("scope", &["*"], &["admin"])])]);
    assert!(allowed(&not_admin, &token));
    assert!(!allowed(&not_admin, &with_token(get("/"), "openid admin")));
    // Every condition must hold.
    let both = allow(vec![when(vec![
        claim("scope", &["openid"], &[]),
        claim("groups", &["ops"], &[]),
    ])]);
    assert!(!allowed(&both, &token));
}

#[test]
fn at_l4_auth_fields_are_unknown_allow_matches_nothing_deny_denies() {
    let rules = [
        rule(|r| r.request_principals = strings(&["*"])),
        rule(|r| r.not_request_principals = strings(&["*"])),
        when(vec![claim("scope", &[], &["admin"])]),
    ];
    for r in rules {
        assert!(r.is_l7());
        let l4 = |p: &[Policy]| decide(p, 8080, &client(), None).decision;
        assert_eq!(l4(&allow(vec![r.clone()])), Decision::Deny(None), "{r:?}");
        assert_eq!(
            l4(&deny(vec![r.clone()])),
            Decision::Deny(Some("p".into())),
            "{r:?}"
        );
    }
}

#[test]
fn malformed_values_are_named_and_fail_safe() {
    let bad = [
        (
            rule(|r| r.request_principals = strings(&[""])),
            "rules[0].requestPrincipals",
        ),
        (
            rule(|r| r.not_request_principals = strings(&["a\u{1}"])),
            "rules[0].notRequestPrincipals",
        ),
        (
            when(vec![Condition {
                key: "request.auth.claims".into(),
                values: strings(&["x"]),
                not_values: vec![],
            }]),
            "rules[0].when",
        ),
        (
            when(vec![Condition {
                key: "request.auth.claims[a][]".into(),
                values: strings(&["x"]),
                not_values: vec![],
            }]),
            "rules[0].when",
        ),
        (when(vec![claim("scope", &[], &[])]), "rules[0].when"),
        (
            when(vec![Condition {
                key: "source.ip".into(),
                values: strings(&["10.0.0.1"]),
                not_values: vec![],
            }]),
            "rules[0].when",
        ),
    ];
    for (r, place) in bad {
        let err = policy("p", Action::Allow, vec![r.clone()])
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with(place), "{err}");
        // Malformed: an ALLOW rule never matches, a DENY rule denies the authenticated too.
        let token = with_token(get("/"), "x");
        assert!(!allowed(&allow(vec![r.clone()]), &token), "{r:?}");
        assert!(!allowed(&deny(vec![r]), &token));
    }
    let ok = when(vec![claim("scope", &["a*"], &["*b"])]);
    policy("p", Action::Allow, vec![ok]).validate().unwrap();
}

#[test]
fn yaml_shape() {
    let yaml = r#"
- name: billing
  namespace: shop
  action: ALLOW
  rules:
  - requestPrincipals: ["https://idp.example/*"]
    notRequestPrincipals: ["https://idp.example/mallory"]
    methods: [GET]
    paths: ["/billing/*"]
    when:
    - key: request.auth.claims[scope]
      values: [billing.read]
    - key: request.auth.claims[org][tier]
      notValues: [free]
"#;
    let policies: Vec<Policy> = serde_saphyr::from_str(yaml).unwrap();
    let r = &policies[0].rules[0];
    assert_eq!(r.when[1].not_values, ["free"]);
    assert_eq!(r.not_request_principals, ["https://idp.example/mallory"]);
    policies[0].validate().unwrap();
    let again: Vec<Policy> =
        serde_saphyr::from_str(&serde_saphyr::to_string(&policies).unwrap()).unwrap();
    assert_eq!(again, policies);
}

mod request_authentication {
    use super::*;

    const YAML: &str = r#"
name: idp
namespace: shop
selector: {matchLabels: {app: backend}}
jwtRules:
- issuer: https://idp.example
  audiences: [shop]
  jwks: '{"keys": []}'
  fromHeaders: [{name: x-jwt, prefix: "Token "}]
  fromParams: [token]
  outputClaimToHeaders: [{header: x-user, claim: sub}]
- issuer: https://other.example
"#;

    fn parsed() -> RequestAuthentication {
        serde_saphyr::from_str(YAML).unwrap()
    }

    #[test]
    fn shape_selection_and_default_location() {
        let ra = parsed();
        ra.validate().unwrap();
        assert!(!ra.jwt_rules[0].forward_original_token);
        assert_eq!(ra.jwt_rules[0].headers()[0].name, "x-jwt");
        assert_eq!(ra.jwt_rules[1].headers(), [JwtRule::default_header()]);
        let backend = labels();
        let other = [("app".to_string(), "frontend".to_string())].into();
        let target = |labels| Target {
            namespace: "shop",
            labels,
            port: 8080,
        };
        assert!(ra.applies_to(&target(&backend)));
        assert!(!ra.applies_to(&target(&other)));
        let again: RequestAuthentication =
            serde_saphyr::from_str(&serde_saphyr::to_string(&ra).unwrap()).unwrap();
        assert_eq!(again, ra);
    }

    #[test]
    fn malformed_rules_are_named() {
        type Break = fn(&mut RequestAuthentication);
        let cases: [(Break, &str); 6] = [
            (|r| r.jwt_rules[1].issuer.clear(), "jwtRules[1].issuer"),
            (
                |r| r.jwt_rules[1].issuer = "https://idp.example".into(),
                "jwtRules[1]: issuer",
            ),
            (
                |r| r.jwt_rules[0].from_headers[0].name = "x y".into(),
                "jwtRules[0].fromHeaders",
            ),
            (
                |r| r.jwt_rules[0].from_params[0] = "a=b".into(),
                "jwtRules[0].fromParams",
            ),
            (
                |r| r.jwt_rules[0].output_claim_to_headers[0].header = "Authorization".into(),
                "jwtRules[0].outputClaimToHeaders: header \"Authorization\"",
            ),
            (
                |r| r.jwt_rules[0].output_claim_to_headers[0].claim.clear(),
                "jwtRules[0].outputClaimToHeaders: claim",
            ),
        ];
        for (break_it, place) in cases {
            let mut ra = parsed();
            break_it(&mut ra);
            let err = ra.validate().unwrap_err().to_string();
            assert!(err.starts_with(place), "{err}");
            let safe = ra.fail_safe();
            safe.validate().unwrap();
            assert!(!safe.jwt_rules.is_empty(), "{place}: the valid rule stays");
        }
        assert_eq!(parsed().fail_safe(), parsed(), "a valid one is kept as is");
    }
}
