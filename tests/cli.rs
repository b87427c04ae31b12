//! The `keybroker` command as a user runs it: exit codes, stdout, stderr.

mod support {
    pub mod dev;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn keybroker(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(args)
        .current_dir(cwd)
        .env_remove("KEYBROKER_CONFIG")
        .env("RUST_LOG", "trace")
        .output()
        .expect("the keybroker binary runs")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn resolve_prints_the_expanded_example_document() {
    let (dev, config) = support::dev::copy("127.0.0.1:0");
    let out = keybroker(
        &[
            "resolve",
            "--config",
            config.to_str().unwrap(),
            "document.json",
        ],
        dev.path(),
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["database"]["user"], "app");
    assert_eq!(
        doc["database"]["url"],
        "postgres://app:dev-only-Zq8#w2!v@db.internal.example/app"
    );
    let cert = doc["partner_mtls"]["cert"].as_str().unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(
        doc["partner_mtls"]["key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    assert_eq!(doc["api"]["authorization"], "Bearer dev-api-token-4c1e0b7a");
    assert_eq!(doc["api"]["note"], "write $SECRET_ for a literal reference");
    // The CCP-flattened copy of the bundle comes back byte-identical to the intact one.
    assert_eq!(
        doc["partner_mtls_repaired"]["cert"],
        doc["partner_mtls"]["cert"]
    );
    assert_eq!(
        doc["partner_mtls_repaired"]["key"],
        doc["partner_mtls"]["key"]
    );
    // Values never reach the log, even at trace level.
    assert!(!stderr(&out).contains("dev-only-Zq8"), "{}", stderr(&out));
}

#[test]
fn failed_resolve_lists_every_failure_on_stderr_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.json");
    std::fs::write(
        &doc,
        r#"{"ok": "$SECRET_demo/db $KEY_password", "missing": "$SECRET_demo/nope $KEY_x", "bad": ["x $SECRET_demo/../db $KEY_password"]}"#,
    )
    .unwrap();
    let (_dev, config) = support::dev::copy("127.0.0.1:0");
    let out = keybroker(
        &[
            "resolve",
            "--config",
            config.to_str().unwrap(),
            doc.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "no partial output");
    let err = stderr(&out);
    assert!(
        !err.contains("dev-only-Zq8"),
        "a resolved value leaked: {err}"
    );
    let json_line = err
        .lines()
        .find(|l| l.starts_with("{\"error\""))
        .expect("a JSON error line");
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    assert_eq!(v["error"]["code"], "unresolved_references");
    let details = v["error"]["details"].as_array().unwrap();
    let got: Vec<(String, String)> = details
        .iter()
        .map(|d| {
            (
                d["pointer"].as_str().unwrap().to_owned(),
                d["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/missing".to_owned(), "not_found".to_owned()),
            ("/bad/0".to_owned(), "dot_segment".to_owned()),
        ]
    );
    assert_eq!(details[0]["reference"], "$SECRET_demo/nope $KEY_x");
}

#[test]
fn text_documents_keep_their_bytes_and_report_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, config) = support::dev::copy("127.0.0.1:0");
    let ok = dir.path().join("app.env");
    std::fs::write(
        &ok,
        "# env\r\nDB_USER=$SECRET_demo/db $KEY_username\r\nLIT=$$SECRET_x\n",
    )
    .unwrap();
    let out = keybroker(
        &[
            "resolve",
            "--config",
            config.to_str().unwrap(),
            ok.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "# env\r\nDB_USER=app\r\nLIT=$SECRET_x\n");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "line one\n  $SECRET_demo/db $KEY_nope\n").unwrap();
    let out = keybroker(
        &[
            "resolve",
            "--config",
            config.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains(r#""line":2,"column":3"#), "{err}");
    assert!(err.contains("field_not_found"), "{err}");
}

#[test]
fn check_accepts_the_examples_and_lists_every_error_with_file_and_line() {
    let (dev, config) = support::dev::copy("127.0.0.1:0");
    let out = keybroker(&["check", "--config", config.to_str().unwrap()], dev.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kb.toml");
    std::fs::write(
        &cfg,
        "polices = \"p\"\n[[source]]\nname = \"f\"\nkind = \"file\"\npath = \"nowhere\"\n[cache]\nttl = \"later\"\n",
    )
    .unwrap();
    let out = keybroker(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let file = cfg.display().to_string();
    assert!(
        err.contains(&format!("{file}:1:1: unknown key `polices`")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:5:1: file source directory")),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:7:7: ")), "{err}");
}

#[test]
fn missing_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = keybroker(&["resolve", "--config", "absent.toml", "-"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("absent.toml"));
}

#[test]
fn sources_refuse_plain_http_off_loopback_and_vault_needs_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kb.toml");
    let run = |toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["resolve", "--config", cfg.to_str().unwrap(), "-"])
            .current_dir(dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(
        "[[source]]\nname = \"c\"\nkind = \"ccp\"\nurl = \"http://ccp.example\"\napp_id = \"kb\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("http://"), "{}", stderr(&out));
    let out = run("[[source]]\nname = \"v\"\nkind = \"vault\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("VAULT_ADDR"), "{}", stderr(&out));
    let out = run(
        "[[source]]\nname = \"v\"\nkind = \"vault\"\naddress = \"http://vault.example:8200\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("http://"), "{}", stderr(&out));
}

fn keybroker_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn pem_repair_round_trips_a_ccp_flattened_key_through_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl is installed (scripts/test.sh installs it)");
    assert!(status.success());
    let original = std::fs::read_to_string(&key).unwrap();
    let flat = original.replace('\n', " ");
    let out = keybroker_stdin(&["pem", "repair"], flat.trim_end().as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), original, "byte-exact");
    assert_eq!(stderr(&out).trim(), r#"{"repairs":["spaces_to_newlines"]}"#);

    let out = keybroker_stdin(&["pem", "repair", "--strict"], flat.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains(r#""code":"not_intact""#), "{err}");
    let body_line = original.lines().nth(1).unwrap();
    assert!(
        !err.contains(&body_line[..16]),
        "key text in an error: {err}"
    );

    let out = keybroker_stdin(&["pem", "inspect"], flat.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(facts["blocks"][0]["kind"], "private_key");
    assert_eq!(facts["blocks"][0]["key_algorithm"], "RSA");
    assert_eq!(facts["blocks"][0]["key_bits"], 2048);
    assert!(
        !stdout(&out).contains(&body_line[..16]),
        "inspect shows key bytes"
    );
}

#[test]
fn pem_inspect_describes_the_dev_certificate() {
    let bundle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/dev/secrets/demo/partner.json")).unwrap(),
    )
    .unwrap();
    let input = format!(
        "{}{}{}",
        bundle["cert"].as_str().unwrap(),
        bundle["key"].as_str().unwrap(),
        bundle["ca"].as_str().unwrap()
    );
    let out = keybroker_stdin(&["pem", "inspect", "--expect-leaf"], input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(facts["blocks"][0]["subject"], "CN=gateway.payments.example");
    assert_eq!(facts["blocks"][2]["is_ca"], true);
    assert_eq!(facts["repairs"], serde_json::json!([]));
}

/// `check` proves what `serve` will do: every configuration `serve` refuses at start, `check`
/// refuses too, with the same exit code (2) and the same reason.
#[test]
fn check_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    let files = "[[source]]\nname = \"f\"\nkind = \"file\"\npath = \"secrets\"\n";
    let cases = [
        (
            "[[source]]\nname = \"c\"\nkind = \"ccp\"\nurl = \"http://ccp.example\"\napp_id = \"kb\"\n".to_owned(),
            "http://",
        ),
        ("[[source]]\nname = \"v\"\nkind = \"vault\"\n".to_owned(), "VAULT_ADDR"),
        (
            "[[source]]\nname = \"v\"\nkind = \"vault\"\naddress = \"https://127.0.0.1:8200\"\ntls_server_name = \"not a name\"\n".to_owned(),
            "is not a DNS name",
        ),
        (
            format!("[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing-key.pem\"\n{files}"),
            "missing",
        ),
        (
            format!("[server]\nlisten = \"0.0.0.0:0\"\n{files}"),
            "only listens on loopback",
        ),
        (
            format!("{files}[audit]\npath = \"no/such/folder/audit.log\"\n"),
            "audit",
        ),
    ];
    for (i, (toml, why)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("kb{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let run = |command: &str| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
                .args([command, "--config", cfg.to_str().unwrap()])
                .current_dir(dir.path())
                .env_remove("VAULT_ADDR")
                .env("VAULT_TOKEN", "t")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // A `serve` that started would not exit: poll with a deadline.
            let started = std::time::Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if started.elapsed() > std::time::Duration::from_secs(30) {
                    let _ = child.kill();
                    panic!("{command} accepted case {i}:\n{toml}");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            (status.code(), err)
        };
        let (serve_code, serve_err) = run("serve");
        let (check_code, check_err) = run("check");
        assert_eq!(serve_code, Some(2), "serve, case {i}: {serve_err}");
        assert_eq!(check_code, Some(2), "check, case {i}: {check_err}");
        assert!(serve_err.contains(why), "serve, case {i}: {serve_err}");
        assert!(check_err.contains(why), "check, case {i}: {check_err}");
        // At the setting involved (none of them is on line 1), by both commands alike.
        let at = |err: &str| {
            let start = err.find(&format!("kb{i}.toml:"))?;
            let rest = &err[start + format!("kb{i}.toml:").len()..];
            let mut parts = rest.splitn(3, ':');
            let line: usize = parts.next()?.parse().ok()?;
            let column: usize = parts.next()?.parse().ok()?;
            Some((line, column))
        };
        let place = at(&check_err);
        assert!(
            place.is_some_and(|(line, _)| line > 1),
            "check, case {i}: no file:line:column of the setting: {check_err}"
        );
        assert_eq!(at(&serve_err), place, "serve, case {i}: {serve_err}");
    }
}

/// `keybroker version` names the commit it was built from (the checkout's, in a clone).
#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built from this checkout (or KEYBROKER_COMMIT said otherwise on purpose).
        Some(h) if std::env::var("KEYBROKER_COMMIT").is_err() => {
            assert!(
                h.starts_with(commit) || commit.starts_with(&h[..7.min(h.len())]),
                "{text} vs {h}"
            )
        }
        _ => assert!(!commit.is_empty(), "{text}"),
    }
}

/// `keybroker health` without `--url` asks the configuration's probe: a plain main listener's
/// `/readyz` (here a listener this test holds, answering 503: exit 1, the URL named), and for a
/// TLS main listener without `ops_listen` it says what to set (exit 2) instead of asking a port
/// nobody serves. No fixed port: a `serve --dev` left running by the README's walkthrough
/// changes nothing here.
#[test]
fn health_finds_its_url_in_the_configuration() {
    use std::io::{Read, Write};
    let not_ready = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = not_ready.local_addr().unwrap();
    let answering = std::thread::spawn(move || {
        let (mut conn, _) = not_ready.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = conn.read(&mut request).unwrap();
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let (dev, config) = support::dev::copy(&addr.to_string());
    let plain = keybroker(
        &[
            "health",
            "--timeout",
            "5s",
            "--config",
            config.to_str().unwrap(),
        ],
        dev.path(),
    );
    assert!(answering.join().unwrap().starts_with("GET /readyz"));
    assert_eq!(plain.status.code(), Some(1), "{}", stderr(&plain));
    assert!(
        stdout(&plain).starts_with("http://127.0.0.1:"),
        "{}",
        stdout(&plain)
    );
    assert!(stdout(&plain).contains("/readyz"), "{}", stdout(&plain));
    let tls = keybroker(
        &["health", "--config", "examples/tls/keybroker.toml"],
        &repo(),
    );
    assert_eq!(tls.status.code(), Some(2));
    assert!(
        stderr(&tls).contains("set [server] ops_listen"),
        "{}",
        stderr(&tls)
    );
}

/// Issue 44: `policy explain --config` and `check` load the management store's definitions
/// the way `serve` does — a file store's credential names its material in the source `store`,
/// which these commands know too (it was "unknown source `store`", exit 2).
#[test]
fn policy_explain_and_check_know_a_file_stores_credentials() {
    let (dev, config) = support::dev::copy("127.0.0.1:0");
    let store = dev.path().join("store/credentials/payments");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("billing-token.toml"),
        "[[credential]]\nname = \"billing-token\"\nteam = \"payments\"\nmode = \"text\"\nread_access = \"TEAM\"\nallowed_hosts = [\"billing.payments.example\"]\nvalue = \"$SECRET_store:payments/billing-token/v1 $KEY_value\"\n",
    )
    .unwrap();
    let explain = keybroker(
        &[
            "policy",
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--consumer",
            "gateway-dev",
            "--credential",
            "billing-token",
            "--host",
            "billing.payments.example",
        ],
        dev.path(),
    );
    assert!(explain.status.success(), "{}", stderr(&explain));
    let d: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(d["allowed"], true, "{d}");
    let check = keybroker(&["check", "--config", config.to_str().unwrap()], dev.path());
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(!stderr(&check).contains("set aside"), "{}", stderr(&check));
}

/// Issue 44: `check` lists every problem in one run — a configuration with a stray key still
/// has its policy folder checked (a policy error shows in the same run), and says what it
/// could not check.
#[test]
fn check_lists_a_config_error_and_a_policy_error_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    std::fs::write(
        dir.path().join("p/p.toml"),
        "[[team]]\nslug = \"a\"\n[[consumer]]\nname = \"c\"\nteam = \"nope\"\ntoken_sha256 = \"00\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("kb.toml");
    std::fs::write(&cfg, "policies = \"p\"\nstray = 1\n").unwrap();
    let out = keybroker(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("unknown key `stray`"), "{err}");
    assert!(err.contains("unknown team `nope`"), "{err}");
    assert!(err.contains("not checked"), "{err}");
}
