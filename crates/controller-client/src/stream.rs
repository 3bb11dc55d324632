//! The config stream (`ambit.config.v1`): subscribe, apply deltas, ACK or NACK, and resume
//! after a reconnect from what is held.

use crate::endpoint::ControllerEndpoint;
use ambit_proto::config::v1 as pb;
use pb::config_service_client::ConfigServiceClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The resources held, by name: what the last accepted delta left.
pub type Resources = BTreeMap<String, pb::Resource>;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// One message: the controller sends large deltas in parts of about 256 KiB, but never cuts a
/// resource, and a policy with many rules is large on its own.
const MAX_DELTA_BYTES: usize = 16 * 1024 * 1024;
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How the subscription is doing, for readiness, metrics and the config dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// A stream is open and has delivered its first delta.
    pub connected: bool,
    /// Some delta has been accepted since the start: the held state came from the controller.
    pub synced: bool,
    pub accepted: u64,
    /// Deltas rejected whole (NACKed).
    pub rejected: u64,
    /// The held resources left out of the model (or held fail-safe), with why: one bad
    /// resource is rejected alone, the rest of its delta applied.
    pub rejected_resources: Vec<pb::RejectedResource>,
    /// Why the last connection or delta failed.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Endpoint(#[from] crate::EndpointError),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
}

/// Subscribes as `subscriber` and runs until dropped: each delta is applied to a copy of the
/// held resources and handed to `apply`; `Ok(rejected)` keeps the copy and ACKs, naming the
/// resources `apply` left out (those new to this delta, or newly left out); `Err(reason)`
/// NACKs with the reason and keeps the last good set. A resource without a name, version or
/// kind is left out of the copy and named in the ACK too. Connection failures are retried with backoff;
/// a reconnect states the held versions, so only the difference is sent. `state` reports
/// progress.
pub async fn subscribe<F>(
    endpoint: Arc<ControllerEndpoint>,
    subscriber: pb::subscribe::Subscriber,
    state: watch::Sender<StreamState>,
    mut apply: F,
) where
    F: FnMut(&Resources) -> Result<Vec<pb::RejectedResource>, String>,
{
    let mut client =
        ConfigServiceClient::new(endpoint.channel()).max_decoding_message_size(MAX_DELTA_BYTES);
    let mut held = Resources::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = run_stream(
            &endpoint,
            &mut client,
            &subscriber,
            &mut held,
            &state,
            &mut apply,
        )
        .await;
        let error = match result {
            Ok(()) => StreamError::Closed,
            Err(e) => e,
        };
        let delivered = state.borrow().connected;
        state.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(error.to_string());
        });
        if delivered {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(
            controller = endpoint.address(),
            %error,
            retry_in_ms = backoff.as_millis() as u64,
            "config stream down; serving from the last good config"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn run_stream<F>(
    endpoint: &ControllerEndpoint,
    client: &mut ConfigServiceClient<tonic::transport::Channel>,
    subscriber: &pb::subscribe::Subscriber,
    held: &mut Resources,
    state: &watch::Sender<StreamState>,
    apply: &mut F,
) -> Result<(), StreamError>
where
    F: FnMut(&Resources) -> Result<Vec<pb::RejectedResource>, String>,
{
    let (tx, rx) = mpsc::channel(4);
    let subscribe = pb::ClientMessage {
        kind: Some(pb::client_message::Kind::Subscribe(pb::Subscribe {
            subscriber: Some(subscriber.clone()),
            accepts_parts: true,
            known: held
                .iter()
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect(),
        })),
    };
    // The channel has room: this cannot wait.
    let _ = tx.try_send(subscribe);
    let request = endpoint
        .request(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    let mut inbound = client.stream(request).await?.into_inner();
    let mut parts: Option<pb::Delta> = None;
    while let Some(part) = inbound.message().await? {
        let Some(delta) = gather(&mut parts, part) else {
            continue;
        };
        let mut candidate = held.clone();
        let malformed = apply_delta(&mut candidate, &delta);
        let (error, rejected) = match apply(&candidate) {
            Ok(left_out) => {
                *held = candidate;
                let rejected = newly_rejected(&delta, malformed, &left_out, state);
                for r in &rejected {
                    tracing::warn!(
                        resource = r.name,
                        error = r.error,
                        "config resource rejected alone; the rest of the delta is applied"
                    );
                }
                state.send_modify(|s| {
                    s.connected = true;
                    s.synced = true;
                    s.accepted += 1;
                    s.last_error = None;
                    s.rejected_resources = left_out;
                });
                tracing::debug!(
                    upserts = delta.upserts.len(),
                    removals = delta.removals.len(),
                    held = held.len(),
                    rejected = rejected.len(),
                    "config delta applied"
                );
                (String::new(), rejected)
            }
            Err(reason) => {
                state.send_modify(|s| {
                    s.connected = true;
                    s.rejected += 1;
                    s.last_error = Some(reason.clone());
                });
                tracing::warn!(%reason, "config delta rejected (NACK); keeping the last good config");
                (reason, Vec::new())
            }
        };
        let ack = pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Ack(pb::Ack {
                nonce: delta.nonce,
                error,
                rejected,
            })),
        };
        if tx.send(ack).await.is_err() {
            return Err(StreamError::Closed);
        }
    }
    Ok(())
}

/// A large delta comes in parts (`more`): gathers them; the whole delta once the last is in.
fn gather(parts: &mut Option<pb::Delta>, part: pb::Delta) -> Option<pb::Delta> {
    let delta = match parts.take() {
        Some(mut delta) => {
            delta.upserts.extend(part.upserts);
            delta.removals.extend(part.removals);
            delta.nonce = part.nonce;
            delta.more = part.more;
            delta
        }
        None => part,
    };
    if delta.more {
        *parts = Some(delta);
        None
    } else {
        Some(delta)
    }
}

/// Removals, then upserts. A resource without a name, a version or a kind is malformed: it
/// is left out (and what was held under its name goes), and returned.
fn apply_delta(resources: &mut Resources, delta: &pb::Delta) -> Vec<pb::RejectedResource> {
    let mut malformed = Vec::new();
    for name in &delta.removals {
        resources.remove(name);
    }
    for r in &delta.upserts {
        if r.name.is_empty() || r.version.is_empty() || r.kind.is_none() {
            resources.remove(&r.name);
            malformed.push(pb::RejectedResource {
                name: r.name.clone(),
                version: r.version.clone(),
                error: format!(
                    "malformed resource {:?}: name, version and kind are required",
                    r.name
                ),
            });
            continue;
        }
        resources.insert(r.name.clone(), r.clone());
    }
    malformed
}

/// What the ACK names: the malformed upserts, and of the resources left out of the model
/// those this delta sent or that were not left out before (another resource's change can
/// leave one out, e.g. a workload whose IP a new one claims). Told once, not every delta.
fn newly_rejected(
    delta: &pb::Delta,
    mut malformed: Vec<pb::RejectedResource>,
    left_out: &[pb::RejectedResource],
    state: &watch::Sender<StreamState>,
) -> Vec<pb::RejectedResource> {
    let before = state.borrow();
    let sent = |name: &str| delta.upserts.iter().any(|u| u.name == name);
    let known = |name: &str| before.rejected_resources.iter().any(|r| r.name == name);
    malformed.extend(
        left_out
            .iter()
            .filter(|r| sent(&r.name) || !known(&r.name))
            .cloned(),
    );
    malformed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ns(name: &str, version: &str) -> pb::Resource {
        pb::Resource {
            name: format!("namespace/{name}"),
            version: version.into(),
            kind: Some(pb::resource::Kind::Namespace(pb::Namespace {
                name: name.into(),
            })),
        }
    }

    #[test]
    fn parts_are_gathered_into_one_delta() {
        let part = |nonce: &str, upserts, removals: &[&str], more| pb::Delta {
            nonce: nonce.into(),
            upserts,
            removals: removals.iter().map(|r| r.to_string()).collect(),
            more,
        };
        let mut parts = None;
        assert_eq!(
            gather(&mut parts, part("3", vec![ns("a", "v1")], &[], true)),
            None
        );
        assert_eq!(
            gather(&mut parts, part("3", vec![ns("b", "v1")], &[], true)),
            None
        );
        let whole = gather(&mut parts, part("3", vec![], &["namespace/c"], false));
        assert_eq!(
            whole,
            Some(part(
                "3",
                vec![ns("a", "v1"), ns("b", "v1")],
                &["namespace/c"],
                false
            ))
        );
        assert!(parts.is_none());
        // A delta in one part is passed through.
        let single = part("4", vec![ns("a", "v2")], &[], false);
        assert_eq!(gather(&mut parts, single.clone()), Some(single));
    }

    #[test]
    fn deltas_remove_then_upsert_and_leave_out_malformed_resources_alone() {
        let mut held = Resources::new();
        let delta = pb::Delta {
            nonce: "1".into(),
            upserts: vec![ns("a", "v1"), ns("b", "v1")],
            ..Default::default()
        };
        assert!(apply_delta(&mut held, &delta).is_empty());
        let delta = pb::Delta {
            nonce: "2".into(),
            upserts: vec![ns("a", "v2")],
            removals: vec!["namespace/b".into(), "never/held".into()],
            more: false,
        };
        assert!(apply_delta(&mut held, &delta).is_empty());
        assert_eq!(held.len(), 1);
        assert_eq!(held["namespace/a"].version, "v2");
        // A malformed upsert is left out alone (what was held under its name goes with it),
        // and the rest of the delta is applied.
        let mut bad = ns("a", "v3");
        bad.kind = None;
        let delta = pb::Delta {
            nonce: "3".into(),
            upserts: vec![bad, ns("d", "v1")],
            ..Default::default()
        };
        let malformed = apply_delta(&mut held, &delta);
        assert_eq!(malformed.len(), 1);
        assert_eq!(malformed[0].name, "namespace/a");
        assert!(malformed[0].error.contains("kind are required"));
        assert_eq!(held.keys().collect::<Vec<_>>(), ["namespace/d"]);
    }

    #[test]
    fn an_ack_names_each_rejected_resource_once() {
        let rejected = |name: &str| pb::RejectedResource {
            name: name.into(),
            version: "v1".into(),
            error: "bad".into(),
        };
        let (state, _) = watch::channel(StreamState::default());
        let delta = |upserts| pb::Delta {
            nonce: "1".into(),
            upserts,
            ..Default::default()
        };
        let left_out = vec![rejected("namespace/x")];
        let named = newly_rejected(&delta(vec![ns("x", "v1")]), vec![], &left_out, &state);
        assert_eq!(named, left_out);
        state.send_modify(|s| s.rejected_resources = left_out.clone());
        // Still left out, but not sent again: not named again.
        assert!(newly_rejected(&delta(vec![ns("y", "v1")]), vec![], &left_out, &state).is_empty());
        // Sent again (a new version, still bad): named again.
        assert_eq!(
            newly_rejected(&delta(vec![ns("x", "v2")]), vec![], &left_out, &state),
            left_out
        );
        // Left out because of another resource's change: named.
        let both = vec![rejected("namespace/x"), rejected("workload/w")];
        assert_eq!(
            newly_rejected(&delta(vec![]), vec![], &both, &state),
            [rejected("workload/w")]
        );
    }
}
