//! HBONE in: each verified CONNECT names a destination of the served account (or is refused
//! 401). HTTP destinations are served through the request stack; TCP ones are authorized at L4
//! with the client's identity and spliced to an endpoint over HBONE.

use crate::destination::{self, Destination};
use crate::http::balance::Load;
use crate::http::server::{self, Limits};
use crate::http::upstream::Upstreams;
use crate::http::{Downstream, Stack};
use crate::metrics::ConnectionLabels;
use crate::state::Shared;
use ambit_hbone::{ConnectHandler, ConnectRequest, PendingTunnel, PoolKey, Refusal, TunnelHeaders};
use ambit_policy::{Decision, Source};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Inbound {
    shared: Arc<Shared>,
    stack: Stack,
    upstreams: Arc<Upstreams>,
    tcp_load: Arc<Load>,
    limits: Arc<Limits>,
}

impl Inbound {
    pub fn new(shared: Arc<Shared>, upstreams: Arc<Upstreams>, limits: Limits) -> Self {
        Self {
            stack: crate::http::stack(shared.clone(), upstreams.clone()),
            shared,
            upstreams,
            tcp_load: Arc::default(),
            limits: Arc::new(limits),
        }
    }
}

impl ConnectHandler for Inbound {
    fn handle(
        &self,
        request: ConnectRequest,
        tunnel: PendingTunnel,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        let this = self.clone();
        async move {
            let _active = this.shared.active_guard();
            let labels = |destination: &str, result: &str| ConnectionLabels {
                source_identity: request.peer.to_string(),
                destination_service: destination.to_owned(),
                result: result.to_owned(),
            };
            if this.shared.draining() {
                tunnel.refuse(Refusal::Unreachable);
                return;
            }
            let mesh = this.shared.mesh();
            let destination = match destination::resolve(
                &mesh,
                this.shared.served(),
                request.target,
            ) {
                Ok(d) => Arc::new(d),
                Err(reason) => {
                    this.shared.metrics.connection(&labels("", "not_served"));
                    tracing::info!(target: "access", kind = "connection", src = %request.peer_addr, src_identity = %request.peer, dst = %request.target, %reason, "refused");
                    tunnel.refuse(Refusal::Denied);
                    return;
                }
            };
            drop(mesh);
            let service = destination.service();
            if destination.protocol.is_http() {
                let Ok(stream) = tunnel.accept() else { return };
                this.shared
                    .metrics
                    .connection(&labels(&service, "forwarded"));
                let downstream = Downstream {
                    peer: request.peer,
                    peer_addr: request.peer_addr,
                    destination,
                };
                server::serve(
                    stream,
                    downstream,
                    this.stack.clone(),
                    &this.limits,
                    this.shared.drain_signal(),
                )
                .await;
            } else {
                let result = this.forward_tcp(&request, &destination, tunnel).await;
                this.shared.metrics.connection(&labels(&service, result));
            }
        }
    }
}

impl Inbound {
    /// TCP: L4 policy for the chosen endpoint, then HBONE to it and a splice. Returns the
    /// outcome's metric label.
    async fn forward_tcp(
        &self,
        request: &ConnectRequest,
        destination: &Destination,
        tunnel: PendingTunnel,
    ) -> &'static str {
        let mesh = self.shared.mesh();
        let endpoints = destination::endpoints(&mesh, self.shared.served(), &destination.target);
        let Some((i, _slot)) = self.tcp_load.pick(&endpoints) else {
            tunnel.refuse(Refusal::Unreachable);
            return "unreachable";
        };
        let endpoint = &endpoints[i];
        let Some(workload) = mesh.workload_by_uid(&endpoint.uid) else {
            tunnel.refuse(Refusal::Unreachable);
            return "unreachable";
        };
        let verdict = mesh.authorize_connection(
            workload,
            endpoint.addr.port(),
            &Source {
                identity: Some(request.peer.clone()),
                ip: request.peer_addr.ip(),
            },
        );
        if let Decision::Deny(policy) = verdict.decision {
            tracing::info!(target: "access", kind = "connection", src = %request.peer_addr, src_identity = %request.peer, dst = %endpoint.addr, policy = policy.as_deref().unwrap_or("(no ALLOW matched)"), "denied");
            tunnel.refuse(Refusal::Denied);
            return "denied";
        }
        let key = PoolKey::new(
            self.shared.identity.clone(),
            SocketAddr::new(endpoint.addr.ip(), ambit_hbone::HBONE_PORT),
            vec![endpoint.identity.clone()],
        );
        let mut upstream = match self
            .upstreams
            .pool()
            .connect(&key, endpoint.addr, &TunnelHeaders::default())
            .await
        {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::info!(target: "access", kind = "connection", dst = %endpoint.addr, %error, "upstream unreachable");
                tunnel.refuse(Refusal::Unreachable);
                return "unreachable";
            }
        };
        let Ok(mut downstream) = tunnel.accept() else {
            return "unreachable";
        };
        drop(mesh);
        let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        let (received, sent) = copied.as_ref().map_or((0, 0), |(r, s)| (*r, *s));
        self.shared.metrics.tcp_bytes(sent, received);
        tracing::info!(target: "access", kind = "connection", src = %request.peer_addr, src_identity = %request.peer, dst = %endpoint.addr, dst_identity = %endpoint.identity, sent, received, error = copied.err().map(|e| e.to_string()), "connection complete");
        "forwarded"
    }
}
