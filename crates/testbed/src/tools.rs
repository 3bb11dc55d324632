//! The binaries `setup.sh` provides, found through the env file it writes.

use crate::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Tools {
    pub kubernetes_version: String,
    pub etcd_version: String,
    pub helm_version: String,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    /// The nodes' kubelet endpoint (exec, port-forward, logs): `crates/testbed/kubelet-streaming`.
    pub kubelet_streaming: PathBuf,
    pub cni_bin_dir: PathBuf,
}

impl Tools {
    /// Reads the env file and checks every binary is there.
    pub fn load(env_file: &Path) -> Result<Self, Error> {
        let raw = std::fs::read_to_string(env_file)
            .map_err(|e| Error::Tools(format!("cannot read {}: {e}", env_file.display())))?;
        let vars: BTreeMap<&str, &str> = raw
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| -> Result<String, Error> {
            vars.get(k)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| Error::Tools(format!("{} has no {k}", env_file.display())))
        };
        let bin = |k: &str| -> Result<PathBuf, Error> {
            let p = PathBuf::from(get(k)?);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Tools(format!("{k}={} does not exist", p.display())))
            }
        };
        let tools = Self {
            kubernetes_version: get("AMBIT_KUBERNETES_VERSION")?,
            etcd_version: get("AMBIT_ETCD_VERSION")?,
            helm_version: get("AMBIT_HELM_VERSION")?,
            etcd: bin("AMBIT_ETCD")?,
            kube_apiserver: bin("AMBIT_KUBE_APISERVER")?,
            kube_controller_manager: bin("AMBIT_KUBE_CONTROLLER_MANAGER")?,
            kube_scheduler: bin("AMBIT_KUBE_SCHEDULER")?,
            kubectl: bin("AMBIT_KUBECTL")?,
            helm: PathBuf::from(get("AMBIT_HELM")?),
            kubelet_streaming: bin("AMBIT_KUBELET_STREAMING")?,
            cni_bin_dir: bin("AMBIT_CNI_BIN_DIR")?,
        };
        for plugin in ["bridge", "host-local", "loopback"] {
            if !tools.cni_bin_dir.join(plugin).exists() {
                return Err(Error::Tools(format!(
                    "CNI plugin {plugin} missing from {} (Debian package containernetworking-plugins)",
                    tools.cni_bin_dir.display()
                )));
            }
        }
        Ok(tools)
    }
}
