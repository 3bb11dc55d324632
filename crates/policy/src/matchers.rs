//! One value of a rule field against a connection or a request, in three-valued logic: a value
//! that cannot be evaluated (malformed, or L7 when only L4 is known) is [`Outcome::Unknown`],
//! which an ALLOW policy counts as no match and a DENY policy as a match. Each value kind has
//! one validity check here, shared by matching, [`crate::Policy::validate`] and
//! [`crate::Policy::fail_safe`], so the three never disagree.

use ambit_identity::SpiffeId;
use std::borrow::Cow;

/// Ordered so that Kleene AND is `min` and OR is `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    No,
    Unknown,
    Yes,
}

impl Outcome {
    pub(crate) fn of(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }

    /// Kleene NOT: unknown stays unknown.
    pub(crate) fn not(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::Unknown => Self::Unknown,
            Self::No => Self::Yes,
        }
    }
}

/// Kleene AND over a field's values (conditions); stops at the first that cannot match.
pub(crate) fn all<T>(values: &[T], mut f: impl FnMut(&T) -> Outcome) -> Outcome {
    let mut worst = Outcome::Yes;
    for v in values {
        match f(v) {
            Outcome::No => return Outcome::No,
            o => worst = worst.min(o),
        }
    }
    worst
}

/// Kleene OR over a field's values; the caller handles an empty field (no constraint).
pub(crate) fn any<T>(values: &[T], mut f: impl FnMut(&T) -> Outcome) -> Outcome {
    let mut best = Outcome::No;
    for v in values {
        match f(v) {
            Outcome::Yes => return Outcome::Yes,
            o => best = best.max(o),
        }
    }
    best
}

// ---- principals and namespaces ----

/// The same limits ambit-identity puts on a SPIFFE id, so that a value refused here is one no
/// identity can ever carry.
const MAX_SPIFFE_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// `(trust domain, namespace, service account)` of a principal written as a SPIFFE id, checked
/// as ambit-identity checks ids (without allocating: this runs per connection).
pub(crate) fn spiffe_parts(s: &str) -> Option<(&str, &str, &str)> {
    if s.len() > MAX_SPIFFE_ID_LEN {
        return None;
    }
    let (td, path) = s.strip_prefix("spiffe://")?.split_once('/')?;
    let td_ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    let (ns, sa) = path.strip_prefix("ns/")?.split_once("/sa/")?;
    (td_ok && is_segment(ns) && is_segment(sa)).then_some((td, ns, sa))
}

/// A namespace or service account as a SPIFFE id segment.
pub(crate) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

pub(crate) fn is_principal(s: &str) -> bool {
    s == "*" || spiffe_parts(s).is_some()
}

pub(crate) fn principal(pattern: &str, id: Option<&SpiffeId>) -> Outcome {
    if pattern == "*" {
        return Outcome::of(id.is_some());
    }
    match spiffe_parts(pattern) {
        None => Outcome::Unknown,
        Some((td, ns, sa)) => Outcome::of(id.is_some_and(|id| {
            id.trust_domain().as_str() == td && id.namespace() == ns && id.service_account() == sa
        })),
    }
}

pub(crate) fn namespace(value: &str, id: Option<&SpiffeId>) -> Outcome {
    if !is_segment(value) {
        return Outcome::Unknown;
    }
    Outcome::of(id.is_some_and(|id| id.namespace() == value))
}

// ---- ports and methods ----

pub(crate) fn is_port(p: u16) -> bool {
    p != 0
}

pub(crate) fn port(value: u16, port: u16) -> Outcome {
    if is_port(value) {
        Outcome::of(value == port)
    } else {
        Outcome::Unknown
    }
}

/// An RFC 9110 token: methods and header names.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

pub(crate) fn method(value: &str, method: &http::Method) -> Outcome {
    if is_token(value) {
        Outcome::of(method.as_str() == value)
    } else {
        Outcome::Unknown
    }
}

// ---- paths ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathPattern<'a> {
    /// `*`
    Any,
    /// `/a/b`
    Exact(&'a str),
    /// `/a/*`, kept as `/a`: `/a` itself and everything below it.
    Dir(&'a str),
    /// `/a*`, kept as `/a`: any path starting so.
    Prefix(&'a str),
    /// `*.js`, kept as `.js`.
    Suffix(&'a str),
}

/// Printable ASCII without `?` and `#`: a path pattern never sees a query or fragment.
fn path_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

/// Whether `p` is already what [`normalize_path`] makes of it (a pattern that is not could
/// never match).
fn normalized(p: &str) -> bool {
    matches!(normalize_path(p), Cow::Borrowed(n) if n.len() == p.len())
}

pub(crate) fn path_pattern(p: &str) -> Option<PathPattern<'_>> {
    if p == "*" {
        return Some(PathPattern::Any);
    }
    if let Some(suffix) = p.strip_prefix('*') {
        return (!suffix.contains('*') && path_chars(suffix))
            .then_some(PathPattern::Suffix(suffix));
    }
    if !p.starts_with('/') || !path_chars(p) {
        return None;
    }
    match p.strip_suffix('*') {
        None => (!p.contains('*') && normalized(p)).then_some(PathPattern::Exact(p)),
        Some(prefix) if prefix.contains('*') => None,
        Some(prefix) => match prefix.strip_suffix('/') {
            Some(dir) => normalized(prefix).then_some(PathPattern::Dir(dir)),
            None => {
                // The complete segments must be normal, the last one only free of escapes
                // that normalizing rewrites: `/.well-known*` and `/x/.*` are fine.
                let (head, tail) = prefix.split_at(prefix.rfind('/').map_or(0, |i| i + 1));
                (normalized(head) && decode_unreserved(tail) == tail)
                    .then_some(PathPattern::Prefix(prefix))
            }
        },
    }
}

fn path_matches(pattern: PathPattern<'_>, path: &str) -> bool {
    match pattern {
        PathPattern::Any => true,
        PathPattern::Exact(p) => path == p,
        PathPattern::Dir(dir) => path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        PathPattern::Prefix(p) => path.starts_with(p),
        PathPattern::Suffix(s) => path.ends_with(s),
    }
}

/// The paths field: every pattern against the normalized path and, when the request's path
/// reads differently to a server that decodes `%2F`/`%5C` or takes `\` for `/`, against that
/// reading too; where the two readings disagree the outcome is unknown.
pub(crate) fn paths(patterns: &[String], path: &str, alt: Option<&str>) -> Outcome {
    let one = |path: &str| {
        any(patterns, |p| match path_pattern(p) {
            Some(pattern) => Outcome::of(path_matches(pattern, path)),
            None => Outcome::Unknown,
        })
    };
    let primary = one(path);
    match alt.map(one) {
        Some(other) if other != primary => Outcome::Unknown,
        _ => primary,
    }
}

/// What paths are matched against: the path without its query or fragment, with
/// percent-encoded unreserved characters decoded (other escapes upper-cased), runs of `/`
/// merged and `.`/`..` segments resolved (RFC 3986 §6.2.2). Anything not starting with `/`
/// (`*`, absolute form) is left as is. Borrows when the path is already normal.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let normal = !path.contains('%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..");
    if !path.starts_with('/') || normal {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `%XX` of an unreserved character becomes the character; other escapes keep their meaning
/// and get upper-case digits, so that `%2f` and `%2F` read the same.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = hi * 16 + lo;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c);
            } else {
                out.extend([
                    b'%',
                    b[i + 1].to_ascii_uppercase(),
                    b[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only ASCII was decoded and every other byte copied: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The request path as a server that decodes `%2F` and `%5C` and takes `\` for `/` reads it,
/// normalized; `None` when that reading is the same as [`normalize_path`]'s.
pub(crate) fn alternate_path(path: &str) -> Option<String> {
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let lower = |s: &str| {
        path.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
    };
    if !path.starts_with('/') || !(path.contains('\\') || lower("%2f") || lower("%5c")) {
        return None;
    }
    let mut slashed = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(c) = rest.chars().next() {
        let escape = rest
            .get(..3)
            .filter(|e| e.eq_ignore_ascii_case("%2f") || e.eq_ignore_ascii_case("%5c"));
        if escape.is_some() {
            slashed.push('/');
            rest = &rest[3..];
        } else {
            slashed.push(if c == '\\' { '/' } else { c });
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(normalize_path(&slashed).into_owned())
}

// ---- hosts ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostPattern<'a> {
    /// `*`
    Any,
    /// `*.example.com`, kept as `example.com`: any name below it (not the name itself).
    Below(&'a str),
    Exact(&'a str),
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Host patterns carry no port (rules have `ports` for that); a trailing dot is allowed.
pub(crate) fn host_pattern(p: &str) -> Option<HostPattern<'_>> {
    if p == "*" {
        return Some(HostPattern::Any);
    }
    if let Some(below) = p.strip_prefix("*.") {
        let below = below.strip_suffix('.').unwrap_or(below);
        return is_dns_name(below).then_some(HostPattern::Below(below));
    }
    if let Some(v6) = p.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
            .then_some(HostPattern::Exact(p));
    }
    let name = p.strip_suffix('.').unwrap_or(p);
    is_dns_name(name).then_some(HostPattern::Exact(name))
}

/// The request's host without its port or trailing dot.
pub(crate) fn request_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// `host` as [`request_host`] returns it.
pub(crate) fn host(pattern: &str, host: &str) -> Outcome {
    let h = host.as_bytes();
    match host_pattern(pattern) {
        None => Outcome::Unknown,
        Some(HostPattern::Any) => Outcome::of(!host.is_empty()),
        Some(HostPattern::Exact(name)) => Outcome::of(h.eq_ignore_ascii_case(name.as_bytes())),
        Some(HostPattern::Below(name)) => {
            let n = name.len();
            Outcome::of(
                h.len() > n + 1
                    && h[h.len() - n - 1] == b'.'
                    && h[h.len() - n..].eq_ignore_ascii_case(name.as_bytes()),
            )
        }
    }
}

// ---- headers ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValuePattern<'a> {
    Present,
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
}

/// What an HTTP field value may hold: no control characters but tab.
fn value_chars(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

pub(crate) fn value_pattern(v: &str) -> Option<ValuePattern<'_>> {
    if !value_chars(v) {
        return None;
    }
    Some(if v == "*" {
        ValuePattern::Present
    } else if let Some(s) = v.strip_prefix('*') {
        ValuePattern::Suffix(s)
    } else if let Some(p) = v.strip_suffix('*') {
        ValuePattern::Prefix(p)
    } else {
        ValuePattern::Exact(v)
    })
}

pub(crate) fn is_header_match(h: &crate::HeaderMatch) -> bool {
    is_token(&h.name) && value_pattern(&h.value).is_some()
}

/// One header entry. A header sent several times matches only if every copy does, and is
/// unknown if only some do (the app may read any of them).
pub(crate) fn header(h: &crate::HeaderMatch, headers: &http::HeaderMap) -> Outcome {
    let (true, Some(pattern)) = (is_token(&h.name), value_pattern(&h.value)) else {
        return Outcome::Unknown;
    };
    let (mut yes, mut no) = (false, false);
    for value in headers.get_all(h.name.as_str()) {
        let v = value.as_bytes();
        let ok = match pattern {
            ValuePattern::Present => true,
            ValuePattern::Exact(e) => v == e.as_bytes(),
            ValuePattern::Prefix(p) => v.starts_with(p.as_bytes()),
            ValuePattern::Suffix(s) => v.ends_with(s.as_bytes()),
        };
        if ok {
            yes = true;
        } else {
            no = true;
        }
    }
    match (yes, no) {
        (true, false) => Outcome::Yes,
        (true, true) => Outcome::Unknown,
        (false, _) => Outcome::No,
    }
}

/// The headers field: entries naming the same header (case-insensitively) are alternatives,
/// and every header named must match.
pub(crate) fn headers(entries: &[crate::HeaderMatch], headers: &http::HeaderMap) -> Outcome {
    let mut all = Outcome::Yes;
    for (i, first) in entries.iter().enumerate() {
        let same = |h: &&crate::HeaderMatch| h.name.eq_ignore_ascii_case(&first.name);
        if entries[..i].iter().any(|h| same(&h)) {
            continue; // This name's group was evaluated at its first entry.
        }
        let mut group = Outcome::No;
        for h in entries[i..].iter().filter(same) {
            group = group.max(header(h, headers));
        }
        all = all.min(group);
        if all == Outcome::No {
            break;
        }
    }
    all
}

// ---- request authentication: principals and claims ----

/// A string pattern (`exact`, `prefix*`, `*suffix`, `*`) against a value.
fn value_matches(pattern: ValuePattern<'_>, v: &str) -> bool {
    match pattern {
        ValuePattern::Present => true,
        ValuePattern::Exact(e) => v == e,
        ValuePattern::Prefix(p) => v.starts_with(p),
        ValuePattern::Suffix(s) => v.ends_with(s),
    }
}

/// A request principal or claim value pattern: non-empty, free of control characters.
pub(crate) fn auth_pattern(p: &str) -> Option<ValuePattern<'_>> {
    if p.is_empty() {
        return None;
    }
    value_pattern(p)
}

pub(crate) fn is_auth_pattern(p: &str) -> bool {
    auth_pattern(p).is_some()
}

/// `principal`: the request's, `None` without a token (which no pattern matches, not even
/// `*`).
pub(crate) fn request_principal(pattern: &str, principal: Option<&str>) -> Outcome {
    match auth_pattern(pattern) {
        None => Outcome::Unknown,
        Some(p) => Outcome::of(principal.is_some_and(|v| value_matches(p, v))),
    }
}

const CLAIMS_KEY: &str = "request.auth.claims";

/// The claim names of a `when` key, `request.auth.claims[a][b]` -> `a`, `b`; `None` for any
/// other key (the only kind of condition there is so far).
pub(crate) fn claim_path(key: &str) -> Option<std::str::Split<'_, &'static str>> {
    let rest = key.strip_prefix(CLAIMS_KEY)?;
    let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
    let ok = inner
        .split("][")
        .all(|name| !name.is_empty() && !name.contains(['[', ']']) && value_chars(name));
    ok.then(|| inner.split("]["))
}

pub(crate) fn is_claim_key(key: &str) -> bool {
    claim_path(key).is_some()
}

pub(crate) fn is_condition(c: &crate::Condition) -> bool {
    is_claim_key(&c.key)
        && (!c.values.is_empty() || !c.not_values.is_empty())
        && c.values
            .iter()
            .chain(&c.not_values)
            .all(|v| is_auth_pattern(v))
}

/// Claims whose string value is a space-separated list (OAuth 2.0 `scope`, RFC 8693 §4.2).
const SPACE_SEPARATED: [&str; 3] = ["scope", "scp", "permission"];

/// Whether `pattern` matches `claim` (named `name`): a string (split on spaces for
/// [`SPACE_SEPARATED`] claims), or a list of strings where any may match. Other JSON types
/// match nothing.
fn claim_matches(pattern: ValuePattern<'_>, name: &str, claim: &serde_json::Value) -> bool {
    use serde_json::Value;
    match claim {
        Value::String(s) if SPACE_SEPARATED.contains(&name) => s
            .split(' ')
            .any(|e| !e.is_empty() && value_matches(pattern, e)),
        Value::String(s) => value_matches(pattern, s),
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| value_matches(pattern, s))),
        _ => false,
    }
}

/// A `when` condition against the request's validated token (`None`: no token; then `values`
/// cannot match and `not_values` cannot either, so a condition with only `not_values` holds).
pub(crate) fn condition(c: &crate::Condition, auth: Option<&crate::RequestAuth>) -> Outcome {
    let Some(mut path) = claim_path(&c.key) else {
        return Outcome::Unknown;
    };
    let claim = auth.and_then(|a| {
        let first = path.next()?;
        path.try_fold((first, a.claims.get(first)?), |(_, v), name| {
            Some((name, v.as_object()?.get(name)?))
        })
    });
    let one = |p: &String| match auth_pattern(p) {
        None => Outcome::Unknown,
        Some(p) => Outcome::of(claim.is_some_and(|(name, v)| claim_matches(p, name, v))),
    };
    let mut out = Outcome::Yes;
    if !c.values.is_empty() {
        out = out.min(any(&c.values, one));
    }
    if !c.not_values.is_empty() {
        out = out.min(any(&c.not_values, one).not());
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Outcome::Unknown;
    }
    out
}
