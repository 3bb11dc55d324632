//! Checking a policy, and the fail-safe form of one that does not pass.

use crate::cidr::CidrError;
use crate::matchers::{
    host_pattern, is_auth_pattern, is_claim_key, is_condition, is_header_match, is_port,
    is_principal, is_segment, is_token, path_pattern,
};
use crate::{Action, Condition, HeaderMatch, Policy, Rule};

/// The first malformed value of a policy, named by its place (`rules[N].field`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "rules[{rule}].principals: {value:?} is neither \"*\" nor a SPIFFE id (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
    )]
    Principal { rule: usize, value: String },
    #[error("rules[{rule}].namespaces: {value:?} is not a namespace name")]
    Namespace { rule: usize, value: String },
    #[error("rules[{rule}].ipBlocks: {source}")]
    IpBlock { rule: usize, source: CidrError },
    #[error("rules[{rule}].ports: 0 is not a port")]
    Port { rule: usize },
    #[error("rules[{rule}].methods: {value:?} is not an HTTP method (a token such as GET)")]
    Method { rule: usize, value: String },
    #[error(
        "rules[{rule}].paths: {value:?} is not a path pattern: expected /exact, /dir/*, /prefix*, *suffix or *, without query, '*' elsewhere, or '.'/'..'/'//' segments"
    )]
    Path { rule: usize, value: String },
    #[error(
        "rules[{rule}].hosts: {value:?} is not a host pattern: expected a host name or [IPv6] without a port (rules have ports for that), *.domain or *"
    )]
    Host { rule: usize, value: String },
    #[error(
        "rules[{rule}].headers: {name:?}: {value:?} is not a header match: the name must be a header name, the value free of control characters"
    )]
    Header {
        rule: usize,
        name: String,
        value: String,
    },
    #[error(
        "rules[{rule}].{field}: {value:?} is not a request principal pattern: expected ISSUER/SUBJECT, prefix*, *suffix or *, not empty and free of control characters"
    )]
    RequestPrincipal {
        rule: usize,
        field: &'static str,
        value: String,
    },
    #[error("provider: {0}")]
    Provider(&'static str),
    #[error(
        "rules[{rule}].when: {key:?} is not a condition: expected key request.auth.claims[NAME] (nested: request.auth.claims[a][b]), values and/or notValues, each not empty and free of control characters"
    )]
    Condition { rule: usize, key: String },
}

impl Policy {
    /// Whether every value can be evaluated: CIDRs parse, principals are SPIFFE ids or `*`,
    /// ports are not 0, methods are tokens, paths and hosts are well-formed patterns, headers
    /// have token names. The first problem is returned, named by its place.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match (self.action, &self.provider) {
            (Action::Custom, None) => {
                return Err(PolicyError::Provider(
                    "a CUSTOM policy names the external authorization provider to ask",
                ));
            }
            (Action::Custom, Some(p)) if !crate::extauthz::is_provider_name(p) => {
                return Err(PolicyError::Provider(
                    "not a provider name (lowercase letters, digits, '-' and '.', at most 253)",
                ));
            }
            (Action::Allow | Action::Deny | Action::Audit, Some(_)) => {
                return Err(PolicyError::Provider(
                    "only a CUSTOM policy names a provider",
                ));
            }
            _ => {}
        }
        self.rules
            .iter()
            .enumerate()
            .try_for_each(|(i, r)| r.validate(i))
    }

    /// The valid policy that [`crate::authorize`] evaluates exactly as it evaluates this one:
    /// in an ALLOW or AUDIT policy a malformed value is dropped, and a rule left with an empty
    /// field (one that had values, none valid) is dropped; in a DENY policy a field with a
    /// malformed value is cleared (it matches anything: deny more rather than less). For the
    /// controller, which must send one tenant's broken policy without breaking anyone's config.
    /// A CUSTOM policy's rules are widened as a DENY's (asked more rather than less); without
    /// a valid provider it becomes the DENY it is evaluated as; a provider on another action
    /// is dropped.
    pub fn fail_safe(&self) -> Policy {
        let provider = self
            .provider
            .clone()
            .filter(|p| self.action == Action::Custom && crate::extauthz::is_provider_name(p));
        let action = match self.action {
            Action::Custom if provider.is_none() => Action::Deny,
            a => a,
        };
        let rules = match action {
            Action::Deny | Action::Custom => self.rules.iter().map(Rule::widened).collect(),
            Action::Allow | Action::Audit => self.rules.iter().filter_map(Rule::narrowed).collect(),
        };
        Policy {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            action,
            selector: self.selector.clone(),
            rules,
            provider,
        }
    }
}

impl Rule {
    fn validate(&self, rule: usize) -> Result<(), PolicyError> {
        let first_bad =
            |values: &[String], ok: fn(&str) -> bool| values.iter().find(|v| !ok(v)).cloned();
        if let Some(value) = first_bad(&self.principals, is_principal) {
            return Err(PolicyError::Principal { rule, value });
        }
        if let Some(value) = first_bad(&self.namespaces, is_segment) {
            return Err(PolicyError::Namespace { rule, value });
        }
        if let Some(Err(e)) = self.ip_blocks.iter().map(|b| b.cidr()).find(Result::is_err) {
            return Err(PolicyError::IpBlock {
                rule,
                source: e.clone(),
            });
        }
        if !self.ports.iter().all(|p| is_port(*p)) {
            return Err(PolicyError::Port { rule });
        }
        if let Some(value) = first_bad(&self.methods, is_token) {
            return Err(PolicyError::Method { rule, value });
        }
        if let Some(value) = first_bad(&self.paths, |p| path_pattern(p).is_some()) {
            return Err(PolicyError::Path { rule, value });
        }
        if let Some(value) = first_bad(&self.hosts, |h| host_pattern(h).is_some()) {
            return Err(PolicyError::Host { rule, value });
        }
        if let Some(h) = self.headers.iter().find(|h| !is_header_match(h)) {
            return Err(PolicyError::Header {
                rule,
                name: h.name.clone(),
                value: h.value.clone(),
            });
        }
        for (field, values) in [
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
        ] {
            if let Some(value) = first_bad(values, is_auth_pattern) {
                return Err(PolicyError::RequestPrincipal { rule, field, value });
            }
        }
        if let Some(c) = self.when.iter().find(|c| !is_condition(c)) {
            return Err(PolicyError::Condition {
                rule,
                key: c.key.clone(),
            });
        }
        Ok(())
    }

    /// For a DENY policy: fields holding a malformed value match anything.
    fn widened(&self) -> Rule {
        fn clear_if<T>(values: &[T], ok: impl Fn(&T) -> bool) -> Vec<T>
        where
            T: Clone,
        {
            if values.iter().all(ok) {
                values.to_vec()
            } else {
                Vec::new()
            }
        }
        let broken_names: Vec<&str> = self
            .headers
            .iter()
            .filter(|h| !is_header_match(h))
            .map(|h| h.name.as_str())
            .collect();
        Rule {
            principals: clear_if(&self.principals, |v| is_principal(v)),
            namespaces: clear_if(&self.namespaces, |v| is_segment(v)),
            ip_blocks: clear_if(&self.ip_blocks, |b| b.cidr().is_ok()),
            ports: clear_if(&self.ports, |p| is_port(*p)),
            methods: clear_if(&self.methods, |v| is_token(v)),
            paths: clear_if(&self.paths, |p| path_pattern(p).is_some()),
            hosts: clear_if(&self.hosts, |h| host_pattern(h).is_some()),
            // A header's entries are alternatives: one malformed entry makes the header
            // match anything, so the header goes (the others stay).
            headers: self
                .headers
                .iter()
                .filter(|h| !broken_names.iter().any(|n| n.eq_ignore_ascii_case(&h.name)))
                .cloned()
                .collect(),
            request_principals: clear_if(&self.request_principals, |v| is_auth_pattern(v)),
            // Negated: a malformed value leaves the field unknown where the valid ones do not
            // match, which a DENY counts as a match; so it just goes.
            not_request_principals: valid_only(&self.not_request_principals),
            when: self.when.iter().filter_map(Condition::widened).collect(),
        }
    }

    /// For an ALLOW or AUDIT policy: malformed values match nothing; `None` when a field is
    /// left with no value (the rule can never match).
    fn narrowed(&self) -> Option<Rule> {
        fn keep<T: Clone>(values: &[T], ok: impl Fn(&T) -> bool) -> Option<Vec<T>> {
            let kept: Vec<T> = values.iter().filter(|v| ok(v)).cloned().collect();
            (kept.is_empty() == values.is_empty()).then_some(kept)
        }
        let headers: Vec<HeaderMatch> = self
            .headers
            .iter()
            .filter(|h| is_header_match(h))
            .cloned()
            .collect();
        // Every header named must still have an entry.
        let all_named = self
            .headers
            .iter()
            .all(|h| headers.iter().any(|k| k.name.eq_ignore_ascii_case(&h.name)));
        if !all_named {
            return None;
        }
        Some(Rule {
            principals: keep(&self.principals, |v| is_principal(v))?,
            namespaces: keep(&self.namespaces, |v| is_segment(v))?,
            ip_blocks: keep(&self.ip_blocks, |b| b.cidr().is_ok())?,
            ports: keep(&self.ports, |p| is_port(*p))?,
            methods: keep(&self.methods, |v| is_token(v))?,
            paths: keep(&self.paths, |p| path_pattern(p).is_some())?,
            hosts: keep(&self.hosts, |h| host_pattern(h).is_some())?,
            headers,
            request_principals: keep(&self.request_principals, |v| is_auth_pattern(v))?,
            // A malformed value of a negated field leaves the field unknown at best.
            not_request_principals: self
                .not_request_principals
                .iter()
                .all(|v| is_auth_pattern(v))
                .then(|| self.not_request_principals.clone())?,
            when: self
                .when
                .iter()
                .map(Condition::narrowed)
                .collect::<Option<_>>()?,
        })
    }
}

fn valid_only(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter(|v| is_auth_pattern(v))
        .cloned()
        .collect()
}

impl Condition {
    /// For a DENY policy, as [`Rule::widened`] does fields; `None` when the condition is left
    /// matching anything (conditions are ANDed: it goes).
    fn widened(&self) -> Option<Condition> {
        is_claim_key(&self.key).then_some(())?;
        let values = if self.values.iter().all(|v| is_auth_pattern(v)) {
            self.values.clone()
        } else {
            Vec::new()
        };
        let not_values = valid_only(&self.not_values);
        (!values.is_empty() || !not_values.is_empty()).then(|| Condition {
            key: self.key.clone(),
            values,
            not_values,
        })
    }

    /// For an ALLOW or AUDIT policy: `None` when the condition can never hold for sure
    /// (malformed key or `notValues`, or no valid value left).
    fn narrowed(&self) -> Option<Condition> {
        is_claim_key(&self.key).then_some(())?;
        if !self.not_values.iter().all(|v| is_auth_pattern(v)) {
            return None;
        }
        let values = valid_only(&self.values);
        if values.is_empty() && (!self.values.is_empty() || self.not_values.is_empty()) {
            return None;
        }
        Some(Condition {
            key: self.key.clone(),
            values,
            not_values: self.not_values.clone(),
        })
    }
}
