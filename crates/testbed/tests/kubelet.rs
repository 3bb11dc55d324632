//! The nodes' kubelet endpoint (`kubelet-streaming`): `kubectl exec` and `kubectl port-forward`
//! through a real apiserver into a testbed pod, as on a cluster, and nobody but the apiserver
//! let in. Needs root (CI runs as root); skips loudly otherwise.

use ambit_testbed::{Config, Testbed, eventually};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const NAME: &str = "kubelet";
const ID: u8 = 63;
const POD: &str = "echo";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward_reach_testbed_pods() -> Result<()> {
    if ambit_testbed::skip_without_root("kubectl_exec_and_port_forward_reach_testbed_pods") {
        return Ok(());
    }
    ambit_testbed::build_binaries(&["ambit-testbed"])?;
    let tb = Testbed::new(Config::new(NAME, ID)?.with_nodes(1)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(checks).await
}

async fn checks(tb: &Testbed) -> Result<()> {
    // Gateway API's echo image: Istio's echo server, with its client on the image's PATH.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD},
        "spec": {"containers": [{
            "name": "echo",
            "image": "registry.k8s.io/gateway-api/echo-advanced:v1.5.1",
            "args": ["--port=8080", "--port=8443", "--tls=8443", "--crt=/cert.crt", "--key=/cert.key"],
            "env": [{"name": "GREETING", "value": "hello"}],
            "workingDir": "/tmp",
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }]},
    }))?;
    let pods: Api<Pod> = Api::namespaced(tb.client().await?, "default");
    pods.create(&PostParams::default(), &pod).await?;
    eventually("the echo pod Ready", WAIT, || async {
        let p = pods.get(POD).await.ok()?;
        p.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await?;

    // Output on both streams, the exit code, and the container's env, working dir and hostname.
    let out = tb
        .kubectl()
        .args(["exec", POD, "--", "sh", "-c"])
        .arg("echo out; echo err >&2; echo $GREETING; pwd; hostname; exit 3")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "out\nhello\n/tmp\necho\n", "stderr: {stderr}");
    assert!(stderr.starts_with("err\n"), "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(3), "kubectl exec exit code");

    // Stdin, and the image's own binaries (the conformance suite execs `client`), over TLS
    // with the image's certificate.
    let mut child = tb
        .kubectl()
        .args(["exec", "-i", POD, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"through stdin\n")?;
    let out = child.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    assert!(out.status.success());
    let out = tb
        .kubectl()
        .args(["exec", POD, "--", "client", "https://localhost:8443/x"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("StatusCode=200"), "client: {stdout}");
    let out = tb
        .kubectl()
        .args(["exec", POD, "--", "no-such-command"])
        .output()?;
    assert_eq!(out.status.code(), Some(127), "a missing command");

    port_forward(tb).await?;
    probes(tb).await?;
    only_the_apiserver_gets_in(tb)
}

/// Startup, liveness and readiness probes as kubelet runs them: a live app's pass (started,
/// Ready, never restarted); a liveness probe that fails restarts the container; a startup
/// probe that fails restarts it too, and it is never started nor Ready meanwhile.
async fn probes(tb: &Testbed) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(tb.client().await?, "default");
    let live = json!({"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 1});
    let dead = json!({"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2});
    let ready = json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
    for (name, probes) in [
        (
            "probed-live",
            json!({"startupProbe": live, "livenessProbe": live, "readinessProbe": ready}),
        ),
        ("liveness-dead", json!({"livenessProbe": dead})),
        (
            "startup-dead",
            json!({"startupProbe": dead, "readinessProbe": ready}),
        ),
    ] {
        let mut container = json!({"name": "echo", "image": "registry.k8s.io/gateway-api/echo-advanced:v1.5.1", "args": ["--port=8080"]});
        for (k, v) in probes.as_object().into_iter().flatten() {
            container[k] = v.clone();
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let status = |p: Pod| {
        p.status
            .and_then(|s| s.container_statuses?.into_iter().next())
    };
    for name in ["liveness-dead", "startup-dead"] {
        let restarted = eventually(&format!("{name} restarted by its probe"), WAIT, || async {
            status(pods.get(name).await.ok()?).filter(|s| s.restart_count >= 1)
        })
        .await?;
        if name == "startup-dead" {
            ensure!(
                restarted.started != Some(true) && !restarted.ready,
                "never started nor ready: {restarted:?}"
            );
        }
    }
    let live = status(pods.get("probed-live").await?);
    ensure!(
        live.as_ref()
            .is_some_and(|s| s.restart_count == 0 && s.started == Some(true) && s.ready),
        "a live app's probes keep passing: {live:?}"
    );
    Ok(())
}

/// `kubectl port-forward` to the pod's port carries an HTTP request to its server.
async fn port_forward(tb: &Testbed) -> Result<()> {
    let mut pf = tb
        .kubectl()
        .args(["port-forward", &format!("pod/{POD}"), ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let mut out = BufReader::new(pf.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        // kubectl says "Handling connection for …" per connection: a closed pipe would kill it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = line
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("port-forward said {line:?}"))?
            .to_owned();
        let body = eventually("an HTTP answer through port-forward", WAIT, || async {
            let mut s = std::net::TcpStream::connect(&addr).ok()?;
            s.write_all(
                b"GET /through-port-forward HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        })
        .await?;
        ensure!(
            body.starts_with("HTTP/1.1 200") && body.contains("URL=/through-port-forward"),
            "answer through port-forward: {body}"
        );
        Ok(())
    }
    .await;
    let _ = pf.kill();
    let _ = pf.wait();
    result
}

/// The kubelet endpoint takes only the apiserver's client certificate: no certificate fails
/// the handshake, the admin's (same CA) is forbidden.
fn only_the_apiserver_gets_in(tb: &Testbed) -> Result<()> {
    let pki = tb.config.pki_dir();
    let url = format!(
        "https://{}:10250/containerLogs/default/{POD}/echo",
        tb.config.node_ip(1)
    );
    let curl = |cert: Option<&str>| -> Result<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(pki.join(ambit_testbed::pki::CA_CERT));
        if let Some(name) = cert {
            cmd.arg("--cert")
                .arg(pki.join(format!("{name}.crt")))
                .arg("--key")
                .arg(pki.join(format!("{name}.key")));
        }
        Ok(String::from_utf8_lossy(&cmd.arg(&url).output()?.stdout).into_owned())
    };
    assert_eq!(curl(None)?, "000", "no client certificate");
    assert_eq!(curl(Some("admin"))?, "403", "the admin's certificate");
    assert_eq!(
        curl(Some("apiserver-kubelet-client"))?,
        "200",
        "the apiserver's"
    );
    Ok(())
}
