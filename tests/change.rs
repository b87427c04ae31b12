//! Change and expiry (docs/DESIGN.md §15) against a real OpenBao and the real `keybroker serve`:
//! ETags, 304, blocking queries woken by refresh-ahead, many waiters without threads, ETags
//! shared by replicas, the expiry sweep and its series and events, and readiness.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::openbao::OpenBao;
use support::pki::Ca;
use support::ports::closed_port;
use support::server::{Running, folder, token_sha256};

const GW: &str = "gw-token";
const OPS: &str = "ops-token";
const HOST: &str = "api.partner.example";

/// A client certificate and key for the credential, stored as a new KV version.
fn put_certificate(bao: &OpenBao, ca: &Ca, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.client(dir.path(), name, &format!("{name}.partner.example"));
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/partner",
        &format!("cert={}", issued.cert_pem),
        &format!("key={}", issued.key_pem),
    ]);
    issued.cert_pem
}

/// The policy: a gateway consumer (token), an admin, a pinned consumer whose pin expires, an
/// issuer-ACL consumer, the mtls credential `partner-api` and (when `second`) `other-api`.
fn write_policy(root: &Path, clients_ca: &Path, second: bool) {
    let other = if second {
        r#"
[[credential]]
name = "other-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_vault:tls/partner $KEY_cert"
client_private_key = "$SECRET_vault:tls/partner $KEY_key"
"#
    } else {
        ""
    };
    let policy = format!(
        r#"
[[team]]
slug = "payments"

[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{gw}"

[[consumer]]
name = "ops"
team = "payments"
token_sha256 = "{ops}"
admin = true

[[consumer]]
name = "pinned"
team = "payments"
cert_sha256 = [{{ fingerprint = "{pin}", not_after = "2031-06-30T00:00:00Z" }}]

[[consumer]]
name = "workers"
team = "payments"
issuer_ca = {ca:?}
subject = "CN=worker-*"

[[grant]]
team = "payments"
source = "vault"
paths = ["**"]
allowed_hosts = ["api.partner.example"]

[[credential]]
name = "partner-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_vault:tls/partner $KEY_cert"
client_private_key = "$SECRET_vault:tls/partner $KEY_key"
{other}"#,
        gw = token_sha256(GW),
        ops = token_sha256(OPS),
        pin = "ab".repeat(32),
        ca = clients_ca,
    );
    std::fs::write(root.join("policies/p.toml"), policy).unwrap();
}

struct Server {
    dir: tempfile::TempDir,
    ca: Ca,
    running: Running,
}

/// `serve` in a new folder against `vault` (an address), with `extra` TOML appended.
async fn serve(vault: &str, extra: &str) -> Server {
    serve_with(vault, "", extra).await
}

/// As [`serve`], with `server_extra` inside `[server]`.
async fn serve_with_server_extra(vault: &str, server_extra: &str) -> Server {
    serve_with(vault, server_extra, "").await
}

async fn serve_with(vault: &str, server_extra: &str, extra: &str) -> Server {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let clients = Ca::new("workers CA");
    clients.write(&root.join("clients-ca.pem"));
    write_policy(root, &root.join("clients-ca.pem"), true);
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n{server_extra}[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{vault}\"\n{extra}\n"
        ),
    )
    .unwrap();
    let running = Running::start(root, &ca.pem, 0, "info").await;
    Server { dir, ca, running }
}

impl Server {
    fn material(&self, name: &str) -> reqwest::RequestBuilder {
        self.running
            .client
            .post(
                self.running
                    .url(&format!("/v1/credentials/{name}/material")),
            )
            .bearer_auth(GW)
            .json(&json!({ "host": HOST }))
    }

    async fn metrics(&self) -> String {
        // On the consumer-facing listener, metrics are for admins.
        let r = self.running.client.get(self.running.url("/metrics"));
        r.bearer_auth(OPS)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn readyz(&self) -> (u16, Value) {
        let r = self.running.client.get(self.running.url("/readyz"));
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

fn etag(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Polls `check` until it is true, with a deadline.
async fn until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sees_a_new_version_within_seconds_and_304_means_unchanged() {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    let first_cert = put_certificate(&bao, &partner, "v1");
    let s = serve(&bao.addr, "[cache]\nttl = \"1s\"\n").await;

    let resp = s.material("partner-api").send().await.unwrap();
    let status = resp.status();
    let e1 = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let e1 = e1.expect("an ETag");
    assert!(e1.starts_with("\"kb1-") && e1.len() == 28, "{e1}");
    assert_eq!(body["certificate"], first_cert.as_str());

    // The same content: 304, no body, the same ETag.
    let resp = s
        .material("partner-api")
        .header("if-none-match", &e1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(etag(&resp), e1);
    assert!(resp.bytes().await.unwrap().is_empty(), "304 has no body");

    // A waiter holding the current ETag, then a new version.
    let waiter = {
        let req = s
            .running
            .client
            .post(
                s.running
                    .url("/v1/credentials/partner-api/material?wait=15s"),
            )
            .bearer_auth(GW)
            .header("if-none-match", &e1)
            .json(&json!({ "host": HOST }));
        tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            (Instant::now(), resp)
        })
    };
    // Whether the waiter parked before the write or not, it is answered 200 only with the
    // new content (a wait that sees no change ends in 304, below).
    let second_cert = put_certificate(&bao, &partner, "v2");
    let written = Instant::now();
    let (answered, resp) = waiter.await.unwrap();
    let took = answered - written;
    assert_eq!(resp.status(), 200);
    assert_ne!(etag(&resp), e1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["certificate"], second_cert.as_str());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // A wait that sees no change ends in 304 with the current ETag.
    let e2 = etag(&s.material("partner-api").send().await.unwrap());
    let resp = s
        .running
        .client
        .post(
            s.running
                .url("/v1/credentials/partner-api/material?wait=1s"),
        )
        .bearer_auth(GW)
        .header("if-none-match", &e2)
        .json(&json!({ "host": HOST }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    // A wait beyond 300 s, or an unknown parameter, is the caller's error.
    for q in ["wait=301s", "wait=soon", "x=1"] {
        let resp = s
            .running
            .client
            .post(
                s.running
                    .url(&format!("/v1/credentials/partner-api/material?{q}")),
            )
            .bearer_auth(GW)
            .header("if-none-match", &e2)
            .json(&json!({ "host": HOST }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{q}");
    }
}

/// The threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Open file descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_are_held_without_a_thread_each_and_all_woken() {
    // The test process holds 1,000 client connections: raise its soft open-files limit.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let s = serve(
        &bao.addr,
        "[cache]\nttl = \"1s\"\n[limits]\nmax_connections = 4096\nmax_connections_per_ip = 4096\nmax_waiting_per_consumer = 1000\n[audit]\npath = \"audit.log\"\nfsync = \"never\"\n",
    )
    .await;
    let resp = s.material("partner-api").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", s.stderr());
    let e1 = etag(&resp);
    let pid = s.running.pid();
    let before = fds(pid);

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca.pem.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut waiters = Vec::new();
    for _ in 0..1000 {
        let req = client
            .post(
                s.running
                    .url("/v1/credentials/partner-api/material?wait=50s"),
            )
            .bearer_auth(GW)
            .header("if-none-match", &e1)
            .json(&json!({ "host": HOST }));
        waiters.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    // `before` counts descriptors that may close meanwhile (the first client's pooled
    // connection, an idle connection to OpenBao): allow for a few, not for a thread per waiter.
    let end = Instant::now() + Duration::from_secs(40);
    while fds(pid) + 16 < before + 1000 {
        let finished = waiters.iter().filter(|w| w.is_finished()).count();
        assert!(
            Instant::now() < end && finished == 0,
            "1,000 connections held: {} descriptors over {before}, {finished} waiters ended",
            fds(pid).saturating_sub(before)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = threads(pid);
    assert!(held < 40, "{held} threads for 1,000 waiters");
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "all still waiting"
    );

    // One change wakes them all.
    put_certificate(&bao, &partner, "v2");
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_agree_across_replicas_sharing_a_key_and_differ_without() {
    let bao = OpenBao::start();
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "a shared ETag key of enough bytes\n").unwrap();
    let shared = format!("etag_key_file = {:?}\n", key.path());
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let a = serve_with_server_extra(&bao.addr, &shared).await;
    let b = serve_with_server_extra(&bao.addr, &shared).await;
    let c = serve_with_server_extra(&bao.addr, "").await;
    let tag = |s: &Server| {
        let req = s.material("partner-api");
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            etag(&resp)
        }
    };
    let (ta, tb, tc) = (tag(&a).await, tag(&b).await, tag(&c).await);
    assert_eq!(ta, tb, "replicas with one key tag the same content alike");
    assert_ne!(ta, tc, "without the key, each process has its own");
    // A key file too short to be a key is refused at start.
    std::fs::write(key.path(), "short").unwrap();
    let (dir, _) = folder("unused");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("kb.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{shared}[[source]]\nname = \"f\"\nkind = \"file\"\npath = \"secrets\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["check", "--config", "kb.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kb.toml:3:1") && err.contains("at least 16 bytes"),
        "{err}"
    );
}

fn has_series(metrics: &str, kind: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with(&format!(
            "keybroker_certificate_expiry_timestamp_seconds{{kind=\"{kind}\",name=\"{name}\"}} "
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_sweep_knows_every_certificate_from_the_start() {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let s = serve(
        &bao.addr,
        "[expiry]\ninterval = \"1h\"\nwarn_before = \"1000000d\"\n[audit]\npath = \"audit.log\"\n",
    )
    .await;
    // Nothing was requested: the sweep at start found them.
    until("the start-up sweep", Duration::from_secs(30), || async {
        has_series(&s.metrics().await, "credential", "payments/other-api")
    })
    .await;
    let metrics = s.metrics().await;
    for (kind, name) in [
        ("credential", "payments/partner-api"),
        ("consumer_pin", &format!("pinned/{}", "ab".repeat(8))),
        ("issuer_ca", "workers"),
        ("server", "server"),
    ] {
        assert!(
            has_series(&metrics, kind, name),
            "{kind} {name}:\n{metrics}"
        );
    }
    let pin_line = metrics
        .lines()
        .find(|l| l.contains("kind=\"consumer_pin\""))
        .unwrap();
    let pin_at = humantime::parse_rfc3339("2031-06-30T00:00:00Z")
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        pin_line.ends_with(&format!(" {pin_at}")),
        "the pin's not_after: {pin_line}"
    );
    // Inside warn_before (rcgen certificates run to 4096, hence the long warn_before): one
    // event per certificate, not one per sweep.
    let events = |audit: &str| {
        audit
            .lines()
            .filter(|l| {
                l.contains("\"certificate.expiring\"") && l.contains("payments/partner-api")
            })
            .count()
    };
    until("the start-up events", Duration::from_secs(30), || async {
        events(&s.audit()) >= 1
    })
    .await;
    assert_eq!(events(&s.audit()), 1, "{}", s.audit());

    // The credential leaves the policy: its series goes at the reload (which sweeps again).
    write_policy(s.dir.path(), &s.dir.path().join("clients-ca.pem"), false);
    let resp = s
        .running
        .client
        .post(s.running.url("/v1/admin/reload"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = s.metrics().await;
    assert!(
        !has_series(&metrics, "credential", "payments/other-api"),
        "{metrics}"
    );
    assert!(has_series(&metrics, "credential", "payments/partner-api"));
    assert_eq!(
        events(&s.audit()),
        1,
        "no second event without a change of state"
    );

    // The metadata shows not_after.
    let info: Value = s
        .running
        .client
        .get(s.running.url("/v1/credentials/partner-api"))
        .bearer_auth(GW)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        info["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_about_keybroker_not_about_a_source_that_left() {
    // Held bound and not listening until OpenBao takes it: refused, as a source that left.
    let (held, port) = closed_port();
    let listen = format!("127.0.0.1:{port}");
    let s = serve(&format!("http://{listen}"), "").await;
    // OpenBao not there yet: not ready, and the body says which source.
    let (status, body) = s.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["started"], false);
    assert_eq!(body["sources"][0]["answered"], false);

    drop(held);
    let mut bao = OpenBao::start_at(&listen, None);
    until(
        "ready once OpenBao answered",
        Duration::from_secs(60),
        || async { s.readyz().await.0 == 200 },
    )
    .await;

    // OpenBao goes away: reads fail until the breaker opens; readiness stays 200 and the body
    // marks the source.
    bao.stop();
    let mut n = 0;
    until("the source marked unavailable", Duration::from_secs(90), || {
        n += 1;
        let req = s
            .running
            .client
            .post(s.running.url("/v1/resolve"))
            .bearer_auth(GW)
            .json(&json!({ "document": { "v": format!("$SECRET_vault:nothing/{n} $KEY_v") }, "host": HOST }));
        let s = &s;
        async move {
            let _ = req.send().await;
            let (_, body) = s.readyz().await;
            body["sources"][0]["available"] == false
        }
    })
    .await;
    let (status, body) = s.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(
        s.metrics()
            .await
            .contains("keybroker_source_available{source=\"vault\"} 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_the_audit_trail_cannot_be_written() {
    let bao = OpenBao::start();
    // Every write to /dev/full fails (ENOSPC), even for root.
    let s = serve(&bao.addr, "[audit]\npath = \"/dev/full\"\n").await;
    let (status, body) = s.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["audit_writable"], false, "{body}");
    assert_eq!(body["ready"], false);
    // A request whose audit line cannot be written is refused, and counted.
    let refused = s.material("partner-api").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    let failures = gauge(&s.metrics().await, "keybroker_audit_write_failures_total");
    assert!(failures >= 1, "audit failures {failures}");
}

/// The value of the unlabelled (or exactly labelled) series `name` in an exposition.
fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .trim()
        .parse::<f64>()
        .unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_build_request_durations_cache_size_and_vault_token_ttl() {
    let bao = OpenBao::start();
    let dir = bao.approle_dir.path();
    let auth = format!(
        "auth = {{ method = \"approle\", role_id_file = {:?}, secret_id_file = {:?} }}\n",
        dir.join("role_id"),
        dir.join("secret_id")
    );
    let s = serve(&bao.addr, &auth).await;
    until("ready", Duration::from_secs(30), || async {
        s.readyz().await.0 == 200
    })
    .await;
    let answer = s
        .running
        .client
        .post(s.running.url("/v1/resolve"))
        .bearer_auth(GW)
        .json(&json!({ "document": { "u": "$SECRET_vault:demo/db $KEY_username" }, "host": HOST }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let m = s.metrics().await;
    assert!(
        m.contains(&format!(
            "keybroker_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    for series in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(m.contains(series), "{series}: {m}");
    }
    assert_eq!(
        gauge(
            &m,
            "keybroker_request_duration_seconds_count{door=\"api\",route=\"/v1/resolve\"}"
        ),
        1
    );
    assert!(gauge(&m, "keybroker_cache_entries") >= 1, "{m}");
    assert!(gauge(&m, "keybroker_cache_bytes") > 0, "{m}");
    assert_eq!(gauge(&m, "keybroker_stale_answers_total"), 0);
    assert_eq!(gauge(&m, "keybroker_audit_write_failures_total"), 0);
    // The AppRole's tokens live 1 h (scripts/seed-openbao.sh).
    let ttl = gauge(&m, "keybroker_vault_token_ttl_seconds{source=\"vault\"}");
    assert!((3000..=3600).contains(&ttl), "token ttl {ttl}");
}

/// THREATS row 43: one consumer holds at most `max_waiting_per_consumer` blocking queries; the
/// next is 429 `too_many_waiting` at once (not held), and a slot comes back when a wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_43_a_consumer_holds_at_most_its_share_of_waiters() {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let s = serve(&bao.addr, "[limits]\nmax_waiting_per_consumer = 1\n").await;
    let resp = s.material("partner-api").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", s.stderr());
    let e1 = etag(&resp);
    let wait = |secs: u32| {
        let req = s
            .running
            .client
            .post(s.running.url(&format!(
                "/v1/credentials/partner-api/material?wait={secs}s"
            )))
            .bearer_auth(GW)
            .header("if-none-match", &e1)
            .json(&json!({ "host": HOST }));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    // `held` takes the one slot; a probe (which frees its slot after a second when
    // admitted) is refused while `held` waits. Which of the two arrives first is up to the
    // server, so a refused `held` is sent again.
    let mut held = wait(4);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = wait(1).await.unwrap().unwrap();
        if status == 429 {
            break;
        }
        assert_eq!(status, 304);
        if held.is_finished() {
            assert_eq!(held.await.unwrap().unwrap(), 429);
            held = wait(4);
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
    }
    // The held wait ends (304); its slot is free again.
    assert_eq!(held.await.unwrap().unwrap(), 304);
    assert_eq!(
        wait(1).await.unwrap().unwrap(),
        304,
        "a freed slot is used again"
    );
}

/// THREATS row 44: a held wait re-reads every half TTL, but writes an audit line only when
/// its decision or answer changes — not one per re-read with nothing changing — and the
/// changed answer's line is written before it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_44_a_held_wait_writes_audit_lines_only_on_change() {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let s = serve(
        &bao.addr,
        "[cache]\nttl = \"1s\"\n[audit]\npath = \"audit.log\"\nfsync = \"never\"\n",
    )
    .await;
    let lines = |s: &Server| {
        s.audit()
            .lines()
            .filter(|l| l.contains("\"credential.material\""))
            .count()
    };
    let resp = s.material("partner-api").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", s.stderr());
    let e1 = etag(&resp);
    assert_eq!(lines(&s), 1);
    let wait = |secs: u32, etag: &str| {
        s.running
            .client
            .post(s.running.url(&format!(
                "/v1/credentials/partner-api/material?wait={secs}s"
            )))
            .bearer_auth(GW)
            .header("if-none-match", etag)
            .json(&json!({ "host": HOST }))
            .send()
    };
    // Three seconds held, re-read every half second: one line, for its first read.
    let held = wait(3, &e1).await.unwrap();
    assert_eq!(held.status(), 304);
    assert_eq!(lines(&s), 2, "{}", s.audit());

    // A change during the wait: its line, then the answer.
    let waiting = tokio::spawn(wait(20, &e1));
    until("the wait's first read", Duration::from_secs(20), || async {
        lines(&s) == 3
    })
    .await;
    put_certificate(&bao, &partner, "v2");
    let changed = waiting.await.unwrap().unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(lines(&s), 4, "{}", s.audit());
}

/// A held wait is re-asked under the policy in force: when a reload rotates its consumer's
/// token (or removes the consumer), the wait ends unauthenticated at once — it does not keep
/// receiving new material under the identity it was authenticated as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_wait_ends_unauthenticated_when_a_reload_rotates_its_token() {
    let bao = OpenBao::start();
    let partner = Ca::new("partner CA");
    put_certificate(&bao, &partner, "v1");
    let s = serve(
        &bao.addr,
        "[audit]\npath = \"audit.log\"\nfsync = \"never\"\n",
    )
    .await;
    let lines = |s: &Server| {
        s.audit()
            .lines()
            .filter(|l| l.contains("\"credential.material\""))
            .count()
    };
    let first = s
        .running
        .client
        .post(s.running.url("/v1/credentials/partner-api/material"))
        .bearer_auth(GW)
        .json(&json!({ "host": HOST }))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let e1 = etag(&first);
    let waiter = {
        let req = s
            .running
            .client
            .post(
                s.running
                    .url("/v1/credentials/partner-api/material?wait=120s"),
            )
            .bearer_auth(GW)
            .header("if-none-match", &e1)
            .timeout(Duration::from_secs(150))
            .json(&json!({ "host": HOST }));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    // Once the waiter asked its first time (its audit line; it parks right after), the
    // token rotates.
    until(
        "the wait's first asking",
        Duration::from_secs(20),
        || async { lines(&s) == 2 },
    )
    .await;
    let path = s.dir.path().join("policies/p.toml");
    let rotated = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&token_sha256(GW), &token_sha256("gw-rotated-token"));
    std::fs::write(&path, rotated).unwrap();
    let resp = s
        .running
        .client
        .post(s.running.url("/v1/admin/reload"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the held wait ended at the reload")
        .unwrap();
    assert_eq!(status, 401);
}

/// OpenBao with a file audit device (declared in its configuration): the server, the log's
/// path, and the folder holding both.
fn audited_bao() -> (OpenBao, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let hcl = dir.path().join("audit.hcl");
    std::fs::write(
        &hcl,
        format!("audit \"file\" \"to-file\" {{\n  options {{\n    file_path = {log:?}\n  }}\n}}\n"),
    )
    .unwrap();
    (OpenBao::start_with_config(Some(&hcl)), log, dir)
}

/// OpenBao's audit entries of reads (not the test's writes) under `secret/data/tls/many/`, in log order: (request or
/// not, path, time).
fn sweep_reads(audit: &Path) -> Vec<(bool, String, std::time::SystemTime)> {
    let text = String::from_utf8_lossy(&std::fs::read(audit).unwrap_or_default()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let path = v["request"]["path"].as_str()?.to_owned();
            if !path.starts_with("secret/data/tls/many/") || v["request"]["operation"] != "read" {
                return None;
            }
            let time = humantime::parse_rfc3339_weak(v["time"].as_str()?).ok()?;
            Some((v["type"] == "request", path, time))
        })
        .collect()
}

/// Issue 48, the start-up sweep's pacing (docs/CONFIGURATION.md `[expiry]`): with more mtls
/// credentials than its burst, the sweep reads one credential at a time, at most 20 a second
/// past the first 100, and the replica is ready long before it has read them all. Counted
/// from OpenBao's own audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_sweep_reads_one_at_a_time_paced_and_readiness_does_not_wait_for_it() {
    const MANY: usize = 300;
    let (bao, bao_audit, _bao_dir) = audited_bao();
    let partner = Ca::new("partner CA");
    let cert_dir = tempfile::tempdir().unwrap();
    let issued = partner.client(cert_dir.path(), "many", "many.partner.example");
    let http = reqwest::Client::new();
    let body = json!({ "data": { "cert": issued.cert_pem, "key": issued.key_pem } });
    let mut policy = format!(
        "[[team]]\nslug = \"payments\"\n[[consumer]]\nname = \"ops\"\nteam = \"payments\"\ntoken_sha256 = \"{}\"\nadmin = true\n",
        token_sha256(OPS)
    );
    for i in 0..MANY {
        let put = http
            .post(format!("{}/v1/secret/data/tls/many/c{i}", bao.addr))
            .header("X-Vault-Token", support::openbao::ROOT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.status());
        policy.push_str(&format!(
            "[[credential]]\nname = \"c{i}\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"{HOST}\"]\nclient_certificate = \"$SECRET_vault:tls/many/c{i} $KEY_cert\"\nclient_private_key = \"$SECRET_vault:tls/many/c{i} $KEY_key\"\n"
        ));
    }
    let (dir, ca) = folder("unused");
    let root = dir.path();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(root.join("policies/p.toml"), policy).unwrap();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            "policies = \"policies\"\n[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[expiry]\ninterval = \"1h\"\n",
            bao.addr
        ),
    )
    .unwrap();
    let running = Running::start(root, &ca.pem, 0, "info").await;
    let s = Server { dir, ca, running };
    until("ready", Duration::from_secs(30), || async {
        s.readyz().await.0 == 200
    })
    .await;
    // Past the burst the sweep takes at least (MANY - 100) / 20 = 10 s: ready came first.
    let answered = |reads: &[(bool, String, std::time::SystemTime)]| {
        let paths = reads.iter().filter(|r| !r.0).map(|r| r.1.clone());
        paths.collect::<std::collections::BTreeSet<_>>().len()
    };
    let at_ready = sweep_reads(&bao_audit);
    let answered_at_ready = answered(&at_ready);
    assert!(
        answered_at_ready < MANY,
        "ready only after all {MANY} credentials were read"
    );

    until(
        "the sweep read every credential",
        Duration::from_secs(60),
        || async { sweep_reads(&bao_audit).iter().filter(|r| !r.0).count() >= MANY },
    )
    .await;
    let reads = sweep_reads(&bao_audit);
    // One credential at a time: never a request for a second path before the first answered.
    let mut in_flight = std::collections::BTreeSet::new();
    let mut most = 0;
    for (request, path, _) in &reads {
        if *request {
            in_flight.insert(path.clone());
        } else {
            in_flight.remove(path);
        }
        most = most.max(in_flight.len());
    }
    assert_eq!(most, 1, "credentials read at once");
    // Each credential read once, and past the first 100 at most 21 in any second (20 a second
    // and the one a late tick lets through).
    let requests: Vec<_> = reads.iter().filter(|r| r.0).collect();
    assert_eq!(requests.len(), MANY, "one read per credential");
    for w in requests[100..].windows(22) {
        let span = w[21].2.duration_since(w[0].2).unwrap_or_default();
        assert!(
            span >= Duration::from_millis(950),
            "22 reads within {span:?} past the burst"
        );
    }
}
