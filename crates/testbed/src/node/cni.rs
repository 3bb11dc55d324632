//! Running CNI plugins the way a container runtime does: the node's conflist (first `*.conflist`
//! in `<node_root>/etc/cni/net.d`, so a chained plugin such as ambit's capture plugin can be
//! appended by a DaemonSet through a hostPath), each plugin exec'd in the node's netns with the
//! previous plugin's result, and DEL in reverse order.

use crate::Error;
use crate::config::Config;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

pub const DEFAULT_CONFLIST: &str = "10-ambit-testbed.conflist";
pub const NETWORK_NAME: &str = "ambit-testbed";
const CNI_VERSION: &str = "1.0.0";

/// bridge (+ host-local IPAM over the node's pod CIDR) and portmap-free loopback: the plain
/// network every pod gets before any chained plugin.
pub fn write_default_conflist(config: &Config, k: u8) -> Result<(), Error> {
    let dir = config.node_cni_conf_dir(k);
    let bin = config.node_cni_bin_dir(k);
    for d in [&dir, &bin] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let ipam_dir = config.node_dir(k).join("cni-ipam");
    let conf = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": config.pod_cidr(k) }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir,
            }
        }]
    });
    let path = dir.join(DEFAULT_CONFLIST);
    let raw = serde_json::to_vec_pretty(&conf).map_err(|e| Error::Cni(e.to_string()))?;
    std::fs::write(&path, raw).map_err(|e| Error::io(&path, e))
}

/// The arguments of one ADD/DEL.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns_path: &'a Path,
    pub ifname: &'a str,
    pub namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
}

#[derive(Debug, Clone)]
pub struct Cni {
    pub node_netns: String,
    pub conf_dir: PathBuf,
    /// Searched in order for plugin binaries (CNI_PATH).
    pub bin_dirs: Vec<PathBuf>,
}

impl Cni {
    /// The node's network config: the first `*.conflist` by name, as containerd and CRI-O pick it.
    pub fn load_conflist(&self) -> Result<Value, Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| Error::io(&self.conf_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        files.sort();
        let path = files
            .first()
            .ok_or_else(|| Error::Cni(format!("no *.conflist in {}", self.conf_dir.display())))?;
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&raw).map_err(|e| Error::Cni(format!("{}: {e}", path.display())))
    }

    /// ADD through the whole chain; returns the final result and the conflist it used (DEL
    /// must use the same one).
    pub async fn add(&self, inv: &Invocation<'_>) -> Result<(Value, Value), Error> {
        let conflist = self.load_conflist()?;
        let mut prev: Option<Value> = None;
        for plugin in plugins(&conflist)? {
            let conf = netconf(&conflist, plugin, prev.as_ref());
            let out = self.exec("ADD", plugin_type(plugin)?, &conf, inv).await?;
            prev = Some(out);
        }
        let result = prev.ok_or_else(|| Error::Cni("conflist has no plugins".into()))?;
        Ok((result, conflist))
    }

    /// DEL through the chain in reverse; every plugin is called even if one fails.
    pub async fn del(
        &self,
        conflist: &Value,
        result: Option<&Value>,
        inv: &Invocation<'_>,
    ) -> Result<(), Error> {
        let mut errors = Vec::new();
        for plugin in plugins(conflist)?.iter().rev() {
            let conf = netconf(conflist, plugin, result);
            let ty = plugin_type(plugin)?;
            if let Err(e) = self.exec("DEL", ty, &conf, inv).await {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cni(errors.join("; ")))
        }
    }

    async fn exec(
        &self,
        command: &str,
        ty: &str,
        conf: &Value,
        inv: &Invocation<'_>,
    ) -> Result<Value, Error> {
        let bin = self
            .bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .ok_or_else(|| Error::Cni(format!("plugin {ty} not found in {:?}", self.bin_dirs)))?;
        let cni_path =
            std::env::join_paths(&self.bin_dirs).map_err(|e| Error::Cni(e.to_string()))?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            inv.namespace, inv.pod_name, inv.container_id, inv.pod_uid
        );
        // Plugins act on the netns they run in (the bridge is created there): the node's.
        let mut child = tokio::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_netns))
            .arg("--")
            .arg(&bin)
            .env_clear()
            .env("PATH", crate::sys::PATH)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns_path)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_PATH", cni_path)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Cni(format!("{ty}: {e}")))?;
        let raw = serde_json::to_vec(conf).map_err(|e| Error::Cni(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&raw)
                .await
                .map_err(|e| Error::Cni(format!("{ty} stdin: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| Error::Cni(format!("{ty}: {e}")))?;
        if !out.status.success() {
            // Plugins report errors as JSON on stdout.
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let m = v.get("msg")?.as_str()?.to_owned();
                    let d = v.get("details").and_then(Value::as_str).unwrap_or_default();
                    Some(format!("{m} {d}"))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned());
            return Err(Error::Cni(format!(
                "{command} {ty} ({}): {} {}",
                out.status,
                msg.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if command == "DEL" || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(conf.get("prevResult").cloned().unwrap_or(Value::Null));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Cni(format!("{ty} result: {e}")))
    }
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>, Error> {
    conflist
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Cni("conflist has no plugins array".into()))
}

fn plugin_type(plugin: &Value) -> Result<&str, Error> {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Cni("plugin without type".into()))
}

/// A plugin's stdin: its own object plus the list's `cniVersion` and `name`, and `prevResult`.
fn netconf(conflist: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.insert(
            "cniVersion".into(),
            conflist
                .get("cniVersion")
                .cloned()
                .unwrap_or_else(|| json!(CNI_VERSION)),
        );
        obj.insert(
            "name".into(),
            conflist
                .get("name")
                .cloned()
                .unwrap_or_else(|| json!(NETWORK_NAME)),
        );
        if let Some(p) = prev
            && !p.is_null()
        {
            obj.insert("prevResult".into(), p.clone());
        }
    }
    conf
}

/// The first IPv4 address of a CNI result.
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netconf_carries_list_fields_and_prev_result() {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "ambit-cni", "x": 1}]});
        let prev = json!({"ips": [{"address": "10.101.1.5/24"}]});
        let c = netconf(&list, &list["plugins"][1], Some(&prev));
        assert_eq!(c["type"], "ambit-cni");
        assert_eq!(c["x"], 1);
        assert_eq!(c["name"], "n");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(
            result_ipv4(&prev),
            Some(std::net::Ipv4Addr::new(10, 101, 1, 5))
        );
        let first = netconf(&list, &list["plugins"][0], None);
        assert!(first.get("prevResult").is_none());
    }
}
