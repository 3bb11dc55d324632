//! The capture agent in real network namespaces, driven by a fake tunnel (a real unix socket
//! server answering the handoff protocol) and a fake apiserver: enrollment and unenrollment
//! of running pods, a pod with no record found by its address, nothing released while the
//! tunnel has no view, replay to a restarted tunnel, the CNI install kept in place, CNI ADD
//! while the tunnel is down, and SIGTERM telling an upgrade from an uninstall. Needs root;
//! skips loudly otherwise (CI runs it as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_capture::state;
use ambit_handoff::{EnrolledPod, Enrollment};
use std::sync::{Arc, Mutex};
use support::*;

const PRIMARY: &str =
    r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"}]}"#;

fn view(synced: bool, namespaces: &[&str], pods: Vec<EnrolledPod>) -> Enrollment {
    Enrollment {
        synced,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        pods,
        opted_out: Vec::new(),
    }
}

#[test]
fn agent_reconciles_running_pods_with_the_enrollment() {
    if !require_root("agent_reconciles_running_pods_with_the_enrollment") {
        return;
    }
    let tag = format!("acap{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("ambit-capture-agent-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (bin, conf, state_dir) = (dir.join("bin"), dir.join("net.d"), dir.join("pods"));
    for d in [&bin, &conf] {
        std::fs::create_dir_all(d).unwrap();
    }
    let conflist = conf.join("10-k8s.conflist");
    std::fs::write(&conflist, PRIMARY).unwrap();
    let socket = dir.join("tunnel.sock");
    // Addresses unique to this run: the agent scans every netns in /run/netns.
    let subnet = format!("10.78.{}", std::process::id() % 250);
    let ns = |x: &str, n: u8| PodNetns::new(format!("{tag}-{x}"), format!("{subnet}.{n}"));
    let (a, b, c, d) = (ns("a", 1), ns("b", 2), ns("c", 3), ns("d", 4));
    let pods = [&a, &b, &c];
    // b's owner chose its tcp_tw_reuse (securityContext.sysctls): capture leaves it.
    b.set_tw_reuse(0);

    let enrollment = Arc::new(Mutex::new(view(true, &[], vec![])));
    let mut tunnel = FakeTunnel::start(&socket, enrollment.clone());
    let apiserver = FakeApiserver::start("ambit", "ambit-node");
    let kubeconfig = apiserver.kubeconfig(&dir);
    let plugin_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambit-capture","tunnelSocket":"{}","stateDir":"{}","prevResult":{{"cniVersion":"1.0.0"}}}}"#,
        socket.display(),
        state_dir.display()
    );

    // a and b start through the CNI plugin while "demo" is not enrolled: recorded, no rules.
    for (pod, uid) in [(&a, "a"), (&b, "b")] {
        let (ok, out) = cni("ADD", &pod.path(), uid, "demo", &plugin_conf);
        assert!(ok, "CNI ADD {uid}: {out}");
        assert!(!pod.captured());
        let record = state::load(&state_dir, uid).unwrap().unwrap();
        assert!(!record.captured && record.netns == pod.path(), "{record:?}");
    }
    assert_eq!(tunnel.count("add a"), 1);
    // CHECK: a pod recorded as not captured needs no rules.
    assert!(cni("CHECK", &a.path(), "a", "demo", &plugin_conf).0);

    let args: Vec<String> = [
        "--socket",
        socket.to_str().unwrap(),
        "--state",
        state_dir.to_str().unwrap(),
        "--netns-dir",
        "/run/netns",
        "--cni-bin-dir",
        bin.to_str().unwrap(),
        "--cni-conf-dir",
        conf.to_str().unwrap(),
        "--daemonset",
        "ambit/ambit-node",
        "--tick-ms",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("agent.log");
    let agent = Agent::start(&args, &kubeconfig, &log, &dir.join("proc"));

    // CNI install: the binary, the conflist entry, and again after the primary rewrites it.
    let plugin = bin.join("ambit-capture");
    poll("the plugin binary", || plugin.exists().then_some(()));
    let has_entry = || {
        std::fs::read_to_string(&conflist)
            .unwrap()
            .contains("ambit-capture")
    };
    poll("the conflist entry", || has_entry().then_some(()));
    std::fs::write(&conflist, PRIMARY).unwrap();
    poll("the conflist entry back", || has_entry().then_some(()));
    agent.wait_log("uninstall detection ready");

    // Labeling "demo": the running pods get rules, and c, which no CNI ADD ever recorded
    // (it started before ambit), is found by its address.
    let c_pod = EnrolledPod {
        uid: "c".into(),
        name: "pod-c".into(),
        namespace: "demo".into(),
        ips: vec![c.ip.parse().unwrap()],
    };
    tunnel.set(view(true, &["demo"], vec![c_pod.clone()]));
    for pod in pods {
        poll(&format!("rules in {}", pod.name), || {
            pod.captured().then_some(())
        });
    }
    let found = state::load(&state_dir, "c").unwrap().unwrap();
    assert!(found.captured && found.netns == c.path(), "{found:?}");
    // TIME_WAIT reuse, from the kernel's default only, recorded.
    for (pod, uid) in [(&a, "a"), (&c, "c")] {
        poll(&format!("tcp_tw_reuse=1 in {uid}"), || {
            (pod.tw_reuse() == 1).then_some(())
        });
        assert!(
            state::load(&state_dir, uid)
                .unwrap()
                .unwrap()
                .time_wait_reuse
        );
    }
    assert_eq!(b.tw_reuse(), 0);
    assert!(
        !state::load(&state_dir, "b")
            .unwrap()
            .unwrap()
            .time_wait_reuse
    );
    assert!(!d.captured(), "an unrelated netns was touched");
    agent.wait_log("found by address");

    // A restarted tunnel has lost every fd: each captured pod is handed to it again.
    drop(tunnel);
    tunnel = FakeTunnel::start(&socket, enrollment.clone());
    for uid in ["a", "b", "c"] {
        poll(&format!("{uid} replayed"), || {
            (tunnel.count(&format!("add {uid}")) >= 1).then_some(())
        });
    }

    // No view (a tunnel that lost the controller): nothing is released.
    tunnel.set(view(false, &[], vec![]));
    tunnel.wait_ticks(3);
    assert!(pods.iter().all(|p| p.captured()));
    assert_eq!(tunnel.count("remove a"), 0);

    // SIGTERM while the DaemonSet exists (an upgrade): everything stays for the next agent.
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(pods.iter().all(|p| p.captured()));
    assert!(has_entry() && plugin.exists());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("keeping capture rules")
    );

    // The next agent; the namespace is unlabeled: rules out, the tunnel lets go.
    let agent = Agent::start(&args, &kubeconfig, &log, &dir.join("proc"));
    tunnel.set(view(true, &[], vec![]));
    for (pod, uid) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        poll(&format!("{uid} released"), || {
            (!pod.captured() && tunnel.count(&format!("remove {uid}")) >= 1).then_some(())
        });
        assert!(!state::load(&state_dir, uid).unwrap().unwrap().captured);
    }
    assert_eq!([a.tw_reuse(), b.tw_reuse(), c.tw_reuse()], [2, 0, 2]);

    // Labeled again: captured again.
    tunnel.set(view(true, &["demo"], vec![c_pod]));
    for pod in pods {
        poll(&format!("rules in {} again", pod.name), || {
            pod.captured().then_some(())
        });
    }
    poll("tcp_tw_reuse=1 in a again", || {
        (a.tw_reuse() == 1).then_some(())
    });
    // The tunnel loses its view (it refuses to decide), then goes away: a new pod of a
    // namespace the last synced view did not enroll starts uncaptured; one of an enrolled
    // namespace waits (code 11, retried by the runtime).
    tunnel.set(view(false, &[], vec![]));
    let (ok, out) = cni("ADD", &d.path(), "d", "elsewhere", &plugin_conf);
    assert!(ok && !d.captured(), "{out}");
    assert!(!state::load(&state_dir, "d").unwrap().unwrap().captured);
    let (ok, out) = cni("ADD", &d.path(), "e", "demo", &plugin_conf);
    assert!(
        !ok && out.contains("\"code\":11") && out.contains("no view yet"),
        "{out}"
    );
    drop(tunnel);
    let (ok, out) = cni("ADD", &d.path(), "e", "demo", &plugin_conf);
    assert!(
        !ok && out.contains("\"code\":11") && out.contains("cannot reach"),
        "{out}"
    );
    assert!(state::load(&state_dir, "e").unwrap().is_none());
    let tunnel = FakeTunnel::start(&socket, enrollment);
    tunnel.wait_ticks(2);
    assert!(
        pods.iter().all(|p| p.captured()),
        "a tunnel without a view released pods"
    );

    // helm uninstall: the DaemonSet is gone. Every rule, the entry and the binary go.
    apiserver.answer(404);
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(
        pods.iter().all(|p| !p.captured()),
        "rules left after uninstall"
    );
    assert_eq!([a.tw_reuse(), b.tw_reuse(), c.tw_reuse()], [2, 0, 2]);
    assert!(!has_entry(), "conflist entry left after uninstall");
    let left: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(
        left,
        serde_json::from_str::<serde_json::Value>(PRIMARY).unwrap()
    );
    assert!(!plugin.exists(), "plugin binary left after uninstall");
    assert!(state::records(&state_dir).unwrap().0.is_empty());
    // Without a record, CHECK wants the rules (they are gone).
    assert!(!cni("CHECK", &a.path(), "a", "demo", &plugin_conf).0);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("uninstalling: the DaemonSet is gone")
    );
    eprintln!(
        "---- agent log ----\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    drop(tunnel);
    let _ = std::fs::remove_dir_all(&dir);
}
