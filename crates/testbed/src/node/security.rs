//! `securityContext` as `setpriv` arguments: user and group, supplemental groups, no_new_privs,
//! and the capability bounding set (the container runtimes' default set, plus `add`, minus
//! `drop`; everything when privileged). Applied last, after the mounts, just before exec.

use k8s_openapi::api::core::v1::{Container, PodSecurityContext};

/// The capabilities containerd and CRI-O give a container that asks for nothing.
const DEFAULT_CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "fsetid",
    "fowner",
    "mknod",
    "net_raw",
    "setgid",
    "setuid",
    "setfcap",
    "setpcap",
    "net_bind_service",
    "sys_chroot",
    "kill",
    "audit_write",
];

fn cap_name(k8s: &str) -> String {
    let lower = k8s.to_ascii_lowercase();
    lower.strip_prefix("cap_").unwrap_or(&lower).to_owned()
}

/// `setpriv` and its options, or nothing when the container runs as privileged root.
pub fn setpriv_args(pod: Option<&PodSecurityContext>, c: &Container) -> Vec<String> {
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|p| p.run_as_user));
    let group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|p| p.run_as_group));
    let groups: Vec<String> = pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .iter()
        .map(i64::to_string)
        .chain(pod.and_then(|p| p.fs_group).map(|g| g.to_string()))
        .collect();
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);

    let mut args = Vec::new();
    if !privileged {
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let drop: Vec<String> = caps
            .and_then(|c| c.drop.clone())
            .unwrap_or_default()
            .iter()
            .map(|d| cap_name(d))
            .collect();
        let add: Vec<String> = caps
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .iter()
            .map(|a| cap_name(a))
            .collect();
        let mut set: Vec<String> = if drop.iter().any(|d| d == "all") {
            Vec::new()
        } else {
            DEFAULT_CAPS
                .iter()
                .map(|s| (*s).to_owned())
                .filter(|c| !drop.contains(c))
                .collect()
        };
        if add.iter().any(|a| a == "all") {
            set.clear();
            args.push("--bounding-set=+all".to_owned());
        } else {
            set.extend(
                add.into_iter()
                    .filter(|a| !drop.contains(a) || drop.iter().any(|d| d == "all")),
            );
            set.sort();
            set.dedup();
            let list: String = set.iter().map(|c| format!(",+{c}")).collect();
            args.push(format!("--bounding-set=-all{list}"));
            args.push(format!("--inh-caps=-all{list}"));
        }
    }
    if let Some(g) = group {
        args.push(format!("--regid={g}"));
    }
    if let Some(u) = user {
        args.push(format!("--reuid={u}"));
        if groups.is_empty() {
            args.push("--clear-groups".to_owned());
        }
    }
    if !groups.is_empty() {
        args.push(format!("--groups={}", groups.join(",")));
    }
    if no_new_privs {
        args.push("--no-new-privs".to_owned());
    }
    if args.is_empty() {
        return args;
    }
    let mut out = vec!["setpriv".to_owned()];
    out.extend(args);
    out.push("--".to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(sc: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "securityContext": sc})).unwrap_or_default()
    }

    #[test]
    fn default_caps_add_drop_and_users() {
        let args = setpriv_args(None, &container(json!({})));
        assert!(
            args.iter()
                .any(|a| a.starts_with("--bounding-set=-all,+audit_write,+chown")),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.contains("net_admin")));

        let args = setpriv_args(
            None,
            &container(
                json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CAP_NET_RAW"]}}),
            ),
        );
        assert!(
            args.contains(&"--bounding-set=-all,+net_admin,+net_raw".to_owned()),
            "{args:?}"
        );

        let pod: PodSecurityContext =
            serde_json::from_value(json!({"runAsUser": 1000, "runAsGroup": 2000}))
                .unwrap_or_default();
        let args = setpriv_args(
            Some(&pod),
            &container(json!({"allowPrivilegeEscalation": false})),
        );
        for want in [
            "--reuid=1000",
            "--regid=2000",
            "--clear-groups",
            "--no-new-privs",
        ] {
            assert!(
                args.contains(&want.to_owned()),
                "{want} missing from {args:?}"
            );
        }

        assert!(setpriv_args(None, &container(json!({"privileged": true}))).is_empty());
    }
}
