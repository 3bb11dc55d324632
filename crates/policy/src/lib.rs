//! Authorization policies and their evaluation, L4 (node tunnel, TCP at a waypoint) and L7
//! (HTTP at a waypoint). Pure: no I/O, no clock, no allocation per decision in the common case;
//! every entry point is a plain function of its arguments, ready for `cargo fuzz`.
//!
//! Semantics (as Istio's AuthorizationPolicy): a matching DENY policy wins; otherwise, if any
//! ALLOW policy applies to the target, the request must match one of them; with no ALLOW
//! policy it is allowed. AUDIT policies never change the decision, they are only reported.
//! A matching CUSTOM policy names an external authorization provider the request must also
//! pass ([`Verdict::ext_authz`]; the waypoint asks it, this crate does no I/O); at L4, where no
//! provider can be asked, a CUSTOM policy that may match denies.
//!
//! A rule value that cannot be evaluated is *unknown*, and unknown fails safe: an ALLOW rule
//! must match for sure, a DENY rule denies when it matches or might. That covers L7 fields at
//! L4 (`request: None`): in an ALLOW policy a rule with L7 fields matches nothing, in a DENY
//! policy it matches on its L4 fields alone (deny more rather than less). It also covers
//! malformed values, which [`Policy::validate`] reports and [`Policy::fail_safe`] rewrites into
//! the valid policy that is evaluated the same way.

mod authn;
mod cidr;
mod extauthz;
mod matchers;
mod model;
mod validate;

pub use authn::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication, RequestAuthnError};
pub use cidr::{Cidr, CidrError};
pub use extauthz::{
    ExtAuthzBody, ExtAuthzProtocol, ExtAuthzProvider, ExtAuthzProviderError, header_listed,
};
pub use matchers::normalize_path;
pub use model::{
    Action, Condition, Decision, HeaderMatch, HttpRequest, IpBlock, Policy, PolicyScope,
    RequestAuth, Rule, Source, Target, Verdict,
};
pub use validate::PolicyError;

use matchers::Outcome;
use std::borrow::Cow;

/// An [`HttpRequest`] prepared once for all rules.
struct Request<'a> {
    method: &'a http::Method,
    path: Cow<'a, str>,
    /// How a server that decodes `%2F` would read the path, when that differs.
    alt_path: Option<String>,
    host: &'a str,
    headers: &'a http::HeaderMap,
    auth: Option<&'a RequestAuth>,
}

impl<'a> Request<'a> {
    fn new(r: &HttpRequest<'a>) -> Self {
        Self {
            method: r.method,
            path: normalize_path(r.path),
            alt_path: matchers::alternate_path(r.path),
            host: matchers::request_host(r.host),
            headers: r.headers,
            auth: r.auth,
        }
    }
}

impl Policy {
    fn applies_to(&self, target: &Target<'_>) -> bool {
        PolicyScope::selects(&self.namespace, self.selector.as_ref(), target)
    }

    /// Kleene OR over the rules; no rules: no match.
    fn evaluate(
        &self,
        target: &Target<'_>,
        source: &Source,
        request: Option<&Request<'_>>,
    ) -> Outcome {
        matchers::any(&self.rules, |r| r.evaluate(target, source, request))
    }
}

impl Rule {
    /// Kleene AND over the non-empty fields, cheapest first.
    fn evaluate(
        &self,
        target: &Target<'_>,
        source: &Source,
        request: Option<&Request<'_>>,
    ) -> Outcome {
        use matchers as m;
        let id = source.identity.as_ref();
        let mut out = Outcome::Yes;
        // A non-empty field ANDed in; stops at the first field that cannot match.
        macro_rules! field {
            ($values:expr, $outcome:expr) => {
                if !$values.is_empty() {
                    out = out.min($outcome);
                    if out == Outcome::No {
                        return Outcome::No;
                    }
                }
            };
        }
        field!(
            self.ports,
            m::any(&self.ports, |p| m::port(*p, target.port))
        );
        field!(
            self.principals,
            m::any(&self.principals, |p| m::principal(p, id))
        );
        field!(
            self.namespaces,
            m::any(&self.namespaces, |n| m::namespace(n, id))
        );
        field!(
            self.ip_blocks,
            m::any(&self.ip_blocks, |b| {
                b.cidr()
                    .map_or(Outcome::Unknown, |c| Outcome::of(c.contains(source.ip)))
            })
        );
        if !self.is_l7() {
            return out;
        }
        let Some(r) = request else {
            // L4 only: the L7 fields can be neither checked nor ignored.
            return out.min(Outcome::Unknown);
        };
        field!(
            self.methods,
            m::any(&self.methods, |v| m::method(v, r.method))
        );
        field!(self.hosts, m::any(&self.hosts, |h| m::host(h, r.host)));
        field!(
            self.paths,
            m::paths(&self.paths, &r.path, r.alt_path.as_deref())
        );
        field!(self.headers, m::headers(&self.headers, r.headers));
        let principal = r.auth.map(|a| a.principal.as_str());
        field!(
            self.request_principals,
            m::any(&self.request_principals, |p| m::request_principal(
                p, principal
            ))
        );
        field!(
            self.not_request_principals,
            m::any(&self.not_request_principals, |p| m::request_principal(
                p, principal
            ))
            .not()
        );
        field!(self.when, m::all(&self.when, |c| m::condition(c, r.auth)));
        out
    }
}

/// Decides a connection (`request: None`: the node tunnel, or a TCP port at a waypoint) or an
/// HTTP request to `target` from `source`, under `policies` (any namespaces: only those that
/// apply to the target count). The first matching DENY and AUDIT policies, in slice order, are
/// the ones named.
pub fn authorize(
    policies: &[Policy],
    target: &Target<'_>,
    source: &Source,
    request: Option<&HttpRequest<'_>>,
) -> Verdict {
    let request = request.map(Request::new);
    let request = request.as_ref();
    let mut denied_by: Option<&Policy> = None;
    let mut audited_by: Option<&Policy> = None;
    let mut any_allow = false;
    let mut allowed = false;
    let mut ext_authz: Vec<String> = Vec::new();
    for p in policies.iter().filter(|p| p.applies_to(target)) {
        match p.action {
            // Asked when it may match (ask more rather than less); denies where it cannot be
            // asked: at L4, or without a provider (which validation refuses).
            Action::Custom => {
                if p.evaluate(target, source, request) >= Outcome::Unknown {
                    match (&p.provider, request) {
                        (Some(provider), Some(_)) if extauthz::is_provider_name(provider) => {
                            if !ext_authz.contains(provider) {
                                ext_authz.push(provider.clone());
                            }
                        }
                        _ => {
                            denied_by.get_or_insert(p);
                        }
                    }
                }
            }
            Action::Deny if denied_by.is_none() => {
                if p.evaluate(target, source, request) >= Outcome::Unknown {
                    denied_by = Some(p);
                }
            }
            Action::Allow => {
                any_allow = true;
                allowed = allowed || p.evaluate(target, source, request) == Outcome::Yes;
            }
            Action::Audit if audited_by.is_none() => {
                if p.evaluate(target, source, request) == Outcome::Yes {
                    audited_by = Some(p);
                }
            }
            Action::Deny | Action::Audit => {}
        }
    }
    let decision = match denied_by {
        Some(p) => Decision::Deny(Some(p.name.clone())),
        None if !any_allow || allowed => Decision::Allow,
        None => Decision::Deny(None),
    };
    if decision != Decision::Allow {
        ext_authz.clear();
    }
    Verdict {
        decision,
        audit: audited_by.map(|p| p.name.clone()),
        ext_authz,
    }
}

#[cfg(test)]
mod tests;
