//! The testbed's own end-to-end test: a real control plane, two netns nodes, and workloads
//! that must behave as on a cluster. Needs root (CI runs as root); skips loudly otherwise.
//!
//! One test function on purpose: `up` is shared by every check and `down` must run last.

use ambit_testbed::{Config, Testbed};
use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

/// Instance used by this test: its own name, addresses and ports, so it can run beside a demo.
const NAME: &str = "tbtest";
const ID: u8 = 42;

use ambit_testbed::eventually;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn ip_of(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

/// Takes the testbed down when a check panics, so a failed run leaves nothing behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_runs_workloads_like_a_cluster() -> Result<()> {
    if ambit_testbed::skip_without_root("testbed_runs_workloads_like_a_cluster") {
        return Ok(());
    }
    // The agent and the sample images must be current builds.
    ambit_testbed::build_binaries(&["ambit-testbed", "ambit-samples"])?;
    let tb = Testbed::new(Config::new(NAME, ID)?.with_nodes(2)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;

    let start = Instant::now();
    let guard = ambit_testbed::DownOnDrop(&tb);
    tb.up().await?;
    let up_time = start.elapsed();
    eprintln!("testbed up: 2 nodes Ready in {up_time:?}");

    let result = checks(&tb).await;

    let start = Instant::now();
    std::mem::forget(guard);
    let down = tb.down();
    let down_time = start.elapsed();
    eprintln!("testbed down in {down_time:?}");
    result?;
    down?;

    assert!(
        up_time < Duration::from_secs(30),
        "warm up took {up_time:?}, budget 30 s"
    );
    assert!(
        down_time < Duration::from_secs(10),
        "down took {down_time:?}, budget 10 s"
    );
    let st = tb.status().await;
    assert!(st.is_down(), "left behind after down:\n{st}");
    assert!(ambit_testbed::node::mounts_under(&tb.config.state_dir).is_empty());
    let leftover: Vec<String> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|c| {
            c.contains(&format!("/run/ambit-testbed/{NAME}"))
                || c.contains(&format!("--name={NAME}"))
        })
        .collect();
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?,
        forward_before,
        "the host's ip_forward changed"
    );
    Ok(())
}

async fn checks(tb: &Testbed) -> Result<()> {
    let client = tb.client().await?;
    let ns = "default";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    // A Deployment of the sample server, and a Service over it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(&pp, &obj(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "echo"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "echo"}},
                "template": {
                    "metadata": {"labels": {"app": "echo"}},
                    "spec": {"containers": [{
                        "name": "server", "image": "ghcr.io/ambit/ambit-echo-server:dev", "args": ["8080"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                    }]},
                },
            },
        }))?)
        .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &pp,
            &obj(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
                "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }))?,
        )
        .await?;
    let server = eventually(
        "the echo server pod to be Ready with an IP",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=echo"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|p| pod_ready(p) && ip_of(p).is_some())
        },
    )
    .await?;
    let server_ip = ip_of(&server).context("server IP")?;
    let server_name = server.metadata.name.clone().context("server name")?;
    let server_node = node_of(&server);
    let node_k = tb
        .config
        .node_number(&server_node)
        .context("server on a testbed node")?;
    let cidr_prefix = tb
        .config
        .pod_cidr(node_k)
        .trim_end_matches(".0/24")
        .to_owned();
    assert!(
        server_ip.starts_with(&format!("{cidr_prefix}.")),
        "pod IP {server_ip} outside its node's CIDR {}",
        tb.config.pod_cidr(node_k)
    );

    // The EndpointSlice controller sees it Ready at its IP.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    eventually(
        "an EndpointSlice listing the server",
        Duration::from_secs(30),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
                .await
                .ok()?;
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .any(|e| {
                    e.addresses.contains(&server_ip)
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                })
                .then_some(())
        },
    )
    .await?;

    // A client Pod, kept off the server's node by anti-affinity, reaches the server by pod IP.
    pods.create(&pp, &obj(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "labels": {"app": "client"}},
        "spec": {
            "restartPolicy": "Never",
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "echo"}}, "topologyKey": "kubernetes.io/hostname",
            }]}},
            "containers": [{"name": "client", "image": "ambit-echo-client", "args": [format!("{server_ip}:8080"), "hello-testbed"]}],
        },
    }))?)
    .await?;
    let client_pod = eventually(
        "the client pod to finish",
        Duration::from_secs(60),
        || async {
            let p = pods.get("client").await.ok()?;
            let phase = p.status.as_ref()?.phase.clone()?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
        },
    )
    .await?;
    let log = std::fs::read_to_string(tb.container_log(ns, "client", "client"))?;
    let phase = client_pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    assert_eq!(phase, "Succeeded", "client log:\n{log}");
    assert_ne!(
        node_of(&client_pod),
        server_node,
        "anti-affinity put client and server on one node"
    );
    assert!(
        log.contains(&format!("hello from {server_name}")),
        "client log:\n{log}"
    );
    assert!(log.contains("hello-testbed"), "client log:\n{log}");
    // `kubectl logs` goes apiserver -> the agent's kubelet log endpoint.
    let out = tb
        .kubectl()
        .args(["logs", "client", "--tail", "1"])
        .output()?;
    assert!(
        out.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-testbed\n");

    // Through the Service's ClusterIP, from the server's node and from the other one, with the
    // address taken from the service env vars kubelet would set, and from cluster DNS.
    let other_node = if node_k == 1 {
        tb.config.node_name(2)
    } else {
        tb.config.node_name(1)
    };
    let targets = [
        (
            "vip-local",
            server_node.clone(),
            "$(ECHO_SERVICE_HOST):$(ECHO_SERVICE_PORT)",
        ),
        ("vip-remote", other_node, "echo:80"), // through cluster DNS
    ];
    for (name, node, target) in targets {
        pods.create(
            &pp,
            &obj(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "nodeName": node, "containers": [{
                    "name": "client", "image": "ambit-echo-client",
                    "args": [target, name],
                }]},
            }))?,
        )
        .await?;
    }
    for name in ["vip-local", "vip-remote"] {
        let p = eventually(
            "the VIP client to finish",
            Duration::from_secs(60),
            || async {
                let p = pods.get(name).await.ok()?;
                let phase = p.status.as_ref()?.phase.clone()?;
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
            },
        )
        .await?;
        let log = std::fs::read_to_string(tb.container_log(ns, name, "client"))?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        assert_eq!(phase, "Succeeded", "{name} log:\n{log}");
        assert!(
            log.contains(&format!("hello from {server_name}\n{name}")),
            "{name} log:\n{log}"
        );
    }

    // From the test's side too: the HTTP responder, through the pod's netns.
    let out = tb
        .pod_exec(
            &server,
            &tb.binary("ambit-echo-client")
                .context("echo client binary")?
                .display()
                .to_string(),
            &[&format!("{server_ip}:8080"), "probe", "--http"],
        )
        .context("server netns")?
        .output()?;
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains(&format!("x-served-by: {server_name}")),
        "{reply}"
    );

    // The projected service-account token the server sees passes TokenReview, bound to its pod.
    let pid: i32 = server
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("ambit-testbed://"))
        .and_then(|p| p.parse().ok())
        .context("server container pid")?;
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "reading the token in the container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?;
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = reviews.create(&pp, &obj(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}))?).await?;
    let status = review.status.context("TokenReview status")?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.context("TokenReview user")?;
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    let bound_pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
        .and_then(|v| v.first().cloned());
    assert_eq!(bound_pod.as_deref(), Some(server_name.as_str()));
    let mut forged = token.clone();
    forged.push('x');
    let review = reviews.create(&pp, &obj(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": forged}}))?).await?;
    assert_ne!(
        review.status.and_then(|s| s.authenticated),
        Some(true),
        "a forged token passed TokenReview"
    );

    // A DaemonSet lands one ready pod on each node.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    daemonsets
        .create(&pp, &obj(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "per-node"},
            "spec": {
                "selector": {"matchLabels": {"app": "per-node"}},
                "template": {"metadata": {"labels": {"app": "per-node"}}, "spec": {"containers": [{
                    "name": "server", "image": "ambit-echo-server", "args": ["9090"],
                    "readinessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 1},
                }]}},
            },
        }))?)
        .await?;
    let ds_pods = eventually(
        "one ready DaemonSet pod per node",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=per-node"))
                .await
                .ok()?;
            (list.items.len() == 2 && list.items.iter().all(pod_ready)).then_some(list.items)
        },
    )
    .await?;
    let mut nodes: Vec<String> = ds_pods.iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, vec![tb.config.node_name(1), tb.config.node_name(2)]);

    chained_cni_plugin(tb, &pods).await?;

    // A host-network pod shares its node's netns and IP.
    pods.create(
        &pp,
        &obj(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostnet"},
            "spec": {"hostNetwork": true, "nodeName": tb.config.node_name(2), "containers": [{
                "name": "server", "image": "ambit-echo-server", "args": ["9191"],
                "readinessProbe": {"tcpSocket": {"port": 9191}, "periodSeconds": 1},
            }]},
        }))?,
    )
    .await?;
    let hostnet = eventually(
        "the host-network pod to be Ready",
        Duration::from_secs(30),
        || async { pods.get("hostnet").await.ok().filter(pod_ready) },
    )
    .await?;
    assert_eq!(ip_of(&hostnet), Some(tb.config.node_ip(2).to_string()));

    // Init containers run first, to completion, and share emptyDir volumes with the containers.
    pods.create(&pp, &obj(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "with-init"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "debian", "command": ["sh", "-c", "echo prepared > /work/state"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "debian", "command": ["cat", "/work/state"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        },
    }))?)
    .await?;
    eventually(
        "the pod with an init container to succeed",
        Duration::from_secs(30),
        || async {
            let p = pods.get("with-init").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
        },
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(tb.container_log(ns, "with-init", "main"))?,
        "prepared\n"
    );

    // securityContext: user, group and the capability bounding set are applied.
    pods.create(&pp, &obj(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "restricted"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{
                "name": "c", "image": "debian", "command": ["sh", "-c", "id -u; id -g; grep CapBnd /proc/self/status"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
            }],
        },
    }))?)
    .await?;
    eventually(
        "the restricted pod to succeed",
        Duration::from_secs(30),
        || async {
            let p = pods.get("restricted").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
        },
    )
    .await?;
    let log = std::fs::read_to_string(tb.container_log(ns, "restricted", "c"))?;
    // NET_ADMIN is capability 12.
    assert_eq!(
        log.split_whitespace().collect::<Vec<_>>(),
        ["1000", "1000", "CapBnd:", "0000000000001000"],
        "{log}"
    );

    // The user's tools talk to it.
    let out = tb.kubectl().args(["get", "nodes", "-o", "name"]).output()?;
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let chart = std::env::temp_dir().join(format!("ambit-testbed-chart-{}", std::process::id()));
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: tbcheck\nversion: 0.1.0\n",
    )?;
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tbcheck\ndata:\n  release: {{ .Release.Name | quote }}\n",
    )?;
    let out = tb
        .helm()
        .args(["install", "tbcheck"])
        .arg(&chart)
        .args(["--namespace", "tbcheck", "--create-namespace", "--wait"])
        .output()?;
    let _ = std::fs::remove_dir_all(&chart);
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "tbcheck");
    let cm = cms.get("tbcheck").await?;
    assert_eq!(
        cm.data.and_then(|d| d.get("release").cloned()).as_deref(),
        Some("tbcheck")
    );
    let out = tb
        .kubectl()
        .args([
            "label",
            "namespace",
            "tbcheck",
            "ambit.dev/dataplane-mode=ambient",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "kubectl label: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting a pod stops its process and removes its netns.
    let netns = tb.pod_netns(&server).context("server netns")?;
    assert!(ambit_testbed::sys::netns_list().contains(&netns));
    deployments
        .delete("echo", &DeleteParams::foreground())
        .await?;
    eventually(
        "the server pod to be gone with its netns and process",
        Duration::from_secs(30),
        || async {
            let gone = pods.get_opt(&server_name).await.ok()?.is_none();
            (gone
                && !ambit_testbed::sys::netns_list().contains(&netns)
                && !ambit_testbed::sys::alive(pid))
            .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// A plugin appended to a node's conflist (as ambit's capture agent does through a hostPath)
/// runs after bridge on ADD with the pod's netns and bridge's result, and on DEL.
async fn chained_cni_plugin(tb: &Testbed, pods: &Api<Pod>) -> Result<()> {
    let k = 1;
    let record = tb.config.node_dir(k).join("chain-record");
    let plugin = tb.config.node_cni_bin_dir(k).join("tb-chain-probe");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\n# Records its call; prints nothing, so the previous result stands.\nin=$(cat)\nprintf '%s %s %s\\n%s\\n' \"$CNI_COMMAND\" \"$CNI_NETNS\" \"$CNI_ARGS\" \"$in\" >> {}\n",
            record.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    let conf_path = tb
        .config
        .node_cni_conf_dir(k)
        .join(ambit_testbed::node::cni::DEFAULT_CONFLIST);
    let mut conf: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf_path)?)?;
    conf["plugins"]
        .as_array_mut()
        .context("plugins")?
        .push(json!({"type": "tb-chain-probe", "mode": "test"}));
    std::fs::write(&conf_path, serde_json::to_vec(&conf)?)?;

    pods.create(&PostParams::default(), &obj(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chained"},
        "spec": {"nodeName": tb.config.node_name(k), "containers": [{"name": "server", "image": "ambit-echo-server", "args": ["8080"]}]},
    }))?)
    .await?;
    let pod = eventually(
        "the chained pod to be Ready",
        Duration::from_secs(30),
        || async { pods.get("chained").await.ok().filter(pod_ready) },
    )
    .await?;
    let ip = ip_of(&pod).context("chained pod IP")?;
    let netns = tb.pod_netns(&pod).context("chained pod netns")?;
    let rec = std::fs::read_to_string(&record)?;
    let first = rec.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("ADD /run/netns/{netns} ")),
        "{rec}"
    );
    assert!(first.contains("K8S_POD_NAME=chained"), "{rec}");
    let stdin: serde_json::Value = serde_json::from_str(rec.lines().nth(1).unwrap_or_default())?;
    assert_eq!(stdin["mode"], "test");
    let prev_ip = stdin["prevResult"]["ips"][0]["address"]
        .as_str()
        .unwrap_or_default();
    assert!(
        prev_ip.starts_with(&format!("{ip}/")),
        "prevResult {prev_ip} is not the pod's IP {ip}: {rec}"
    );

    pods.delete("chained", &DeleteParams::default()).await?;
    eventually(
        "the chained plugin's DEL",
        Duration::from_secs(30),
        || async {
            let rec = std::fs::read_to_string(&record).ok()?;
            rec.lines()
                .any(|l| l.starts_with(&format!("DEL /run/netns/{netns} ")))
                .then_some(())
        },
    )
    .await?;
    Ok(())
}
