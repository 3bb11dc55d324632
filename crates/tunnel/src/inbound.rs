//! Inbound: HBONE on 15008 (verified peer, L4 policy, waypoint enforcement, then the app) and
//! plaintext on 15006 (refused in strict mode, let in without identity in permissive mode).

use crate::config::Mode;
use crate::metrics::Labels;
use crate::pod::{ActiveGuard, PodContext};
use crate::sockets::{connect_marked, original_dst, reset};
use crate::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use ambit_hbone::{
    ConnectHandler, ConnectRequest, PendingTunnel, Refusal, splice_tcp_h2, splice_tcp_tcp,
};
use ambit_identity::SpiffeId;
use ambit_policy::{Decision, Source};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct InboundHandler {
    pub ctx: Arc<PodContext>,
}

/// Why an inbound connection is refused; `Ok` carries the AUDIT policy that matched, for the
/// access log.
fn authorize(
    ctx: &PodContext,
    source: &Source,
    target: SocketAddr,
) -> Result<Option<String>, String> {
    if !ctx.spec.ips.contains(&target.ip()) {
        return Err(format!("target {target} is not this pod's address"));
    }
    if [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT].contains(&target.port()) {
        return Err(format!("port {} belongs to the tunnel", target.port()));
    }
    let mesh = ctx.shared.mesh();
    let Some(workload) = mesh.workload_by_uid(&ctx.spec.uid) else {
        return Err("the pod is no longer in the mesh".into());
    };
    let waypoint = mesh.waypoint_of(workload).map_err(|bound| {
        format!(
            "{} is bound to waypoint {bound}, which has no address yet; refused until it has one",
            workload.service_account
        )
    })?;
    if let Some(waypoint) = waypoint {
        // Traffic for a waypoint-protected workload must come through that waypoint.
        if source.identity.is_none() || mesh.waypoint_identity(waypoint) != source.identity {
            return Err(format!(
                "{} is served by waypoint {}/{}; direct traffic is refused",
                workload.service_account, waypoint.namespace, waypoint.name
            ));
        }
        // The waypoint enforced the workload's policies with the real client's identity; here
        // the peer is always the waypoint, so evaluating them again could only misjudge (an
        // ALLOW naming the client would deny everything).
        return Ok(None);
    }
    let verdict = mesh.authorize_connection(workload, target.port(), source);
    let audit = verdict
        .audit
        .as_ref()
        .map(|a| format!(" (audit policy {a} matched)"))
        .unwrap_or_default();
    match verdict.decision {
        Decision::Allow => Ok(verdict.audit),
        Decision::Deny(Some(policy)) => Err(format!("denied by policy {policy}{audit}")),
        Decision::Deny(None) => Err(format!("no ALLOW policy matched{audit}")),
    }
}

impl ConnectHandler for InboundHandler {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        let ctx = self.ctx.clone();
        async move {
            let _guard = ActiveGuard::new(&ctx.active);
            let labels = Labels {
                direction: "inbound",
                source_identity: request.peer.to_string(),
                destination_identity: ctx.spec.identity.to_string(),
            };
            let source = Source {
                identity: Some(request.peer.clone()),
                ip: request.peer_addr.ip(),
            };
            let audit = match authorize(&ctx, &source, request.target) {
                Ok(audit) => audit,
                Err(reason) => {
                    ctx.shared.metrics.denied(&labels);
                    tracing::info!(target: "access", direction = "inbound", src = %request.peer_addr, src_identity = %request.peer, dst = %request.target, reason, "connection denied");
                    tunnel.refuse(Refusal::Denied);
                    return;
                }
            };
            let mut upstream = match Box::pin(connect_marked(request.target)).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    tracing::info!(target: "access", direction = "inbound", dst = %request.target, %error, "app refused");
                    tunnel.refuse(Refusal::Unreachable);
                    return;
                }
            };
            let Ok(stream) = tunnel.accept() else {
                return;
            };
            let counted = ctx.shared.metrics.opened(&labels);
            let result = splice_tcp_h2(&mut upstream, stream).await;
            // `forward` is app -> tunnel here: the source received it.
            let (received, sent) = result.as_ref().map_or((0, 0), |t| (t.forward, t.backward));
            counted.closed(sent, received);
            tracing::info!(target: "access", direction = "inbound", src = %request.peer_addr, src_identity = %request.peer, dst = %request.target, sent, received, audit, error = result.err().map(|e| e.to_string()), "connection complete");
        }
    }

    /// A waypoint replica is one client to this node while it carries many clients'
    /// connections: no share of its own, only the node's total bounds it. The identity is
    /// a waypoint's only by the controller's config, and the CA never issues it to a tunnel.
    fn tunnel_share(&self, peer: &SpiffeId, share: usize) -> usize {
        if self.ctx.shared.mesh().is_waypoint(peer) {
            usize::MAX
        } else {
            share
        }
    }
}

pub async fn serve_plaintext(ctx: Arc<PodContext>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let guard = ActiveGuard::new(&ctx.active);
                tokio::spawn(plaintext(ctx.clone(), tcp, peer, guard));
            }
            Err(error) => {
                tracing::warn!(%error, "inbound plaintext accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn plaintext(
    ctx: Arc<PodContext>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _guard: ActiveGuard,
) {
    let labels = Labels {
        direction: "inbound_plaintext",
        source_identity: "unknown".into(),
        destination_identity: ctx.spec.identity.to_string(),
    };
    let target = match original_dst(&tcp) {
        Ok(target) => target,
        Err(error) => {
            tracing::warn!(%error, "inbound plaintext without an original destination");
            reset(tcp);
            return;
        }
    };
    let source = Source {
        identity: None,
        ip: peer.ip(),
    };
    let refusal = if ctx.shared.mode == Mode::Strict {
        Err("strict mode: plaintext refused".to_owned())
    } else {
        authorize(&ctx, &source, target)
    };
    let audit = match refusal {
        Ok(audit) => audit,
        Err(reason) => {
            ctx.shared.metrics.denied(&labels);
            tracing::info!(target: "access", direction = "inbound_plaintext", src = %peer, dst = %target, reason, "connection denied");
            reset(tcp);
            return;
        }
    };
    let mut upstream = match Box::pin(connect_marked(target)).await {
        Ok(upstream) => upstream,
        Err(_) => {
            reset(tcp);
            return;
        }
    };
    let counted = ctx.shared.metrics.opened(&labels);
    let result = splice_tcp_tcp(&mut tcp, &mut upstream).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |t| (t.forward, t.backward));
    counted.closed(sent, received);
    tracing::info!(target: "access", direction = "inbound_plaintext", src = %peer, dst = %target, sent, received, audit, "connection complete");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{context, context_in, unaddressed_waypoint_mesh};

    fn from(id: &str) -> Source {
        Source {
            identity: Some(id.parse().unwrap()),
            ip: "10.2.0.2".parse().unwrap(),
        }
    }

    const GOOD: &str = "spiffe://cluster.local/ns/demo/sa/client";

    #[test]
    fn waypoints_get_the_whole_budget() {
        use ambit_hbone::ServerSettings;
        let handler = InboundHandler {
            ctx: context("srv", Mode::Strict),
        };
        let share = ServerSettings::default().max_tunnels_per_peer;
        let waypoint: SpiffeId = "spiffe://cluster.local/ns/demo/sa/wp".parse().unwrap();
        assert_eq!(handler.tunnel_share(&waypoint, share), usize::MAX);
        // The account it serves, a client, and a waypoint's name in another namespace: one
        // client's share.
        for other in [
            "spiffe://cluster.local/ns/demo/sa/guarded",
            GOOD,
            "spiffe://cluster.local/ns/other/sa/wp",
        ] {
            assert_eq!(handler.tunnel_share(&other.parse().unwrap(), share), share);
        }
    }

    #[test]
    fn target_must_be_this_pod_and_not_a_tunnel_port() {
        let ctx = context("srv", Mode::Strict);
        assert!(authorize(&ctx, &from(GOOD), "10.1.0.3:8080".parse().unwrap()).is_ok());
        let other = authorize(&ctx, &from(GOOD), "10.1.0.4:8080".parse().unwrap()).unwrap_err();
        assert!(other.contains("not this pod"), "{other}");
        for port in [15001, 15006, 15008] {
            let own = authorize(
                &ctx,
                &from(GOOD),
                SocketAddr::new("10.1.0.3".parse().unwrap(), port),
            )
            .unwrap_err();
            assert!(own.contains("belongs to the tunnel"), "{own}");
        }
    }

    #[test]
    fn policy_deny_is_applied() {
        let ctx = context("srv", Mode::Strict);
        let denied = authorize(
            &ctx,
            &from("spiffe://cluster.local/ns/demo/sa/bad"),
            "10.1.0.3:8080".parse().unwrap(),
        )
        .unwrap_err();
        assert!(denied.contains("no-bad"), "{denied}");
        assert!(
            denied.contains("audit policy audit-8080 matched"),
            "{denied}"
        );
    }

    #[test]
    fn audit_policies_are_reported_and_decide_nothing() {
        let ctx = context("srv", Mode::Strict);
        let audited = authorize(&ctx, &from(GOOD), "10.1.0.3:8080".parse().unwrap());
        assert_eq!(audited, Ok(Some("audit-8080".into())));
        let other_port = authorize(&ctx, &from(GOOD), "10.1.0.3:9090".parse().unwrap());
        assert_eq!(other_port, Ok(None));
    }

    #[test]
    fn waypoint_protected_workload_takes_only_its_waypoint() {
        let ctx = context("prot", Mode::Strict);
        let target = "10.1.0.4:8080".parse().unwrap();
        let direct = authorize(&ctx, &from(GOOD), target).unwrap_err();
        assert!(direct.contains("waypoint"), "{direct}");
        let plaintext = Source {
            identity: None,
            ip: "10.2.0.2".parse().unwrap(),
        };
        assert!(authorize(&ctx, &plaintext, target).is_err());
        // From the waypoint: its policy `only-client` (the client, GET only) was the
        // waypoint's to enforce; evaluated here, against the waypoint's identity and at L4,
        // it would refuse everything.
        assert!(authorize(&ctx, &from("spiffe://cluster.local/ns/demo/sa/wp"), target).is_ok());
        // Even the client the policy names may not skip the waypoint.
        let named = authorize(&ctx, &from(GOOD), target).unwrap_err();
        assert!(named.contains("waypoint"), "{named}");
    }

    #[test]
    fn a_workload_bound_to_a_waypoint_without_address_takes_nothing() {
        let ctx = context_in(unaddressed_waypoint_mesh(), "prot", Mode::Strict);
        let target = "10.1.0.4:8080".parse().unwrap();
        for peer in [GOOD, "spiffe://cluster.local/ns/demo/sa/pending"] {
            let refused = authorize(&ctx, &from(peer), target).unwrap_err();
            assert!(
                refused.contains("bound to waypoint demo/pending, which has no address yet"),
                "{refused}"
            );
        }
    }
}
