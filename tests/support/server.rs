//! The real `keybroker serve` binary over TLS, for tests that must see the process itself
//! (its logs, its memory): started in a folder holding `kb.toml` and `server.pem`/`-key.pem`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A folder for `serve`: `secrets/app/token.json` holding `{"value": file_secret}`, an empty
/// `policies/`, and `server.pem`/`server-key.pem` from a new CA (returned).
pub fn folder(file_secret: &str) -> (tempfile::TempDir, super::pki::Ca) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets/app")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(
        root.join("secrets/app/token.json"),
        serde_json::json!({ "value": file_secret }).to_string(),
    )
    .unwrap();
    let ca = super::pki::Ca::new("keybroker test server CA");
    ca.server(root, "server");
    (dir, ca)
}

/// The hex SHA-256 of a bearer token, as policies store it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub struct Running {
    pub child: tokio::process::Child,
    pub client: reqwest::Client,
    pub port: u16,
    /// Where each listener listens, from `--ready-file` (`listen`, `ops_listen`,
    /// `vault_api`, `egress`).
    pub addresses: std::collections::BTreeMap<String, std::net::SocketAddr>,
}

/// Where each listener of a `serve` started with `--ready-file path` listens, once it wrote
/// the file (within 30 s).
pub async fn ready(path: &Path) -> std::collections::BTreeMap<String, std::net::SocketAddr> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let v: std::collections::BTreeMap<String, String> =
                serde_json::from_str(&text).unwrap();
            return v
                .into_iter()
                .map(|(k, a)| (k, a.parse().unwrap()))
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve wrote no ready file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Running {
    /// Starts `serve --config kb.toml` in `root` (which must listen on 127.0.0.1:`port` — or
    /// port 0, and `port` is then the one it bound — with a certificate of `ca_pem`), logs at `rust_log` into `root/stdout.log` and
    /// `root/stderr.log`, and waits until `/healthz` answers.
    pub async fn start(root: &Path, ca_pem: &str, port: u16, rust_log: &str) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"));
        command.args(["serve", "--config", "kb.toml", "--ready-file", "ready.json"]);
        Self::start_command(command, root, ca_pem, port, rust_log).await
    }

    /// As [`Running::start`], with the process's address space limited to `bytes`
    /// (`ulimit -v`), so an allocation sized by a caller would abort it.
    pub async fn start_limited(
        root: &Path,
        ca_pem: &str,
        port: u16,
        rust_log: &str,
        bytes: u64,
    ) -> Self {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -v {} && exec \"$0\" serve --config kb.toml --ready-file ready.json",
                bytes / 1024
            ))
            .arg(env!("CARGO_BIN_EXE_keybroker"))
            // glibc reserves 64 MiB of address space per malloc arena; keep their number to
            // what a 2-core server uses, so the limit measures keybroker, not the allocator.
            .env("MALLOC_ARENA_MAX", "2");
        Self::start_command(command, root, ca_pem, port, rust_log).await
    }

    /// As [`Running::start`], with `token` as the environment's Vault token (`VAULT_TOKEN`:
    /// a fixed token, which keybroker cannot replace by logging in) instead of the root token.
    pub async fn start_with_vault_token(
        root: &Path,
        ca_pem: &str,
        rust_log: &str,
        token: &str,
    ) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"));
        command.args(["serve", "--config", "kb.toml", "--ready-file", "ready.json"]);
        Self::start_command_as(command, root, ca_pem, 0, rust_log, token).await
    }

    async fn start_command(
        command: tokio::process::Command,
        root: &Path,
        ca_pem: &str,
        port: u16,
        rust_log: &str,
    ) -> Self {
        let token = super::openbao::ROOT_TOKEN;
        Self::start_command_as(command, root, ca_pem, port, rust_log, token).await
    }

    async fn start_command_as(
        mut command: tokio::process::Command,
        root: &Path,
        ca_pem: &str,
        port: u16,
        rust_log: &str,
        vault_token: &str,
    ) -> Self {
        let log = |name: &str| Stdio::from(std::fs::File::create(root.join(name)).unwrap());
        let child = command
            .current_dir(root)
            .env("RUST_LOG", rust_log)
            .env("VAULT_TOKEN", vault_token)
            .env_remove("VAULT_ADDR")
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .resolve("localhost", ([127, 0, 0, 1], 0).into())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        // Where it listens, from the file it writes once bound (the configuration may say
        // port 0: no port is picked by binding and dropping a socket).
        let ready = root.join("ready.json");
        let started = std::time::Instant::now();
        let addresses: std::collections::BTreeMap<String, std::net::SocketAddr> = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(&text).unwrap();
                break v
                    .into_iter()
                    .map(|(k, a)| (k, a.parse().unwrap()))
                    .collect();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "keybroker did not bind:\n{}",
                std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let bound = addresses["listen"].port();
        assert!(port == 0 || port == bound, "listens on {bound}, not {port}");
        let running = Self {
            child,
            client,
            port: bound,
            addresses,
        };
        for _ in 0..100 {
            if running
                .client
                .get(running.url("/healthz"))
                .send()
                .await
                .is_ok()
            {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "keybroker did not start:\n{}",
            std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default()
        );
    }

    /// The port of the listener `name` (`vault_api`, `egress`, `ops_listen`).
    pub fn port_of(&self, name: &str) -> u16 {
        self.addresses[name].port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The status of `GET path` from a new client (a new handshake) presenting the client
    /// certificate and key `identity_pem`, trusting the server's CA `ca_pem`.
    pub async fn status_with_identity(&self, ca_pem: &str, identity_pem: &[u8], path: &str) -> u16 {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(identity_pem).unwrap())
            .build()
            .unwrap();
        client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `method path` on the listener `listener` (`listen`, `vault_api`) from a new client
    /// presenting `identity_pem`: the status and the body.
    pub async fn send_with_identity(
        &self,
        ca_pem: &str,
        identity_pem: &[u8],
        listener: &str,
        method: reqwest::Method,
        path: &str,
    ) -> (u16, String) {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(identity_pem).unwrap())
            .build()
            .unwrap();
        let url = format!(
            "https://localhost:{}{path}",
            self.addresses[listener].port()
        );
        let resp = client.request(method, url).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// The JSON log lines of `text` (a server's stderr with `--log-format json`, or what it logs
/// when stderr is not a terminal), each checked to be plain: no field holds a Rust `Debug`
/// form (`Some(…)`, `None`, `"quoted"`) — a person reads these values (issue 44).
pub fn log_lines(text: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"level\""))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: a log line is not JSON: {l}"))
        })
        .collect();
    for line in &lines {
        let fields = line["fields"].as_object().expect("a log line has fields");
        for (name, value) in fields {
            if let Some(v) = value.as_str() {
                assert!(
                    !(v.starts_with("Some(") || v == "None" || v.starts_with('"')),
                    "field {name} is a Debug form: {line}"
                );
            }
        }
    }
    lines
}

/// The fields of the first log line of `lines` whose message is `message`.
pub fn logged<'a>(lines: &'a [serde_json::Value], message: &str) -> Option<&'a serde_json::Value> {
    lines
        .iter()
        .map(|l| &l["fields"])
        .find(|f| f["message"] == message)
}
