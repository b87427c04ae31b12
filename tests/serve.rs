//! `keybroker serve --dev` as a newcomer runs it: banner, token, a real request over a
//! socket, and a clean stop on Ctrl-C (SIGINT).

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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
    assert!(resp.contains(r#""pw":"dev-only-Zq8#w2!v""#), "{resp}");

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
