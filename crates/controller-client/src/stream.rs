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
    pub rejected: u64,
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
/// held resources and handed to `apply`; `Ok` keeps the copy and ACKs, `Err(reason)` NACKs
/// with the reason and keeps the last good set. Connection failures are retried with backoff;
/// a reconnect states the held versions, so only the difference is sent. `state` reports
/// progress.
pub async fn subscribe<F>(
    endpoint: Arc<ControllerEndpoint>,
    subscriber: pb::subscribe::Subscriber,
    state: watch::Sender<StreamState>,
    mut apply: F,
) where
    F: FnMut(&Resources) -> Result<(), String>,
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
    F: FnMut(&Resources) -> Result<(), String>,
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
        let outcome = apply_delta(&mut candidate, &delta).and_then(|()| apply(&candidate));
        let error = match outcome {
            Ok(()) => {
                *held = candidate;
                state.send_modify(|s| {
                    s.connected = true;
                    s.synced = true;
                    s.accepted += 1;
                    s.last_error = None;
                });
                tracing::debug!(
                    upserts = delta.upserts.len(),
                    removals = delta.removals.len(),
                    held = held.len(),
                    "config delta applied"
                );
                String::new()
            }
            Err(reason) => {
                state.send_modify(|s| {
                    s.connected = true;
                    s.rejected += 1;
                    s.last_error = Some(reason.clone());
                });
                tracing::warn!(%reason, "config delta rejected (NACK); keeping the last good config");
                reason
            }
        };
        let ack = pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Ack(pb::Ack {
                nonce: delta.nonce,
                error,
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

/// Removals, then upserts. A resource without a name, a version or a kind is malformed.
fn apply_delta(resources: &mut Resources, delta: &pb::Delta) -> Result<(), String> {
    for name in &delta.removals {
        resources.remove(name);
    }
    for r in &delta.upserts {
        if r.name.is_empty() || r.version.is_empty() || r.kind.is_none() {
            return Err(format!(
                "malformed resource {:?}: name, version and kind are required",
                r.name
            ));
        }
        resources.insert(r.name.clone(), r.clone());
    }
    Ok(())
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
    fn deltas_remove_then_upsert_and_refuse_malformed_resources() {
        let mut held = Resources::new();
        let delta = pb::Delta {
            nonce: "1".into(),
            upserts: vec![ns("a", "v1"), ns("b", "v1")],
            ..Default::default()
        };
        apply_delta(&mut held, &delta).unwrap();
        let delta = pb::Delta {
            nonce: "2".into(),
            upserts: vec![ns("a", "v2")],
            removals: vec!["namespace/b".into(), "never/held".into()],
            more: false,
        };
        apply_delta(&mut held, &delta).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held["namespace/a"].version, "v2");
        let mut bad = ns("c", "v1");
        bad.kind = None;
        let delta = pb::Delta {
            nonce: "3".into(),
            upserts: vec![bad],
            ..Default::default()
        };
        assert!(
            apply_delta(&mut held, &delta)
                .unwrap_err()
                .contains("namespace/c")
        );
    }
}
