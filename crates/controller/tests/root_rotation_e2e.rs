//! The controller's half of a root rotation (docs/identity.md) against the testbed's real
//! kube-apiserver, the controller in process as its service account with the chart's RBAC: each
//! edit of Secret `ambit-ca` is republished in `ambit-root-cert` (the controller's namespace and
//! a waypoint namespace that holds it), signing root first, and the controller's own serving
//! certificate moves to the new root, not before every namespace has the bundle (an admission
//! policy refuses the waypoint namespace's update for a while: the publication is retried); after
//! the withdrawal a client trusting only the old root is refused. Needs root (the testbed); skips
//! loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ambit_identity::{CertificateAuthority, CertificateHandle, SpiffeId, TrustBundle, TrustDomain};
use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{
    SYSTEM_NS, chart_rbac, controller_config, create_namespace, eventually, install_crds, obj,
    start_as_controller, tls_connect,
};

const NAME: &str = "rootctl";
const ID: u8 = 72;
/// A namespace holding the ConfigMap as a waypoint namespace does.
const WAYPOINT_NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_rotates_the_root() -> Result<()> {
    support::on_testbed(
        "controller_rotates_the_root",
        NAME,
        ID,
        1,
        &["ambit-testbed"],
        checks,
    )
    .await
}

async fn checks(tb: &ambit_testbed::Testbed) -> Result<()> {
    let admin = tb.client().await?;
    install_crds(&admin).await?;
    for ns in [SYSTEM_NS, WAYPOINT_NS] {
        create_namespace(&admin, ns, json!({})).await?;
    }
    chart_rbac(&admin).await?;
    let config = controller_config()?;
    let controller = config.controller_identity()?;
    let running = start_as_controller(tb, &config).await?;
    let trust_domain = controller.trust_domain().clone();
    let old_pem = running.root_pem.clone();
    let old = root_of(&old_pem)?;
    // Leaves must fit in the root's remaining validity: a year is plenty.
    let new_ca =
        CertificateAuthority::generate(trust_domain.clone(), Duration::from_secs(365 * 24 * 3600))?;
    let new = new_ca.root_certificate().clone();
    Api::<ConfigMap>::namespaced(admin.clone(), WAYPOINT_NS)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "ambit-root-cert"}, "data": {"root.crt": old_pem}})),
        )
        .await?;
    let secret: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NS);
    let patch = |body: serde_json::Value| {
        let secret = secret.clone();
        async move {
            secret
                .patch("ambit-ca", &PatchParams::default(), &Patch::Merge(body))
                .await
        }
    };
    let published = async |expected: &[&CertificateDer<'static>]| -> Result<()> {
        for ns in [SYSTEM_NS, WAYPOINT_NS] {
            let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
            eventually(&format!("{ns}'s ambit-root-cert"), WAIT, || async {
                let pem = cms
                    .get("ambit-root-cert")
                    .await
                    .ok()?
                    .data?
                    .remove("root.crt")?;
                let roots = TrustBundle::from_pem(trust_domain.clone(), pem.as_bytes())
                    .ok()?
                    .roots();
                (roots.iter().collect::<Vec<_>>() == expected).then_some(())
            })
            .await?;
        }
        Ok(())
    };
    let serves = async |roots: &[&CertificateDer<'static>]| {
        serves_under(running.grpc_addr, &trust_domain, roots, &controller).await
    };

    // 1. Add: the bundle is old then new; the controller still serves under the old root.
    patch(json!({"stringData": {"trusted.crt": new_ca.root_pem()}})).await?;
    published(&[&old, &new]).await?;
    assert!(serves(&[&old]).await, "serving under the old root");

    // 2. Switch: new then old; the serving certificate moves to the new root, but only once
    // every namespace has the bundle: while the waypoint namespace refuses it, the controller's
    // namespace gets it and the old root keeps signing.
    let refusal = refuse_root_cert_updates(&admin, WAYPOINT_NS).await?;
    let material = new_ca.to_material();
    patch(json!({"stringData": {
        "ca.crt": material.certificate_pem,
        "ca.key": material.key_pem,
        "trusted.crt": old_pem,
    }}))
    .await?;
    let system_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), SYSTEM_NS);
    eventually(
        "the swapped bundle in the controller's namespace",
        WAIT,
        || async {
            let pem = system_cms
                .get("ambit-root-cert")
                .await
                .ok()?
                .data?
                .remove("root.crt")?;
            (root_of(&pem).ok()? == new).then_some(())
        },
    )
    .await?;
    assert!(
        serves(&[&old]).await,
        "switched before the waypoint namespace had the bundle"
    );
    let refused = Api::<ConfigMap>::namespaced(admin.clone(), WAYPOINT_NS)
        .get("ambit-root-cert")
        .await?
        .data
        .and_then(|mut d| d.remove("root.crt"))
        .unwrap_or_default();
    assert_eq!(
        root_of(&refused)?,
        old,
        "the refused namespace kept its bundle"
    );
    refusal.lift().await?;
    published(&[&new, &old]).await?;
    eventually(
        "the controller serving under the new root",
        WAIT,
        || async { serves(&[&new]).await.then_some(()) },
    )
    .await?;

    // An unusable edit is logged and skipped; the controller keeps watching (the next edit
    // shows).
    patch(json!({"stringData": {"trusted.crt": "not a certificate"}})).await?;
    // 3. Withdraw: the new root alone; a client trusting only the old root is refused.
    patch(json!({"data": {"trusted.crt": null}})).await?;
    published(&[&new]).await?;
    assert!(
        !serves(&[&old]).await,
        "a client of the withdrawn root only"
    );
    assert!(serves(&[&new]).await);
    Ok(())
}

/// An admission policy refusing updates of `ambit-root-cert` in `namespace`, in force once an
/// admin's dry-run update is refused.
struct Refusal {
    policies: Api<ValidatingAdmissionPolicy>,
    bindings: Api<ValidatingAdmissionPolicyBinding>,
}

const REFUSAL: &str = "rootctl-refuse-root-cert";

async fn refuse_root_cert_updates(admin: &kube::Client, namespace: &str) -> Result<Refusal> {
    let refusal = Refusal {
        policies: Api::all(admin.clone()),
        bindings: Api::all(admin.clone()),
    };
    let rule = format!(
        "object.metadata.name != 'ambit-root-cert' || object.metadata.namespace != '{namespace}'"
    );
    let policy = json!({"metadata": {"name": REFUSAL}, "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
            "operations": ["UPDATE"], "resources": ["configmaps"]}]},
        "validations": [{"expression": rule, "message": "refused by the root rotation test"}],
    }});
    let binding = json!({"metadata": {"name": REFUSAL}, "spec": {
        "policyName": REFUSAL, "validationActions": ["Deny"],
    }});
    let pp = PostParams::default();
    refusal.policies.create(&pp, &obj(policy)).await?;
    refusal.bindings.create(&pp, &obj(binding)).await?;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    eventually("the admission policy in force", WAIT, || async {
        let touch = json!({"metadata": {"labels": {"rootctl": "probe"}}});
        cms.patch("ambit-root-cert", &dry_run, &Patch::Merge(touch))
            .await
            .is_err()
            .then_some(())
    })
    .await?;
    Ok(refusal)
}

impl Refusal {
    async fn lift(self) -> Result<()> {
        let dp = DeleteParams::default();
        self.bindings.delete(REFUSAL, &dp).await?;
        self.policies.delete(REFUSAL, &dp).await?;
        Ok(())
    }
}

fn root_of(pem: &str) -> Result<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

/// Whether a TLS client trusting `roots` alone completes a handshake with the controller.
async fn serves_under(
    addr: SocketAddr,
    trust_domain: &TrustDomain,
    roots: &[&CertificateDer<'static>],
    controller: &SpiffeId,
) -> bool {
    let Ok(bundle) = TrustBundle::new(trust_domain.clone(), roots.iter().map(|r| (*r).clone()))
    else {
        return false;
    };
    let Ok(tls) = ambit_identity::client_config(
        CertificateHandle::without_certificate(),
        &bundle,
        vec![controller.clone()],
    ) else {
        return false;
    };
    tls_connect(None, addr, Arc::new(tls)).await.is_ok()
}
