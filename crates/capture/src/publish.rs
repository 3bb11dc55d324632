//! Publishing the node's captured pods to the apiserver, as the `NodeCapture` named after the
//! node: the controller's CA signs a pod's identity for this node's tunnel only while the pod
//! is listed there, so a tunnel holds only identities whose traffic it carries.
//!
//! The reconcile thread hands each new set over a watch channel; this task applies the whole
//! set (server-side apply, so the first publication after a start replaces whatever a previous
//! agent left) and retries with backoff, always with the newest set. The chart's admission
//! policy lets the agent's token write only its own node's object.

use crate::state::PodRecord;
use ambit_k8s::node_capture::{NodeCapture, NodeCaptureSpec};
use backon::{ExponentialBuilder, Retryable};
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const FIELD_MANAGER: &str = "ambit-capture";
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the node publishes as captured: the recorded pods whose rules are in, and the pods
/// being handed to the tunnel (`handing` by the agent, `marked` by a CNI ADD: the tunnel asks
/// for their certificates before it answers), leaving out those whose netns is `gone`.
pub fn captured(
    records: &[PodRecord],
    handing: &[&PodRecord],
    marked: &[PodRecord],
    gone: impl Fn(&Path) -> bool,
) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.captured)
        .chain(handing.iter().copied())
        .chain(marked)
        .filter(|r| !gone(&r.netns))
        .map(|r| r.uid.clone())
        .collect()
}

/// Publishes each set `sets` holds (`None`: not known yet) as `NodeCapture` `node`, until
/// the sender is dropped.
pub async fn run(
    api: Api<NodeCapture>,
    node: String,
    mut sets: watch::Receiver<Option<BTreeSet<String>>>,
) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times();
    loop {
        if sets.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let started = Instant::now();
        let publish = || {
            let pods: Vec<String> = sets.borrow_and_update().iter().flatten().cloned().collect();
            let object = NodeCapture::new(&node, NodeCaptureSpec { pods });
            let (api, node) = (&api, &node);
            async move {
                let count = object.spec.pods.len();
                api.patch(
                    node,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
                .map(|_| count)
            }
        };
        match publish
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e, retry_in| {
                crate::agent::log(format_args!(
                    "cannot publish NodeCapture {node} (retrying in {retry_in:?}): {e}"
                ))
            })
            .await
        {
            Ok(count) => crate::agent::log(format_args!(
                "published NodeCapture {node}: {count} captured pods ({} ms)",
                started.elapsed().as_millis()
            )),
            Err(e) => crate::agent::log(format_args!("NodeCapture {node}: {e}")),
        }
        if sets.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn record(uid: &str, captured: bool) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            netns: PathBuf::from(format!("/var/run/netns/{uid}")),
            captured,
            time_wait_reuse: false,
        }
    }

    #[test]
    fn the_captured_set_is_the_captured_and_handing_pods_still_running() {
        let records = [record("a", true), record("b", false), record("c", true)];
        let (b, d, e) = (record("b", false), record("d", false), record("e", false));
        let gone = |netns: &Path| netns.ends_with("c") || netns.ends_with("e");
        let uids = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        // b is being handed over by the agent, d by a CNI ADD; c and e are over.
        assert_eq!(
            uids(captured(&records, &[&b], &[d, e], gone)),
            ["a", "b", "d"]
        );
        assert_eq!(uids(captured(&records, &[], &[], gone)), ["a"]);
        assert!(captured(&[], &[], &[], |_| false).is_empty());
    }
}
