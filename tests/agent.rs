//! `keybroker agent` end to end (docs/AGENT.md): a real nginx proxies to an upstream that
//! requires a client certificate and answers with the subject it verified; the agent keeps
//! nginx's client certificate current from a keybroker server backed by OpenBao.

mod support {
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::openbao::OpenBao;
use support::pki::Ca;
use support::ports::closed_port;
use support::server::{Running, folder, token_sha256};

const GW: &str = "agent-token";

/// A client certificate of the partner CA with common name `cn`, as a new KV version.
/// Returns a line of the key's base64 body (for canary checks).
fn put_partner(bao: &OpenBao, partner: &Ca, cn: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let issued = partner.client(dir.path(), cn, cn);
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/partner",
        &format!("cert={}", issued.cert_pem),
        &format!("key={}", issued.key_pem),
    ]);
    issued.key_pem.lines().nth(1).unwrap().to_owned()
}

struct World {
    /// First, so it drops first: stopping nginx needs its pid file, which lives in `dir`
    /// (declared after it, dropped after it). The other order left an nginx running per run.
    nginx: Option<support::nginx::Nginx>,
    bao: OpenBao,
    partner: Ca,
    dir: tempfile::TempDir,
    _server: Running,
    server_port: u16,
    proxy_port: u16,
}

async fn world() -> World {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_partner(&bao, &partner, "gateway-v1");
    let (dir, ca) = folder("unused");
    let root = dir.path();
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "edge"
[[consumer]]
name = "agent"
team = "edge"
token_sha256 = "{}"
[[credential]]
name = "partner-api"
mode = "mtls"
team = "edge"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_vault:tls/partner $KEY_cert"
client_private_key = "$SECRET_vault:tls/partner $KEY_key"
"#,
            token_sha256(GW)
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[cache]\nttl = \"1s\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n",
            bao.addr
        ),
    )
    .unwrap();
    ca.write(&root.join("ca.pem"));
    std::fs::write(root.join("token"), format!("{GW}\n")).unwrap();
    std::fs::write(root.join("p12.pass"), "changeit\n").unwrap();
    let server = Running::start(root, &ca.pem, 0, "info").await;
    let port = server.port;
    World {
        bao,
        partner,
        dir,
        _server: server,
        server_port: port,
        nginx: None,
        proxy_port: 0,
    }
}

impl World {
    /// An agent.toml for `partner-api` into `certs/`, reloading with `reload`.
    fn agent_config(&self, reload: &[String], port: u16) -> PathBuf {
        let root = self.dir.path();
        let reload = reload
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let path = root.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[server]
url = "https://localhost:{port}"
ca_cert = "ca.pem"
token_file = "token"
wait = "30s"

[[output]]
credential = "partner-api"
host = "api.partner.example"
dir = "certs"
files = ["cert.pem", "key.pem", "chain.pem", "keystore.p12"]
pkcs12_password_file = "p12.pass"
reload = [{reload}]
reload_timeout = "10s"
"#
            ),
        )
        .unwrap();
        path
    }

    fn agent_once(&self, config: &Path) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["agent", "--once", "--config", config.to_str().unwrap()])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn nginx_reload(&self) -> Vec<String> {
        self.nginx.as_ref().expect("nginx started").reload_argv()
    }

    /// Starts nginx: an upstream on TLS that requires a client certificate of the partner CA
    /// and answers with the subject it verified, and a plain proxy in front of it presenting
    /// the agent's files.
    fn start_nginx(&mut self) {
        let root = self.dir.path();
        let prefix = root.join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        let upstream_ca = Ca::new("upstream server CA");
        let upstream = upstream_ca.server(&prefix, "upstream");
        self.partner.write(&prefix.join("partner-ca.pem"));
        let (nginx, ports) = support::nginx::gateway(
            &prefix,
            &prefix.join("partner-ca.pem"),
            &upstream.cert,
            &upstream.key,
            &root.join("certs"),
            "$ssl_client_s_dn",
        );
        self.nginx = Some(nginx);
        self.proxy_port = ports[1];
    }

    async fn through_nginx(&self, client: &reqwest::Client) -> Result<String, String> {
        let resp = client
            .get(format!("http://127.0.0.1:{}/", self.proxy_port))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_presents_the_agents_files_and_a_rotation_reaches_the_upstream_without_a_failure() {
    let mut w = world().await;
    let root = w.dir.path().to_owned();
    // Once, with no reload yet (nginx is not running): the files appear.
    let config = w.agent_config(&[], w.server_port);
    let (code, stderr) = w.agent_once(&config);
    assert_eq!(code, Some(0), "{stderr}");
    let certs = root.join("certs");
    let key_mode = std::fs::metadata(certs.join("..data/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "key files are 0600");
    assert!(
        std::fs::symlink_metadata(certs.join("cert.pem"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_link(certs.join("..data"))
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("..")
    );

    // The keystore opens with the tools Java gateways' operators use: openssl always, keytool
    // where a JDK is installed. Both must find the key and the leaf of this credential.
    let p12 = certs.join("keystore.p12");
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-in", p12.to_str().unwrap(), "-nodes", "-passin"])
        .arg("pass:changeit")
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl pkcs12: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("BEGIN PRIVATE KEY") && text.contains("CN = gateway-v1"),
        "{text}"
    );
    if let Ok(out) = std::process::Command::new("keytool")
        .args([
            "-list",
            "-storetype",
            "PKCS12",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&p12)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "keytool -list: {text}");
        assert!(text.contains("PrivateKeyEntry"), "{text}");
    }

    w.start_nginx();
    // A new connection per request: nginx's reload closes idle keep-alive connections, and a
    // client reusing one just as it closes fails on its own side (a race of the client's
    // pool, not a request nginx refused; seen once in a clean-clone run).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let first = w.through_nginx(&client).await.expect("nginx answers");
    assert!(first.contains("CN=gateway-v1"), "{first}");

    // The agent keeps running, reloading nginx on each change.
    let config = w.agent_config(&w.nginx_reload(), w.server_port);
    let log = std::fs::File::create(root.join("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .current_dir(&root)
        .env("RUST_LOG", "trace")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // A request loop through the rotation.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set by the loop itself once one of its own requests got the new certificate: the loop
    // must run across the whole rotation, however slowly it is scheduled.
    let loop_saw_v2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let (stop, client) = (std::sync::Arc::clone(&stop), client.clone());
        let saw = std::sync::Arc::clone(&loop_saw_v2);
        let url = format!("http://127.0.0.1:{}/", w.proxy_port);
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok += 1;
                        if r.text().await.unwrap_or_default().contains("CN=gateway-v2") {
                            saw.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    let key_line = put_partner(&w.bao, &w.partner, "gateway-v2");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = w.through_nginx(&client).await.unwrap_or_default();
        if now.contains("CN=gateway-v2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation did not reach the upstream:\n{}\nnginx:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default(),
            std::fs::read_to_string(root.join("nginx/logs/error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !loop_saw_v2.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the request loop never saw the rotation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looping.await.unwrap();
    let seen_v2 = loop_saw_v2.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0 && seen_v2);
    let _ = agent.kill().await;
    // The agent's log (at trace) holds no key material.
    let log = std::fs::read_to_string(root.join("agent.log")).unwrap();
    assert!(
        !log.contains(&key_line),
        "the key leaked into the agent's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reload_puts_the_previous_files_back_and_an_absent_server_is_75() {
    let w = world().await;
    let root = w.dir.path().to_owned();
    let config = w.agent_config(&[], w.server_port);
    assert_eq!(w.agent_once(&config).0, Some(0));
    let certs = root.join("certs");
    let before_link = std::fs::read_link(certs.join("..data")).unwrap();
    let before = std::fs::read_to_string(certs.join("cert.pem")).unwrap();

    // New material, but the reload fails: the previous generation is swapped back.
    let key_line = put_partner(&w.bao, &w.partner, "gateway-v2");
    let failing = w.agent_config(&["false".to_owned()], w.server_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The server's cache (1 s TTL) may still hand out v1 for a moment; wait for v2 to be
        // what was attempted, then check the files stayed.
        let (code, stderr) = w.agent_once(&failing);
        assert!(
            !stderr.contains(&key_line),
            "the key leaked into the agent's output"
        );
        if stderr.contains("reload failed") {
            assert_eq!(code, Some(1), "{stderr}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing reload never ran: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_link(certs.join("..data")).unwrap(),
        before_link
    );
    assert_eq!(
        std::fs::read_to_string(certs.join("cert.pem")).unwrap(),
        before
    );
    let generations = std::fs::read_dir(&certs)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_str().unwrap();
            n.starts_with("..") && n != "..data" && e.path().is_dir()
        })
        .count();
    assert_eq!(generations, 1, "the failed generation is removed");

    // No server there: 75, and the files stay.
    let (_held, closed) = closed_port();
    let away = w.agent_config(&[], closed);
    assert_eq!(w.agent_once(&away).0, Some(75));
    assert_eq!(
        std::fs::read_to_string(certs.join("cert.pem")).unwrap(),
        before
    );
}

/// Honest exit codes for an init container: a `ca_cert` that does not trust the server is
/// the agent's configuration (2, with the cause), not "try again later"; `--once` with a
/// reload command that fails because the gateway is not running yet still leaves the first
/// files in place (0), since there is nothing to put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_cert_is_2_and_the_first_once_keeps_its_files_without_a_gateway() {
    let w = world().await;
    let root = w.dir.path();
    // A CA that did not issue the server's certificate.
    Ca::new("some other CA").write(&root.join("other-ca.pem"));
    let config = w.agent_config(&[], w.server_port);
    let text = std::fs::read_to_string(&config).unwrap();
    let wrong = root.join("agent-wrong-ca.toml");
    std::fs::write(
        &wrong,
        text.replace("ca_cert = \"ca.pem\"", "ca_cert = \"other-ca.pem\""),
    )
    .unwrap();
    let (code, stderr) = w.agent_once(&wrong);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ca_cert"), "{stderr}");
    assert!(
        stderr.contains("UnknownIssuer"),
        "the cause is kept: {stderr}"
    );
    assert!(!root.join("certs/cert.pem").exists());
    // No gateway yet: the reload fails, and there were no files before.
    let config = w.agent_config(&["false".to_owned()], w.server_port);
    let (code, stderr) = w.agent_once(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(root.join("certs/cert.pem").exists());
    assert!(stderr.contains("no previous files"), "{stderr}");
    assert!(!stderr.contains("put back"), "{stderr}");
}

/// Verified credentials at the agent's door: a pair whose key is another certificate's is
/// refused by the server (502 `credential_rejected`), and `--once` exits 1 — a refusal, not
/// "try again later" — writing no file and no byte of the key into its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_pair_is_refused_at_the_agents_door_too() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let one = w.partner.client(dir.path(), "one", "one");
    let other = w.partner.client(dir.path(), "other", "other");
    w.bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/partner",
        &format!("cert={}", one.cert_pem),
        &format!("key={}", other.key_pem),
    ]);
    let config = w.agent_config(&[], w.server_port);
    // The server may still hold the good pair for its 1 s cache TTL.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stderr = loop {
        let (code, stderr) = w.agent_once(&config);
        if code != Some(0) {
            assert_eq!(code, Some(1), "{stderr}");
            break stderr;
        }
        assert!(
            Instant::now() < deadline,
            "the mismatched pair was served: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(stderr.contains("credential_rejected"), "{stderr}");
    let key_line = other.key_pem.lines().nth(1).unwrap();
    assert!(!stderr.contains(key_line), "no key text in the agent's log");
}
