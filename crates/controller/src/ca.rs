//! The mesh CA: root material in a Secret, node authorization, and the `ambit.ca.v1` service.

use crate::auth::{Authenticator, Caller};
use crate::metrics::Metrics;
use ambit_identity::{CertificateAuthority, SpiffeId, TrustDomain};
use ambit_proto::ca::v1::{
    CreateCertificateRequest, CreateCertificateResponse,
    certificate_service_server::CertificateService,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Secret holding the root (keys `ca.crt`, `ca.key`); supply your own before the first start.
pub const ROOT_SECRET: &str = "ambit-ca";
/// ConfigMap publishing the root certificate (key `root.crt`) for tunnels and waypoints.
pub const ROOT_CONFIGMAP: &str = "ambit-root-cert";
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const FIELD_MANAGER: &str = "ambit-controller";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("Secret {namespace}/{ROOT_SECRET}: {source}")]
    Kube {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{ROOT_SECRET} lacks key {key}: supply ca.crt and ca.key (PEM) or delete it to have one generated"
    )]
    MissingKey {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{ROOT_SECRET} holds an unusable CA: {source}")]
    Invalid {
        namespace: String,
        source: ambit_identity::CaError,
    },
}

/// The install's anchor: ambit's own CRD, which the chart creates and `helm uninstall`
/// deletes. What the controller generates (the root Secret, the root ConfigMap) is owned by
/// it, so the garbage collector removes them with the install and nothing is left behind. A
/// root the user supplied is never given an owner. `None` when the CRD cannot be read (the
/// objects then outlive the install; logged).
pub async fn install_owner(client: &kube::Client) -> Option<OwnerReference> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "authorizationpolicies.ambit.dev";
    match api.get(name).await {
        Ok(crd) => Some(OwnerReference {
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            name: name.into(),
            uid: crd.metadata.uid?,
            ..Default::default()
        }),
        Err(error) => {
            tracing::warn!(%error, crd = name, "cannot read the install's CRD: the generated root Secret and ConfigMap will outlive an uninstall");
            None
        }
    }
}

/// Loads the root from the Secret, or generates one and stores it (owned by `owner`). Two
/// replicas starting at once race on create; the loser loads the winner's root.
pub async fn load_or_create_root(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &TrustDomain,
    owner: Option<&OwnerReference>,
) -> Result<CertificateAuthority, RootError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| RootError::Kube {
        namespace: namespace.to_string(),
        source,
    };
    if let Some(secret) = api.get_opt(ROOT_SECRET).await.map_err(kube_err)? {
        return from_secret(&secret, namespace, trust_domain);
    }
    let ca =
        CertificateAuthority::generate(trust_domain.clone(), ROOT_VALIDITY).map_err(|source| {
            RootError::Invalid {
                namespace: namespace.to_string(),
                source,
            }
        })?;
    let material = ca.to_material();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(ROOT_SECRET.into()),
            namespace: Some(namespace.into()),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "ca.crt".to_string(),
                ByteString(material.certificate_pem.into_bytes()),
            ),
            (
                "ca.key".to_string(),
                ByteString(material.key_pem.into_bytes()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                namespace,
                secret = ROOT_SECRET,
                "generated a new mesh root CA"
            );
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(ROOT_SECRET).await.map_err(kube_err)?;
            from_secret(&secret, namespace, trust_domain)
        }
        Err(e) => Err(kube_err(e)),
    }
}

fn from_secret(
    secret: &Secret,
    namespace: &str,
    trust_domain: &TrustDomain,
) -> Result<CertificateAuthority, RootError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| RootError::MissingKey {
                namespace: namespace.to_string(),
                key,
            })
    };
    CertificateAuthority::from_pem(trust_domain.clone(), &get("ca.crt")?, &get("ca.key")?).map_err(
        |source| RootError::Invalid {
            namespace: namespace.to_string(),
            source,
        },
    )
}

/// Publishes the root certificate in a ConfigMap (server-side apply, idempotent).
pub async fn publish_root(
    client: &kube::Client,
    namespace: &str,
    ca: &CertificateAuthority,
    owner: Option<&OwnerReference>,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
        "data": {"root.crt": ca.root_pem()},
    });
    api.patch(
        ROOT_CONFIGMAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(cm),
    )
    .await?;
    Ok(())
}

/// Why a CSR was refused. Messages name the rule that refused it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("{caller} may only ask for its own identity {own}, not {asked}")]
    NotOwnIdentity {
        caller: String,
        own: String,
        asked: String,
    },
    #[error(
        "the tunnel token is not bound to a pod on a node: use a projected service-account token"
    )]
    NoNode,
    #[error(
        "no pod with identity {identity} runs on node {node}: a tunnel gets only the identities of its node's pods"
    )]
    NotOnNode { identity: String, node: String },
}

/// Istio-style node authorization: a tunnel may get the identity of any pod on its own node;
/// anyone else only its own identity.
pub fn authorize(
    caller: &Caller,
    identity: &SpiffeId,
    tunnel: &(String, String),
    pods: &[Arc<Pod>],
) -> Result<(), Denied> {
    let own = caller.namespace == identity.namespace()
        && caller.service_account == identity.service_account();
    if own {
        return Ok(());
    }
    if (caller.namespace.as_str(), caller.service_account.as_str())
        != (tunnel.0.as_str(), tunnel.1.as_str())
    {
        return Err(Denied::NotOwnIdentity {
            caller: format!("{}/{}", caller.namespace, caller.service_account),
            own: format!("ns/{}/sa/{}", caller.namespace, caller.service_account),
            asked: identity.to_uri(),
        });
    }
    let node = caller
        .node
        .clone()
        .or_else(|| {
            let pod = caller.pod.as_deref()?;
            pods.iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(caller.namespace.as_str())
                        && p.metadata.name.as_deref() == Some(pod)
                })
                .and_then(|p| p.spec.as_ref()?.node_name.clone())
        })
        .ok_or(Denied::NoNode)?;
    let runs_here = pods.iter().any(|p| {
        let spec = p.spec.as_ref();
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        p.metadata.namespace.as_deref() == Some(identity.namespace())
            && spec.and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
            && spec
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default")
                == identity.service_account()
            && !matches!(phase, Some("Succeeded" | "Failed"))
    });
    if runs_here {
        Ok(())
    } else {
        Err(Denied::NotOnNode {
            identity: identity.to_uri(),
            node,
        })
    }
}

/// The `ambit.ca.v1.CertificateService`.
#[derive(Clone)]
pub struct CaService {
    pub ca: Arc<CertificateAuthority>,
    pub auth: Authenticator,
    pub pods: Store<Pod>,
    pub tunnel: (String, String),
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let result = self.handle(request).await;
        let label = match &result {
            Ok(_) => "signed",
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "denied",
                tonic::Code::InvalidArgument => "invalid",
                _ => "error",
            },
        };
        self.metrics.ca_request(label);
        result
    }
}

impl CaService {
    async fn handle(
        &self,
        request: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let caller = self.auth.authenticate(&request).await.map_err(|e| {
            tracing::warn!(error = %e, "CA: caller not authenticated");
            tonic::Status::unauthenticated(e.to_string())
        })?;
        let req = request.into_inner();
        let identity: SpiffeId = req.identity.parse().map_err(|e| {
            tonic::Status::invalid_argument(format!("identity {:?}: {e}", req.identity))
        })?;
        if identity.trust_domain() != self.ca.trust_domain() {
            return Err(tonic::Status::invalid_argument(format!(
                "identity {identity} is not in trust domain {}",
                self.ca.trust_domain().as_str()
            )));
        }
        let pods = self.pods.state();
        authorize(&caller, &identity, &self.tunnel, &pods).map_err(|e| {
            tracing::warn!(caller = ?caller, %identity, reason = %e, "CA: refused");
            tonic::Status::permission_denied(e.to_string())
        })?;
        let lifetime = match req.lifetime_seconds {
            0 => self.default_lifetime,
            s => Duration::from_secs(s).min(self.max_lifetime),
        };
        let leaf = self
            .ca
            .sign(&req.csr_der, &identity, lifetime)
            .map_err(|e| tonic::Status::invalid_argument(format!("cannot sign the CSR: {e}")))?;
        tracing::info!(%identity, node = ?caller.node, lifetime_s = lifetime.as_secs(), "CA: signed");
        Ok(tonic::Response::new(CreateCertificateResponse {
            chain_der: vec![leaf.to_vec(), self.ca.root_certificate().to_vec()],
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
                "status": {"phase": "Running"},
            }))
            .unwrap(),
        )
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn tunnel_on(node: Option<&str>) -> Caller {
        Caller {
            namespace: "ambit-system".into(),
            service_account: "ambit-tunnel".into(),
            node: node.map(Into::into),
            pod: Some("tunnel-x".into()),
        }
    }

    #[test]
    fn node_authorization() {
        let t = ("ambit-system".to_string(), "ambit-tunnel".to_string());
        let pods = vec![
            pod("shop", "a", "front", "n1"),
            pod("shop", "b", "back", "n2"),
            pod("ambit-system", "tunnel-x", "ambit-tunnel", "n1"),
        ];
        assert_eq!(
            authorize(&tunnel_on(Some("n1")), &id("shop", "front"), &t, &pods),
            Ok(())
        );
        // Node from the bound pod when the token has no node-name.
        assert_eq!(
            authorize(&tunnel_on(None), &id("shop", "front"), &t, &pods),
            Ok(())
        );
        let e = authorize(&tunnel_on(Some("n1")), &id("shop", "back"), &t, &pods).unwrap_err();
        assert!(matches!(e, Denied::NotOnNode { .. }), "{e}");
        assert!(e.to_string().contains("node n1"), "{e}");
        // An app may only get its own identity.
        let app = Caller {
            namespace: "shop".into(),
            service_account: "front".into(),
            node: Some("n1".into()),
            pod: None,
        };
        assert_eq!(authorize(&app, &id("shop", "front"), &t, &pods), Ok(()));
        assert!(matches!(
            authorize(&app, &id("shop", "back"), &t, &pods),
            Err(Denied::NotOwnIdentity { .. })
        ));
        // A tunnel token bound to no known pod and without node-name.
        let mut lost = tunnel_on(None);
        lost.pod = None;
        assert_eq!(
            authorize(&lost, &id("shop", "front"), &t, &pods),
            Err(Denied::NoNode)
        );
    }
}
