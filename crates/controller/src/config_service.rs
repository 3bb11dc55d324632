//! `ambit.config.v1.ConfigService`: one delta stream per subscriber.

use crate::auth::{Authenticator, Caller};
use crate::index::{Name, Snapshot};
use crate::metrics::Metrics;
use crate::rejections::{Rejection, Rejections};
use crate::view::{Push, Subscriber, View};
use ambit_proto::EncodedDelta;
use ambit_proto::config::v1::{
    ClientMessage, client_message, config_service_server::ConfigService, subscribe,
};
use futures::Stream;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

/// Delta parts buffered per subscriber before the sender waits for the client: with
/// `PART_BYTES`, what a slow client can hold up in the controller's memory.
const SEND_BUFFER: usize = 4;
/// A large delta (a first view) goes out in parts of about this size.
const PART_BYTES: usize = 256 << 10;
/// First views sent at once. When all tunnels connect together (the controller restarted),
/// each stream in flight holds send buffers of several hundred KiB; past a few streams the
/// cores are busy anyway, so more at once only adds memory.
const CONCURRENT_FIRST_VIEWS: usize = 16;
/// How long a first view waits for its turn: slow clients hold their turn while they read, so
/// past this a first view goes out anyway rather than queue behind them.
const FIRST_VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Upserts above which a first delta waits for its turn.
const LARGE_PUSH: usize = 256;
/// Unanswered deltas remembered per subscriber for NACK handling.
const MAX_PENDING: usize = 64;

#[derive(Clone)]
pub struct ConfigServer {
    auth: Authenticator,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tunnel: (String, String),
    metrics: Arc<Metrics>,
    rejections: Rejections,
    first_views: Arc<Semaphore>,
}

impl ConfigServer {
    pub fn new(
        auth: Authenticator,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tunnel: (String, String),
        metrics: Arc<Metrics>,
        rejections: Rejections,
    ) -> Self {
        Self {
            auth,
            snapshots,
            tunnel,
            metrics,
            rejections,
            first_views: Arc::new(Semaphore::new(CONCURRENT_FIRST_VIEWS)),
        }
    }
}

impl std::fmt::Debug for ConfigServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigServer")
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

/// Who may subscribe as what: only the tunnel's service account as a node, and only as the node
/// its token is bound to (a token bound to no pod on a node subscribes as no node: it could be
/// any node's); a waypoint only with the service account of a waypoint Gateway for the account
/// it asks about.
pub fn authorize(
    caller: &Caller,
    subscriber: &Subscriber,
    tunnel: &(String, String),
    snapshot: &Snapshot,
) -> Result<(), String> {
    match subscriber {
        Subscriber::Node(node) => {
            if (caller.namespace.as_str(), caller.service_account.as_str())
                != (tunnel.0.as_str(), tunnel.1.as_str())
            {
                return Err(format!(
                    "only the tunnel service account {}/{} may subscribe as a node, not {}/{}",
                    tunnel.0, tunnel.1, caller.namespace, caller.service_account
                ));
            }
            match &caller.node {
                Some(own) if own == node => Ok(()),
                Some(own) => Err(format!(
                    "a tunnel on node {own} may not subscribe as node {node}"
                )),
                None => Err(format!(
                    "the token is not bound to a pod on a node, so it may not subscribe as node {node}: use the tunnel pod's projected service-account token"
                )),
            }
        }
        Subscriber::Waypoint(ns, sa) => {
            let is_waypoint = snapshot.resources.values().any(|e| {
                matches!(e.kind(), Some(ambit_proto::config::v1::resource::Kind::Waypoint(w))
                    if &w.namespace == ns && &w.for_service_account == sa
                        && w.name == caller.service_account && caller.namespace == *ns)
            });
            if is_waypoint {
                Ok(())
            } else {
                Err(format!(
                    "{}/{} is not the waypoint of service account {ns}/{sa}",
                    caller.namespace, caller.service_account
                ))
            }
        }
    }
}

/// The kind part of a resource name (`<kind>/...`), bounded for a metric label: a client's
/// report is not trusted to name a kind the controller sends.
fn resource_kind(name: &str) -> &'static str {
    const KINDS: [&str; 10] = [
        "namespace",
        "workload",
        "service",
        "waypoint",
        "authorizationpolicy",
        "requestauthentication",
        "ratelimit",
        "extauthzprovider",
        "httproute",
        "grpcroute",
    ];
    let kind = name.split('/').next().unwrap_or_default();
    KINDS.into_iter().find(|k| *k == kind).unwrap_or("other")
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<EncodedDelta, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for ConfigServer {
    type StreamStream = DeltaStream;

    async fn stream(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let caller = self.auth.authenticate(&request).await.map_err(|e| {
            tracing::warn!(error = %e, "config: caller not authenticated");
            e.status()
        })?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(ClientMessage {
            kind: Some(client_message::Kind::Subscribe(sub)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be Subscribe",
            ));
        };
        let subscriber = match sub.subscriber {
            Some(subscribe::Subscriber::Node(n)) if !n.is_empty() => Subscriber::Node(n),
            Some(subscribe::Subscriber::Waypoint(r)) => Subscriber::Waypoint(r.namespace, r.name),
            _ => {
                return Err(Status::invalid_argument(
                    "Subscribe names no node or waypoint",
                ));
            }
        };
        let snapshot = self.snapshots.borrow().clone();
        authorize(&caller, &subscriber, &self.tunnel, &snapshot).map_err(|e| {
            tracing::warn!(caller = ?caller, %subscriber, reason = %e, "config: subscription refused");
            Status::permission_denied(e)
        })?;
        tracing::info!(%subscriber, resumed_with = sub.known.len(), "config: subscribed");
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let session = Session {
            subscriber,
            part_bytes: if sub.accepts_parts {
                PART_BYTES
            } else {
                usize::MAX
            },
            known: sub.known,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            rejections: self.rejections.clone(),
            first_views: self.first_views.clone(),
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Session {
    subscriber: Subscriber,
    /// `PART_BYTES`, or unbounded for a client that takes deltas only whole.
    part_bytes: usize,
    /// What the client said it holds (name -> version) when it subscribed.
    known: BTreeMap<String, String>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    rejections: Rejections,
    first_views: Arc<Semaphore>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<ClientMessage>,
        tx: mpsc::Sender<Result<EncodedDelta, Status>>,
    ) {
        self.metrics.subscriber_connected(1);
        let name = self.subscriber.to_string();
        // Deltas not yet answered, by nonce, with the names they touched: a NACK makes those
        // names `unsure`, and the next delta sends them again from the current state.
        let mut pending: VecDeque<(u64, Vec<Name>)> = VecDeque::new();
        let mut unsure: BTreeSet<Name> = BTreeSet::new();
        let mut nonce: u64 = 0;
        // The snapshot and view the client was last brought to.
        let mut held: Option<(Arc<Snapshot>, View)> = None;
        self.snapshots.mark_changed();
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    let (push, view) = match &held {
                        None => {
                            let view = self.subscriber.view(&snapshot);
                            let known = std::mem::take(&mut self.known);
                            (Push::initial(&self.subscriber, &view, &snapshot, &known), view)
                        }
                        Some((prev, prev_view)) => {
                            let changed = snapshot.changed_since(prev);
                            let view = self.subscriber.next_view(prev, prev_view, &snapshot, &changed);
                            let push = Push::between(
                                &self.subscriber,
                                (prev, prev_view),
                                (&snapshot, &view),
                                &changed,
                                &unsure,
                            );
                            (push, view)
                        }
                    };
                    unsure.clear();
                    // The first delta always goes out: it tells the client it is in sync.
                    if nonce > 0 && push.is_empty() {
                        drop(push);
                        held = Some((snapshot, view));
                        continue;
                    }
                    nonce += 1;
                    if pending.len() == MAX_PENDING {
                        pending.pop_front();
                    }
                    tracing::debug!(subscriber = %name, nonce, upserts = push.upserts.len(), removals = push.removals.len(), "config: push");
                    let mut closed = false;
                    // A resuming client's first delta is usually small: it needs no turn.
                    let _turn = if nonce == 1 && push.upserts.len() > LARGE_PUSH {
                        tokio::time::timeout(FIRST_VIEW_WAIT, self.first_views.acquire())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    } else {
                        None
                    };
                    for part in push.parts(&nonce.to_string(), self.part_bytes) {
                        if tx.send(Ok(part)).await.is_err() {
                            closed = true;
                            break;
                        }
                    }
                    if closed {
                        break;
                    }
                    pending.push_back((nonce, push.into_names()));
                    held = Some((snapshot, view));
                    self.metrics.config_push(if nonce == 1 { "initial" } else { "change" });
                }
                msg = inbound.message() => match msg {
                    Ok(Some(ClientMessage { kind: Some(client_message::Kind::Ack(ack)) })) => {
                        let n: u64 = ack.nonce.parse().unwrap_or(0);
                        let touched = pending.iter().position(|(p, _)| *p == n).and_then(|i| {
                            let e = pending.remove(i);
                            // Older deltas were answered or lost with their answer: drop them.
                            pending.retain(|(p, _)| *p > n);
                            e
                        });
                        // Rejected alone, the rest applied: resending would be rejected
                        // again, so it is reported (an Event on the object, for a resource
                        // the acked delta carried), and its next version is sent as usual.
                        for r in &ack.rejected {
                            tracing::warn!(subscriber = %name, resource = r.name, version = r.version, error = r.error, "config: resource rejected by the client; the rest of the delta is applied");
                            self.metrics.config_rejected(resource_kind(&r.name));
                            if touched.as_ref().is_some_and(|(_, names)| names.iter().any(|n| **n == *r.name)) {
                                self.rejections.report(Rejection {
                                    resource: r.name.clone(),
                                    subscriber: name.clone(),
                                    error: r.error.clone(),
                                });
                            }
                        }
                        if ack.error.is_empty() {
                            tracing::trace!(subscriber = %name, nonce = n, "config: ACK");
                        } else {
                            tracing::warn!(subscriber = %name, nonce = ack.nonce, error = ack.error, "config: NACK; the client keeps its last good state");
                            self.metrics.config_nack(&name);
                            match (touched, &held) {
                                (Some((_, names)), _) => unsure.extend(names),
                                // Too old to remember what it carried: resend the whole view.
                                (None, Some((snapshot, view))) => unsure.extend(
                                    self.subscriber.visible(view, snapshot).map(|(k, _)| k.clone()),
                                ),
                                (None, None) => {}
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(subscriber = %name, error = %e, "config: stream ended");
                        break;
                    }
                },
            }
        }
        tracing::info!(subscriber = %name, "config: unsubscribed");
        self.metrics.subscriber_connected(-1);
    }
}
