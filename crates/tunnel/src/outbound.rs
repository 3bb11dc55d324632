//! Outbound: a pod's connection redirected to 15001. Its original destination decides:
//! a mesh workload (directly or behind a Service VIP) goes over HBONE to the workload's
//! `ip:15008`, or to the waypoint of its service account; anything else passes through.

use crate::HBONE_PORT;
use crate::metrics::Labels;
use crate::pod::{ActiveGuard, PodContext};
use crate::sockets::{connect_marked, original_dst, reset};
use ambit_hbone::{H2Stream, HboneError, PoolKey, TunnelHeaders, splice_tcp_h2, splice_tcp_tcp};
use ambit_mesh::Destination;
use std::net::SocketAddr;
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
    let (result, labels, hbone) = match route {
        Route::Hbone { tunnel, labels } => {
            ctx.shared.metrics.opened(labels.clone());
            (splice_tcp_h2(&mut tcp, tunnel).await, labels, true)
        }
        Route::Plain {
            mut upstream,
            labels,
        } => {
            ctx.shared.metrics.opened(labels.clone());
            (splice_tcp_tcp(&mut tcp, &mut upstream).await, labels, false)
        }
    };
    let (sent, received) = result.as_ref().map_or((0, 0), |t| (t.forward, t.backward));
    ctx.shared.metrics.closed(labels.clone(), sent, received);
    tracing::info!(
        target: "access",
        direction = "outbound",
        src = %peer,
        src_identity = %labels.source,
        dst_identity = %labels.destination,
        hbone,
        sent,
        received,
        error = result.err().map(|e| e.to_string()),
        "connection complete"
    );
}

async fn setup(ctx: &PodContext, tcp: &TcpStream) -> Result<Route, (String, String)> {
    let dst =
        original_dst(tcp).map_err(|e| ("?".to_owned(), format!("no original destination: {e}")))?;
    let fail = |e: String| (dst.to_string(), e);
    let mesh = ctx.shared.mesh();
    let source = ctx.spec.identity.to_string();
    let (target, workload) = match mesh.resolve(dst) {
        Destination::Workload(w, port) if w.hbone => {
            let ip = w
                .ips
                .first()
                .copied()
                .ok_or_else(|| fail("workload has no IP".into()))?;
            (SocketAddr::new(ip, port), Some(w))
        }
        Destination::Workload(w, port) => (
            SocketAddr::new(w.ips.first().copied().unwrap_or(dst.ip()), port),
            None,
        ),
        Destination::Unknown => (dst, None),
    };
    let Some(workload) = workload else {
        let upstream = connect_marked(target)
            .await
            .map_err(|e| fail(e.to_string()))?;
        return Ok(Route::Plain {
            upstream,
            labels: Labels {
                direction: "outbound",
                source,
                destination: "unknown".into(),
            },
        });
    };
    let destination = mesh
        .identity(workload)
        .cloned()
        .ok_or_else(|| fail("workload has no identity".into()))?;
    let (peer, expected) = match mesh.waypoint_for(&workload.namespace, &workload.service_account) {
        Some(waypoint) => (
            waypoint.address,
            mesh.waypoint_identity(waypoint)
                .ok_or_else(|| fail("waypoint has no valid identity".into()))?,
        ),
        None => (
            SocketAddr::new(target.ip(), HBONE_PORT),
            destination.clone(),
        ),
    };
    let labels = Labels {
        direction: "outbound",
        source,
        destination: destination.to_string(),
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
                ctx.shared.metrics.denied(labels);
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
        assert!(size <= 1024, "outbound connection future is {size} bytes");
        drop(future);
        drop(client);
        assert_eq!(ctx.active.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
