#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use ambit_identity::SpiffeId;
use std::collections::BTreeMap;

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn src(id: Option<&str>, ip: &str) -> Source {
    Source {
        identity: id.map(|i| i.parse().unwrap()),
        ip: ip.parse().unwrap(),
    }
}

fn client() -> Source {
    src(Some(CLIENT), "10.1.0.2")
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        name: name.into(),
        namespace: "shop".into(),
        action,
        selector: None,
        rules,
        provider: None,
    }
}

fn labels() -> BTreeMap<String, String> {
    [("app".to_string(), "backend".to_string())].into()
}

/// Evaluates at L4 (`req: None`) or for a request, against pod `app=backend` of `shop`.
fn decide(policies: &[Policy], port: u16, source: &Source, req: Option<&Req>) -> Verdict {
    let labels = labels();
    let target = Target {
        namespace: "shop",
        labels: &labels,
        port,
    };
    match req {
        None => authorize(policies, &target, source, None),
        Some(r) => {
            let request = HttpRequest {
                method: &r.method,
                path: &r.path,
                host: &r.host,
                headers: &r.headers,
                auth: r.auth.as_ref(),
            };
            authorize(policies, &target, source, Some(&request))
        }
    }
}

struct Req {
    method: http::Method,
    path: String,
    host: String,
    headers: http::HeaderMap,
    auth: Option<RequestAuth>,
}

fn get(path: &str) -> Req {
    Req {
        method: http::Method::GET,
        path: path.into(),
        host: "backend.shop.svc.cluster.local:8080".into(),
        headers: http::HeaderMap::new(),
        auth: None,
    }
}

fn with_header(mut r: Req, name: &'static str, value: &str) -> Req {
    r.headers.append(name, value.parse().unwrap());
    r
}

fn allowed(policies: &[Policy], req: &Req) -> bool {
    decide(policies, 8080, &client(), Some(req)).decision == Decision::Allow
}

fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
    let mut r = Rule::default();
    f(&mut r);
    r
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Request principals and `when` conditions on JWT claims.
mod auth;
mod custom;

mod cidr {
    use super::*;

    #[test]
    fn ip_blocks() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let host: Cidr = "10.0.0.1".parse().unwrap();
        assert!(host.contains("10.0.0.1".parse().unwrap()));
        assert!(!host.contains("10.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
    }

    #[test]
    fn ip_blocks_are_parsed_once_and_keep_their_text() {
        let b = IpBlock::from("10.0.0.0/8");
        assert!(b.cidr().unwrap().contains("10.9.9.9".parse().unwrap()));
        let bad = IpBlock::from("office");
        assert!(bad.cidr().is_err());
        assert_eq!(bad.to_string(), "office");
        let r = rule(|r| r.ip_blocks = vec!["10.0.0.0/8".into(), "office".into()]);
        let yaml = serde_saphyr::to_string(&r).unwrap();
        assert!(yaml.contains("- office"), "{yaml}");
        assert_eq!(serde_saphyr::from_str::<Rule>(&yaml).unwrap(), r);
    }
}

/// The table of docs/policies.md, "How a connection is decided".
mod precedence {
    use super::*;

    fn l4(policies: &[Policy]) -> Decision {
        decide(policies, 8080, &client(), None).decision
    }

    #[test]
    fn no_policy_allows() {
        assert_eq!(l4(&[]), Decision::Allow);
    }

    #[test]
    fn edge_cases() {
        let allow_nothing = policy("p", Action::Allow, vec![]);
        assert_eq!(l4(&[allow_nothing]), Decision::Deny(None));
        let allow_all = policy("p", Action::Allow, vec![Rule::default()]);
        assert_eq!(l4(&[allow_all]), Decision::Allow);
        let deny_nothing = policy("p", Action::Deny, vec![]);
        assert_eq!(l4(&[deny_nothing]), Decision::Allow);
        let deny_all = policy("p", Action::Deny, vec![Rule::default()]);
        assert_eq!(l4(&[deny_all]), Decision::Deny(Some("p".into())));
    }

    #[test]
    fn deny_wins_then_any_allow_must_match() {
        let deny = policy("deny", Action::Deny, vec![rule(|r| r.ports = vec![9090])]);
        let allow = policy(
            "allow",
            Action::Allow,
            vec![rule(|r| r.ports = vec![8080, 9090])],
        );
        let other = policy("other", Action::Allow, vec![rule(|r| r.ports = vec![7070])]);
        let all = [deny.clone(), allow.clone(), other.clone()];
        assert_eq!(
            decide(&all, 8080, &client(), None).decision,
            Decision::Allow
        );
        assert_eq!(
            decide(&all, 9090, &client(), None).decision,
            Decision::Deny(Some("deny".into()))
        );
        assert_eq!(
            decide(&all, 7070, &client(), None).decision,
            Decision::Allow
        );
        assert_eq!(
            decide(&all, 6060, &client(), None).decision,
            Decision::Deny(None)
        );
        // The first matching DENY in order is named.
        let again = policy("again", Action::Deny, vec![Rule::default()]);
        assert_eq!(
            decide(&[again, deny], 9090, &client(), None).decision,
            Decision::Deny(Some("again".into()))
        );
    }

    #[test]
    fn only_policies_that_apply_to_the_target_count() {
        let mut elsewhere = policy("elsewhere", Action::Deny, vec![Rule::default()]);
        elsewhere.namespace = "other".into();
        let mut frontend_only = policy("frontend-only", Action::Allow, vec![]);
        frontend_only.selector = Some(PolicyScope {
            match_labels: [("app".to_string(), "frontend".to_string())].into(),
        });
        assert_eq!(l4(&[elsewhere, frontend_only]), Decision::Allow);
        let mut backend = policy("backend", Action::Deny, vec![Rule::default()]);
        backend.selector = Some(PolicyScope {
            match_labels: labels(),
        });
        assert_eq!(l4(&[backend]), Decision::Deny(Some("backend".into())));
    }

    #[test]
    fn audit_reports_and_never_decides() {
        let audit = policy(
            "audit-get",
            Action::Audit,
            vec![rule(|r| r.methods = strings(&["GET"]))],
        );
        let audit_all = policy("audit-all", Action::Audit, vec![Rule::default()]);
        let v = decide(
            &[audit.clone(), audit_all.clone()],
            8080,
            &client(),
            Some(&get("/")),
        );
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(v.audit.as_deref(), Some("audit-get"));
        let mut post = get("/");
        post.method = http::Method::POST;
        let v = decide(&[audit.clone(), audit_all], 8080, &client(), Some(&post));
        assert_eq!(v.audit.as_deref(), Some("audit-all"));
        // An AUDIT policy is no ALLOW policy: it does not turn on the default deny.
        let v = decide(std::slice::from_ref(&audit), 8080, &client(), None);
        assert_eq!(
            v,
            Verdict {
                decision: Decision::Allow,
                audit: None,
                ext_authz: Vec::new(),
            }
        );
        // Reported on denied requests too.
        let deny = policy("deny", Action::Deny, vec![Rule::default()]);
        let v = decide(&[deny, audit], 8080, &client(), Some(&get("/")));
        assert_eq!(v.decision, Decision::Deny(Some("deny".into())));
        assert_eq!(v.audit.as_deref(), Some("audit-get"));
    }
}

mod identities {
    use super::*;

    fn allow(principals: &[&str]) -> Policy {
        policy(
            "p",
            Action::Allow,
            vec![rule(|r| r.principals = strings(principals))],
        )
    }

    fn l4(p: &Policy, source: &Source) -> bool {
        decide(std::slice::from_ref(p), 8080, source, None).decision == Decision::Allow
    }

    #[test]
    fn principals_match_exactly() {
        let p = allow(&[CLIENT]);
        assert!(l4(&p, &client()));
        for wrong in [
            "spiffe://other.domain/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/other/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/frontend2",
            "spiffe://cluster.local/ns/shop/sa/front",
        ] {
            assert!(!l4(&p, &src(Some(wrong), "10.1.0.2")), "{wrong}");
        }
        assert!(
            !l4(&p, &src(None, "10.1.0.2")),
            "plaintext has no principal"
        );
    }

    #[test]
    fn star_is_any_authenticated_peer() {
        let p = allow(&["*"]);
        assert!(l4(&p, &src(Some("spiffe://x/ns/a/sa/b"), "10.1.0.2")));
        assert!(!l4(&p, &src(None, "10.1.0.2")));
    }

    #[test]
    fn namespaces_need_an_identity() {
        let p = policy(
            "p",
            Action::Allow,
            vec![rule(|r| r.namespaces = strings(&["shop"]))],
        );
        assert!(l4(&p, &client()));
        assert!(!l4(
            &p,
            &src(
                Some("spiffe://cluster.local/ns/other/sa/frontend"),
                "10.1.0.2"
            )
        ));
        assert!(!l4(&p, &src(None, "10.1.0.2")));
    }

    #[test]
    fn ip_blocks_and_ports() {
        let p = policy(
            "p",
            Action::Allow,
            vec![rule(|r| {
                r.ip_blocks = vec!["10.1.0.0/16".into()];
                r.ports = vec![8080];
            })],
        );
        assert!(l4(&p, &src(None, "10.1.200.3")));
        assert!(!l4(&p, &src(None, "10.2.0.3")));
        assert_eq!(
            decide(&[p], 9090, &client(), None).decision,
            Decision::Deny(None)
        );
    }

    /// The principal check is ambit-identity's, done without allocating.
    #[test]
    fn principal_syntax_agrees_with_ambit_identity() {
        for s in [
            CLIENT,
            "spiffe://td/ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x",
            "spiffe:///ns/a/sa/b",
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/xa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://cluster.local",
        ] {
            assert_eq!(
                matchers::spiffe_parts(s).is_some(),
                s.parse::<SpiffeId>().is_ok(),
                "{s}"
            );
        }
    }
}

/// L4 evaluation of rules with L7 fields (docs/policies.md, "Rules with L7 fields at L4").
mod l4_fail_safe {
    use super::*;

    #[test]
    fn allow_rule_with_l7_fields_matches_nothing_at_l4() {
        let p = policy(
            "get-only",
            Action::Allow,
            vec![rule(|r| {
                r.principals = strings(&[CLIENT]);
                r.methods = strings(&["GET"]);
            })],
        );
        assert_eq!(
            decide(std::slice::from_ref(&p), 8080, &client(), None).decision,
            Decision::Deny(None)
        );
        // With the request known, it matches.
        assert!(allowed(&[p], &get("/")));
    }

    #[test]
    fn deny_rule_with_l7_fields_matches_on_its_l4_fields_alone() {
        let p = policy(
            "no-delete-from-bad",
            Action::Deny,
            vec![rule(|r| {
                r.principals = strings(&["spiffe://cluster.local/ns/shop/sa/bad"]);
                r.methods = strings(&["DELETE"]);
            })],
        );
        let bad = src(Some("spiffe://cluster.local/ns/shop/sa/bad"), "10.1.0.9");
        let ps = std::slice::from_ref(&p);
        assert_eq!(
            decide(ps, 8080, &bad, None).decision,
            Decision::Deny(Some("no-delete-from-bad".into()))
        );
        assert_eq!(decide(ps, 8080, &client(), None).decision, Decision::Allow);
        // At L7 only the DELETE is denied.
        assert_eq!(
            decide(ps, 8080, &bad, Some(&get("/"))).decision,
            Decision::Allow
        );
        let mut delete = get("/");
        delete.method = http::Method::DELETE;
        assert_ne!(
            decide(ps, 8080, &bad, Some(&delete)).decision,
            Decision::Allow
        );
    }

    #[test]
    fn audit_rule_with_l7_fields_reports_nothing_at_l4() {
        let p = policy(
            "a",
            Action::Audit,
            vec![rule(|r| r.paths = strings(&["*"]))],
        );
        assert_eq!(decide(&[p], 8080, &client(), None).audit, None);
    }

    #[test]
    fn l4_only_rules_still_work_with_a_request() {
        let p = policy("p", Action::Allow, vec![rule(|r| r.ports = vec![8080])]);
        assert!(allowed(std::slice::from_ref(&p), &get("/")));
        assert_eq!(
            decide(&[p], 9090, &client(), Some(&get("/"))).decision,
            Decision::Deny(None)
        );
    }
}

mod l7 {
    use super::*;

    fn allow(f: impl FnOnce(&mut Rule)) -> Vec<Policy> {
        vec![policy("p", Action::Allow, vec![rule(f)])]
    }

    #[test]
    fn methods_are_exact_and_case_sensitive() {
        let p = allow(|r| r.methods = strings(&["GET", "HEAD"]));
        assert!(allowed(&p, &get("/")));
        let mut post = get("/");
        post.method = http::Method::POST;
        assert!(!allowed(&p, &post));
        let lower = allow(|r| r.methods = strings(&["get"]));
        assert!(!allowed(&lower, &get("/")));
    }

    #[test]
    fn paths() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api", "/api", true),
            ("/api", "/api/", false),
            ("/api", "/api?x=1", true),
            ("/api", "/API", false),
            ("/api/*", "/api", true),
            ("/api/*", "/api/", true),
            ("/api/*", "/api/v1/users", true),
            ("/api/*", "/apiv1", false),
            ("/api*", "/apiv1", true),
            ("/api*", "/ap", false),
            ("/*", "/", true),
            ("/*", "/anything", true),
            ("*.js", "/static/app.js", true),
            ("*.js", "/static/app.js?v=2", true),
            ("*.js", "/static/app.json", false),
            ("*", "/whatever", true),
            ("*", "*", true),
            // Normalized before matching: dot segments, doubled slashes, encoded unreserved.
            ("/admin", "/public/../admin", true),
            ("/admin", "//admin", true),
            ("/admin", "/%61dmin", true),
            ("/admin", "/%2e%2e/admin", true),
            ("/admin/*", "/admin/./x", true),
            ("/public/*", "/public/../admin", false),
        ];
        for (pattern, path, want) in cases {
            let p = allow(|r| r.paths = strings(&[pattern]));
            assert_eq!(allowed(&p, &get(path)), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn ambiguous_encoded_slashes_fail_safe() {
        // "/admin%2Fx" is under /admin/ to a server that decodes %2F, and not to one that
        // does not: an ALLOW does not let it in, a DENY refuses it.
        let allow_public = allow(|r| r.paths = strings(&["/public/*"]));
        assert!(!allowed(&allow_public, &get("/public%2F..%2Fadmin")));
        assert!(
            allowed(&allow_public, &get("/public/a%2Fb")),
            "both readings under /public/"
        );
        let deny_admin = vec![policy(
            "no-admin",
            Action::Deny,
            vec![rule(|r| r.paths = strings(&["/admin/*"]))],
        )];
        assert!(!allowed(&deny_admin, &get("/admin%2fx")));
        assert!(!allowed(&deny_admin, &get("/admin\\x")));
        assert!(allowed(&deny_admin, &get("/other%2Fx")));
    }

    #[test]
    fn normalize_path_examples() {
        for (raw, want) in [
            ("/a/b", "/a/b"),
            ("/a/b?q=/..", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("//a///b", "/a/b"),
            ("/%7Euser/%2fx/%zz", "/~user/%2Fx/%zz"),
            ("/%", "/%"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
        assert!(matches!(
            normalize_path("/a/b"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn hosts() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "backend.shop.svc.cluster.local",
                "backend.shop.svc.cluster.local:8080",
                true,
            ),
            (
                "backend.shop.svc.cluster.local",
                "Backend.Shop.svc.cluster.local",
                true,
            ),
            (
                "backend.shop.svc.cluster.local",
                "backend.shop.svc.cluster.local.",
                true,
            ),
            (
                "backend.shop.svc.cluster.local.",
                "backend.shop.svc.cluster.local",
                true,
            ),
            ("backend", "backend.shop.svc.cluster.local", false),
            (
                "*.shop.svc.cluster.local",
                "backend.shop.svc.cluster.local:80",
                true,
            ),
            ("*.cluster.local", "backend.shop.svc.cluster.local", true),
            ("*.shop.svc.cluster.local", "shop.svc.cluster.local", false),
            (
                "*.shop.svc.cluster.local",
                "evilshop.svc.cluster.local",
                false,
            ),
            ("*", "anything:1", true),
            ("*", "", false),
            ("10.96.0.10", "10.96.0.10:8080", true),
            ("[fd00::10]", "[FD00::10]:8080", true),
            ("[fd00::10]", "[fd00::11]", false),
            ("example.com", "ex\u{e4}mple.com", false),
        ];
        for (pattern, host, want) in cases {
            let p = allow(|r| r.hosts = strings(&[pattern]));
            let mut req = get("/");
            req.host = (*host).into();
            assert_eq!(allowed(&p, &req), *want, "{pattern} vs {host}");
        }
    }

    fn header(name: &str, value: &str) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn header_values() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("alice", Some("alice"), true),
            ("alice", Some("Alice"), false),
            ("alice", None, false),
            ("ali*", Some("alice"), true),
            ("ali*", Some("bob"), false),
            ("*ice", Some("alice"), true),
            ("*ice", Some("alicex"), false),
            ("*", Some(""), true),
            ("*", None, false),
        ];
        for (pattern, sent, want) in cases {
            let p = allow(|r| r.headers = vec![header("X-User", pattern)]);
            let req = match sent {
                Some(v) => with_header(get("/"), "x-user", v),
                None => get("/"),
            };
            assert_eq!(allowed(&p, &req), *want, "{pattern} vs {sent:?}");
        }
    }

    #[test]
    fn header_sent_twice_must_match_both_times_to_be_allowed_and_once_to_be_denied() {
        let req = with_header(
            with_header(get("/"), "x-user", "alice"),
            "x-user",
            "mallory",
        );
        let allow_alice = allow(|r| r.headers = vec![header("x-user", "alice")]);
        assert!(!allowed(&allow_alice, &req));
        let deny_mallory = vec![policy(
            "d",
            Action::Deny,
            vec![rule(|r| r.headers = vec![header("x-user", "mallory")])],
        )];
        assert!(!allowed(&deny_mallory, &req));
        let allow_both =
            allow(|r| r.headers = vec![header("x-user", "alice"), header("x-user", "mallory")]);
        assert!(
            !allowed(&allow_both, &req),
            "each copy must match one entry for sure"
        );
        let allow_any = allow(|r| r.headers = vec![header("x-user", "*")]);
        assert!(allowed(&allow_any, &req));
    }

    #[test]
    fn different_headers_must_all_match_same_header_entries_are_alternatives() {
        let p = allow(|r| {
            r.headers = vec![
                header("x-env", "prod"),
                header("X-Team", "a"),
                header("x-env", "staging"),
            ]
        });
        let req = |env: &str, team: Option<&str>| {
            let r = with_header(get("/"), "x-env", env);
            match team {
                Some(t) => with_header(r, "x-team", t),
                None => r,
            }
        };
        assert!(allowed(&p, &req("prod", Some("a"))));
        assert!(allowed(&p, &req("staging", Some("a"))));
        assert!(!allowed(&p, &req("dev", Some("a"))));
        assert!(!allowed(&p, &req("prod", Some("b"))));
        assert!(!allowed(&p, &req("prod", None)));
    }

    #[test]
    fn every_field_must_match() {
        let p = allow(|r| {
            r.principals = strings(&[CLIENT]);
            r.ports = vec![8080];
            r.methods = strings(&["GET"]);
            r.paths = strings(&["/api/*"]);
            r.hosts = strings(&["backend.shop.svc.cluster.local"]);
        });
        assert!(allowed(&p, &get("/api/x")));
        assert!(!allowed(&p, &get("/other")));
        let other = src(Some("spiffe://cluster.local/ns/shop/sa/other"), "10.1.0.2");
        assert_eq!(
            decide(&p, 8080, &other, Some(&get("/api/x"))).decision,
            Decision::Deny(None)
        );
        assert_eq!(
            decide(&p, 9090, &client(), Some(&get("/api/x"))).decision,
            Decision::Deny(None)
        );
    }
}

mod validation {
    use super::*;

    fn check(r: Rule) -> Result<(), PolicyError> {
        policy("p", Action::Allow, vec![Rule::default(), r]).validate()
    }

    #[test]
    fn good_values_pass() {
        check(rule(|r| {
            r.principals = strings(&["*", CLIENT]);
            r.namespaces = strings(&["shop"]);
            r.ip_blocks = vec!["10.0.0.0/8".into(), "fd00::1".into()];
            r.ports = vec![1, 65535];
            r.methods = strings(&["GET", "PURGE"]);
            r.paths = strings(&[
                "/",
                "/a/b",
                "/a/*",
                "/a*",
                "/.well-known*",
                "/x/.*",
                "/a%2F*",
                "*.js",
                "*",
            ]);
            r.hosts = strings(&[
                "a.example.com",
                "*.example.com",
                "*",
                "10.0.0.1",
                "[::1]",
                "a.",
            ]);
            r.headers = vec![HeaderMatch {
                name: "X-User".into(),
                value: "*".into(),
            }];
        }))
        .unwrap();
    }

    #[test]
    fn each_bad_value_is_named_with_its_rule() {
        let header = |name: &str, value: &str| HeaderMatch {
            name: name.into(),
            value: value.into(),
        };
        let bad: Vec<(Rule, &str)> = vec![
            (
                rule(|r| r.principals = strings(&["cluster.local/ns/a/sa/b"])),
                "rules[1].principals: \"cluster.local/ns/a/sa/b\"",
            ),
            (
                rule(|r| r.namespaces = strings(&["a/b"])),
                "rules[1].namespaces: \"a/b\"",
            ),
            (
                rule(|r| r.ip_blocks = vec!["10.0.0.0/40".into()]),
                "rules[1].ipBlocks: \"10.0.0.0/40\"",
            ),
            (rule(|r| r.ports = vec![0]), "rules[1].ports: 0"),
            (
                rule(|r| r.methods = strings(&["GET POST"])),
                "rules[1].methods: \"GET POST\"",
            ),
            (
                rule(|r| r.hosts = strings(&["example.com:80"])),
                "rules[1].hosts: \"example.com:80\"",
            ),
            (
                rule(|r| r.hosts = strings(&["*example.com"])),
                "rules[1].hosts",
            ),
            (rule(|r| r.hosts = strings(&["a..b"])), "rules[1].hosts"),
            (
                rule(|r| r.headers = vec![header("x user", "a")]),
                "rules[1].headers: \"x user\"",
            ),
            (
                rule(|r| r.headers = vec![header("x", "a\nb")]),
                "rules[1].headers",
            ),
        ];
        for (r, want) in bad {
            let e = check(r).expect_err(want).to_string();
            assert!(e.starts_with(want), "{e} does not start with {want}");
        }
        for path in [
            "api", "/a?b", "/a/*/b", "/a/../b", "/a//*", "/%61*", "/a/%2f*",
        ] {
            let e = check(rule(|r| r.paths = strings(&[path]))).expect_err(path);
            assert!(e.to_string().starts_with("rules[1].paths: "), "{e}");
        }
    }
}

/// `fail_safe` is valid and decides as the original does, on a grid of sources and requests.
mod fail_safe {
    use super::*;

    fn broken_rule() -> Rule {
        rule(|r| {
            r.principals = strings(&[CLIENT, "not-a-spiffe-id"]);
            r.ports = vec![8080];
        })
    }

    fn sources() -> Vec<Source> {
        vec![
            client(),
            src(Some("spiffe://cluster.local/ns/shop/sa/other"), "10.1.0.3"),
            src(Some("spiffe://cluster.local/ns/else/sa/x"), "10.9.0.3"),
            src(None, "10.1.0.4"),
        ]
    }

    fn requests() -> Vec<Option<Req>> {
        let mut post = get("/admin/x");
        post.method = http::Method::POST;
        vec![
            None,
            Some(get("/")),
            Some(get("/api/v1")),
            Some(with_header(get("/api"), "x-user", "alice")),
            Some(with_header(
                with_header(get("/api"), "x-user", "alice"),
                "x-env",
                "prod",
            )),
            Some(post),
            Some(get("/admin%2Fx")),
            Some(auth::with_token(get("/api"), "billing.read openid")),
            Some(auth::with_token(get("/api"), "other")),
        ]
    }

    fn rules() -> Vec<Rule> {
        vec![
            broken_rule(),
            rule(|r| r.ip_blocks = vec!["10.1.0.0/16".into(), "office".into()]),
            rule(|r| r.ip_blocks = vec!["office".into()]),
            rule(|r| {
                r.namespaces = strings(&["shop", "bad/ns"]);
                r.methods = strings(&["GET", "bad method"]);
            }),
            rule(|r| {
                r.paths = strings(&["/api/*", "api"]);
                r.ports = vec![0, 8080];
            }),
            rule(|r| r.hosts = strings(&["backend.shop.svc.cluster.local", "host:80"])),
            rule(|r| {
                r.headers = vec![
                    HeaderMatch {
                        name: "x-user".into(),
                        value: "alice".into(),
                    },
                    HeaderMatch {
                        name: "x-env".into(),
                        value: "prod".into(),
                    },
                    HeaderMatch {
                        name: "x-env".into(),
                        value: "bad\u{7}".into(),
                    },
                ];
            }),
            rule(|r| {
                r.headers = vec![HeaderMatch {
                    name: "bad name".into(),
                    value: "x".into(),
                }]
            }),
            rule(|r| r.paths = strings(&["/admin/*"])),
            rule(|r| {
                r.request_principals = strings(&[auth::ALICE, ""]);
                r.ports = vec![8080];
            }),
            rule(|r| r.not_request_principals = strings(&["https://idp.example/bob", "bad\u{7}"])),
            rule(|r| {
                r.when = vec![
                    auth::claim("scope", &["billing.read", ""], &[]),
                    Condition {
                        key: "request.headers[x]".into(),
                        values: strings(&["x"]),
                        not_values: vec![],
                    },
                ]
            }),
            rule(|r| r.when = vec![auth::claim("scope", &["openid"], &["admin", ""])]),
            rule(|r| r.when = vec![auth::claim("scope", &["", "\u{7}"], &[])]),
        ]
    }

    #[test]
    fn fail_safe_is_valid_and_decides_the_same() {
        let mut compared = 0;
        let custom = |provider: Option<&str>| (Action::Custom, provider.map(String::from));
        for (action, provider) in [
            (Action::Allow, None),
            (Action::Deny, None),
            (Action::Audit, None),
            custom(Some("authz")),
            custom(None),
            custom(Some("Not A Name")),
        ] {
            for (i, r) in rules().into_iter().enumerate() {
                let mut p = policy(&format!("p{i}"), action, vec![r]);
                p.provider = provider.clone();
                let safe = p.fail_safe();
                safe.validate().unwrap();
                for s in sources() {
                    for port in [8080, 9090] {
                        for req in requests() {
                            assert_eq!(
                                decide(std::slice::from_ref(&p), port, &s, req.as_ref()),
                                decide(std::slice::from_ref(&safe), port, &s, req.as_ref()),
                                "{p:?} vs {safe:?} for {s:?} port {port} {:?}",
                                req.as_ref().map(|r| (&r.method, &r.path, &r.headers))
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 500);
    }

    #[test]
    fn fail_safe_shapes() {
        let allow = policy("p", Action::Allow, vec![broken_rule(), rules()[2].clone()]).fail_safe();
        assert_eq!(
            allow.rules.len(),
            1,
            "the rule left without ip blocks is dropped"
        );
        assert_eq!(allow.rules[0].principals, [CLIENT]);
        let deny = policy("p", Action::Deny, vec![broken_rule()]).fail_safe();
        assert!(
            deny.rules[0].principals.is_empty(),
            "cleared: matches anyone"
        );
        assert_eq!(deny.rules[0].ports, [8080]);
        let valid = policy("p", Action::Deny, vec![rules()[8].clone()]);
        assert_eq!(valid.fail_safe(), valid);
    }
}

#[test]
fn mesh_yaml_shape() {
    let yaml = r#"
- name: no-legacy
  namespace: demo
  action: Deny
  selector: {matchLabels: {app: server}}
  rules: [{principals: ["spiffe://cluster.local/ns/other/sa/default"], ipBlocks: [10.0.0.0/8], ports: [80]}]
- {name: a, namespace: demo, action: ALLOW, rules: [{methods: [GET], paths: ["/api/*"], hosts: ["*"], headers: [{name: x, value: "*"}]}]}
- {name: b, namespace: demo, action: Audit}
"#;
    let policies: Vec<Policy> = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(policies[0].action, Action::Deny);
    assert_eq!(policies[1].action, Action::Allow);
    assert!(policies[1].has_l7_rules() && policies[1].rules[0].is_l7());
    assert!(!policies[0].has_l7_rules());
    assert_eq!(policies[2].action, Action::Audit);
    let again: Vec<Policy> =
        serde_saphyr::from_str(&serde_saphyr::to_string(&policies).unwrap()).unwrap();
    assert_eq!(again, policies);
    assert!(
        serde_saphyr::from_str::<Vec<Policy>>(
            "[{name: a, namespace: b, action: Deny, rules: [{verbs: [GET]}]}]"
        )
        .is_err()
    );
}
