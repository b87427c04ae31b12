//! Connections as an attacker holds them (docs/THREATS.md row 26), against the real `serve`
//! binary on plain loopback HTTP: silent connections past the limits do not stop other
//! clients, an anonymous caller's body is never waited for, and an answer nobody reads is
//! dropped after `write_timeout`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TOKEN: &str = "conn-token";
const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
    addr: SocketAddr,
    /// The ops listener, when one was asked for.
    ops: Option<SocketAddr>,
}

fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A connection to `to` from 127.0.0.`from`.
async fn connect(from: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `request` and reads the answer; `None` when the server closed the connection
/// without a byte of answer (refused), within the deadline.
async fn exchange(mut s: TcpStream, request: &[u8]) -> Option<String> {
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    let _ = read.expect("an answer or a close within the deadline");
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// A keep-alive connection from 127.0.0.`from` whose `/healthz` was answered, kept open.
async fn answered_and_held(from: u8, to: SocketAddr) -> TcpStream {
    let mut s = connect(from, to).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        assert!(
            n > 0,
            "the connection was closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    s
}

async fn healthz(from: u8, to: SocketAddr) -> Option<String> {
    let s = connect(from, to).await;
    exchange(
        s,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
}

async fn start(limits: &str) -> Server {
    start_with("", limits).await
}

/// A server with `server` added to its `[server]` section.
async fn start_with(server: &str, limits: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets/app")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    let big = serde_json::json!({ "v": "x".repeat(1_000_000) }).to_string();
    std::fs::write(root.join("secrets/app/big.json"), big).unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"gw\"\nteam = \"t\"\ntoken_sha256 = \"{}\"\n[[grant]]\nteam = \"t\"\nsource = \"files\"\npaths = [\"app/*\"]\nallowed_hosts = [\"api.conn.example\"]\n",
            sha(TOKEN)
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\ndefault_source = \"files\"\n[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n[limits]\n{limits}\n"
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["serve", "--config", "kb.toml", "--ready-file", "ready.json"])
        .current_dir(root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (addr, ops): (SocketAddr, Option<SocketAddr>) = loop {
        if let Ok(text) = std::fs::read_to_string(root.join("ready.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ops = v["ops_listen"].as_str().map(|a| a.parse().unwrap());
            break (v["listen"].as_str().unwrap().parse().unwrap(), ops);
        }
        assert!(started.elapsed() < DEADLINE, "keybroker did not bind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            let answer = exchange(
                s,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
                break;
            }
        }
        assert!(started.elapsed() < DEADLINE, "keybroker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        _dir: dir,
        _child: child,
        addr,
        ops,
    }
}

/// Silent connections up to each limit: the next one from the same address is closed at
/// once, other addresses are still served; past the total, everyone's new connections are
/// closed until the silent ones go.
#[tokio::test]
async fn threat_26_silent_connections_past_the_limits_do_not_stop_others() {
    let s = start("max_connections = 12\nmax_connections_per_ip = 8").await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect(1, s.addr).await);
    }
    // The server accepts in order: once a request from .2 is answered, all 8 are admitted.
    // That connection stays open (keep-alive), so its slot is counted for certain — a closed
    // one might still hold it for a moment after its answer.
    silent.push(answered_and_held(2, s.addr).await);
    assert_eq!(
        healthz(1, s.addr).await,
        None,
        "the 9th from 127.0.0.1 is closed"
    );
    for _ in 0..3 {
        silent.push(connect(3, s.addr).await);
    }
    // 12 open: a 13th, from anywhere, is closed.
    assert_eq!(healthz(4, s.addr).await, None);
    drop(silent);
    served_within_deadline(4, s.addr, "slots came back when the connections closed").await;
}

/// The limits count the process's connections, not each listener's: an address holding its
/// share on the main listener cannot open more on the ops listener (one gate for all doors;
/// the total is counted by the same gate). Only 127.0.0.1 holds connections, and only silent
/// ones, so no answered request's slot can still be in use when the refusal is checked.
#[tokio::test]
async fn threat_26_the_limits_count_every_listener_together() {
    let s = start_with("ops_listen = \"127.0.0.1:0\"", "max_connections_per_ip = 2").await;
    let ops = s.ops.expect("the ready file names the ops listener");
    let answer = healthz(9, ops).await.expect("the ops listener serves");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let silent = vec![connect(1, s.addr).await, connect(1, s.addr).await];
    // The main listener accepts in order: once another address is answered there, both of
    // 127.0.0.1's connections are admitted.
    let _held = answered_and_held(2, s.addr).await;
    assert_eq!(
        healthz(1, ops).await,
        None,
        "127.0.0.1 holds its 2 on the main listener: the ops listener refuses its 3rd"
    );
    assert!(
        healthz(3, ops).await.is_some(),
        "other addresses are served"
    );
    drop(silent);
    served_within_deadline(1, ops, "the slots came back").await;
}

/// Polls `/healthz` from 127.0.0.`from` until it is answered 200, failing at the deadline.
async fn served_within_deadline(from: u8, to: SocketAddr, what: &str) {
    let started = Instant::now();
    loop {
        if healthz(from, to)
            .await
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An anonymous caller announcing a large body gets its 401 from the headers alone: the
/// server neither waits for nor buffers the body.
#[tokio::test]
async fn threat_26_bodies_are_not_read_before_authentication() {
    let s = start("").await;
    let c = connect(1, s.addr).await;
    let answer = exchange(
        c,
        b"POST /v1/resolve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n",
    )
    .await
    .expect("an answer before the body");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// A client that asks for a 16 MB answer and never reads it holds its connection only for
/// `write_timeout`: with one connection allowed per address, the next one from that
/// address is served once the unread answer is dropped.
#[tokio::test]
async fn threat_26_unread_answers_are_dropped_after_write_timeout() {
    let s =
        start("max_connections_per_ip = 1\nwrite_timeout = \"1s\"\nmax_answer_bytes = \"64MiB\"")
            .await;
    let doc: String = (0..16).map(|_| "$SECRET_app/big $KEY_v ").collect();
    let body = serde_json::json!({"document": doc, "format": "text", "host": "api.conn.example"})
        .to_string();
    let mut greedy = connect(1, s.addr).await;
    let request = format!(
        "POST /v1/resolve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    greedy.write_all(request.as_bytes()).await.unwrap();
    // Never read from `greedy`: its answer fills the socket buffers and stalls.
    served_within_deadline(
        1,
        s.addr,
        "the unread answer still holds the address's only connection",
    )
    .await;
    drop(greedy);
}
