//! Leader election on a coordination.k8s.io Lease: the holder writes status and deploys
//! waypoints; every replica serves the config stream and the CA.

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub use ambit_k8s::names::CONTROLLER_LEASE as LEASE_NAME;
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Runs the election forever; `leader` says whether this replica holds the Lease. The Lease
/// is created owned by `owner` (the install), so an uninstall removes it.
pub async fn run(
    client: kube::Client,
    namespace: String,
    identity: String,
    owner: Option<OwnerReference>,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(RENEW_EVERY);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let terminated = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = terminated => {
                if *leader.borrow() {
                    leader.send_replace(false);
                    metrics.set_leader(false);
                    match release(&api, &identity).await {
                        Ok(()) => tracing::info!(identity, "shutting down: Lease released"),
                        Err(error) => tracing::warn!(%error, "shutting down: could not release the Lease; it expires on its own"),
                    }
                }
                return;
            }
        }
        let held = match try_acquire(&api, &identity, owner.as_ref()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, lease = LEASE_NAME, "leader election");
                // Cannot renew: step down rather than risk two writers.
                false
            }
        };
        if held != *leader.borrow() {
            tracing::info!(leader = held, identity, "leadership changed");
        }
        metrics.set_leader(held);
        leader.send_replace(held);
    }
}

async fn try_acquire(
    api: &Api<Lease>,
    identity: &str,
    owner: Option<&OwnerReference>,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: acquire.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                owner_references: owner.map(|o| vec![o.clone()]),
                ..Default::default()
            },
            spec: Some(spec(None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let mine = current.holder_identity.as_deref() == Some(identity);
    let expired = current.renew_time.as_ref().is_none_or(|t| {
        let dur =
            SignedDuration::from_secs(i64::from(current.lease_duration_seconds.unwrap_or(15)));
        t.0 + dur < now
    });
    if !mine && !expired {
        return Ok(false);
    }
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquire = if mine { current.acquire_time } else { None };
    lease.spec = Some(spec(acquire, transitions));
    // resourceVersion in `lease` makes this a compare-and-swap: a racing replica gets 409.
    match api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up on shutdown, so another replica takes over at its next renewal instead of
/// waiting for the Lease to expire (a rolling update would otherwise leave waypoints and status
/// unattended for up to `LEASE_DURATION`). Compare-and-swap: only if this replica still holds it.
async fn release(api: &Api<Lease>, identity: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
