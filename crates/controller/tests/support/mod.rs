//! Test clients of the controller's gRPC API: a TLS channel that verifies the controller's
//! SPIFFE id, and a config subscription that applies deltas and ACKs (or NACKs) them.
#![allow(dead_code)]

use ambit_identity::{CertificateHandle, SpiffeId, TrustBundle};
use ambit_proto::config::v1 as pb;
use anyhow::{Context, Result, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

pub use ambit_testbed::eventually;

/// A Kubernetes object from JSON.
pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A channel to the controller over TLS, accepting only `controller` chained to `root_pem`.
pub async fn channel(addr: SocketAddr, root_pem: &str, controller: &SpiffeId) -> Result<Channel> {
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes())?;
    let bundle = TrustBundle::new(controller.trust_domain().clone(), [root])?;
    let tls = Arc::new(ambit_identity::client_config(
        CertificateHandle::without_certificate(),
        &bundle,
        vec![controller.clone()],
    )?);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(ambit_identity::server_name(addr.ip()), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from_static("http://ambit-controller")
        .connect_with_connector(connector)
        .await?)
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// What a subscriber holds, updated as deltas arrive.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub resources: BTreeMap<String, pb::Resource>,
    pub deltas: u64,
    pub last_delta: Option<pb::Delta>,
}

impl View {
    pub fn workload_names(&self) -> Vec<String> {
        self.resources
            .values()
            .filter_map(|r| match &r.kind {
                Some(pb::resource::Kind::Workload(w)) => {
                    Some(format!("{}/{}", w.namespace, w.name))
                }
                _ => None,
            })
            .collect()
    }

    pub fn known(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(k, r)| (k.clone(), r.version.clone()))
            .collect()
    }
}

pub struct Subscription {
    pub view: watch::Receiver<View>,
    _task: tokio::task::JoinHandle<()>,
}

/// Subscribes and keeps applying deltas. `nack` makes it reject every delta instead.
pub async fn subscribe(
    channel: Channel,
    token: &str,
    subscriber: pb::subscribe::Subscriber,
    known: BTreeMap<String, String>,
    nack: bool,
) -> Result<Subscription, tonic::Status> {
    let mut client = pb::config_service_client::ConfigServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let _ = tx
        .send(pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Subscribe(pb::Subscribe {
                subscriber: Some(subscriber),
                known: known.clone().into_iter().collect(),
                accepts_parts: false,
            })),
        })
        .await;
    let mut inbound = client
        .stream(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            token,
        ))
        .await?
        .into_inner();
    // The stream is accepted lazily: the first delta (or the refusal) comes with the first read.
    let first = inbound.message().await?;
    let mut state = View::default();
    // Resuming: the client holds what it stated.
    for (k, v) in known {
        state.resources.insert(
            k.clone(),
            pb::Resource {
                name: k,
                version: v,
                kind: None,
            },
        );
    }
    let (view_tx, view) = watch::channel(View::default());
    let task = tokio::spawn(async move {
        let mut next = first;
        while let Some(delta) = next {
            if !nack {
                for name in &delta.removals {
                    state.resources.remove(name);
                }
                for r in &delta.upserts {
                    state.resources.insert(r.name.clone(), r.clone());
                }
            }
            state.deltas += 1;
            state.last_delta = Some(delta.clone());
            view_tx.send_replace(state.clone());
            let ack = pb::Ack {
                nonce: delta.nonce.clone(),
                error: if nack {
                    "test: rejected".into()
                } else {
                    String::new()
                },
            };
            if tx
                .send(pb::ClientMessage {
                    kind: Some(pb::client_message::Kind::Ack(ack)),
                })
                .await
                .is_err()
            {
                break;
            }
            next = inbound.message().await.ok().flatten();
        }
    });
    Ok(Subscription { view, _task: task })
}

impl Subscription {
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&View) -> bool,
    ) -> Result<View> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let v = self.view.borrow_and_update();
                if pred(&v) {
                    return Ok(v.clone());
                }
            }
            match tokio::time::timeout_at(deadline, self.view.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("subscription ended while waiting for {what}"),
                Err(_) => {
                    let v = self.view.borrow();
                    return Err(anyhow::anyhow!(
                        "timed out after {timeout:?} waiting for {what}"
                    ))
                    .with_context(|| format!("view: {:?}", v.workload_names()));
                }
            }
        }
    }
}
