//! Pod volumes as directories under the pod's state dir, bind-mounted into each container's
//! private mount namespace. Supported: projected (serviceAccountToken via TokenRequest,
//! configMap, secret, downwardAPI), configMap, secret, downwardAPI, emptyDir, hostPath.

use super::NodeCtx;
use crate::Error;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Host paths that stay the real thing: kernel interfaces and netns handles (a CNI agent needs
/// the real pod netns). Every other hostPath lands in the node's own root dir.
const REAL_HOST_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run/netns",
    "/var/run/netns",
    "/lib/modules",
];

/// Default lifetime asked for a projected token when the pod names none (kubelet's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

#[derive(Debug, Clone)]
pub struct TokenFile {
    pub path: PathBuf,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

#[derive(Debug, Default)]
pub struct Volumes {
    /// Volume name → host directory (or file) to bind-mount.
    pub sources: BTreeMap<String, PathBuf>,
    pub tokens: Vec<TokenFile>,
}

pub fn host_path(ctx: &NodeCtx, path: &str) -> PathBuf {
    let real = REAL_HOST_PATHS
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    if real {
        PathBuf::from(path)
    } else {
        ctx.config
            .node_root(ctx.k)
            .join(path.trim_start_matches('/'))
    }
}

fn pod_volumes(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

pub async fn materialize(ctx: &NodeCtx, pod: &Pod, dir: &Path) -> Result<Volumes, Error> {
    let mut out = Volumes::default();
    for v in pod_volumes(pod) {
        let vdir = dir.join(&v.name);
        let source = if let Some(hp) = &v.host_path {
            let p = host_path(ctx, &hp.path);
            let is_file = matches!(
                hp.type_.as_deref(),
                Some("File" | "FileOrCreate" | "Socket" | "CharDevice" | "BlockDevice")
            );
            if !p.exists() && !is_file {
                std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            }
            p
        } else {
            mkdir(&vdir)?;
            if let Some(cm) = &v.config_map {
                write_config_map(
                    ctx,
                    pod,
                    &vdir,
                    &cm.name,
                    cm.items.as_deref(),
                    cm.optional.unwrap_or(false),
                )
                .await?;
            } else if let Some(s) = &v.secret {
                let name = s.secret_name.as_deref().unwrap_or_default();
                write_secret(
                    ctx,
                    pod,
                    &vdir,
                    name,
                    s.items.as_deref(),
                    s.optional.unwrap_or(false),
                )
                .await?;
            } else if let Some(d) = &v.downward_api {
                write_downward(pod, &vdir, d.items.as_deref().unwrap_or_default())?;
            } else if let Some(p) = &v.projected {
                for src in p.sources.as_deref().unwrap_or_default() {
                    if let Some(t) = &src.service_account_token {
                        let tf = TokenFile {
                            path: vdir.join(&t.path),
                            audience: t.audience.clone().filter(|a| !a.is_empty()),
                            expiration_seconds: t
                                .expiration_seconds
                                .unwrap_or(DEFAULT_TOKEN_SECONDS),
                        };
                        write_token(ctx, pod, &tf).await?;
                        out.tokens.push(tf);
                    }
                    if let Some(cm) = &src.config_map {
                        write_config_map(
                            ctx,
                            pod,
                            &vdir,
                            &cm.name,
                            cm.items.as_deref(),
                            cm.optional.unwrap_or(false),
                        )
                        .await?;
                    }
                    if let Some(s) = &src.secret {
                        write_secret(
                            ctx,
                            pod,
                            &vdir,
                            &s.name,
                            s.items.as_deref(),
                            s.optional.unwrap_or(false),
                        )
                        .await?;
                    }
                    if let Some(d) = &src.downward_api {
                        write_downward(pod, &vdir, d.items.as_deref().unwrap_or_default())?;
                    }
                }
            }
            // emptyDir and anything unsupported: an empty directory.
            vdir
        };
        out.sources.insert(v.name.clone(), source);
    }
    Ok(out)
}

/// Rewrites the configMap volumes (plain and projected) from their ConfigMaps' current data, as
/// kubelet's periodic sync does: how a mounted ConfigMap edit reaches a running container.
pub async fn refresh_config_maps(ctx: &NodeCtx, pod: &Pod, dir: &Path) -> Result<(), Error> {
    for v in pod_volumes(pod) {
        let projected = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|src| src.config_map.as_ref())
            .map(|cm| (cm.name.as_str(), cm.items.as_deref(), cm.optional));
        let plain = v
            .config_map
            .iter()
            .map(|cm| (cm.name.as_str(), cm.items.as_deref(), cm.optional));
        for (name, items, optional) in plain.chain(projected) {
            let vdir = dir.join(&v.name);
            write_config_map(ctx, pod, &vdir, name, items, optional.unwrap_or(false)).await?;
        }
    }
    Ok(())
}

/// Asks the apiserver for a token bound to this pod (TokenRequest) and writes it.
pub async fn write_token(ctx: &NodeCtx, pod: &Pod, tf: &TokenFile) -> Result<(), Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: tf.audience.iter().cloned().collect(),
            expiration_seconds: Some(tf.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let resp: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await?;
    let token = resp.status.map(|s| s.token).unwrap_or_default();
    write_file(&tf.path, token.as_bytes())
}

async fn write_config_map(
    ctx: &NodeCtx,
    pod: &Pod,
    dir: &Path,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<(), Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cm) = api.get_opt(name).await? else {
        return if optional {
            Ok(())
        } else {
            Err(Error::Other(format!("configmap {ns}/{name} not found")))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    write_keys(dir, &data, items)
}

async fn write_secret(
    ctx: &NodeCtx,
    pod: &Pod,
    dir: &Path,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<(), Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(s) = api.get_opt(name).await? else {
        return if optional {
            Ok(())
        } else {
            Err(Error::Other(format!("secret {ns}/{name} not found")))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        s.string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    write_keys(dir, &data, items)
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), Error> {
    match items {
        Some(items) => {
            for it in items {
                if let Some(v) = data.get(&it.key) {
                    write_file(&dir.join(&it.path), v)?;
                }
            }
        }
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v)?;
            }
        }
    }
    Ok(())
}

fn write_downward(pod: &Pod, dir: &Path, items: &[DownwardAPIVolumeFile]) -> Result<(), Error> {
    for it in items {
        let Some(f) = &it.field_ref else { continue };
        let value = field_value(pod, &f.field_path, None).unwrap_or_default();
        write_file(&dir.join(&it.path), value.as_bytes())?;
    }
    Ok(())
}

/// The downward API's field paths (also used for env `fieldRef`).
pub fn field_value(pod: &Pod, path: &str, pod_ip: Option<&str>) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_line = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let subscript = |path: &str, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone()?,
        "metadata.uid" => m.uid.clone()?,
        "metadata.labels" => map_line(m.labels.as_ref()?),
        "metadata.annotations" => map_line(m.annotations.as_ref()?),
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone()?,
        "status.podIP" | "status.podIPs" => pod_ip?.to_owned(),
        p => {
            if let Some(k) = subscript(p, "metadata.labels['") {
                m.labels.as_ref()?.get(&k)?.clone()
            } else if let Some(k) = subscript(p, "metadata.annotations['") {
                m.annotations.as_ref()?.get(&k)?.clone()
            } else {
                return None;
            }
        }
    })
}

fn mkdir(p: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    // Unchanged content is left alone: a reader that watches the file sees only changes.
    if std::fs::read(path).is_ok_and(|current| current == content) {
        return Ok(());
    }
    // Write-then-rename, so a reader never sees half a token.
    let tmp = path.with_extension("ambit-tmp");
    std::fs::write(&tmp, content).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
