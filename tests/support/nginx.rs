//! A real nginx for tests, with its own prefix in a temporary folder, on loopback ports, stopped
//! on drop. Fails loudly when nginx is not installed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Nginx {
    pub prefix: PathBuf,
}

/// The `http {}` lines every test config needs: temp paths inside the prefix.
pub fn temp_paths(prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;"
    )
}

/// What a gateway test runs: nginx with, on `ports[0]`, a TLS upstream (`upstream_cert` and
/// `upstream_key`) that requires a client certificate of `client_ca` and answers `answer` (an
/// nginx string such as `$ssl_client_s_dn`), and on `ports[1]` a plain proxy in front of it
/// presenting `certs/cert.pem` and `certs/key.pem` (a `keybroker agent` output).
pub fn gateway(
    prefix: &Path,
    client_ca: &Path,
    upstream_cert: &Path,
    upstream_key: &Path,
    certs: &Path,
    answer: &str,
) -> (Nginx, Vec<u16>) {
    Nginx::start(prefix, 2, |ports| {
        format!(
            r#"
  access_log off;
  server {{
    listen 127.0.0.1:{up} ssl;
    ssl_certificate {upcert};
    ssl_certificate_key {upkey};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    location / {{ return 200 "{answer}\n"; }}
  }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{
      proxy_pass https://127.0.0.1:{up};
      proxy_ssl_certificate {certs}/cert.pem;
      proxy_ssl_certificate_key {certs}/key.pem;
      proxy_ssl_verify off;
    }}
  }}
"#,
            up = ports[0],
            proxy = ports[1],
            upcert = upstream_cert.display(),
            upkey = upstream_key.display(),
            ca = client_ca.display(),
            certs = certs.display(),
        )
    })
}

impl Nginx {
    /// Starts nginx on `prefix` with `http(ports)` as the body of its `http {}` block, on
    /// `n` loopback ports nginx binds itself. nginx cannot listen on port 0, and a socket it
    /// inherits breaks its reload (seen: connections left unaccepted after `-s reload`); so
    /// ports are candidates, and a start that fails to bind one is tried again on others —
    /// an nginx that started owns its ports, no other server can answer on them.
    pub fn start(prefix: &Path, n: usize, http: impl Fn(&[u16]) -> String) -> (Self, Vec<u16>) {
        for _ in 0..8 {
            let ports: Vec<u16> = (0..n).map(|_| super::ports::candidate_port()).collect();
            if let Some(nginx) = Self::try_start(prefix, &http(&ports)) {
                return (nginx, ports);
            }
        }
        panic!(
            "nginx did not start in 8 tries: {}",
            std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
        );
    }

    fn try_start(prefix: &Path, http: &str) -> Option<Self> {
        let found = Command::new("nginx").arg("-v").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "nginx is required: run scripts/test.sh, or apt-get install nginx"
        );
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let p = prefix.display();
        std::fs::write(
            prefix.join("nginx.conf"),
            format!(
                "user root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n{}\n{http}\n}}\n",
                temp_paths(prefix)
            ),
        )
        .unwrap();
        let status = Command::new("nginx")
            .args(["-p", prefix.to_str().unwrap(), "-c", "nginx.conf"])
            .status()
            .unwrap();
        if !status.success() {
            let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "nginx did not start: {log}"
            );
            return None;
        }
        Some(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// `nginx -s reload` for this instance, as an argv.
    pub fn reload_argv(&self) -> Vec<String> {
        [
            "nginx",
            "-p",
            self.prefix.to_str().unwrap(),
            "-c",
            "nginx.conf",
            "-s",
            "reload",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args([
                "-p",
                self.prefix.to_str().unwrap(),
                "-c",
                "nginx.conf",
                "-s",
                "stop",
            ])
            .status();
    }
}
