//! The user's path on the testbed, step by step: `helm install`, sample apps, enrolling a
//! namespace, a deny policy, a waypoint ([`waypoint`]) with end-user JWTs and external
//! authorization at it ([`authn`]), `helm uninstall`. Each step checks what
//! it claims and says what it saw; the e2e test (`tests/user.rs`) and `cargo xtask demo` run the
//! same steps.

pub mod attacker;
pub mod authn;
pub mod load;
pub mod waypoint;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use ambit_testbed::{Testbed, eventually};

/// Where the samples run.
pub const NS: &str = "demo";
pub const SYSTEM_NS: &str = "ambit-system";
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Deployment, Service and service account of the sample server.
pub const SERVER: &str = "echo";
/// The TCP line echo (`ambit-echo-server`), Service port 80.
pub const SERVER_PORT: u16 = 8080;
/// Istio's echo app beside it in the same pod (a real HTTP/1.1, h2c and gRPC server, the one
/// behind Gateway API's conformance suite), built by `setup.sh`. Pod ports:
pub const HTTP_PORT: u16 = 8081;
pub const H2C_PORT: u16 = 8082;
pub const GRPC_PORT: u16 = 7070;
/// ... and the echo Service's ports for them, named so the waypoint knows what they speak.
pub const HTTP_SVC_PORT: u16 = 8000;
pub const H2C_SVC_PORT: u16 = 8001;
pub const GRPC_SVC_PORT: u16 = 7070;
/// Client pods, each with the service account of its name.
pub const CLIENT: &str = "client";
pub const BLOCKED: &str = "blocked";
pub(crate) const WAIT: Duration = Duration::from_secs(120);

/// Every binary the install and the samples run (the testbed maps images to them).
pub const PACKAGES: &[&str] = &[
    "ambit-testbed",
    "ambit-samples",
    "ambit-controller",
    "ambit-tunnel",
    "ambit-capture",
    "ambit-waypoint",
    "kubectl-ambit",
];

/// Runs `steps` on a fresh two-node testbed `name` (`id` keeps its addresses apart from other
/// tests'), after building [`PACKAGES`]; a failing run says where its logs are kept. Skips
/// loudly, passing, when not root.
pub async fn on_testbed(
    test: &str,
    name: &str,
    id: u8,
    steps: impl AsyncFnOnce(&Testbed) -> Result<()>,
) -> Result<()> {
    if ambit_testbed::skip_without_root(test) {
        return Ok(());
    }
    ambit_testbed::build_binaries(PACKAGES)?;
    let tb = Testbed::new(ambit_testbed::Config::new(name, id)?.with_nodes(2)?)
        .context("is the testbed set up? run `cargo xtask testbed setup`")?;
    tb.up_run_down(async |tb| {
        let result = steps(tb).await;
        if result.is_err() {
            eprintln!("logs kept in {}", tb.config.log_dir().display());
        }
        result
    })
    .await
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn spiffe(namespace: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}")
}

/// The pod's IP from its status (an error until the runtime has given it one).
pub fn pod_ip(pod: &Pod) -> Result<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")
}

/// Prints what the user would see: steps, commands and what they showed.
#[derive(Debug, Clone, Copy)]
pub struct Narrator;

impl Narrator {
    pub fn step(&self, title: &str) {
        println!("\n== {title}");
    }
    pub fn say(&self, line: impl AsRef<str>) {
        println!("   {}", line.as_ref());
    }
    pub fn command(&self, cmd: &str) {
        println!("   $ {cmd}");
    }
}

/// Runs a command, failing with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The user's environment: the testbed's kubeconfig, and `kubectl-ambit` on PATH so that
/// `kubectl ambit ...` finds the plugin as it would on a workstation.
pub struct User<'a> {
    pub tb: &'a Testbed,
    pub client: kube::Client,
    pub say: Narrator,
    plugin_dir: PathBuf,
}

impl std::fmt::Debug for User<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("testbed", &self.tb.config.name)
            .finish_non_exhaustive()
    }
}

impl<'a> User<'a> {
    pub async fn new(tb: &'a Testbed) -> Result<Self> {
        let plugin = tb
            .binary("kubectl-ambit")
            .context("kubectl-ambit is not built")?;
        let plugin_dir = tb.config.state_dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir)?;
        let link = plugin_dir.join("kubectl-ambit");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&plugin, &link)?;
        Ok(Self {
            tb,
            client: tb.client().await?,
            say: Narrator,
            plugin_dir,
        })
    }

    /// `kubectl ARGS` as the user types it, echoed.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.say.command(&format!("kubectl {}", args.join(" ")));
        let mut cmd = self.tb.kubectl();
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.plugin_dir.display()));
        cmd.args(args).current_dir(repo_root());
        run(&mut cmd)
    }

    pub fn helm(&self, args: &[&str]) -> Result<String> {
        self.say.command(&format!("helm {}", args.join(" ")));
        let mut cmd = self.tb.helm();
        cmd.args(args).current_dir(repo_root());
        run(&mut cmd)
    }

    /// `kubectl apply` of an inline manifest.
    pub fn apply(&self, what: &str, yaml: &str) -> Result<()> {
        self.say
            .command(&format!("kubectl apply -f - <<EOF  # {what}"));
        let mut cmd = self.tb.kubectl();
        let mut child = cmd
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply ({what}) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await?)
    }

    /// `helm install` and wait until the controller and a tunnel on every node are Ready.
    pub async fn install(&self) -> Result<()> {
        self.install_with(&[]).await
    }

    /// [`User::install`] with chart values of the test's (`key=value`, as `--set` takes them).
    pub async fn install_with(&self, values: &[&str]) -> Result<()> {
        self.say.step("Install ambit with helm");
        // The testbed runs CNI plugins in the host's filesystem, with each node's files under
        // its own root directory.
        let plugin_root = format!(
            "node.cni.pluginRoot={}/nodes/$(NODE_NAME)/root",
            self.tb.config.state_dir.display()
        );
        // Without --wait (the docs suggest it; a first install must not need it): the chart
        // has no object of a kind it brings, the controller makes the GatewayClass.
        let mut args = vec![
            "install",
            "ambit",
            "charts/ambit",
            "-n",
            SYSTEM_NS,
            "--create-namespace",
            "--set",
            &plugin_root,
        ];
        for value in values {
            args.extend(["--set", value]);
        }
        self.helm(&args)?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        eventually("the ambit controller Deployment ready", WAIT, || async {
            let d = deployments.get("ambit-controller").await.ok()?;
            let s = d.status?;
            (s.ready_replicas.unwrap_or(0) >= d.spec?.replicas.unwrap_or(1)).then_some(())
        })
        .await?;
        let ready = eventually("a Ready ambit tunnel on every node", WAIT, || async {
            let s = daemonsets.get("ambit-node").await.ok()?.status?;
            (s.desired_number_scheduled > 0 && s.number_ready == s.desired_number_scheduled)
                .then_some(s.number_ready)
        })
        .await?;
        eventually(
            "the controller's GatewayClass ambit-waypoint Accepted",
            WAIT,
            || async {
                let accepted = "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status}";
                let get = ["get", "gatewayclass", "ambit-waypoint", "-o", accepted];
                (run(self.tb.kubectl().args(get)).ok()?.trim() == "True").then_some(())
            },
        )
        .await?;
        self.say.say(format!(
            "controller Ready (2 replicas), node tunnel Ready on {ready} node(s), GatewayClass ambit-waypoint Accepted"
        ));
        Ok(())
    }

    /// The sample server (Deployment + Service `echo`) on one node and two client pods on
    /// the other, in namespace `demo`, not enrolled yet.
    pub async fn deploy_samples(&self) -> Result<()> {
        self.say
            .step("Deploy sample apps in namespace demo (not enrolled yet)");
        // Otherwise the echo pod would just never become Ready.
        for app in ["istio-echo-server", "istio-echo-client"] {
            if self.tb.binary(app).is_none() {
                bail!(
                    "{app} is not built: run `cargo xtask testbed setup` (crates/testbed/setup.sh)"
                );
            }
        }
        let (n1, n2) = (self.tb.config.node_name(1), self.tb.config.node_name(2));
        let client_pod = |name: &str| {
            format!(
                "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                 ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}, labels: {{app: {name}}}}}\n\
                 spec:\n  serviceAccountName: {name}\n  nodeName: {n2}\n  terminationGracePeriodSeconds: 2\n  \
                 containers: [{{name: main, image: ghcr.io/ambit/ambit-echo-server:dev, args: [\"9090\"]}}]\n"
            )
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n\
             ---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {SERVER}, namespace: {NS}}}\n\
             ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {SERVER}, namespace: {NS}}}\n\
             spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {SERVER}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {SERVER}}}}}\n    spec:\n      serviceAccountName: {SERVER}\n      \
             nodeSelector: {{kubernetes.io/hostname: {n1}}}\n      terminationGracePeriodSeconds: 2\n      \
             containers:\n      - {{name: main, image: ghcr.io/ambit/ambit-echo-server:dev, args: [\"{SERVER_PORT}\"], \
             env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}], \
             readinessProbe: {{tcpSocket: {{port: {SERVER_PORT}}}}}}}\n      \
             - {{name: app, image: istio-echo-server, \
             args: [--port, \"{HTTP_PORT},{H2C_PORT}\", --grpc, \"{GRPC_PORT}\"], \
             readinessProbe: {{tcpSocket: {{port: {HTTP_PORT}}}}}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {SERVER}, namespace: {NS}}}\n\
             spec:\n  selector: {{app: {SERVER}}}\n  ports:\n  \
             - {{name: tcp, port: 80, targetPort: {SERVER_PORT}}}\n  \
             - {{name: http, port: {HTTP_SVC_PORT}, targetPort: {HTTP_PORT}}}\n  \
             - {{name: http2, port: {H2C_SVC_PORT}, targetPort: {H2C_PORT}, appProtocol: kubernetes.io/h2c}}\n  \
             - {{name: grpc, port: {GRPC_SVC_PORT}, targetPort: {GRPC_PORT}}}\n{}{}",
            client_pod(CLIENT),
            client_pod(BLOCKED),
        );
        self.apply(
            "namespace demo, echo Deployment + Service, client and blocked pods",
            &yaml,
        )?;
        for name in [CLIENT, BLOCKED] {
            self.running(NS, name).await?;
        }
        self.server_pod().await?;
        self.say
            .say(format!("echo runs on {n1}; client and blocked run on {n2}"));
        self.say.say(format!(
            "echo's pod: a TCP line echo (Service port 80) and Istio's echo app: HTTP/1.1 \
             ({HTTP_SVC_PORT}, name http), h2c ({H2C_SVC_PORT}, appProtocol kubernetes.io/h2c), \
             gRPC ({GRPC_SVC_PORT}, name grpc)"
        ));
        Ok(())
    }

    pub async fn running(&self, namespace: &str, name: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        Ok(
            eventually(&format!("pod {namespace}/{name} Running"), WAIT, || async {
                pods.get(name).await.ok().filter(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.phase.as_deref() == Some("Running") && s.pod_ip.is_some()
                    })
                })
            })
            .await?,
        )
    }

    pub async fn server_pod(&self) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        Ok(eventually("the echo server pod Ready", WAIT, || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={SERVER}")))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
        })
        .await?)
    }

    /// Waits until no pod of `namespace` matches `selector`.
    pub async fn no_pods(&self, what: &str, namespace: &str, selector: &ListParams) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        eventually(what, WAIT, || async {
            pods.list(selector)
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await?;
        Ok(())
    }

    /// The echo server pod, the client pod and the echo Service's address.
    pub async fn samples(&self) -> Result<Samples> {
        Ok(Samples {
            server: self.server_pod().await?,
            client: self.pod(NS, CLIENT).await?,
            svc: self.service_addr().await?,
        })
    }

    /// The echo Service's address.
    pub async fn service_addr(&self) -> Result<SocketAddr> {
        let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(self.client.clone(), NS)
            .get(SERVER)
            .await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("echo has no cluster IP")?;
        Ok(SocketAddr::new(ip.parse()?, 80))
    }

    /// One exchange from inside `from`'s network namespace (as the app would make it):
    /// `Ok(reply)` or `Err(why)`.
    pub fn call(&self, from: &Pod, to: SocketAddr, message: &str) -> Result<String, String> {
        let program = self
            .tb
            .binary("ambit-echo-client")
            .ok_or("ambit-echo-client is not built")?;
        let mut cmd = self
            .tb
            .pod_exec(
                from,
                &program.display().to_string(),
                &[&to.to_string(), message, "--timeout", "3"],
            )
            .ok_or("pod has no netns")?;
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr.lines().next().unwrap_or_default().to_owned())
        }
    }

    /// Calls until `accept` takes the outcome (the mesh converges asynchronously).
    pub async fn call_until(
        &self,
        what: &str,
        from: &Pod,
        to: SocketAddr,
        message: &str,
        accept: impl Fn(&Result<String, String>) -> bool,
    ) -> Result<Result<String, String>> {
        Ok(eventually(what, WAIT, || async {
            let outcome = self.call(from, to, message);
            accept(&outcome).then_some(outcome)
        })
        .await?)
    }

    /// Runs `during` while tcpdump watches the server pod's interface; returns what it saw.
    pub async fn sniff<T>(
        &self,
        server: &Pod,
        during: impl AsyncFnOnce() -> T,
    ) -> Result<(T, String)> {
        let netns = self.tb.pod_netns(server).context("server netns")?;
        let out_path = self
            .tb
            .config
            .state_dir
            .join(format!("sniff-{}.txt", std::process::id()));
        let out = std::fs::File::create(&out_path)?;
        let mut tcpdump = Command::new("ip")
            .args([
                "netns", "exec", &netns, "tcpdump", "-i", "eth0", "-nn", "-l", "-U", "-A", "tcp",
            ])
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        // tcpdump says "listening on" once it captures.
        let mut stderr = BufReader::new(tcpdump.stderr.take().context("tcpdump stderr")?);
        let mut said = String::new();
        while !said.contains("listening on") {
            if stderr.read_line(&mut said)? == 0 {
                let _ = tcpdump.wait();
                bail!("tcpdump did not start: {said}");
            }
        }
        let result = during().await;
        // Packets are written as they are captured (-U); give the last ones a moment to land
        // by waiting for the file to stop growing.
        let mut last = 0;
        let _ = eventually("tcpdump output settled", Duration::from_secs(2), || {
            let len = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
            let settled = len == last && len > 0;
            last = len;
            async move { settled.then_some(()) }
        })
        .await;
        let _ = tcpdump.kill();
        let _ = tcpdump.wait();
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let seen = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        Ok((result, seen))
    }

    /// The node tunnel's Prometheus text on the node of `pod`.
    pub async fn tunnel_metrics(&self, pod: &Pod) -> Result<String> {
        let host = pod
            .status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .context("pod has no host IP")?;
        http_get(&format!("{host}:15020"), "/metrics").await
    }
}

/// The `/config_dump` of node `k`'s tunnel, from its admin port (localhost in the node's
/// netns, where the tunnel runs with the host's network).
pub fn tunnel_config_dump(tb: &Testbed, k: u8) -> Result<serde_json::Value> {
    let netns = format!("--net=/run/netns/{}", tb.config.node_netns(k));
    let url = "http://127.0.0.1:15000/config_dump";
    let dump =
        run(Command::new("nsenter").args([&netns, "--", "curl", "-sSf", "--max-time", "5", url]))?;
    serde_json::from_str(&dump).with_context(|| format!("{url} on node {k} is not JSON"))
}

/// A plain HTTP/1.0 GET; the body.
pub async fn http_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .context("read timeout")??;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(body))
}

/// Whether the Prometheus text has an inbound series from `source` to `destination`.
pub fn saw_identities(metrics: &str, source: &str, destination: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("ambit_tcp_connections_opened_total{direction=\"inbound\"")
            && l.contains(&format!("source_identity=\"{source}\""))
            && l.contains(&format!("destination_identity=\"{destination}\""))
    })
}

/// What most steps talk about.
#[derive(Debug)]
pub struct Samples {
    pub server: Pod,
    pub client: Pod,
    pub svc: SocketAddr,
}

/// One TCP connection from inside a pod's netns, kept open across steps: proof that
/// established traffic is not disturbed.
#[derive(Debug)]
pub struct LiveConnection {
    stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl LiveConnection {
    pub fn open(tb: &Testbed, from: &Pod, to: SocketAddr) -> Result<Self> {
        let netns = format!("/run/netns/{}", tb.pod_netns(from).context("pod netns")?);
        let stream = std::thread::spawn(move || -> Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&netns)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(std::net::TcpStream::connect_timeout(
                &to,
                Duration::from_secs(5),
            )?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("connect thread panicked"))??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        // The server greets once per connection.
        let mut greeting = String::new();
        (&stream).write_all(b"hello\n")?;
        reader.read_line(&mut greeting)?;
        let mut echo = String::new();
        reader.read_line(&mut echo)?;
        Ok(Self { stream, reader })
    }

    /// Sends a line and reads its echo.
    pub fn exchange(&mut self, line: &str) -> Result<()> {
        (&self.stream).write_all(format!("{line}\n").as_bytes())?;
        let mut echo = String::new();
        self.reader.read_line(&mut echo)?;
        if echo.trim_end() != line {
            bail!("the live connection answered {echo:?} to {line:?}");
        }
        Ok(())
    }
}

impl User<'_> {
    /// Before enrollment the payload crosses the wire in clear text.
    pub async fn plain_before_enrollment(&self) -> Result<()> {
        self.say.step("Before enrollment: traffic is plain TCP");
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        let reply = self
            .plain_on_the_wire(&server, &client, svc, "hello-in-clear")
            .await?;
        self.say.say(format!(
            "client -> echo ({svc}): {}",
            reply.trim().replace('\n', " | ")
        ));
        self.say
            .say("tcpdump on echo's eth0 sees the payload 'hello-in-clear' in clear text");
        Ok(())
    }

    /// A call `client -> svc` once the Service answers, checked to cross the server's eth0
    /// with `payload` in clear text; the reply.
    async fn plain_on_the_wire(
        &self,
        server: &Pod,
        client: &Pod,
        svc: SocketAddr,
        payload: &str,
    ) -> Result<String> {
        // The Service answers once its endpoints are programmed on the node.
        let _ = self
            .call_until(
                "client -> echo answered",
                client,
                svc,
                "ping",
                Result::is_ok,
            )
            .await?;
        let (reply, seen) = self
            .sniff(server, async || self.call(client, svc, payload))
            .await?;
        let reply = reply.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            seen.contains(payload),
            "tcpdump on echo's eth0 did not see the payload {payload:?} in clear text:\n{seen}"
        );
        Ok(reply)
    }

    /// Labels the namespace; the same running pods' traffic becomes mutual TLS between the
    /// expected SPIFFE ids, with no restart.
    pub async fn enroll(&self) -> Result<()> {
        self.say.step("Enroll namespace demo: kubectl label");
        let before = self.pod_generations().await?;
        self.kubectl(&["label", "namespace", NS, "ambit.dev/dataplane-mode=ambient"])?;
        let Samples {
            server,
            client,
            svc,
        } = self.carried_by_tunnels().await?;
        let (from, to) = (spiffe(NS, CLIENT), spiffe(NS, SERVER));
        let (reply, seen) = self
            .sniff(&server, async || self.call(&client, svc, "hello-over-mtls"))
            .await?;
        let reply = reply.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            !seen.contains("hello-over-mtls"),
            "the payload crossed echo's eth0 in clear text after enrollment:\n{seen}"
        );
        anyhow::ensure!(
            seen.contains(".15008"),
            "no HBONE (port 15008) traffic on echo's eth0:\n{seen}"
        );
        anyhow::ensure!(
            before == self.pod_generations().await?,
            "pods were restarted or replaced by enrollment"
        );
        self.say.say(format!(
            "client -> echo: {}",
            reply.trim().replace('\n', " | ")
        ));
        self.say
            .say("tcpdump on echo's eth0: only TLS on port 15008, the payload is not visible");
        self.say.say(format!(
            "echo's node tunnel: inbound connection from {from} to {to}"
        ));
        self.say.say("the same pods, never restarted");
        Ok(())
    }

    /// Waits until client -> echo is carried by the tunnels, as the echo tunnel's metrics tell
    /// with both SPIFFE identities.
    pub async fn carried_by_tunnels(&self) -> Result<Samples> {
        let samples = self.samples().await?;
        let (from, to) = (spiffe(NS, CLIENT), spiffe(NS, SERVER));
        eventually(
            "client -> echo carried by the tunnels with SPIFFE identities",
            WAIT,
            || async {
                self.call(&samples.client, samples.svc, "ping").ok()?;
                let metrics = self.tunnel_metrics(&samples.server).await.ok()?;
                saw_identities(&metrics, &from, &to).then_some(())
            },
        )
        .await?;
        Ok(samples)
    }

    /// (uid, restart count) of every sample pod.
    async fn pod_generations(&self) -> Result<Vec<(String, i32)>> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        let mut out: Vec<(String, i32)> = pods
            .items
            .iter()
            .map(|p| {
                let restarts = p
                    .status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                    .map(|c| c.restart_count)
                    .sum();
                (p.metadata.uid.clone().unwrap_or_default(), restarts)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// A DENY policy for the `blocked` service account: its calls fail, `client`'s do not.
    pub async fn deny_one_client(&self) -> Result<()> {
        self.say.step("An AuthorizationPolicy denies one client");
        self.apply(
            "AuthorizationPolicy deny-blocked",
            &format!(
                "apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: deny-blocked, namespace: {NS}}}\n\
                 spec:\n  action: DENY\n  selector: {{matchLabels: {{app: {SERVER}}}}}\n  \
                 rules: [{{principals: [\"{}\"]}}]\n",
                spiffe(NS, BLOCKED)
            ),
        )?;
        let (client, blocked, svc) = (
            self.pod(NS, CLIENT).await?,
            self.pod(NS, BLOCKED).await?,
            self.service_addr().await?,
        );
        let refused = self
            .call_until(
                "blocked's call refused",
                &blocked,
                svc,
                "ping",
                Result::is_err,
            )
            .await?;
        let allowed = self.call(&client, svc, "ping");
        anyhow::ensure!(allowed.is_ok(), "client was denied too: {allowed:?}");
        self.say.say(format!(
            "blocked -> echo: refused ({})",
            refused.err().unwrap_or_default()
        ));
        self.say.say("client  -> echo: still answered");
        Ok(())
    }

    /// The controller goes away and comes back; an established connection never notices and
    /// new connections keep working from the tunnels' last good state.
    pub async fn controller_restart(&self) -> Result<()> {
        self.say
            .step("Controller away and back, under live traffic");
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        let mut live = LiveConnection::open(self.tb, &client, svc)?;
        live.exchange("before")?;
        self.kubectl(&[
            "scale",
            "-n",
            SYSTEM_NS,
            "deployment/ambit-controller",
            "--replicas=0",
        ])?;
        let controller = ListParams::default().labels("app.kubernetes.io/name=ambit-controller");
        self.no_pods("no controller pod left", SYSTEM_NS, &controller)
            .await?;
        eventually(
            "echo's tunnel notices the controller is gone",
            WAIT,
            || async {
                let m = self.tunnel_metrics(&server).await.ok()?;
                m.contains("ambit_tunnel_config_connected 0").then_some(())
            },
        )
        .await?;
        live.exchange("while-away")?;
        self.call(&client, svc, "new-while-away").map_err(|e| {
            anyhow::anyhow!("a new connection failed while the controller was away: {e}")
        })?;
        self.say
            .say("controller scaled to 0: the open connection and new ones keep working");
        self.kubectl(&[
            "scale",
            "-n",
            SYSTEM_NS,
            "deployment/ambit-controller",
            "--replicas=2",
        ])?;
        eventually("echo's tunnel back on the config stream", WAIT, || async {
            let m = self.tunnel_metrics(&server).await.ok()?;
            m.contains("ambit_tunnel_config_connected 1").then_some(())
        })
        .await?;
        live.exchange("after")?;
        self.say
            .say("controller back: tunnels resumed their streams; the same connection still works");
        Ok(())
    }

    /// `helm uninstall`: pods keep working in plain TCP and no ambit object is left.
    pub async fn uninstall(&self) -> Result<()> {
        self.say
            .step("helm uninstall: back to plain TCP, nothing left behind");
        self.helm(&["uninstall", "ambit", "-n", SYSTEM_NS, "--wait"])?;
        self.no_pods("every ambit pod gone", SYSTEM_NS, &ListParams::default())
            .await?;
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        self.plain_on_the_wire(&server, &client, svc, "hello-in-clear-again")
            .await
            .context("after uninstall")?;
        let left = eventually("no ambit objects left", WAIT, || async {
            let left = self.leftovers().await.ok()?;
            left.is_empty().then_some(left)
        })
        .await;
        if left.is_err() {
            bail!("left behind after uninstall: {:?}", self.leftovers().await?);
        }
        for pod in [&server, &client] {
            let netns = self.tb.pod_netns(pod).context("netns")?;
            let rules = Command::new("ip")
                .args([
                    "netns", "exec", &netns, "nft", "list", "table", "inet", "ambit",
                ])
                .output()?;
            anyhow::ensure!(!rules.status.success(), "capture rules left in {netns}");
        }
        self.say
            .say("client -> echo works in plain TCP; no capture rules, no ambit objects");
        Ok(())
    }

    /// Ambit objects still in the cluster.
    async fn leftovers(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        let out = run(self.tb.kubectl().args([
            "get",
            "crd,gatewayclass,clusterrole,clusterrolebinding,mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "-o",
            "name",
            "--ignore-not-found",
        ]))
        .unwrap_or_default();
        left.extend(
            out.lines()
                .filter(|l| l.contains("ambit"))
                .map(str::to_owned),
        );
        let out = run(self.tb.kubectl().args([
            "get",
            "all,secrets,configmaps,serviceaccounts,roles,rolebindings,leases,poddisruptionbudgets",
            "-n",
            SYSTEM_NS,
            "-o",
            "name",
        ]))?;
        left.extend(
            out.lines()
                .filter(|l| {
                    !l.ends_with("/kube-root-ca.crt") && !l.ends_with("serviceaccount/default")
                })
                .map(str::to_owned),
        );
        Ok(left)
    }
}
