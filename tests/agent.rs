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
[[grant]]
team = "edge"
source = "vault"
paths = ["app/*"]
allowed_hosts = ["api.partner.example"]
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

// ---- A fleet an operator can run: ops_listen, reload batching, reload_min_interval ----

/// A distinctive value that must never leave the template it is expanded into.
const CANARY: &str = "KB-CANARY-5d1e0a77-ops-must-never-show-this";

/// `app/canary` holds `v = value`.
fn put_canary(bao: &OpenBao, value: &str) {
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "app/canary",
        &format!("v={value}"),
    ]);
}

/// A mismatched pair (the key of another certificate): the server refuses the credential.
fn put_mismatched(bao: &OpenBao, partner: &Ca) {
    let dir = tempfile::tempdir().unwrap();
    let one = partner.client(dir.path(), "one", "one");
    let other = partner.client(dir.path(), "other", "other");
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/partner",
        &format!("cert={}", one.cert_pem),
        &format!("key={}", other.key_pem),
    ]);
}

/// A TOML array of `argv`.
fn toml_argv(argv: &[String]) -> String {
    let items = argv
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[{items}]")
}

/// A reload command that appends a line (the time, in seconds) to `count` and then runs
/// `then` (e.g. nginx's reload): counts the reloads of a real gateway.
fn counting(count: &Path, then: &[String]) -> Vec<String> {
    let mut script = format!("date +%s.%N >> '{}'", count.display());
    if !then.is_empty() {
        script.push_str(" && exec");
        for a in then {
            script.push_str(&format!(" '{a}'"));
        }
    }
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A running `keybroker agent` with `ops_listen`, its log in `log`.
struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
    ops: u16,
}

impl Agent {
    /// Starts the agent on `config` and waits for it to say where `ops_listen` is.
    async fn start(root: &Path, config: &Path, name: &str) -> Self {
        let log = root.join(format!("{name}.log"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["agent", "--config", config.to_str().unwrap()])
            .current_dir(root)
            .env("RUST_LOG", "trace")
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ops = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // JSON lines (stderr is no terminal): `"ops_listen":"127.0.0.1:<port>"`.
            let at = "\"ops_listen\":\"127.0.0.1:";
            if let Some(i) = text.find(at) {
                let port: String = text[i + at.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                break port.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not say where ops_listen is:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self { child, log, ops }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.ops))
            .send()
            .await
            .expect("ops_listen answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// The value of the series `series` (name and labels as exposed), if exposed.
    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        metric_in(&text, series)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `what` until it holds, failing with the agent's log after `secs`.
    async fn until<F, Fut>(&self, secs: u64, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond().await {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {secs} s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Three outputs of a rotating credential change together: `--once` writes them and reloads
/// once, and the long-running agent writes all three in one pass and reloads the real nginx
/// in front of the upstream once — not three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_outputs_changing_together_reload_nginx_once() {
    let mut w = world().await;
    let root = w.dir.path().to_owned();
    let count = root.join("reloads.log");
    let dirs = ["certs", "certs2", "certs3"];
    let server_port = w.server_port;
    let config = |reload: &[String]| {
        let mut text = format!(
            "ops_listen = \"127.0.0.1:0\"\n[server]\nurl = \"https://localhost:{server_port}\"\nca_cert = \"ca.pem\"\ntoken_file = \"token\"\nwait = \"300s\"\n"
        );
        for d in dirs {
            text.push_str(&format!(
                "[[output]]\ncredential = \"partner-api\"\nhost = \"api.partner.example\"\ndir = \"{d}\"\nfiles = [\"cert.pem\", \"key.pem\"]\nreload = {}\n",
                toml_argv(reload)
            ));
        }
        let path = root.join("agent-three.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    // --once: three outputs written, one reload.
    let (code, stderr) = w.agent_once(&config(&counting(&count, &[])));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines(&count).len(),
        1,
        "--once reloads once for three outputs"
    );

    w.start_nginx();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let first = w.through_nginx(&client).await.expect("nginx answers");
    assert!(first.contains("CN=gateway-v1"), "{first}");
    let config = config(&counting(&count, &w.nginx_reload()));
    let agent = Agent::start(&root, &config, "agent-three").await;
    // The files in place are current: ready, and no reload for them.
    agent
        .until(30, "ready", || async {
            agent.get("/readyz").await.0 == 200
        })
        .await;
    assert_eq!(
        agent.metric("keybroker_agent_passes_total").await,
        Some(3.0)
    );
    assert_eq!(lines(&count).len(), 1);

    let before = std::fs::read_to_string(root.join("certs/cert.pem")).unwrap();
    put_partner(&w.bao, &w.partner, "gateway-v2");
    agent
        .until(60, "the rotation through nginx", || async {
            w.through_nginx(&client)
                .await
                .unwrap_or_default()
                .contains("CN=gateway-v2")
        })
        .await;
    // The pass that wrote them counts each output once it is over, reload included.
    agent
        .until(30, "the rotation's pass", || async {
            agent.metric("keybroker_agent_passes_total").await >= Some(6.0)
        })
        .await;
    for d in dirs {
        let now = std::fs::read_to_string(root.join(d).join("cert.pem")).unwrap();
        assert_ne!(now, before, "{d} kept the old certificate");
    }
    assert_eq!(
        lines(&count).len(),
        2,
        "three outputs changing together reloaded nginx more than once:\n{}",
        agent.log()
    );
    assert_eq!(
        agent
            .metric("keybroker_agent_reloads_total{outcome=\"ok\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        agent
            .metric("keybroker_agent_reload_duration_seconds_count")
            .await,
        Some(1.0)
    );
}

/// `reload_min_interval`: a change arriving within the interval after a reload is written at
/// once, and its reload waits; the changes of an output and a template meanwhile are reloaded
/// together, once, when the interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_min_interval_holds_reloads_back_and_batches_the_changes_in_between() {
    const INTERVAL: f64 = 20.0;
    let w = world().await;
    let root = w.dir.path().to_owned();
    put_canary(&w.bao, "first");
    std::fs::write(
        root.join("app.conf.in"),
        "token $SECRET_vault:app/canary $KEY_v\n",
    )
    .unwrap();
    let count = root.join("reloads.log");
    let reload = toml_argv(&counting(&count, &[]));
    let config = root.join("agent-interval.toml");
    std::fs::write(
        &config,
        format!(
            r#"ops_listen = "127.0.0.1:0"
reload_min_interval = "{INTERVAL}s"
[server]
url = "https://localhost:{port}"
ca_cert = "ca.pem"
token_file = "token"
wait = "300s"
[[output]]
credential = "partner-api"
host = "api.partner.example"
dir = "certs"
files = ["cert.pem", "key.pem"]
reload = {reload}
[[template]]
source = "app.conf.in"
destination = "conf/app.conf"
host = "api.partner.example"
reload = {reload}
"#,
            port = w.server_port
        ),
    )
    .unwrap();
    let agent = Agent::start(&root, &config, "agent-interval").await;
    // The first pass writes both and reloads once.
    agent
        .until(30, "the first reload", || async {
            !lines(&count).is_empty()
        })
        .await;
    agent
        .until(30, "ready", || async {
            agent.get("/readyz").await.0 == 200
        })
        .await;
    assert_eq!(
        lines(&count).len(),
        1,
        "an output and a template: one reload"
    );
    let t0: f64 = lines(&count)[0].parse().unwrap();

    let before = std::fs::read_to_string(root.join("certs/cert.pem")).unwrap();
    put_partner(&w.bao, &w.partner, "gateway-v2");
    agent
        .until(30, "the new certificate written", || async {
            std::fs::read_to_string(root.join("certs/cert.pem")).unwrap() != before
        })
        .await;
    put_canary(&w.bao, "second");
    agent
        .until(30, "the template rewritten", || async {
            std::fs::read_to_string(root.join("conf/app.conf"))
                .unwrap()
                .contains("second")
        })
        .await;
    assert!(
        // The interval runs from the first reload, not from this test's next step.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - t0
            < INTERVAL - 1.0,
        "the changes took longer than the interval to arrive: nothing to conclude"
    );
    assert_eq!(
        lines(&count).len(),
        1,
        "reloaded before reload_min_interval passed:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.metric("keybroker_agent_reloads_pending").await,
        Some(1.0)
    );
    // The held reload runs once, for both, when the interval has passed.
    agent
        .until(60, "the held reload", || async { lines(&count).len() >= 2 })
        .await;
    let t1: f64 = lines(&count)[1].parse().unwrap();
    assert!(t1 - t0 >= INTERVAL - 0.5, "reloads {t0} and {t1}");
    agent
        .until(10, "the pending reload cleared", || async {
            agent.metric("keybroker_agent_reloads_pending").await == Some(0.0)
        })
        .await;
    assert_eq!(
        agent
            .metric("keybroker_agent_reloads_total{outcome=\"ok\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(lines(&count).len(), 2, "one reload for both changes");

    // A change held back when the agent is told to stop is reloaded before it exits: after a
    // restart its files would be current, and the gateway would never be told.
    let before = std::fs::read_to_string(root.join("certs/cert.pem")).unwrap();
    put_partner(&w.bao, &w.partner, "gateway-v3");
    agent
        .until(30, "the third certificate held", || async {
            std::fs::read_to_string(root.join("certs/cert.pem")).unwrap() != before
                && agent.metric("keybroker_agent_reloads_pending").await == Some(1.0)
        })
        .await;
    assert_eq!(lines(&count).len(), 2);
    let mut agent = agent;
    let pid = agent.child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), agent.child.wait())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        lines(&count).len(),
        3,
        "the held reload ran before the agent exited"
    );
}

/// `/healthz`, `/readyz` and `/metrics` follow a failing pass (the server refuses a
/// mismatched pair) and its recovery; a template reloads its own command on a change; and
/// nothing the ops listener answers, nor any log line, carries a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listen_follows_a_failing_pass_and_its_recovery_and_never_serves_a_value() {
    let w = world().await;
    let root = w.dir.path().to_owned();
    put_mismatched(&w.bao, &w.partner);
    put_canary(&w.bao, CANARY);
    std::fs::write(
        root.join("app.conf.in"),
        "token $SECRET_vault:app/canary $KEY_v\n",
    )
    .unwrap();
    let template_reloads = root.join("template-reloads.log");
    let config = root.join("agent-ops.toml");
    std::fs::write(
        &config,
        format!(
            r#"ops_listen = "127.0.0.1:0"
[server]
url = "https://localhost:{port}"
ca_cert = "ca.pem"
token_file = "token"
wait = "300s"
[[output]]
credential = "partner-api"
host = "api.partner.example"
dir = "certs"
files = ["cert.pem", "key.pem"]
[[template]]
source = "app.conf.in"
destination = "conf/app.conf"
host = "api.partner.example"
reload = {reload}
"#,
            port = w.server_port,
            reload = toml_argv(&counting(&template_reloads, &[]))
        ),
    )
    .unwrap();
    // The server may hold the good pair of `world` for its 1 s cache TTL: wait until it
    // refuses (`--once` exits 1, writing nothing), so the agent starts refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.agent_once(&config).0 != Some(1) {
        assert!(Instant::now() < deadline, "the mismatched pair was served");
        std::fs::remove_dir_all(root.join("certs")).ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::fs::remove_dir_all(root.join("certs")).ok();
    std::fs::remove_dir_all(root.join("conf")).unwrap();
    std::fs::remove_file(&template_reloads).ok();
    let agent = Agent::start(&root, &config, "agent-ops").await;
    let mut answers = Vec::new();
    // Refused: alive, not ready (which output, why), counted by cause.
    agent
        .until(30, "the refusal counted", || async {
            agent
                .metric("keybroker_agent_failures_total{cause=\"refused\"}")
                .await
                >= Some(1.0)
        })
        .await;
    let (status, body) = agent.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    answers.push(body);
    let (status, body) = agent.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["outputs"][0]["credential"], "partner-api");
    assert_eq!(ready["outputs"][0]["why"], "not_written");
    assert_eq!(ready["outputs"][0]["last_failure"], "refused");
    assert_eq!(ready["templates"][0]["ready"], true, "{body}");
    answers.push(body);
    let failing = format!(
        "keybroker_agent_output_failing{{credential=\"partner-api\",dir=\"{}\"}}",
        root.join("certs").display()
    );
    assert_eq!(agent.metric(&failing).await, Some(1.0));
    answers.push(agent.get("/metrics").await.1);
    // The template's value reached its file (the canary is real), and its reload ran.
    assert!(
        std::fs::read_to_string(root.join("conf/app.conf"))
            .unwrap()
            .contains(CANARY)
    );
    agent
        .until(10, "the template's reload", || async {
            lines(&template_reloads).len() == 1
        })
        .await;

    // Fixed: the agent's back-off ends, the files are written, everything recovers.
    let key_line = put_partner(&w.bao, &w.partner, "gateway-v2");
    agent
        .until(90, "ready", || async {
            agent.get("/readyz").await.0 == 200
        })
        .await;
    assert_eq!(agent.metric(&failing).await, Some(0.0));
    let expiry = format!(
        "keybroker_agent_certificate_expiry_timestamp_seconds{{credential=\"partner-api\",dir=\"{}\"}}",
        root.join("certs").display()
    );
    assert!(agent.metric(&expiry).await.is_some_and(|t| t > 1.7e9));
    answers.push(agent.get("/readyz").await.1);
    answers.push(agent.get("/metrics").await.1);

    // A certificate past 90 % of its life (valid, not expired): not ready, saying which and
    // why, and its exact not_after exported.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (not_before, not_after) = (now - 9 * 86_400, now + 86_400);
    {
        let dir = tempfile::tempdir().unwrap();
        let old = w
            .partner
            .client_valid(dir.path(), "old", "gateway-old", not_before, not_after);
        w.bao.cli(&[
            "kv",
            "put",
            "-mount=secret",
            "tls/partner",
            &format!("cert={}", old.cert_pem),
            &format!("key={}", old.key_pem),
        ]);
    }
    agent
        .until(30, "not ready at 90 % of life", || async {
            agent.get("/readyz").await.0 == 503
        })
        .await;
    let (_, body) = agent.get("/readyz").await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready["outputs"][0]["why"], "past_90_percent_of_life",
        "{body}"
    );
    assert_eq!(ready["outputs"][0]["not_after"], not_after, "{body}");
    assert_eq!(agent.metric(&expiry).await, Some(not_after as f64));
    answers.push(body);
    // Renewed: ready again.
    put_partner(&w.bao, &w.partner, "gateway-v3");
    agent
        .until(30, "ready after the renewal", || async {
            agent.get("/readyz").await.0 == 200
        })
        .await;

    // A template change reloads the template's command.
    put_canary(&w.bao, &format!("{CANARY}-2"));
    agent
        .until(30, "the template's reload on a change", || async {
            lines(&template_reloads).len() == 2
        })
        .await;
    assert!(
        std::fs::read_to_string(root.join("conf/app.conf"))
            .unwrap()
            .contains(&format!("{CANARY}-2"))
    );

    // Refused again after it was written: the files in place stay in service (ready), and
    // the failure shows.
    put_mismatched(&w.bao, &w.partner);
    agent
        .until(30, "the second refusal", || async {
            agent.metric(&failing).await == Some(1.0)
        })
        .await;
    let (status, body) = agent.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"last_failure\":\"refused\""), "{body}");
    answers.push(body);
    answers.push(agent.get("/metrics").await.1);
    answers.push(agent.get("/healthz").await.1);
    answers.push(agent.get("/no-such-path").await.1);

    let mut agent = agent;
    let _ = agent.child.kill().await;
    let log = agent.log();
    assert!(log.contains("refused"), "{log}");
    for text in answers.iter().chain(std::iter::once(&log)) {
        assert!(!text.contains(CANARY), "the canary leaked:\n{text}");
        assert!(!text.contains(&key_line), "the key leaked:\n{text}");
        assert!(
            !text.contains("PRIVATE KEY"),
            "key material leaked:\n{text}"
        );
    }
}

/// `ops_listen` on an address other hosts reach is refused at load (exit 2, saying why),
/// before anything is fetched or written.
#[test]
fn a_non_loopback_ops_listen_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "ops_listen = \"0.0.0.0:9180\"\n[server]\nurl = \"https://localhost:1\"\n[[output]]\ncredential = \"c\"\nhost = \"h\"\ndir = \"certs\"\n",
    )
    .unwrap();
    for once in [true, false] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        cmd.args(["agent", "--config", config.to_str().unwrap()]);
        if once {
            cmd.arg("--once");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("not a loopback address"), "{stderr}");
        assert!(!dir.path().join("certs").exists());
    }
}

/// A template whose reload fails is put back like an output's files: the previous content
/// is written back over the destination, and `--once` exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_failing_reload_puts_its_previous_content_back() {
    let w = world().await;
    let root = w.dir.path().to_owned();
    put_canary(&w.bao, "first");
    std::fs::write(
        root.join("app.conf.in"),
        "token $SECRET_vault:app/canary $KEY_v\n",
    )
    .unwrap();
    let config = |reload: &[String]| {
        let path = root.join("agent-template.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nurl = \"https://localhost:{}\"\nca_cert = \"ca.pem\"\ntoken_file = \"token\"\n[[template]]\nsource = \"app.conf.in\"\ndestination = \"conf/app.conf\"\nhost = \"api.partner.example\"\nreload = {}\n",
                w.server_port,
                toml_argv(reload)
            ),
        )
        .unwrap();
        path
    };
    let (code, stderr) = w.agent_once(&config(&["true".to_owned()]));
    assert_eq!(code, Some(0), "{stderr}");
    let destination = root.join("conf/app.conf");
    assert_eq!(
        std::fs::read_to_string(&destination).unwrap(),
        "token first\n"
    );
    put_canary(&w.bao, "second");
    let failing = config(&["false".to_owned()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The server's cache (1 s TTL) may still expand `first` for a moment.
        let (code, stderr) = w.agent_once(&failing);
        if stderr.contains("reload failed") {
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains("put back"), "{stderr}");
            assert!(!stderr.contains("second"), "the value leaked: {stderr}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing reload never ran: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&destination).unwrap(),
        "token first\n",
        "the previous content is back"
    );
}
