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

impl Nginx {
    /// Starts nginx on `prefix` with `http` as the body of its `http {}` block.
    pub fn start(prefix: &Path, http: &str) -> Self {
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
        assert!(
            status.success(),
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
        );
        Self {
            prefix: prefix.to_owned(),
        }
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
