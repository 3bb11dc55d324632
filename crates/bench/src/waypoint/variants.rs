//! The waypoint with one feature on, against the plain waypoint at the same fixed rate (the
//! targets of issue 13). Each variant is a waypoint process of its own behind a client tunnel
//! of its own, in front of the same app; the three paths are measured in interleaved rounds,
//! every request carrying the same valid token.
//!
//! - jwt: a RequestAuthentication on the app (ES256, its JWKS inline in the mesh, so keys are
//!   cached as a controller-delivered key set is). Its cost is the waypoint's CPU per request
//!   minus the plain waypoint's.
//! - ext_authz: a CUSTOM policy on every request, asking Istio's ext_authz sample over gRPC
//!   (built by `crates/testbed/setup.sh istio-extauthz`; it allows the client's service
//!   account). Its cost is the p50 latency added, divided by the server's own p50 round trip:
//!   Checks from this process over one kept h2 connection at the same rate, between the load
//!   runs, on the load's CPU. The server serves the waypoint on one loopback address and this
//!   process on another, so the connections it accepted from the waypoint are counted apart in
//!   the kernel's socket tables (closed ones linger there in TIME_WAIT): pooled checks leave
//!   one connection, open from first to last.
//!
//! The server runs on the proxies' CPU: it is a part of the path under test, like the tunnels.

use super::{
    LOAD_CPUS, Measured, NAMESPACE, PROTOCOLS, PROXY_CPUS, PathUnderTest, Plan, RATE, VIP,
    WaypointPath, WaypointSetup, at, fixed_rate, interleaved, merged,
};
use crate::measure::{Percentiles, percentiles};
use crate::process::{Process, RoleProcess, command};
use crate::report::{against, round};
use crate::roles::{client_id, server_id};
use ambit_authn::testing::{Algorithm, TestKey, jwks, now};
use ambit_extauthz::{CheckInput, Client, Outcome, Peer};
use ambit_policy::ExtAuthzProvider;
use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const JWT_TARGET_US: f64 = 20.0;
const EXT_AUTHZ_TARGET: f64 = 1.5;

/// Where the variants' waypoints listen (`127.201.0.N`).
const JWT_HOST: u8 = 5;
const EXT_AUTHZ_HOST: u8 = 6;
/// The ext_authz server, as the waypoint reaches it and as this process does.
const SERVER_FOR_WAYPOINT: u8 = 20;
const SERVER_FOR_BENCH: u8 = 21;
/// The provider's name in the mesh.
const PROVIDER: &str = "local";
/// Checks before the timed ones in each round: the connection opens and warms up.
const RTT_WARMUP: u32 = 100;

const ISSUER: &str = "https://idp.bench.local";
const AUDIENCE: &str = "bench";

/// The paths of [`Variants::measure`], in this order.
const VARIANTS: [&str; 3] = ["waypoint", "jwt", "ext_authz"];

/// Istio's ext_authz sample, or how to build it.
pub(super) fn extauthz_binary() -> Result<PathBuf> {
    let cache = std::env::var_os("AMBIT_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/ambit"), PathBuf::from);
    let path = cache.join("images/istio-extauthz");
    ensure!(
        path.exists(),
        "{} is missing: build Istio's ext_authz sample with `crates/testbed/setup.sh istio-extauthz` (`cargo xtask bench waypoint` does)",
        path.display()
    );
    Ok(path)
}

/// The waypoints with a feature on, and what they need.
pub(super) struct Variants {
    jwt: WaypointPath,
    ext_authz: WaypointPath,
    server: ExtAuthzServer,
    /// `authorization: Bearer ...`, valid for the jwt variant's rule.
    token_header: String,
    token: String,
}

impl Variants {
    pub(super) fn start(setup: &WaypointSetup, extauthz_exe: &Path) -> Result<Self> {
        let key = TestKey::generate(Algorithm::ES256, "bench-1");
        let token = key.sign(&json!({
            "iss": ISSUER,
            "sub": "alice",
            "aud": AUDIENCE,
            "exp": now() + 86_400,
            "scope": "read",
        }));
        let jwt_mesh = format!(
            "requestAuthentications:\n\
             - name: idp\n  namespace: {NAMESPACE}\n  selector: {{matchLabels: {{app: app}}}}\n  jwtRules:\n\
             \x20 - {{issuer: \"{ISSUER}\", audiences: [{AUDIENCE}], jwks: '{}'}}\n",
            jwks(&[key.jwk()])
        );
        let jwt = setup.start("waypoint-jwt", JWT_HOST, &jwt_mesh)?;

        let server = ExtAuthzServer::start(extauthz_exe)?;
        let ext_authz_mesh = format!(
            "policies:\n\
             - {{name: ext-authz, namespace: {NAMESPACE}, action: CUSTOM, provider: {PROVIDER}, rules: [{{paths: [\"*\"]}}]}}\n\
             extAuthzProviders:\n\
             - {}\n",
            provider_yaml(server.for_waypoint())
        );
        let ext_authz = setup.start("waypoint-ext-authz", EXT_AUTHZ_HOST, &ext_authz_mesh)?;
        Ok(Self {
            jwt,
            ext_authz,
            server,
            token_header: format!("authorization: Bearer {token}"),
            token,
        })
    }

    /// Measures the plain waypoint (`baseline`) and both variants at [`RATE`], and the server's
    /// own round trip between rounds; checks that every variant did its work.
    pub(super) fn measure(
        &self,
        plan: &Plan,
        baseline: &WaypointPath,
        tunnel_in: &RoleProcess,
        log: &Path,
    ) -> Result<Results> {
        let headers = || vec![self.token_header.clone()];
        let paths: Vec<PathUnderTest> = [baseline, &self.jwt, &self.ext_authz]
            .into_iter()
            .zip(VARIANTS)
            .map(|(path, name)| path.path(name, headers(), tunnel_in))
            .collect();
        let provider = provider(self.server.for_bench())?;
        let round_trip = RoundTrip::new(&self.token)?;
        eprintln!("variants (JWT, ext_authz): warm-up");
        interleaved(
            &paths,
            1,
            |p| fixed_rate(p, 100, plan.warmup_duration),
            log,
            || Ok(()),
        )?;
        eprintln!(
            "variants: {} rounds of {:?} at {RATE} rps per variant and protocol, each followed by the ext_authz server's own round trip at {RATE} checks/s",
            plan.rate_rounds, plan.rate_round_duration
        );
        let mut rtts = Vec::new();
        let mut seen = HashMap::new();
        let runs = interleaved(
            &paths,
            plan.rate_rounds,
            |p| fixed_rate(p, RATE, plan.rate_round_duration),
            log,
            || {
                rtts.extend(round_trip.sample(&provider, plan.rate_round_duration)?);
                seen.extend(connections_to(self.server.for_waypoint())?);
                Ok(())
            },
        )?;
        seen.extend(connections_to(self.server.for_waypoint())?);
        let by_protocol: Vec<Vec<Measured>> = runs
            .into_iter()
            .map(|by_path| by_path.into_iter().filter_map(merged).collect())
            .collect();

        // A variant that did not do its work measures nothing.
        let requests = |variant: usize| -> u64 {
            by_protocol
                .iter()
                .filter_map(|r| r.get(variant))
                .map(|m| m.ok)
                .sum()
        };
        let authenticated = metric(
            self.jwt.metrics,
            r#"ambit_waypoint_jwt_total{result="authenticated",reason=""}"#,
        )?;
        ensure!(
            authenticated >= requests(1),
            "the jwt waypoint authenticated {authenticated} requests of {}",
            requests(1)
        );
        let checks = metric(
            self.ext_authz.metrics,
            &format!(r#"ambit_waypoint_ext_authz_total{{provider="{PROVIDER}",result="allowed"}}"#),
        )?;
        ensure!(
            checks >= requests(2),
            "the ext_authz waypoint had {checks} requests allowed by the server, of {}",
            requests(2)
        );
        Ok(Results {
            by_protocol,
            server_rtt: percentiles(&mut rtts),
            server_rtt_samples: rtts.len(),
            connections: Connections {
                accepted: seen.len(),
                open: seen.values().filter(|open| **open).count(),
                checks,
            },
        })
    }
}

/// The provider as the mesh declares it, reaching the server at `addr`.
fn provider_yaml(addr: SocketAddr) -> String {
    format!(
        "{{name: {PROVIDER}, service: \"{}\", port: {}, protocol: grpc, timeoutMs: 1000}}",
        addr.ip(),
        addr.port()
    )
}

fn provider(addr: SocketAddr) -> Result<ExtAuthzProvider> {
    Ok(serde_saphyr::from_str(&provider_yaml(addr))?)
}

/// Istio's ext_authz sample, gRPC on a port it picks, allowing the benchmark's client.
struct ExtAuthzServer {
    process: Process,
    grpc_port: u16,
}

impl ExtAuthzServer {
    fn start(exe: &Path) -> Result<Self> {
        let client_sa = client_id()?.service_account().to_owned();
        let mut process = Process::spawn(
            "istio-extauthz",
            command(exe, Some(PROXY_CPUS))
                .args(["-http", "0", "-grpc", "0"])
                .args(["-allow_service_account", &client_sa])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let stderr = process.take_stderr().context("the server's stderr")?;
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // It says its port, then logs every check: drained so it never blocks on the pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = grpc_port(&line)
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let grpc_port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("Istio's ext_authz sample did not say its gRPC port in 10 s"))?;
        let mut server = Self { process, grpc_port };
        server.process.wait_listening(server.for_waypoint())?;
        Ok(server)
    }

    /// Listening on every address, it is reached at two.
    fn for_waypoint(&self) -> SocketAddr {
        at(SERVER_FOR_WAYPOINT, self.grpc_port)
    }

    fn for_bench(&self) -> SocketAddr {
        at(SERVER_FOR_BENCH, self.grpc_port)
    }
}

/// The port in the sample's "Starting gRPC server at [::]:PORT".
fn grpc_port(line: &str) -> Option<u16> {
    let (_, addr) = line.split_once("Starting gRPC server at ")?;
    addr.trim().rsplit(':').next()?.parse().ok()
}

/// Checks as the waypoint sends them for the benchmark's requests, timed from this process.
struct RoundTrip {
    source: String,
    destination: String,
    headers: http::HeaderMap,
}

impl RoundTrip {
    fn new(token: &str) -> Result<Self> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("h2load nghttp2"),
        );
        Ok(Self {
            source: client_id()?.to_string(),
            destination: server_id()?.to_string(),
            headers,
        })
    }

    /// Round trips of Checks paced at [`RATE`] for `duration` (after [`RTT_WARMUP`] untimed),
    /// on a fresh client (one h2 connection) on a thread of the load's CPU. Fails unless the
    /// server allowed every one.
    fn sample(&self, provider: &ExtAuthzProvider, duration: Duration) -> Result<Vec<Duration>> {
        let count = (f64::from(RATE) * duration.as_secs_f64()) as u32;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    pin_to(LOAD_CPUS)?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(self.paced(provider, count))
                })
                .join()
                .map_err(|_| anyhow!("the round-trip thread panicked"))?
        })
    }

    async fn paced(&self, provider: &ExtAuthzProvider, count: u32) -> Result<Vec<Duration>> {
        let client = Client::new(provider.clone())?;
        let input = CheckInput {
            source: Peer {
                principal: &self.source,
                address: at(2, 40000),
            },
            destination: Peer {
                principal: &self.destination,
                address: at(super::POD_HOST, super::APP_PORT),
            },
            method: &http::Method::GET,
            path: "/",
            host: VIP,
            scheme: "http",
            version: http::Version::HTTP_11,
            headers: &self.headers,
            body: None,
            size: Some(0),
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rtts = Vec::with_capacity(count as usize);
        for n in 0..RTT_WARMUP + count {
            tick.tick().await;
            let start = Instant::now();
            let checked = client.check(&input).await;
            let took = start.elapsed();
            ensure!(
                checked.outcome == Outcome::Allowed,
                "the ext_authz server answered a Check {:?} ({:?})",
                checked.outcome,
                checked.error
            );
            if n >= RTT_WARMUP {
                rtts.push(took);
            }
        }
        Ok(rtts)
    }
}

/// Pins the calling thread to the CPU `cpus` names (one number).
fn pin_to(cpus: &str) -> Result<()> {
    let cpu: usize = cpus.parse().context("a CPU number")?;
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// TCP connections to `server` in the kernel's tables, each by its client's address, and
/// whether it is open (ESTABLISHED) or closed and lingering. Both ends are listed: the
/// client's end in `tcp`, the server's in `tcp6` when it listens on `[::]`.
fn connections_to(server: SocketAddr) -> Result<HashMap<SocketAddr, bool>> {
    let mut found = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).with_context(|| format!("reading {table}"))?;
        for (local, remote, open) in text.lines().skip(1).filter_map(socket_entry) {
            let client = if remote == server {
                local
            } else if local == server {
                remote
            } else {
                continue;
            };
            *found.entry(client).or_insert(false) |= open;
        }
    }
    Ok(found)
}

/// One line of `/proc/net/tcp{,6}`: local and remote address (IPv4-mapped ones as IPv4),
/// and whether the state is ESTABLISHED.
fn socket_entry(line: &str) -> Option<(SocketAddr, SocketAddr, bool)> {
    let mut fields = line.split_whitespace().skip(1);
    let local = kernel_address(fields.next()?)?;
    let remote = kernel_address(fields.next()?)?;
    let open = fields.next()? == "01";
    Some((local, remote, open))
}

/// `0100007F:1F90` or `0000000000000000FFFF00000100007F:1F90`: the address as 32-bit words in
/// the host's byte order (little-endian here), the port in hex.
fn kernel_address(field: &str) -> Option<SocketAddr> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = address.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(octets);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The value of the series `series` in a waypoint's `/metrics`; 0 when it is absent.
fn metric(metrics: SocketAddr, series: &str) -> Result<u64> {
    let mut stream = TcpStream::connect_timeout(&metrics, Duration::from_secs(2))
        .with_context(|| format!("connecting to the waypoint's metrics at {metrics}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    ensure!(
        text.starts_with("HTTP/1.1 200"),
        "{metrics}/metrics: {}",
        text.lines().next().unwrap_or_default()
    );
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// What the server accepted from the ext_authz waypoint over the whole run.
struct Connections {
    /// Connections seen, open or closed.
    accepted: usize,
    /// Still open at the end.
    open: usize,
    /// Checks the server allowed (every request of the variant, warm-up included).
    checks: u64,
}

impl Connections {
    /// Every check went over connections kept open: none was closed, none opened per check.
    fn pooled(&self) -> bool {
        self.accepted > 0 && self.open == self.accepted
    }
}

pub(super) struct Results {
    /// Per protocol ([`PROTOCOLS`] order), per variant ([`VARIANTS`] order), rounds merged.
    by_protocol: Vec<Vec<Measured>>,
    server_rtt: Percentiles,
    server_rtt_samples: usize,
    connections: Connections,
}

/// One protocol's variants.
struct Compared<'a> {
    protocol: &'static str,
    baseline: &'a Measured,
    jwt: &'a Measured,
    ext_authz: &'a Measured,
}

impl Compared<'_> {
    /// The jwt waypoint's CPU per request minus the plain one's.
    fn jwt_cpu_us_added(&self) -> f64 {
        self.jwt.cpu_us_per_request(0) - self.baseline.cpu_us_per_request(0)
    }

    fn ext_authz_p50_added_us(&self) -> f64 {
        self.ext_authz.latency().p50_us - self.baseline.latency().p50_us
    }
}

impl Results {
    fn compared(&self) -> Vec<Compared<'_>> {
        PROTOCOLS
            .iter()
            .zip(&self.by_protocol)
            .filter_map(|(protocol, runs)| match runs.as_slice() {
                [baseline, jwt, ext_authz] => Some(Compared {
                    protocol: protocol.name(),
                    baseline,
                    jwt,
                    ext_authz,
                }),
                _ => None,
            })
            .collect()
    }

    fn vs_server_rtt(&self, added_us: f64) -> f64 {
        added_us / self.server_rtt.p50_us
    }

    pub(super) fn print_table(&self) {
        println!(
            "\nVariants at {RATE} rps, every request with a valid ES256 token: the plain waypoint, with a RequestAuthentication (jwt), with a CUSTOM policy on a local ext_authz server (ext_authz)\n"
        );
        println!(
            "{:<9} {:<10} {:>10} {:>10}   waypoint CPU µs/req @1k",
            "protocol", "variant", "p50 @1k", "p99 @1k"
        );
        for c in self.compared() {
            for (name, m) in VARIANTS.iter().zip([c.baseline, c.jwt, c.ext_authz]) {
                let latency = m.latency();
                println!(
                    "{:<9} {:<10} {:>7.3} ms {:>7.3} ms   {:.1}",
                    c.protocol,
                    name,
                    latency.p50_us / 1e3,
                    latency.p99_us / 1e3,
                    m.cpu_us_per_request(0)
                );
            }
        }
        println!(
            "\next_authz server's own round trip (Check from the bench over one h2 connection, {RATE}/s): p50 {:.1} µs, p99 {:.1} µs\n",
            self.server_rtt.p50_us, self.server_rtt.p99_us
        );
        for c in self.compared() {
            let name = c.protocol;
            println!(
                "{name:<6} JWT CPU µs added per request        {}",
                against(c.jwt_cpu_us_added(), JWT_TARGET_US, false)
            );
            let added = c.ext_authz_p50_added_us();
            println!(
                "{name:<6} ext_authz p50 added / server RTT    {} (added {added:.1} µs)",
                against(self.vs_server_rtt(added), EXT_AUTHZ_TARGET, false)
            );
        }
        let conns = &self.connections;
        println!(
            "ext_authz connections the server accepted from the waypoint: {} ({} open at the end) for {} checks: {}",
            conns.accepted,
            conns.open,
            conns.checks,
            if conns.pooled() {
                "pooled"
            } else {
                "NOT pooled"
            }
        );
    }

    /// Adds `jwt`, `ext_authz` and their targets to the benchmark's JSON (headline: HTTP/1.1,
    /// as the rest of it).
    pub(super) fn add_to_report(&self, report: &mut Value) {
        let compared = self.compared();
        let headline = compared.first();
        let by_protocol = |f: &dyn Fn(&Compared) -> Value| -> Value {
            compared
                .iter()
                .map(|c| (c.protocol.to_string(), f(c)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        report["jwt"] = json!({
            "cpu_us_added_per_request": headline.map(|c| round(c.jwt_cpu_us_added(), 1)),
            "by_protocol": by_protocol(&|c| json!({
                "cpu_us_added_per_request": round(c.jwt_cpu_us_added(), 1),
                "waypoint_cpu_us_per_request": round(c.baseline.cpu_us_per_request(0), 1),
                "jwt_waypoint_cpu_us_per_request": round(c.jwt.cpu_us_per_request(0), 1),
                "p50_ms": round(c.jwt.latency().p50_us / 1e3, 3),
            })),
            "algorithm": "ES256",
            "keys": "inline JWKS in the mesh",
        });
        let conns = &self.connections;
        report["ext_authz"] = json!({
            "p50_added_vs_server_rtt": headline.map(|c| round(self.vs_server_rtt(c.ext_authz_p50_added_us()), 3)),
            "server_rtt_us": {
                "p50": round(self.server_rtt.p50_us, 1),
                "p99": round(self.server_rtt.p99_us, 1),
                "samples": self.server_rtt_samples,
            },
            "by_protocol": by_protocol(&|c| json!({
                "p50_added_vs_server_rtt": round(self.vs_server_rtt(c.ext_authz_p50_added_us()), 3),
                "p50_added_us": round(c.ext_authz_p50_added_us(), 1),
                "waypoint_p50_ms": round(c.baseline.latency().p50_us / 1e3, 3),
                "ext_authz_waypoint_p50_ms": round(c.ext_authz.latency().p50_us / 1e3, 3),
                "ext_authz_waypoint_p99_ms": round(c.ext_authz.latency().p99_us / 1e3, 3),
                "ext_authz_waypoint_cpu_us_per_request": round(c.ext_authz.cpu_us_per_request(0), 1),
            })),
            "server": "Istio's ext_authz sample (gRPC), on the proxies' CPU",
            "connections_from_waypoint": {
                "accepted": conns.accepted,
                "open_at_end": conns.open,
                "checks": conns.checks,
                "pooled": conns.pooled(),
            },
        });
        report["targets"]["jwt_cpu_us_added_per_request_max"] = JWT_TARGET_US.into();
        report["targets"]["ext_authz_p50_added_vs_server_rtt_max"] = EXT_AUTHZ_TARGET.into();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_kernels_socket_tables() {
        let v4 = "   3: 14C9017F:A3F1 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 123 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            socket_entry(v4),
            Some((
                "127.1.201.20:41969".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
                true
            ))
        );
        // The server's end of the same connection, on a `[::]` listener, in TIME_WAIT.
        let v6 = "   0: 0000000000000000FFFF000014C9017F:1F90 0000000000000000FFFF00000100007F:A3F1 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000";
        assert_eq!(
            socket_entry(v6),
            Some((
                "127.1.201.20:8080".parse().unwrap(),
                "127.0.0.1:41969".parse().unwrap(),
                false
            ))
        );
        assert_eq!(kernel_address("0100007F"), None);
        assert_eq!(
            kernel_address("00000000000000000000000000000000:0050"),
            Some("[::]:80".parse().unwrap())
        );
        assert_eq!(socket_entry("  sl  local_address rem_address   st"), None);
    }

    #[test]
    fn reads_the_samples_port() {
        assert_eq!(
            grpc_port("2026/12/01 15:14:33 Starting gRPC server at [::]:42637"),
            Some(42637)
        );
        assert_eq!(
            grpc_port("2026/12/01 15:14:33 Starting HTTP server at [::]:43121"),
            None
        );
    }

    #[test]
    fn pooled_means_no_connection_closed() {
        let c = |accepted, open| Connections {
            accepted,
            open,
            checks: 1000,
        };
        assert!(c(1, 1).pooled());
        assert!(!c(0, 0).pooled(), "no connection seen: nothing was checked");
        assert!(!c(900, 1).pooled(), "a connection per check");
    }
}
