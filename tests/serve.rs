//! `keybroker serve --dev` as a newcomer runs it: banner, token, a real request over a
//! socket, and a clean stop on Ctrl-C (SIGINT).

mod support {
    pub mod dev;
    pub mod pki;
}

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[cfg(unix)]
#[test]
fn dev_server_serves_and_stops_cleanly_on_ctrl_c() {
    // The README's dev configuration, copied: its store is the copy's, not target/dev-store.
    let (dev, config) = support::dev::copy("127.0.0.1:8080");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--dev", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dev.path())
        .env_remove("KEYBROKER_CONFIG")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let mut token = None;
    let mut banner = String::new();
    while addr.is_none() || token.is_none() || !banner.contains("curl") {
        let line = rx
            .recv_timeout(DEADLINE)
            .expect("the banner within the deadline");
        banner.push_str(&line);
        banner.push('\n');
        if let Some(a) = line.strip_prefix("keybroker dev server listening on http://") {
            addr = Some(a.trim().to_owned());
        }
        if let Some(t) = line.split("dev bearer token (new on every start): ").nth(1) {
            token = Some(t.trim().to_owned());
        }
    }
    let (addr, token) = (addr.unwrap(), token.unwrap());
    assert!(
        banner.contains(&format!("Authorization: Bearer {token}")),
        "{banner}"
    );

    let health = http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = r#"{"document": {"pw": "$SECRET_demo/db $KEY_password"}}"#;
    let req = format!(
        "POST /v1/resolve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http(&addr, &req);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{resp}"
    );
    // The document comes back in its own bytes (its space after the colon included).
    assert!(resp.contains(r#"{"pw": "dev-only-Zq8#w2!v"}"#), "{resp}");

    // The README's Tines request, as Tines sends it: `team_id` 2 is the dev team payments.
    let body = r#"{"name": "tines token", "mode": "TEXT", "team_id": 2, "value": "s3cr3t"}"#;
    let req = format!(
        "POST /api/v1/user_credentials HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = http(&addr, &req);
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.contains(r#""team_id":2"#), "{resp}");
    assert!(
        dev.path()
            .join("store/credentials/payments/tines_token.toml")
            .exists()
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit: {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("keybroker stopped"), "{log}");
    assert!(
        !log.contains("dev-only-Zq8"),
        "a value reached the log: {log}"
    );
    assert!(!log.contains(&token), "the token reached the log");
}

/// examples/tls as the README runs it: make the PKI with gen-certs.sh, `check`, serve over
/// TLS, and fetch the partner material with the generated gateway certificate.
#[cfg(unix)]
#[tokio::test]
async fn the_tls_example_serves_material_to_the_gateway_certificate() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    std::fs::create_dir_all(tls.join("policies")).unwrap();
    std::fs::create_dir_all(tmp.path().join("dev/secrets/demo")).unwrap();
    for f in ["keybroker.toml", "gen-certs.sh", "policies/teams.toml"] {
        std::fs::copy(repo.join("examples/tls").join(f), tls.join(f)).unwrap();
    }
    std::fs::copy(
        repo.join("examples/dev/secrets/demo/partner-ccp.json"),
        tmp.path().join("dev/secrets/demo/partner-ccp.json"),
    )
    .unwrap();
    let made = Command::new("sh")
        .arg(tls.join("gen-certs.sh"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = tls.join("keybroker.toml");
    let check = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let ready = tempfile::tempdir().unwrap();
    let ready_file = ready.path().join("ready.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pki = tls.join("pki");
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let mut identity = read("gateway.pem");
    identity.extend(read("gateway-key.pem"));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.pem")).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    // Port 0 in, the bound port out through the ready file.
    let started = std::time::Instant::now();
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let at: std::net::SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
            break at.port();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "keybroker did not bind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(port, 0);
    let url = format!("https://localhost:{port}/v1/credentials/partner-api/material");
    let mut answer = None;
    for _ in 0..100 {
        match client
            .post(&url)
            .json(&serde_json::json!({"host": "api.partner.example"}))
            .send()
            .await
        {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let answer = answer.expect("the TLS example server answers");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    let intact: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("examples/dev/secrets/demo/partner.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        body["private_key"], intact["key"],
        "the flattened key comes back intact"
    );
    assert_eq!(body["certificate"], intact["cert"]);
    child.kill().await.unwrap();
}

/// THREATS row 31: the dev token is the policy-free operator, so `serve --dev` refuses every
/// listener off loopback — plain, and with a TLS configuration too.
#[test]
fn threat_31_dev_mode_never_listens_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    support::pki::Ca::new("dev test CA").server(root, "server");
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    let tls = root.join("kb.toml");
    std::fs::write(
        &tls,
        "[server]\nlisten = \"0.0.0.0:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let tls = tls.to_str().unwrap();
    for args in [
        vec!["serve", "--dev", "--listen", "0.0.0.0:0"],
        vec!["serve", "--dev", "--config", tls, "--listen", "0.0.0.0:0"],
        vec!["serve", "--dev", "--config", tls, "--listen", "[::]:0"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KEYBROKER_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A server that started would never exit: poll with a deadline, then fail.
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("{args:?}: serve --dev started on a non-loopback address");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("policy-free operator token"),
            "{args:?}: {stderr}"
        );
    }
}
