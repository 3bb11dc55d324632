//! nginx (Debian `nginx` and `libnginx-mod-stream`) as the baseline of the waypoint benchmark:
//! three nginx processes doing the hops and TLS work of the waypoint path, with certificates
//! from the same mesh CA.
//!
//! - A, the client's node tunnel: `stream`, plain TCP in, mutual TLS out to B;
//! - B, the waypoint: terminates mutual TLS (client certificate verified), HTTP reverse proxy
//!   with an access log line per request, mutual TLS out to C over kept-alive connections;
//! - C, the destination's node tunnel: `stream`, terminates mutual TLS (client verified), plain
//!   TCP to the app.
//!
//! Each is one process (`master_process off`, the worker loop in the process itself), so it can
//! be pinned and measured like the waypoint path's processes.
//!
//! Two differences nginx forces, both on the client side of TLS: nginx matches a server
//! certificate against DNS names only and our leaves carry a SPIFFE URI SAN alone, so A and B do
//! not verify the server's certificate (a cost paid once per connection, not per request); and
//! nginx 1.22 serves HTTP/2 over TLS only after ALPN, which its `stream` client (A) cannot
//! send, so B terminates the HTTP/2 entry's TLS in `stream` and hands it to its HTTP/2 server
//! over a unix socket in the same process.

use crate::process::{Process, command};
use ambit_identity::{CertificateAuthority, SpiffeId};
use anyhow::{Result, ensure};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Upstream connections B keeps alive to C: as many as requests the load keeps in flight.
const UPSTREAM_KEEPALIVE: u32 = 64;
const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Fails with what to install when nginx or its stream module is missing.
pub fn check_installed() -> Result<()> {
    ensure!(
        Path::new(STREAM_MODULE).exists(),
        "nginx with its stream module is needed: apt-get install nginx libnginx-mod-stream"
    );
    Ok(())
}

/// A certificate of the mesh CA for `identity` with its key, as PEM files `STEM.crt` and
/// `STEM.key` in `dir`.
pub struct PemIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PemIdentity {
    pub fn write(
        ca: &CertificateAuthority,
        identity: &SpiffeId,
        dir: &Path,
        stem: &str,
    ) -> Result<Self> {
        // The key must reach nginx, so it is made here rather than by ambit-identity (which
        // never lets a key out); the CA signs only the CSR's public key, as for any workload.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        let leaf = ca.sign(csr.der(), identity, LEAF_LIFETIME)?;
        let files = Self {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(
            &files.cert,
            pem::encode(&pem::Pem::new("CERTIFICATE", leaf.to_vec())),
        )?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}

/// Where the three nginx listen, and what they present.
pub struct Chain<'a> {
    pub dir: &'a Path,
    pub ca_cert: &'a Path,
    /// A: HTTP/1.1 and HTTP/2 entries, for the load tool.
    pub a_http1: SocketAddr,
    pub a_h2: SocketAddr,
    pub a_identity: &'a PemIdentity,
    /// B: one TLS port per entry of A.
    pub b_http1: SocketAddr,
    pub b_h2: SocketAddr,
    pub b_identity: &'a PemIdentity,
    pub c: SocketAddr,
    pub c_identity: &'a PemIdentity,
    pub app: SocketAddr,
}

impl Chain<'_> {
    /// Starts C, B and A pinned to `cpus`, each once it listens; returned in that order.
    pub fn start(&self, cpus: &str) -> Result<[Process; 3]> {
        let c = self.run("nginx-c", &self.c_config(), self.c, cpus)?;
        let b = self.run("nginx-b", &self.b_config(), self.b_http1, cpus)?;
        let a = self.run("nginx-a", &self.a_config(), self.a_http1, cpus)?;
        Ok([c, b, a])
    }

    fn run(&self, name: &str, config: &str, listens: SocketAddr, cpus: &str) -> Result<Process> {
        let file = self.dir.join(format!("{name}.conf"));
        std::fs::write(&file, config)?;
        let mut process = Process::spawn(
            name,
            command("nginx", Some(cpus))
                .arg("-p")
                .arg(self.dir)
                .arg("-c")
                .arg(&file)
                .args(["-e", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )?;
        process.wait_listening(listens)?;
        Ok(process)
    }

    fn main_config(&self, name: &str, body: &str) -> String {
        let dir = self.dir.display();
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log stderr warn;\npid {dir}/{name}.pid;\n\
             load_module {STREAM_MODULE};\n\
             events {{ worker_connections 4096; }}\n{body}"
        )
    }

    /// Terminating mutual TLS: this identity, clients verified against the mesh CA.
    fn tls_server(&self, identity: &PemIdentity) -> String {
        format!(
            "ssl_protocols TLSv1.3;\n\
             ssl_certificate {};\nssl_certificate_key {};\n\
             ssl_client_certificate {};\nssl_verify_client on;\n",
            identity.cert.display(),
            identity.key.display(),
            self.ca_cert.display()
        )
    }

    /// Originating mutual TLS as this identity (see the module comment on verification).
    fn tls_client(identity: &PemIdentity) -> String {
        format!(
            "proxy_ssl_protocols TLSv1.3;\n\
             proxy_ssl_certificate {};\nproxy_ssl_certificate_key {};\n\
             proxy_ssl_session_reuse on;\nproxy_ssl_verify off;\n",
            identity.cert.display(),
            identity.key.display()
        )
    }

    fn a_config(&self) -> String {
        let tls = Self::tls_client(self.a_identity);
        let (a1, a2, b1, b2) = (self.a_http1, self.a_h2, self.b_http1, self.b_h2);
        self.main_config(
            "nginx-a",
            &format!(
                "stream {{\nproxy_ssl on;\n{tls}\
                 server {{ listen {a1}; proxy_pass {b1}; }}\n\
                 server {{ listen {a2}; proxy_pass {b2}; }}\n}}\n"
            ),
        )
    }

    fn b_config(&self) -> String {
        let dir = self.dir.display();
        let server_tls = self.tls_server(self.b_identity);
        let client_tls = Self::tls_client(self.b_identity);
        let (b1, b2, c) = (self.b_http1, self.b_h2, self.c);
        let h2_socket = format!("unix:{dir}/nginx-b-h2.sock");
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {dir}/{t}_temp;\n"))
            .collect();
        self.main_config(
            "nginx-b",
            &format!(
                "http {{\n{temp}\
                 access_log {dir}/nginx-b-access.log;\n\
                 keepalive_requests 1000000000;\nkeepalive_timeout 300s;\n\
                 upstream destination {{ server {c}; keepalive {UPSTREAM_KEEPALIVE}; \
                 keepalive_requests 1000000000; keepalive_timeout 300s; }}\n\
                 server {{\nlisten {b1} ssl;\nlisten {h2_socket} http2;\n{server_tls}\
                 location / {{\nproxy_pass https://destination;\nproxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\nproxy_set_header Host $http_host;\n\
                 {client_tls}}}\n}}\n}}\n\
                 stream {{\nserver {{ listen {b2} ssl;\n{server_tls}proxy_pass {h2_socket}; }}\n}}\n"
            ),
        )
    }

    fn c_config(&self) -> String {
        let tls = self.tls_server(self.c_identity);
        let (c, app) = (self.c, self.app);
        self.main_config(
            "nginx-c",
            &format!("stream {{\nserver {{ listen {c} ssl;\n{tls}proxy_pass {app}; }}\n}}\n"),
        )
    }
}
