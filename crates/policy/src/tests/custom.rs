//! CUSTOM policies: which requests go to which external authorization provider, and what
//! happens where no provider can be asked.

use super::*;

fn custom(name: &str, provider: &str, rules: Vec<Rule>) -> Policy {
    let mut p = policy(name, Action::Custom, rules);
    p.provider = Some(provider.into());
    p
}

fn admin_paths() -> Vec<Rule> {
    vec![rule(|r| r.paths = strings(&["/admin/*"]))]
}

#[test]
fn a_matching_custom_policy_names_its_provider_once() {
    let policies = [
        custom("a", "authz", admin_paths()),
        custom("b", "authz", vec![Rule::default()]),
        custom("c", "other", vec![rule(|r| r.methods = strings(&["POST"]))]),
    ];
    let v = decide(&policies, 8080, &client(), Some(&get("/admin/users")));
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.ext_authz, ["authz"]);
    let mut post = get("/admin/users");
    post.method = http::Method::POST;
    let v = decide(&policies, 8080, &client(), Some(&post));
    assert_eq!(v.ext_authz, ["authz", "other"]);
    // Not matching: nothing to ask.
    let v = decide(&policies[..1], 8080, &client(), Some(&get("/public")));
    assert_eq!((v.decision, v.ext_authz), (Decision::Allow, vec![]));
}

#[test]
fn custom_is_not_an_allow_policy_and_deny_still_wins() {
    // A CUSTOM policy does not turn on the default deny of ALLOW policies...
    let ask = custom("ask", "authz", vec![Rule::default()]);
    let v = decide(std::slice::from_ref(&ask), 8080, &client(), Some(&get("/")));
    assert_eq!((v.decision, v.ext_authz.len()), (Decision::Allow, 1));
    // ... and a request DENY or ALLOW policies refuse is refused without asking.
    let deny = policy("deny", Action::Deny, admin_paths());
    let v = decide(
        &[ask.clone(), deny],
        8080,
        &client(),
        Some(&get("/admin/x")),
    );
    assert_eq!(v.decision, Decision::Deny(Some("deny".into())));
    assert!(v.ext_authz.is_empty());
    let only_post = policy(
        "only-post",
        Action::Allow,
        vec![rule(|r| r.methods = strings(&["POST"]))],
    );
    let v = decide(&[ask, only_post], 8080, &client(), Some(&get("/")));
    assert_eq!(v.decision, Decision::Deny(None));
    assert!(v.ext_authz.is_empty());
}

#[test]
fn an_unknown_match_asks_rather_than_skips() {
    // The path reads /admin/x to a server that decodes %2F: maybe a match, so ask.
    let p = custom("a", "authz", admin_paths());
    let v = decide(
        std::slice::from_ref(&p),
        8080,
        &client(),
        Some(&get("/admin%2Fx")),
    );
    assert_eq!(v.ext_authz, ["authz"]);
}

#[test]
fn at_l4_a_custom_policy_that_may_match_denies() {
    // No request to ask about: L7 fields make it unknown, which denies.
    let l7 = custom("l7", "authz", admin_paths());
    let v = decide(std::slice::from_ref(&l7), 8080, &client(), None);
    assert_eq!(v.decision, Decision::Deny(Some("l7".into())));
    // L4 fields that do not match: no deny.
    let port = custom("port", "authz", vec![rule(|r| r.ports = vec![9090])]);
    let v = decide(std::slice::from_ref(&port), 8080, &client(), None);
    assert_eq!(v.decision, Decision::Allow);
    let v = decide(std::slice::from_ref(&port), 9090, &client(), None);
    assert_eq!(v.decision, Decision::Deny(Some("port".into())));
}

#[test]
fn providers_are_validated_and_fail_safe() {
    let mut p = custom("a", "authz", admin_paths());
    assert_eq!(p.validate(), Ok(()));
    p.provider = None;
    assert!(
        p.validate()
            .unwrap_err()
            .to_string()
            .starts_with("provider:")
    );
    // Without a provider it cannot be asked: it denies where it matches, as a DENY.
    let safe = p.fail_safe();
    assert_eq!(
        (safe.action, safe.provider.as_deref()),
        (Action::Deny, None)
    );
    assert!(!allowed(&[p], &get("/admin/x")));
    let mut allow = policy("b", Action::Allow, vec![]);
    allow.provider = Some("authz".into());
    assert!(allow.validate().is_err());
    assert_eq!(allow.fail_safe().provider, None);
}

#[test]
fn yaml_shape() {
    let p: Policy = serde_saphyr::from_str(
        "{name: ext, namespace: shop, action: CUSTOM, provider: authz, rules: [{paths: [/admin/*]}]}",
    )
    .unwrap();
    assert_eq!(p, custom("ext", "authz", admin_paths()));
}
