//! Outbound: a pod's connection redirected to 15001. Its original destination decides:
//! a mesh workload (directly or behind a Service VIP) goes over HBONE to the workload's
//! `ip:15008`, or to the waypoint of its service account; anything else passes through.

use crate::metrics::Labels;
use crate::pod::{ActiveGuard, PodContext};
use crate::sockets::{connect_marked, original_dst, reset};
use crate::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use ambit_hbone::{H2Stream, HboneError, PoolKey, TunnelHeaders, splice_tcp_h2, splice_tcp_tcp};
use ambit_identity::SpiffeId;
use ambit_mesh::{Destination, Mesh};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let guard = ActiveGuard::new(&ctx.active);
                tokio::spawn(handle(ctx.clone(), tcp, peer, guard));
            }
            Err(error) => {
                tracing::warn!(%error, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Where a connection goes, decided by the (boxed, short-lived) setup.
enum Route {
    Hbone { tunnel: H2Stream, labels: Labels },
    Plain { upstream: TcpStream, labels: Labels },
}

async fn handle(ctx: Arc<PodContext>, mut tcp: TcpStream, peer: SocketAddr, _guard: ActiveGuard) {
    let _ = tcp.set_nodelay(true);
    // Boxed: the HBONE dial and CONNECT state is freed before the long splice.
    let route = match Box::pin(setup(&ctx, &tcp)).await {
        Ok(route) => route,
        Err((dst, error)) => {
            tracing::info!(target: "access", direction = "outbound", src = %peer, dst = %dst, identity = %ctx.spec.identity, error = %error, "connection refused");
            reset(tcp);
            return;
        }
    };
    let (result, labels, counted, hbone) = match route {
        Route::Hbone { tunnel, labels } => {
            let counted = ctx.shared.metrics.opened(&labels);
            (splice_tcp_h2(&mut tcp, tunnel).await, labels, counted, true)
        }
        Route::Plain {
            mut upstream,
            labels,
        } => {
            let counted = ctx.shared.metrics.opened(&labels);
            let result = splice_tcp_tcp(&mut tcp, &mut upstream).await;
            (result, labels, counted, false)
        }
    };
    let (sent, received) = result.as_ref().map_or((0, 0), |t| (t.forward, t.backward));
    counted.closed(sent, received);
    tracing::info!(
        target: "access",
        direction = "outbound",
        src = %peer,
        src_identity = %labels.source_identity,
        dst_identity = %labels.destination_identity,
        hbone,
        sent,
        received,
        error = result.err().map(|e| e.to_string()),
        "connection complete"
    );
}

/// Where an outbound connection should go, decided from the model alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// HBONE to `peer` (a pod's 15008 or a waypoint) expecting `expected`, CONNECT to `target`.
    Hbone {
        peer: SocketAddr,
        expected: SpiffeId,
        target: SocketAddr,
        destination: SpiffeId,
    },
    /// Plain TCP to `target`.
    Passthrough { target: SocketAddr },
    /// Refused: a connection to the tunnel's own ports would loop through the tunnel, or the
    /// destination's waypoint cannot be reached.
    Refuse(&'static str),
}

/// Decides the route for a connection from the pod with `own_ips` to original destination `dst`.
pub fn plan(mesh: &Mesh, own_ips: &[IpAddr], dst: SocketAddr) -> Plan {
    let tunnel_port = [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT].contains(&dst.port());
    if tunnel_port
        && (dst.ip().is_loopback() || dst.ip().is_unspecified() || own_ips.contains(&dst.ip()))
    {
        return Plan::Refuse("connection to the tunnel's own port");
    }
    let (workload, port) = match mesh.resolve(dst) {
        Destination::Workload(w, port) => (w, port),
        Destination::Unknown => return Plan::Passthrough { target: dst },
    };
    let Some(&ip) = workload.ips.first() else {
        return Plan::Refuse("the destination workload has no address");
    };
    let target = SocketAddr::new(ip, port);
    let destination = match mesh.identity(workload) {
        Some(id) if workload.hbone => id.clone(),
        _ => return Plan::Passthrough { target },
    };
    match mesh.waypoint_of(workload) {
        // Going around a waypoint that cannot be reached yet would skip its L7 policy.
        Err(_) => Plan::Refuse("the destination's waypoint has no address yet"),
        Ok(Some(waypoint)) => match mesh.waypoint_identity(waypoint) {
            Some(expected) => Plan::Hbone {
                peer: waypoint.address,
                expected,
                // The waypoint gets the original destination: for a Service it balances,
                // routes and applies L7 policy per request itself.
                target: if mesh.service_by_vip(dst.ip()).is_some() {
                    dst
                } else {
                    target
                },
                destination,
            },
            None => Plan::Refuse("the waypoint has no valid identity"),
        },
        Ok(None) => Plan::Hbone {
            peer: SocketAddr::new(ip, HBONE_PORT),
            expected: destination.clone(),
            target,
            destination,
        },
    }
}

async fn setup(ctx: &PodContext, tcp: &TcpStream) -> Result<Route, (String, String)> {
    let dst =
        original_dst(tcp).map_err(|e| ("?".to_owned(), format!("no original destination: {e}")))?;
    let fail = |e: String| (dst.to_string(), e);
    let source_identity = ctx.spec.identity.to_string();
    let plan = plan(&ctx.shared.mesh(), &ctx.spec.ips, dst);
    let (peer, expected, target, destination) = match plan {
        Plan::Refuse(reason) => return Err(fail(reason.into())),
        Plan::Passthrough { target } => {
            let upstream = connect_marked(target)
                .await
                .map_err(|e| fail(e.to_string()))?;
            return Ok(Route::Plain {
                upstream,
                labels: Labels {
                    direction: "outbound",
                    source_identity,
                    destination_identity: "unknown".into(),
                },
            });
        }
        Plan::Hbone {
            peer,
            expected,
            target,
            destination,
        } => (peer, expected, target, destination),
    };
    let labels = Labels {
        direction: "outbound",
        source_identity,
        destination_identity: destination.to_string(),
    };
    let key = PoolKey::new(ctx.spec.identity.clone(), peer, vec![expected]);
    match ctx
        .pool
        .connect(&key, target, &TunnelHeaders::default())
        .await
    {
        Ok(tunnel) => Ok(Route::Hbone { tunnel, labels }),
        Err(error) => {
            if let HboneError::Refused { status, .. } = &error
                && status.as_u16() == 401
            {
                ctx.shared.metrics.denied(&labels);
            }
            Err(fail(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Mode;
    use crate::test_support::context;

    fn mesh() -> Mesh {
        let yaml = format!(
            "{}services:\n  - {{name: s, namespace: demo, vips: [10.96.0.1], ports: [{{port: 80, targetPort: 8080}}], endpoints: [srv]}}\n  - {{name: g, namespace: demo, vips: [10.96.0.2], ports: [{{port: 80, targetPort: 9090}}], endpoints: [prot]}}\n",
            crate::test_support::MESH
        );
        Mesh::new(ambit_mesh::MeshConfig::from_yaml(&yaml).unwrap()).unwrap()
    }

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/demo/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_by_the_model() {
        let m = mesh();
        let own = ["10.1.0.3".parse().unwrap()];
        // A VIP: the endpoint's target port, HBONE to the endpoint's 15008.
        assert_eq!(
            plan(&m, &own, addr("10.96.0.1:80")),
            Plan::Hbone {
                peer: addr("10.1.0.3:15008"),
                expected: id("server"),
                target: addr("10.1.0.3:8080"),
                destination: id("server"),
            }
        );
        // A waypoint-protected Service: HBONE to the waypoint, expecting its identity, with
        // the Service's address as the target (the waypoint picks the endpoint).
        assert_eq!(
            plan(&m, &own, addr("10.96.0.2:80")),
            Plan::Hbone {
                peer: addr("10.1.0.9:15008"),
                expected: id("wp"),
                target: addr("10.96.0.2:80"),
                destination: id("guarded"),
            }
        );
        // A waypoint-protected pod by its address: the pod's address.
        assert_eq!(
            plan(&m, &own, addr("10.1.0.4:9090")),
            Plan::Hbone {
                peer: addr("10.1.0.9:15008"),
                expected: id("wp"),
                target: addr("10.1.0.4:9090"),
                destination: id("guarded"),
            }
        );
        // Not in the mesh: passthrough to the original destination.
        assert_eq!(
            plan(&m, &own, addr("192.0.2.1:443")),
            Plan::Passthrough {
                target: addr("192.0.2.1:443")
            }
        );
    }

    #[test]
    fn refuses_a_destination_whose_waypoint_has_no_address() {
        let m = crate::test_support::unaddressed_waypoint_mesh();
        assert_eq!(
            plan(&m, &[], addr("10.1.0.4:8080")),
            Plan::Refuse("the destination's waypoint has no address yet")
        );
    }

    #[test]
    fn refuses_loops_into_the_tunnel() {
        let m = mesh();
        let own = ["10.1.0.3".parse().unwrap()];
        for dst in ["127.0.0.1:15001", "10.1.0.3:15006", "0.0.0.0:15008"] {
            assert!(
                matches!(plan(&m, &own, addr(dst)), Plan::Refuse(_)),
                "{dst}"
            );
        }
        // Another pod's 15008 is a normal (HBONE) destination port for passthrough rules.
        assert!(!matches!(
            plan(&m, &own, addr("192.0.2.1:15008")),
            Plan::Refuse(_)
        ));
    }

    /// Every open connection pays for its task's future: keep it small (the boxed setup is
    /// not part of it).
    #[tokio::test]
    async fn per_connection_future_is_small() {
        let ctx = context("srv", Mode::Strict);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let guard = ActiveGuard::new(&ctx.active);
        let future = handle(ctx.clone(), server, peer, guard);
        let size = std::mem::size_of_val(&future);
        eprintln!("outbound connection future: {size} bytes");
        assert!(size <= 1024, "outbound connection future is {size} bytes");
        drop(future);
        drop(client);
        assert_eq!(ctx.active.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
