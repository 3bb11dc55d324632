//! The waypoint on the user's path: `kubectl ambit waypoint apply` for echo's service account,
//! then real clients (curl, Istio's echo client) over HTTP/1.1, h2c and gRPC through it, an L7
//! DENY, an HTTPRoute on the Service, a pod IP dialed directly, a stolen certificate dialing the pod's tunnel, the waypoint
//! scaled to 0 and back, and `waypoint delete`. What the waypoint did is read from its own
//! metrics and access log; whether traffic went around it, from the destination tunnel's.

use crate::attacker::Attacker;
use crate::{
    CLIENT, GRPC_SVC_PORT, H2C_SVC_PORT, HTTP_PORT, HTTP_SVC_PORT, NS, SERVER, Samples, User, WAIT,
    eventually, http_get, run, spiffe,
};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::net::{IpAddr, SocketAddr};

/// `kubectl ambit waypoint apply --service-account echo` names it `waypoint-echo`.
pub const WAYPOINT: &str = "waypoint-echo";
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The user the controller runs the waypoint as.
const WAYPOINT_UID: &str = "1337";
/// The L7 policy of the DENY step.
pub const L7_POLICY: &str = "deny-admin-delete";
/// The HTTPRoute of the routing step.
const ROUTE: &str = "echo-routes";
const REQUESTS: &str = "ambit_waypoint_requests_total";
const TUNNEL_OPENED: &str = "ambit_tcp_connections_opened_total";
const TUNNEL_DENIED: &str = "ambit_tcp_denied_total";
/// What `curl -w` appends after each transfer, to split a multi-URL run into replies.
const REPLY_MARK: &str = "@@ambit-e2e";

/// [`eventually`] for checks that say why they do not hold yet: on timeout the error carries
/// the last reason (what the call answered, what the metrics held).
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let last = std::sync::Mutex::new(String::new());
    let found = eventually(what, WAIT, || {
        let attempt = check();
        let last = &last;
        async move {
            attempt
                .await
                .map_err(|why| {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = why;
                })
                .ok()
        }
    })
    .await;
    found.map_err(|e| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::anyhow!("{e}; last seen: {last}")
    })
}

/// One HTTP transfer as curl reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `1.1` or `2`.
    pub version: String,
    /// New connections this transfer opened: 0 when it reused the previous one.
    pub connects: u32,
    pub body: String,
}

/// Splits curl's output (each transfer's body, then our `-w` line) into replies.
pub fn parse_replies(out: &str) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in out.split_inclusive('\n') {
        let Some(rest) = line.trim_end().strip_prefix(REPLY_MARK) else {
            body.push_str(line);
            continue;
        };
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        replies.push(Reply {
            code: field("code").parse().unwrap_or(0),
            version: field("version"),
            connects: field("connects").parse().unwrap_or(0),
            body: std::mem::take(&mut body).trim_end().to_owned(),
        });
    }
    replies
}

/// The Prometheus series named `name` whose labels include every `(key, value)`.
pub fn series<'m>(
    metrics: &'m str,
    name: &str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = &'m str> {
    let prefix = format!("{name}{{");
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metrics.lines().filter(move |line| {
        let Some(rest) = line.strip_prefix(&prefix) else {
            return false;
        };
        let Some((set, _)) = rest.split_once('}') else {
            return false;
        };
        let have: Vec<&str> = set.split("\",").collect();
        wanted.iter().all(|w| {
            have.iter()
                .any(|h| format!("{h}\"") == *w || *h == w.as_str())
        })
    })
}

/// The sum of those series' values.
pub fn count(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    series(metrics, name, labels)
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The access log records (`"kind":"request"`) of the waypoint's JSON log, as their fields.
pub fn access_records(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| match v.get("fields") {
            Some(fields) => fields.clone(),
            None => v,
        })
        .filter(|f| f["kind"] == "request")
        .collect()
}

impl User<'_> {
    /// `curl -sS ARGS` from inside `from`'s netns, as the app would call; each transfer's reply,
    /// or curl's error line. Options apply per URL: `--next` starts the next URL's.
    pub fn curl(&self, from: &Pod, args: &[&str]) -> Result<Vec<Reply>, String> {
        let write_out = format!(
            "\n{REPLY_MARK} code=%{{http_code}} version=%{{http_version}} connects=%{{num_connects}}\n"
        );
        // Per-URL options go before each URL: after every `--next` again.
        let per_url = ["-sS", "--max-time", "3", "-w", write_out.as_str()];
        let mut argv: Vec<&str> = per_url.to_vec();
        for a in args {
            argv.push(a);
            if *a == "--next" {
                argv.extend(per_url);
            }
        }
        let mut cmd = self
            .tb
            .pod_exec(from, "curl", &argv)
            .ok_or("pod has no netns")?;
        let out = cmd.output().map_err(|e| format!("running curl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(parse_replies(&stdout))
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(stderr.lines().next().unwrap_or_default().to_owned())
        }
    }

    /// One request that must succeed: its reply.
    pub fn curl_one(&self, from: &Pod, args: &[&str]) -> Result<Reply, String> {
        let mut replies = self.curl(from, args)?;
        match (replies.pop(), replies.is_empty()) {
            (Some(reply), true) => Ok(reply),
            _ => Err(format!("expected one reply to curl {args:?}")),
        }
    }

    /// One HTTP/1.1 GET that must be answered 200: its reply.
    fn get_ok(&self, from: &Pod, url: &str) -> Result<Reply, String> {
        let reply = self.curl_one(from, &["--http1.1", url])?;
        if reply.code == 200 {
            Ok(reply)
        } else {
            Err(format!("{reply:?}"))
        }
    }

    /// One gRPC `EchoTestService/Echo` call with Istio's echo client from inside `from`'s netns:
    /// what the server echoed, or the client's error.
    pub fn grpc_echo(&self, from: &Pod, to: SocketAddr, message: &str) -> Result<String, String> {
        let program = self
            .tb
            .binary("istio-echo-client")
            .ok_or("istio-echo-client is not built: run crates/testbed/setup.sh")?;
        let url = format!("grpc://{to}");
        let mut cmd = self
            .tb
            .pod_exec(
                from,
                &program.display().to_string(),
                &[&url, "--count", "1", "--timeout", "3s", "--msg", message],
            )
            .ok_or("pod has no netns")?;
        let out = cmd.output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && stdout.contains("StatusCode=200") {
            Ok(stdout)
        } else {
            // Its log lines are `time level message`: the message says what failed.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr
                .lines()
                .chain(stdout.lines())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            let message = line.split_once("first error: ").map_or(line, |(_, e)| e);
            Err(message.trim().to_owned())
        }
    }

    /// A Ready waypoint pod with an IP.
    pub async fn waypoint_pod(&self) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let selector = waypoint_pods();
        Ok(eventually("a Ready waypoint pod", WAIT, || async {
            pods.list(&selector)
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().is_some_and(|s| {
                            s.pod_ip.is_some()
                                && s.conditions
                                    .iter()
                                    .flatten()
                                    .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
        })
        .await?)
    }

    /// `kubectl ambit waypoint VERB` for echo's service account; what it printed.
    pub fn waypoint_command(&self, verb: &str) -> Result<String> {
        self.kubectl(&[
            "ambit",
            "waypoint",
            verb,
            "-n",
            NS,
            "--service-account",
            SERVER,
        ])
    }

    /// The waypoint's Prometheus text (`/metrics` on its pod's port 15020).
    pub async fn waypoint_metrics(&self) -> Result<String> {
        let pod = self.waypoint_pod().await?;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .context("waypoint pod has no IP")?;
        http_get(&format!("{ip}:15020"), "/metrics").await
    }

    /// The waypoint's log, as `kubectl logs` serves it (not echoed: it is polled).
    fn waypoint_log(&self) -> Result<String> {
        run(self
            .tb
            .kubectl()
            .args(["logs", "-n", NS, &format!("deploy/{WAYPOINT}")]))
    }

    /// Connections echo's node tunnel accepted straight from the client, around any waypoint.
    async fn direct_from_client(&self, server: &Pod) -> Result<u64> {
        self.echo_tunnel_count(server, TUNNEL_OPENED, &spiffe(NS, CLIENT))
            .await
    }

    /// Connections echo's node tunnel accepted from `source` for echo, or refused (`metric`).
    async fn echo_tunnel_count(&self, server: &Pod, metric: &str, source: &str) -> Result<u64> {
        let metrics = self.tunnel_metrics(server).await?;
        Ok(count(
            &metrics,
            metric,
            &[
                ("direction", "inbound"),
                ("source_identity", source),
                ("destination_identity", &spiffe(NS, SERVER)),
            ],
        ))
    }

    /// Every waypoint step of the user's path, in order: from `waypoint apply` to `waypoint
    /// delete`.
    pub async fn waypoint_steps(&self) -> Result<()> {
        self.waypoint().await?;
        self.through_waypoint().await?;
        self.l7_deny().await?;
        self.http_route().await?;
        self.pod_ip_through_waypoint().await?;
        self.bypass_refused().await?;
        self.authn_steps().await?;
        self.waypoint_scaled_to_zero().await?;
        self.waypoint_delete().await
    }

    /// `kubectl ambit waypoint apply`: the Gateway is Programmed and the waypoint's pod becomes
    /// Ready, which it reports only once it holds its certificate and its first config.
    pub async fn waypoint(&self) -> Result<()> {
        self.say.step("A waypoint for the echo service account");
        let out = self.waypoint_command("apply")?;
        for line in out.lines() {
            self.say.say(line);
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        eventually("the waypoint Deployment ready", WAIT, || async {
            let ready = deployments.get(WAYPOINT).await.ok()?.status?.ready_replicas;
            (ready.unwrap_or(0) >= 1).then_some(())
        })
        .await?;
        // Echo's account is bound (its traffic goes through the waypoint) once a pod of it
        // has been ready: the controller marks the Gateway then (docs/waypoints.md).
        let since = eventually("echo's account bound to the waypoint", WAIT, || async {
            let jsonpath = "jsonpath={.metadata.annotations.ambit\\.dev/serving-since}";
            let get = ["get", "gateway", "-n", NS, WAYPOINT, "-o", jsonpath];
            let since = run(self.tb.kubectl().args(get)).ok()?;
            (!since.trim().is_empty()).then(|| since.trim().to_owned())
        })
        .await?;
        self.say
            .say(format!("Gateway {WAYPOINT} marked ambit.dev/serving-since={since}: echo's account is bound to it"));
        let pod = self.waypoint_pod().await?;
        let out = self.waypoint_command("status")?;
        for line in out.lines() {
            self.say.say(line);
        }
        self.say.say(format!(
            "waypoint pod {} Ready on {}: it holds the certificate of {} and its first config",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default(),
            spiffe(NS, WAYPOINT)
        ));
        let process = process_status(&pod)?;
        let field = |name: &str| {
            process
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let (uid, caps, nnp) = (field("Uid"), field("CapEff"), field("NoNewPrivs"));
        ensure!(
            uid.split_whitespace().all(|u| u == WAYPOINT_UID)
                && caps.trim_start_matches('0').is_empty()
                && nnp == "1",
            "the waypoint's process should run as {WAYPOINT_UID} with no capabilities and \
             no_new_privs: Uid {uid:?}, CapEff {caps:?}, NoNewPrivs {nnp:?}"
        );
        self.say.say(format!(
            "its process runs as uid {WAYPOINT_UID}, no capabilities, no_new_privs"
        ));
        Ok(())
    }

    /// HTTP/1.1 (curl), h2c (curl with prior knowledge) and gRPC (Istio's echo client) from
    /// `client` to the echo Service: answered by echo, and counted by the waypoint's metrics
    /// with both SPIFFE ids and its access log, while echo's tunnel sees no direct connection.
    pub async fn through_waypoint(&self) -> Result<()> {
        self.say
            .step("HTTP/1.1, HTTP/2 and gRPC through the waypoint");
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        let (from, to) = (spiffe(NS, CLIENT), spiffe(NS, SERVER));
        let direct_before = self.direct_from_client(&server).await?;
        let http1 = format!(
            "http://{}/hello-http1",
            SocketAddr::new(svc.ip(), HTTP_SVC_PORT)
        );
        let h2c = format!(
            "http://{}/hello-h2c",
            SocketAddr::new(svc.ip(), H2C_SVC_PORT)
        );
        let grpc = SocketAddr::new(svc.ip(), GRPC_SVC_PORT);
        // The first call may race the waypoint's view of echo's endpoints.
        let reply = until("HTTP/1.1 client -> echo through the waypoint", || async {
            self.get_ok(&client, &http1)
        })
        .await?;
        let show = |command: &str, reply: &Reply| {
            self.say.command(command);
            self.say.say(format!(
                "HTTP/{} {}: {}",
                reply.version,
                reply.code,
                summary(&reply.body, &["Method", "URL", "Proto", "Hostname"])
            ));
        };
        show(&format!("curl --http1.1 {http1}"), &reply);
        let reply = self
            .curl_one(&client, &["--http2-prior-knowledge", &h2c])
            .map_err(anyhow::Error::msg)?;
        ensure!(
            reply.code == 200 && reply.version == "2" && reply.body.contains("Proto=HTTP/2.0"),
            "h2c through the waypoint: {reply:?}"
        );
        show(&format!("curl --http2-prior-knowledge {h2c}"), &reply);
        let echoed = self
            .grpc_echo(&client, grpc, "hello-grpc")
            .map_err(anyhow::Error::msg)?;
        ensure!(
            echoed.contains("Echo=hello-grpc") && echoed.contains("Proto=GRPC"),
            "gRPC through the waypoint: {echoed}"
        );
        self.say
            .command(&format!("istio-echo-client grpc://{grpc} --msg hello-grpc"));
        self.say.say(format!(
            "gRPC: {}",
            summary(&echoed, &["StatusCode", "Proto", "Echo", "Hostname"])
        ));

        let ids = [
            ("source_identity", from.as_str()),
            ("destination_identity", to.as_str()),
            ("destination_service", "echo.demo"),
            ("response_code", "200"),
        ];
        let with = |more: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            ids.iter().chain(more).copied().collect()
        };
        let (get, post) = (
            with(&[("method", "GET"), ("grpc_status", "")]),
            with(&[("method", "POST"), ("grpc_status", "0")]),
        );
        let metrics = until("the waypoint's metrics count the calls", || async {
            let m = self.waypoint_metrics().await.map_err(|e| e.to_string())?;
            if count(&m, REQUESTS, &get) >= 2 && count(&m, REQUESTS, &post) >= 1 {
                Ok(m)
            } else {
                Err(series(&m, REQUESTS, &[]).collect::<Vec<_>>().join("\n"))
            }
        })
        .await?;
        let paths = ["/hello-http1", "/hello-h2c", "/proto.EchoTestService/Echo"];
        let records = eventually("the waypoint's access log has the calls", WAIT, || async {
            let records = access_records(&self.waypoint_log().ok()?);
            let mine: Vec<serde_json::Value> = paths
                .iter()
                .filter_map(|p| {
                    records
                        .iter()
                        .rev()
                        .find(|r| r["path"] == *p && r["src_identity"] == from.as_str())
                        .cloned()
                })
                .collect();
            (mine.len() == paths.len()).then_some(mine)
        })
        .await?;
        ensure!(
            self.direct_from_client(&server).await? == direct_before,
            "echo's tunnel accepted a connection straight from {from}: the waypoint was skipped"
        );
        self.say.command(&format!(
            "curl http://<waypoint pod>:15020/metrics | grep {REQUESTS}"
        ));
        for labels in [&get, &post] {
            if let Some(line) = series(&metrics, REQUESTS, labels).next() {
                self.say.say(line);
            }
        }
        self.say.command(&format!(
            "kubectl logs -n {NS} deploy/{WAYPOINT} | grep '\"kind\":\"request\"'"
        ));
        for r in &records {
            self.say.say(format!(
                "{} {} {} {} -> {} grpc_status={:?} ({})",
                r["src_identity"].as_str().unwrap_or_default(),
                r["method"].as_str().unwrap_or_default(),
                r["path"].as_str().unwrap_or_default(),
                r["version"].as_str().unwrap_or_default(),
                r["code"].as_str().unwrap_or_default(),
                r["grpc_status"].as_str().unwrap_or_default(),
                r["dst_identity"].as_str().unwrap_or_default(),
            ));
        }
        self.say.say(
            "echo's node tunnel: no connection straight from the client, only from the waypoint",
        );
        Ok(())
    }

    /// An L7 DENY of `DELETE /admin/*` on echo's HTTP port: refused with 403, and `GET /` on
    /// the same keep-alive connection still answered.
    pub async fn l7_deny(&self) -> Result<()> {
        self.say
            .step("An L7 AuthorizationPolicy at the waypoint: DENY DELETE /admin/*");
        // `ports` scopes the rule to the HTTP port: an L7 rule on a TCP port cannot be
        // evaluated there, so it would deny everything on it.
        self.apply(
            &format!("AuthorizationPolicy {L7_POLICY}"),
            &format!(
                "apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {L7_POLICY}, namespace: {NS}}}\n\
                 spec:\n  action: DENY\n  selector: {{matchLabels: {{app: {SERVER}}}}}\n  \
                 rules: [{{methods: [DELETE], paths: [\"/admin/*\"], ports: [{HTTP_PORT}]}}]\n"
            ),
        )?;
        let Samples { client, svc, .. } = self.samples().await?;
        let base = SocketAddr::new(svc.ip(), HTTP_SVC_PORT);
        let (admin, root) = (
            format!("http://{base}/admin/users"),
            format!("http://{base}/"),
        );
        let args = [
            "--http1.1",
            "-X",
            "DELETE",
            admin.as_str(),
            "--next",
            "--http1.1",
            root.as_str(),
        ];
        let replies = until("DELETE /admin/users refused by the waypoint", || async {
            let replies = self.curl(&client, &args)?;
            match replies.first() {
                Some(r) if r.code == 403 => Ok(replies),
                _ => Err(format!("{replies:?}")),
            }
        })
        .await?;
        let [denied, allowed] = replies.as_slice() else {
            bail!("expected two replies: {replies:?}");
        };
        ensure!(
            allowed.code == 200 && allowed.connects == 0,
            "GET / after the 403 on the same connection: {allowed:?}"
        );
        self.say.command(&format!(
            "curl -X DELETE {admin} --next {root}   # one connection"
        ));
        self.say.say(format!(
            "DELETE /admin/users -> {} {}",
            denied.code,
            denied.body.trim()
        ));
        self.say.say(format!(
            "GET / on the same keep-alive connection (curl opened {} new) -> {}",
            allowed.connects, allowed.code
        ));
        let from = spiffe(NS, CLIENT);
        let refused = [
            ("source_identity", from.as_str()),
            ("method", "DELETE"),
            ("response_code", "403"),
        ];
        let metrics = eventually("the waypoint counts the 403", WAIT, || async {
            let m = self.waypoint_metrics().await.ok()?;
            (count(&m, REQUESTS, &refused) >= 1).then_some(m)
        })
        .await?;
        if let Some(line) = series(&metrics, REQUESTS, &refused).next() {
            self.say.say(line);
        }
        Ok(())
    }

    /// An HTTPRoute whose parent is the echo Service (GAMMA): the controller accepts it and
    /// the waypoint applies it (a prefix rewrite and an added request header on `/v2`, 404 for
    /// what no rule matches); deleted, requests are served as before.
    pub async fn http_route(&self) -> Result<()> {
        self.say
            .step("An HTTPRoute on the echo Service: rewrite /v2 and add a header, 404 elsewhere");
        self.apply(
            &format!("HTTPRoute {ROUTE}"),
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: {ROUTE}, namespace: {NS}}}\n\
                 spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {SERVER}}}]\n  rules:\n  \
                 - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    filters:\n    \
                 - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /routed}}}}}}\n    \
                 - {{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: x-routed-by, value: {ROUTE}}}]}}}}\n  \
                 - matches: [{{path: {{type: Exact, value: /}}}}]\n"
            ),
        )?;
        let Samples { client, svc, .. } = self.samples().await?;
        let base = SocketAddr::new(svc.ip(), HTTP_SVC_PORT);
        let (routed, unmatched) = (
            format!("http://{base}/v2/hello"),
            format!("http://{base}/elsewhere"),
        );
        let args = [
            "--http1.1",
            routed.as_str(),
            "--next",
            "--http1.1",
            unmatched.as_str(),
        ];
        let replies = until("the route applied by the waypoint", || async {
            let replies = self.curl(&client, &args)?;
            match replies.as_slice() {
                [r, u] if r.code == 200 && r.body.contains("/routed/hello") && u.code == 404 => {
                    Ok(replies)
                }
                _ => Err(format!("{replies:?}")),
            }
        })
        .await?;
        self.say
            .command(&format!("curl {routed} --next {unmatched}"));
        let header = replies[0]
            .body
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("x-routed-by"))
            .map(str::to_owned);
        ensure!(
            header.is_some(),
            "the echo app should see the header the route added: {}",
            replies[0].body
        );
        self.say.say(format!(
            "/v2/hello -> 200, echo saw the path rewritten to /routed/hello and {}",
            header.unwrap_or_default().trim()
        ));
        self.say.say(format!(
            "/elsewhere -> {} (routes exist, none matched)",
            replies[1].code
        ));
        let conditions = until(
            "the route Accepted with its references resolved",
            || async {
                let out = self
                    .kubectl(&[
                        "get",
                        "httproute",
                        "-n",
                        NS,
                        ROUTE,
                        "-o",
                        "jsonpath={range .status.parents[*].conditions[*]}{.type}={.status} {end}",
                    ])
                    .map_err(|e| e.to_string())?;
                if out.contains("Accepted=True") && out.contains("ResolvedRefs=True") {
                    Ok(out)
                } else {
                    Err(out)
                }
            },
        )
        .await?;
        self.say.say(format!("status: {}", conditions.trim()));
        self.kubectl(&["delete", "httproute", "-n", NS, ROUTE])?;
        until("/elsewhere served again without the route", || async {
            let reply = self.curl_one(&client, &["--http1.1", unmatched.as_str()])?;
            if reply.code == 200 {
                Ok(())
            } else {
                Err(format!("{reply:?}"))
            }
        })
        .await?;
        self.say.say("route deleted: /elsewhere -> 200 again");
        Ok(())
    }

    /// A client that dials echo's pod IP (not the Service) is still sent through the waypoint:
    /// the waypoint counts the request (no destination service), echo's tunnel sees only the
    /// waypoint.
    pub async fn pod_ip_through_waypoint(&self) -> Result<()> {
        self.say
            .step("Dialing echo's pod IP directly still goes through the waypoint");
        let Samples { server, client, .. } = self.samples().await?;
        let ip = echo_ip(&server)?;
        let url = format!("http://{ip}:{HTTP_PORT}/hello-pod-ip");
        let from = spiffe(NS, CLIENT);
        let to = spiffe(NS, SERVER);
        let by_pod_ip = [
            ("source_identity", from.as_str()),
            ("destination_identity", to.as_str()),
            ("destination_service", ""),
            ("method", "GET"),
            ("response_code", "200"),
        ];
        let before = count(&self.waypoint_metrics().await?, REQUESTS, &by_pod_ip);
        let direct_before = self.direct_from_client(&server).await?;
        let reply = self
            .curl_one(&client, &["--http1.1", &url])
            .map_err(anyhow::Error::msg)?;
        ensure!(reply.code == 200, "GET {url}: {reply:?}");
        let metrics = eventually("the waypoint counts the pod-IP call", WAIT, || async {
            let m = self.waypoint_metrics().await.ok()?;
            (count(&m, REQUESTS, &by_pod_ip) > before).then_some(m)
        })
        .await?;
        ensure!(
            self.direct_from_client(&server).await? == direct_before,
            "echo's tunnel accepted a connection straight from {from}"
        );
        let via = spiffe(NS, WAYPOINT);
        ensure!(
            self.echo_tunnel_count(&server, TUNNEL_OPENED, &via).await? > 0,
            "echo's tunnel never saw the waypoint {via}"
        );
        self.say.command(&format!("curl {url}"));
        self.say.say(format!(
            "{}: {}",
            reply.code,
            summary(&reply.body, &["Method", "URL", "Hostname"])
        ));
        if let Some(line) = series(&metrics, REQUESTS, &by_pod_ip).next() {
            self.say.say(line);
        }
        self.say
            .say(format!("echo's node tunnel: inbound from {via} only"));
        Ok(())
    }

    /// HBONE straight to echo's tunnel (`podIP:15008`) with a valid certificate of `client`,
    /// minted with the mesh's root: refused with 401, and counted as denied by that tunnel.
    pub async fn bypass_refused(&self) -> Result<()> {
        self.say
            .step("Skipping the waypoint with a valid client certificate: refused");
        let server = self.server_pod().await?;
        let ip = echo_ip(&server)?;
        let attacker = Attacker::new(&self.client, NS, CLIENT).await?;
        let from = attacker.identity.to_string();
        let denied_before = self
            .echo_tunnel_count(&server, TUNNEL_DENIED, &from)
            .await?;
        let (peer, target) = (
            SocketAddr::new(ip, ambit_hbone::HBONE_PORT),
            SocketAddr::new(ip, HTTP_PORT),
        );
        match attacker.connect(peer, (NS, SERVER), target).await {
            Err(ambit_hbone::HboneError::Refused { status, .. }) if status.as_u16() == 401 => {}
            other => bail!(
                "HBONE CONNECT {target} at {peer} as {from} should be refused with 401: {other:?}"
            ),
        }
        eventually("echo's tunnel counts the refusal", WAIT, || async {
            (self
                .echo_tunnel_count(&server, TUNNEL_DENIED, &from)
                .await
                .ok()?
                > denied_before)
                .then_some(())
        })
        .await?;
        self.say.say(format!(
            "HBONE CONNECT {target} at {peer} as {from} (a certificate signed by the mesh CA): 401"
        ));
        self.say.say(format!(
            "echo's node tunnel counts it: {TUNNEL_DENIED}{{direction=\"inbound\",source_identity=\"{from}\",...}}"
        ));
        Ok(())
    }

    /// The waypoint Deployment scaled to 0: every call to echo fails (never direct); scaled
    /// back to 1, calls work again.
    pub async fn waypoint_scaled_to_zero(&self) -> Result<()> {
        self.say
            .step("Waypoint scaled to 0: traffic fails closed, never direct");
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        let from = spiffe(NS, CLIENT);
        let direct_before = self.direct_from_client(&server).await?;
        let deployment = format!("deployment/{WAYPOINT}");
        self.kubectl(&["scale", "-n", NS, &deployment, "--replicas=0"])?;
        self.no_pods("no waypoint pod left", NS, &waypoint_pods())
            .await?;
        let pod_ip = echo_ip(&server)?;
        let http = format!("http://{}/", SocketAddr::new(svc.ip(), HTTP_SVC_PORT));
        let pod = format!("http://{pod_ip}:{HTTP_PORT}/");
        for url in [&http, &pod] {
            match self.curl_one(&client, &["--http1.1", url]) {
                Ok(reply) => bail!("GET {url} with no waypoint was answered: {reply:?}"),
                Err(e) => self.say.say(format!("curl {url}: {e}")),
            }
        }
        let grpc = SocketAddr::new(svc.ip(), GRPC_SVC_PORT);
        match self.grpc_echo(&client, grpc, "no-waypoint") {
            Ok(out) => bail!("gRPC with no waypoint was answered: {out}"),
            Err(e) => self.say.say(format!("gRPC {grpc}: {e}")),
        }
        match self.call(&client, svc, "no-waypoint") {
            Ok(out) => bail!("TCP with no waypoint was answered: {out}"),
            Err(e) => self.say.say(format!("TCP {svc}: {e}")),
        }
        ensure!(
            self.direct_from_client(&server).await? == direct_before,
            "with the waypoint at 0, echo's tunnel accepted a connection straight from {from}"
        );
        self.say
            .say("echo's node tunnel: no connection from the client went around the waypoint");
        self.kubectl(&["scale", "-n", NS, &deployment, "--replicas=1"])?;
        self.waypoint_pod().await?;
        let reply = until("calls work with the waypoint back", || async {
            self.get_ok(&client, &http)
        })
        .await?;
        self.say
            .say(format!("scaled back to 1: curl {http} -> {}", reply.code));
        Ok(())
    }

    /// `kubectl ambit waypoint delete`: client traffic goes straight to echo again.
    pub async fn waypoint_delete(&self) -> Result<()> {
        self.say
            .step("kubectl ambit waypoint delete: direct traffic again");
        // Its L7 rule needs a waypoint: a tunnel cannot evaluate it, and would deny the port.
        self.kubectl(&["delete", "authorizationpolicy", "-n", NS, L7_POLICY])?;
        self.waypoint_command("delete")?;
        let Samples {
            server,
            client,
            svc,
        } = self.samples().await?;
        let from = spiffe(NS, CLIENT);
        let direct_before = self.direct_from_client(&server).await?;
        let http = format!(
            "http://{}/hello-direct",
            SocketAddr::new(svc.ip(), HTTP_SVC_PORT)
        );
        let reply = until("client -> echo directly again", || async {
            let reply = self.get_ok(&client, &http)?;
            let direct = self
                .direct_from_client(&server)
                .await
                .map_err(|e| e.to_string())?;
            if direct > direct_before {
                Ok(reply)
            } else {
                Err(format!("answered, but not directly: {reply:?}"))
            }
        })
        .await?;
        let grpc = SocketAddr::new(svc.ip(), GRPC_SVC_PORT);
        let echoed = self
            .grpc_echo(&client, grpc, "direct")
            .map_err(anyhow::Error::msg)?;
        // Not waiting for the waypoint's pod to go: its Deployment is the garbage collector's
        // to delete, which within 30 s of the chart's install does not know Gateways yet.
        self.say.say(format!(
            "curl {http} -> {}; gRPC -> {}",
            reply.code,
            summary(&echoed, &["StatusCode"])
        ));
        self.say.say(format!(
            "echo's node tunnel: inbound from {from} again, no waypoint in between"
        ));
        Ok(())
    }
}

/// The pods of the waypoint.
fn waypoint_pods() -> ListParams {
    ListParams::default().labels(&format!("{GATEWAY_NAME_LABEL}={WAYPOINT}"))
}

/// The IP of echo's pod.
fn echo_ip(server: &Pod) -> Result<IpAddr> {
    Ok(server
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("echo has no pod IP")?
        .parse()?)
}

/// `/proc/<pid>/status` of a pod's first container: the testbed's container ids are
/// `ambit-testbed://<pid>`, the process itself (its security context already applied).
fn process_status(pod: &Pod) -> Result<String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
        .context("the pod has no container id")?;
    let pid = id
        .strip_prefix("ambit-testbed://")
        .with_context(|| format!("container id {id:?} is not the testbed's"))?;
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// `key=value` lines of Istio's echo reply (`[0 body] Key=value` for its client), the `keys`
/// wanted, on one line.
fn summary(body: &str, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| {
            body.lines().find_map(|l| {
                let l = l.rsplit("] ").next().unwrap_or(l);
                l.strip_prefix(k)?
                    .strip_prefix('=')
                    .map(|v| format!("{k}={v}"))
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_split_per_transfer() {
        let out = "denied by policy demo/x\n@@ambit-e2e code=403 version=1.1 connects=1\n\
                   Method=GET\nURL=/\n\n@@ambit-e2e code=200 version=1.1 connects=0\n";
        let r = parse_replies(out);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].code, r[0].connects), (403, 1));
        assert_eq!(r[0].body, "denied by policy demo/x");
        assert_eq!(
            (r[1].code, r[1].version.as_str(), r[1].connects),
            (200, "1.1", 0)
        );
        assert_eq!(summary(&r[1].body, &["URL", "Method"]), "URL=/ Method=GET");
        assert_eq!(
            summary(
                "[0 body] StatusCode=200\n[0 body] Echo=x\n",
                &["Echo", "StatusCode"]
            ),
            "Echo=x StatusCode=200"
        );
    }

    #[test]
    fn series_match_every_label_exactly() {
        let m = "# TYPE ambit_waypoint_requests_total counter\n\
                 ambit_waypoint_requests_total{source_identity=\"spiffe://td/ns/a/sa/client\",destination_service=\"\",method=\"GET\"} 2\n\
                 ambit_waypoint_requests_total{source_identity=\"spiffe://td/ns/a/sa/client2\",destination_service=\"s.a\",method=\"GET\"} 5\n\
                 ambit_waypoint_requests_total{source_identity=\"spiffe://td/ns/a/sa/client\",destination_service=\"s.a\",method=\"POST\"} 1\n";
        let client = [("source_identity", "spiffe://td/ns/a/sa/client")];
        assert_eq!(count(m, REQUESTS, &client), 3);
        assert_eq!(count(m, REQUESTS, &[("method", "GET")]), 7);
        assert_eq!(count(m, REQUESTS, &[("destination_service", "")]), 2);
        assert_eq!(
            count(m, REQUESTS, &[client[0], ("destination_service", "s.a")]),
            1
        );
        assert_eq!(count(m, "other", &client), 0);
    }

    #[test]
    fn access_records_are_the_request_lines() {
        let log = "{\"level\":\"INFO\",\"fields\":{\"message\":\"certificate issued\"}}\n\
                   not json\n\
                   {\"level\":\"INFO\",\"fields\":{\"kind\":\"request\",\"path\":\"/x\"},\"target\":\"access\"}\n\
                   {\"level\":\"INFO\",\"fields\":{\"kind\":\"connection\"}}\n";
        let r = access_records(log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["path"], "/x");
    }
}
