//! Tenant isolation against real OpenBao (THREATS rows 20, 23, 24, 28): one team sending the
//! worst references it can does not take a source away from another team, does not flood
//! the backend, and does not make keybroker mint Vault tokens.

mod support {
    pub mod openbao;
    pub mod ports;
    pub mod proxy;
}

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sha2::Digest;
use tower::ServiceExt;

use keybroker::testing::api::{AppState, router};
use keybroker::testing::broker::Broker;
use keybroker::testing::config::Config;
use keybroker::testing::source::{ReadRequest, SecretSource, SourceError, VaultEnv, VaultSource};
use support::openbao::{OpenBao, ROOT_TOKEN};
use support::proxy::{Seen, counting_proxy};

const ATTACKER: &str = "fraud-token";
const VICTIM: &str = "payments-token";

fn sha(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Two teams over one file source and one Vault source (OpenBao through a counting proxy):
/// `fraud` may read everything under `fraud/` (and the demo secrets), `payments` only
/// `payments/*`.
struct Setup {
    _dir: tempfile::TempDir,
    app: axum::Router,
    seen: Arc<Seen>,
    _bao: OpenBao,
}

async fn setup(extra: &str) -> Setup {
    let bao = OpenBao::start();
    let upstream = bao.addr.trim_start_matches("http://").to_owned();
    let (proxy, seen) = counting_proxy(upstream, b"GET /v1/secret/data/").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["secrets/payments", "secrets/fraud", "policies"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("secrets/payments/k.json"),
        r#"{"v":"payments-value"}"#,
    )
    .unwrap();
    std::fs::write(root.join("secrets/fraud/raw"), "a plain file").unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "payments"
[[team]]
slug = "fraud"
[[consumer]]
name = "fraud-gw"
team = "fraud"
token_sha256 = "{}"
[[consumer]]
name = "payments-gw"
team = "payments"
token_sha256 = "{}"
[[grant]]
team = "fraud"
source = "files"
paths = ["fraud/**"]
allowed_hosts = ["*.tenants.example"]
[[grant]]
team = "fraud"
source = "vault"
paths = ["fraud/**", "demo/**", "payments/**"]
allowed_hosts = ["*.tenants.example"]
[[grant]]
team = "payments"
source = "files"
paths = ["payments/*"]
allowed_hosts = ["*.tenants.example"]
[[grant]]
team = "payments"
source = "vault"
paths = ["payments/*", "demo/*"]
allowed_hosts = ["*.tenants.example"]
"#,
            sha(ATTACKER),
            sha(VICTIM)
        ),
    )
    .unwrap();
    let text = format!(
        r#"
policies = "policies"
[[source]]
name = "files"
kind = "file"
path = "secrets"
[[source]]
name = "vault"
kind = "vault"
mount = "secret"
kv_version = 2
timeout = "5s"
{extra}
"#
    );
    let cfg = Config::parse(&text, &root.join("kb.toml")).unwrap();
    let env = VaultEnv {
        addr: Some(proxy),
        token: Some(keybroker::testing::secret::secret_string(ROOT_TOKEN)),
        ..VaultEnv::default()
    };
    let broker = Broker::from_config_with_env(&cfg, &env).unwrap();
    let app = router(Arc::new(AppState::new(Arc::new(broker))));
    Setup {
        _dir: dir,
        app,
        seen,
        _bao: bao,
    }
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn resolve(app: &axum::Router, token: &str, document: Value) -> (StatusCode, Value) {
    let body = json!({"document": document, "host": "gw.tenants.example"});
    let req = Request::post("/v1/resolve")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(app, req).await
}

/// A JSON document of `n` distinct references `$SECRET_vault:fraud/s<i> $KEY_v`.
fn many_references(n: usize) -> Value {
    let map: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            (
                format!("k{i}"),
                json!(format!("$SECRET_vault:fraud/s{i} $KEY_v")),
            )
        })
        .collect();
    Value::Object(map)
}

/// Whether `/readyz` reports the `vault` source available (its circuit closed).
async fn vault_available(app: &axum::Router) -> bool {
    let (_, v) = call(app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    let sources = v["sources"]
        .as_array()
        .expect("sources in the readiness body");
    sources
        .iter()
        .find(|s| s["name"] == "vault")
        .and_then(|s| s["available"].as_bool())
        .expect("the vault source is listed")
}

/// THREATS row 20: references whose failure the caller causes — a 300-byte segment, a path
/// through a file, a 70 KB name, a version OpenBao answers 400 to — are the caller's
/// `invalid_reference`. Sent over and over, they open no circuit breaker: the other team's
/// reads of the same sources keep answering 200 and `/readyz` keeps the source available. OpenBao never sees
/// the names no backend could take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_20_one_tenant_cannot_open_the_shared_breaker() {
    let s = setup("").await;
    let long = "a".repeat(300);
    let huge = "b".repeat(70_000);
    let worst = json!({
        "long_file": format!("$SECRET_files:fraud/{long} $KEY_v"),
        "through_a_file": "$SECRET_files:fraud/raw/x $KEY_v",
        "long_vault": format!("$SECRET_vault:fraud/{long} $KEY_v"),
        "huge_vault": format!("$SECRET_vault:fraud/{huge} $KEY_v"),
        "vault_400": "$SECRET_vault:demo/db@18446744073709551615 $KEY_username",
    });
    for _ in 0..8 {
        let (status, v) = resolve(&s.app, ATTACKER, worst.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let codes: Vec<&str> = v["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["invalid_reference"; 5], "{v}");
    }
    assert_eq!(
        s.seen.matches(),
        8,
        "only the 400 reached OpenBao, never a long name"
    );
    let (status, v) = resolve(
        &s.app,
        VICTIM,
        json!({"f": "$SECRET_files:payments/k $KEY_v", "v": "$SECRET_vault:demo/db $KEY_username"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["document"]["f"], "payments-value");
    assert_eq!(v["document"]["v"], "app");
    assert!(vault_available(&s.app).await);
}

/// THREATS row 23: 2,000 distinct references are refused before any read; within the limit,
/// the reads in flight to one source never exceed `source_concurrency` (here 4), whatever one
/// request asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_23_fan_out_is_bounded() {
    let s = setup("[limits]\nsource_concurrency = 4\n").await;
    let many = many_references(2000);
    let (status, v) = resolve(&s.app, ATTACKER, many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "too_many_references");
    assert_eq!(s.seen.matches(), 0, "refused before any read");

    let some = many_references(300);
    let (status, v) = resolve(&s.app, ATTACKER, some).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"][0]["code"], "not_found");
    assert_eq!(s.seen.matches(), 300, "each distinct secret read once");
    // The proxy sees each read from its request line to the first byte of its answer.
    assert!(
        s.seen.max_in_flight() <= 4,
        "{} reads in flight to OpenBao at once",
        s.seen.max_in_flight()
    );
    assert!(
        s.seen.max_in_flight() >= 2,
        "the reads did run concurrently"
    );
}

/// THREATS row 23: against a rate-limited OpenBao (a real rate-limit quota, answering 429),
/// a 429 is not retried: one request of 60 references makes at most 60 reads, and the
/// source's breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_23_a_rate_limited_backend_is_not_hammered() {
    let s = setup("").await;
    s._bao.cli(&[
        "write",
        "sys/quotas/rate-limit/kb",
        "rate=5",
        "interval=10s",
        "path=secret/",
    ]);
    let refs = many_references(60);
    let (status, v) = resolve(&s.app, ATTACKER, refs).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        s.seen.matches() <= 60,
        "{} reads for 60 references: 429s were retried",
        s.seen.matches()
    );
    assert!(
        vault_available(&s.app).await,
        "a rate limit is not an outage"
    );
}

/// THREATS row 28: a hot key just past its (2 s) TTL and 1,000 concurrent requests → one OpenBao
/// read (the refresh is single-flight like a miss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_28_a_hot_key_past_its_ttl_is_read_once() {
    // 5 s: the 1,000 requests after the refresh must all land within one TTL, also on a slow
    // debug build sharing two cores with the rest of the suite.
    let s = setup("[cache]\nttl = \"5s\"\n").await;
    let doc = json!({"v": "$SECRET_vault:demo/db $KEY_username"});
    let (status, _) = resolve(&s.app, VICTIM, doc.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.seen.matches(), 1);
    // Letting the TTL pass is the point of the test, not a wait for a condition.
    tokio::time::sleep(std::time::Duration::from_millis(5100)).await;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (app, doc) = (s.app.clone(), doc.clone());
        tasks.push(tokio::spawn(
            async move { resolve(&app, VICTIM, doc).await },
        ));
    }
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["document"]["v"], "app");
    }
    assert_eq!(s.seen.matches(), 2, "one refresh for 1,000 requests");
}

/// THREATS row 24: reads Vault's policy denies do not mint tokens. An AppRole source whose
/// policy does not cover the mount reads 100 times: `lookup-self` shows the token is fine,
/// so there is no new login (before: one new, never revoked, token per denied read). When the
/// token really is revoked, the next read logs in again.
#[tokio::test]
async fn threat_24_denied_reads_do_not_mint_vault_tokens() {
    let bao = OpenBao::start();
    bao.cli(&["secrets", "enable", "-path=locked", "-version=2", "kv"]);
    bao.cli(&["kv", "put", "-mount=locked", "x", "v=locked-value"]);
    let dir = bao.approle_dir.path();
    let toml = format!(
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"locked\"\nkv_version = 2\nauth = {{ method = \"approle\", role_id_file = {:?}, secret_id_file = {:?} }}\n",
        dir.join("role_id"),
        dir.join("secret_id")
    );
    let cfg = Config::parse(&toml, &dir.join("kb.toml")).unwrap();
    let keybroker::testing::config::SourceConfig::Vault(v) = &cfg.sources[0] else {
        panic!()
    };
    let env = VaultEnv {
        addr: Some(bao.addr.clone()),
        ..VaultEnv::default()
    };
    let src = VaultSource::new(v, &env).unwrap();
    let tokens = || {
        let out = bao.cli(&["list", "-format=json", "auth/token/accessors"]);
        serde_json::from_str::<Vec<String>>(&out).unwrap().len()
    };
    let before = tokens();
    let req = ReadRequest {
        path: keybroker::testing::reference::SecretPath::from_segments(["x"]).unwrap(),
        version: None,
    };
    for _ in 0..100 {
        assert_eq!(src.read(&req).await.unwrap_err(), SourceError::Denied);
    }
    assert!(
        tokens() <= before + 1,
        "{} tokens minted by 100 denied reads",
        tokens() - before
    );
    // A revoked token is replaced: the denial after it comes from Vault's policy again, with
    // exactly one more login.
    bao.cli(&["token", "revoke", "-mode=path", "auth/approle/login"]);
    let after_revoke = tokens();
    assert_eq!(src.read(&req).await.unwrap_err(), SourceError::Denied);
    assert_eq!(tokens(), after_revoke + 1, "one new login after revocation");
}

/// THREATS row 45: a fair share of a source under a rate-limit quota. One team resolves
/// 1,000 fresh references again and again against an OpenBao that allows 200 reads a second
/// (a real rate-limit quota); another team reads one fresh secret every 350 ms for 10 s. Its
/// reads go out when the source's quiet ends, ahead of the other team's queue, instead of
/// being refused: at most two of its 28 reads are refused (503). (The 350 ms between a
/// bystander's reads is the load being modelled, not a wait for a condition.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_45_a_team_keeps_its_share_of_a_rate_limited_source() {
    let s = setup("").await;
    s._bao.cli(&[
        "write",
        "sys/quotas/rate-limit/kb",
        "rate=200",
        "interval=1s",
        "path=secret/",
    ]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (app, stop) = (s.app.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let map: serde_json::Map<String, Value> = (0..1000)
                    .map(|i| {
                        (
                            format!("k{i}"),
                            json!(format!("$SECRET_vault:fraud/r{round}/s{i} $KEY_v")),
                        )
                    })
                    .collect();
                let _ = resolve(&app, ATTACKER, Value::Object(map)).await;
                round += 1;
            }
            round
        })
    };
    // Let the first burst drain the quota.
    while s.seen.matches() < 300 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    for i in 0..28 {
        let doc = json!({ "v": format!("$SECRET_vault:payments/bystander{i} $KEY_v") });
        let (status, v) = resolve(&s.app, VICTIM, doc).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        } else {
            // Not found in OpenBao: the read was made and answered.
            assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(v["error"]["details"][0]["code"], "not_found", "{v}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = attacker.await.unwrap();
    assert!(rounds >= 1, "the attacking team kept sending");
    assert!(
        refused <= 2,
        "{refused} of 28 reads of the bystander team refused"
    );
}
