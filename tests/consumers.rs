//! Consumers of the policy through the API and the CLI: every reference decided per request,
//! denials that do not reveal whether a secret exists (docs/THREATS.md rows 10 and 12).

mod support {
    pub mod dev;
}

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use keybroker::testing::api::{AppState, router};
use keybroker::testing::broker::Broker;
use keybroker::testing::config::Config;
use keybroker::testing::identity::TokenDigest;

/// The token of the dev policy's consumer `gateway-dev` (team payments; grant files:demo/*
/// towards *.payments.example).
const GATEWAY: &str = "dev-gateway-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn app() -> axum::Router {
    // The router reads the copy's files for as long as the test runs: kept, not dropped.
    let (dev, path) = support::dev::copy("127.0.0.1:0");
    let _kept = dev.keep();
    let config = Config::load(&path).unwrap();
    let state = AppState::new(Arc::new(Broker::from_config(&config).unwrap()))
        .with_dev_token(TokenDigest::of("operator-token"));
    router(Arc::new(state))
}

async fn resolve(app: &axum::Router, token: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post("/v1/resolve")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_consumer_gets_what_its_grant_allows_for_its_hosts() {
    let app = app();
    let doc = serde_json::json!({"pw": "$SECRET_demo/db $KEY_password"});
    let (status, v) = resolve(
        &app,
        GATEWAY,
        serde_json::json!({"document": doc, "host": "gw1.payments.example"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["document"]["pw"], "dev-only-Zq8#w2!v");

    for host in [
        None,
        Some("evil.example"),
        Some("gw1.payments.example.evil.com"),
        Some("a.b.payments.example"),
    ] {
        let mut body = serde_json::json!({"document": doc});
        if let Some(h) = host {
            body["host"] = Value::from(h);
        }
        let (status, v) = resolve(&app, GATEWAY, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host:?}: {v}");
        assert_eq!(v["error"]["code"], "denied");
        assert!(!v.to_string().contains("dev-only-Zq8"));
    }
}

#[tokio::test]
async fn a_denial_does_not_reveal_whether_the_secret_exists() {
    let app = app();
    let mut bodies = Vec::new();
    for reference in [
        "$SECRET_other/exists-or-not $KEY_x",
        "$SECRET_files:elsewhere/db $KEY_password",
    ] {
        let body =
            serde_json::json!({"document": {"v": reference}, "host": "gw1.payments.example"});
        let (status, v) = resolve(&app, GATEWAY, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        bodies.push(v["error"]["details"][0]["code"].clone());
    }
    assert_eq!(bodies[0], "denied");
    assert_eq!(bodies[0], bodies[1]);
    // Inside the grant, a missing secret is reported as missing.
    let body = serde_json::json!({"document": {"v": "$SECRET_demo/nope $KEY_x"}, "host": "gw1.payments.example"});
    let (status, v) = resolve(&app, GATEWAY, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"][0]["code"], "not_found");
}

/// THREATS row 33: a consumer learns nothing about which source names exist — an unknown
/// source, a configured one it has no grant for and a `$SAFE_` reference with no CCP source
/// configured all get the same `denied`, in the same body.
#[tokio::test]
async fn threat_33_unknown_sources_are_denied_like_any_other_reference() {
    let app = app();
    let mut bodies = Vec::new();
    for reference in [
        "$SECRET_no-such-source:demo/db $KEY_password",
        "$SECRET_files:elsewhere/db $KEY_password",
        "$SAFE_Payments $NAME_db",
    ] {
        let body =
            serde_json::json!({"document": {"v": reference}, "host": "gw1.payments.example"});
        let (status, v) = resolve(&app, GATEWAY, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{reference}: {v}");
        let mut v = v;
        v["error"]["details"][0]["reference"] = Value::Null;
        bodies.push(v);
    }
    assert_eq!(bodies[0]["error"]["details"][0]["code"], "denied");
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    // The operator, held to no policy, is told the truth.
    let body =
        serde_json::json!({"document": {"v": "$SECRET_no-such-source:demo/db $KEY_password"}});
    let (_, v) = resolve(&app, "operator-token", body).await;
    assert_eq!(v["error"]["details"][0]["code"], "unknown_source");
}

/// THREATS row 32: two `Authorization` headers are refused (400), whichever comes first —
/// which one a proxy in front would forward is not keybroker's guess to make.
#[tokio::test]
async fn threat_32_two_authorization_headers_are_refused() {
    let app = app();
    for (first, second) in [
        (GATEWAY, "not-a-token"),
        ("not-a-token", GATEWAY),
        (GATEWAY, GATEWAY),
    ] {
        let req = Request::post("/v1/resolve")
            .header(header::AUTHORIZATION, format!("Bearer {first}"))
            .header(header::AUTHORIZATION, format!("Bearer {second}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({"document": {"v": "$SECRET_demo/db $KEY_password"}, "host": "gw1.payments.example"}).to_string(),
            ))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "repeated_authorization");
        assert!(!v.to_string().contains("dev-only-Zq8"));
    }
}

#[tokio::test]
async fn decisions_are_made_per_request_not_remembered() {
    // Threat 10: the operator reads first (warming anything there is to warm); the consumer
    // is still held to its own policy.
    let app = app();
    let outside = serde_json::json!({"document": {"v": "$SECRET_other/db $KEY_x"}, "host": "gw1.payments.example"});
    let (_, _) = resolve(&app, "operator-token", outside.clone()).await;
    let (status, _) = resolve(&app, GATEWAY, outside).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let unknown = serde_json::json!({"document": {"v": "$SECRET_demo/db $KEY_password"}, "host": "gw1.payments.example"});
    let (status, _) = resolve(&app, "not-a-token", unknown).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn the_cli_applies_a_consumers_policy_with_as() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(args)
            .current_dir(repo())
            .env_remove("KEYBROKER_CONFIG")
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("d.json");
    std::fs::write(&doc, r#"{"pw": "$SECRET_demo/db $KEY_password"}"#).unwrap();
    let doc = doc.to_str().unwrap();
    let (_dev, path) = support::dev::copy("127.0.0.1:0");
    let cfg = path.to_str().unwrap();
    let ok = run(&[
        "resolve",
        "--config",
        cfg,
        "--as",
        "gateway-dev",
        "--host",
        "x.payments.example",
        doc,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let denied = run(&["resolve", "--config", cfg, "--as", "gateway-dev", doc]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(denied.stdout.is_empty());
    assert!(String::from_utf8_lossy(&denied.stderr).contains(r#""code":"denied""#));
    let unknown = run(&["resolve", "--config", cfg, "--as", "nobody", doc]);
    assert_eq!(unknown.status.code(), Some(2));

    let explain = run(&[
        "policy",
        "explain",
        "--config",
        cfg,
        "--consumer",
        "gateway-dev",
        "--reference",
        "$SECRET_demo/db $KEY_password",
        "--host",
        "x.payments.example",
    ]);
    assert!(
        explain.status.success(),
        "{}",
        String::from_utf8_lossy(&explain.stderr)
    );
    let d: Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(d["allowed"], true);
    assert_eq!(
        d["rule"],
        "grant payments files:demo/*; host *.payments.example"
    );
}

/// The egress proxy's choice of credential (when the caller names none) is a policy decision
/// `policy explain` prints: the one visible mtls credential whose allowed_hosts match.
#[test]
fn policy_explain_prints_the_egress_proxys_choice_of_credential() {
    let (_dev, cfg) = support::dev::copy("127.0.0.1:0");
    let explain = |host: &str| {
        Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args([
                "policy",
                "explain",
                "--config",
                cfg.to_str().unwrap(),
                "--consumer",
                "gateway-dev",
                "--host",
                host,
            ])
            .current_dir(repo())
            .env_remove("KEYBROKER_CONFIG")
            .output()
            .unwrap()
    };
    let chosen = explain("x.sandbox.partner.example");
    assert!(
        chosen.status.success(),
        "{}",
        String::from_utf8_lossy(&chosen.stderr)
    );
    let d: Value = serde_json::from_slice(&chosen.stdout).unwrap();
    assert_eq!(d["credential"], "partner-api");
    assert_eq!(d["allowed"], true);
    assert_eq!(
        d["rule"],
        "credential payments/partner-api (team); host *.sandbox.partner.example"
    );
    let none = explain("api.elsewhere.example");
    assert_eq!(none.status.code(), Some(1));
    let d: Value = serde_json::from_slice(&none.stdout).unwrap();
    assert_eq!(d["reason"], "no_credential_fits");
    assert_eq!(d["credential"], Value::Null);
}

/// One request, one policy snapshot: a consumer is decided (and audited) under the policy it
/// was authenticated under, even when a reload changed the policy in between.
#[tokio::test]
async fn a_request_is_decided_under_the_snapshot_it_was_authenticated_under() {
    use keybroker::testing::broker::{Caller, ConsumerRef, Document};
    use keybroker::testing::reference::Layout;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets/demo")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(
        root.join("secrets/demo/db.json"),
        r#"{"v": "snapshot-value"}"#,
    )
    .unwrap();
    let policy = |grant: bool| {
        let mut p = format!(
            "[[team]]\nslug = \"t\"\n[[consumer]]\nname = \"gw\"\nteam = \"t\"\ntoken_sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        if grant {
            p.push_str("[[grant]]\nteam = \"t\"\nsource = \"files\"\npaths = [\"demo/*\"]\nallowed_hosts = [\"api.snapshot.example\"]\n");
        }
        // Written elsewhere and renamed into place, as docs/API.md asks.
        std::fs::write(root.join("next.toml"), p).unwrap();
        std::fs::rename(root.join("next.toml"), root.join("policies/p.toml")).unwrap();
    };
    policy(true);
    std::fs::write(
        root.join("kb.toml"),
        "policies = \"policies\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let config = Config::load(&root.join("kb.toml")).unwrap();
    let broker = Broker::from_config(&config).unwrap();
    let before = Caller::Consumer(ConsumerRef::of(broker.policy(), "gw").unwrap());
    policy(false);
    broker.reload_policy().unwrap();
    let after = Caller::Consumer(ConsumerRef::of(broker.policy(), "gw").unwrap());
    let host = keybroker::testing::policy::Destination::parse("api.snapshot.example").unwrap();
    let resolve = |caller: Caller| {
        let broker = &broker;
        let host = host.clone();
        async move {
            let doc = Document::JsonValue(serde_json::json!({"v": "$SECRET_files:demo/db $KEY_v"}));
            let want = keybroker::testing::broker::Expand {
                document: doc,
                layout: Layout::Compact,
            };
            broker
                .read(
                    keybroker::testing::broker::Ask::new(
                        &caller,
                        keybroker::testing::identity::Door::Cli,
                        want,
                    )
                    .towards(Some(&host)),
                )
                .await
                .is_ok()
        }
    };
    assert!(
        resolve(before).await,
        "decided under the snapshot it was authenticated under"
    );
    assert!(!resolve(after).await, "the reloaded policy has no grant");
}

/// THREATS row 40: an ETag is keyed by the caller's team as well as the content, so two teams
/// resolving the same literal document get different tags, and a tag seen in one team's
/// answer is no guess oracle in another's. The same team gets the same tag again.
#[tokio::test]
async fn threat_40_etags_differ_between_teams_for_the_same_document() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("secrets")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    let mut policy = String::new();
    for (team, token) in [("a", "token-a"), ("b", "token-b"), ("a", "token-a2")] {
        policy.push_str(&format!(
            "[[team]]\nslug = \"{team}\"\n[[consumer]]\nname = \"{token}\"\nteam = \"{team}\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()))
        ));
    }
    // A team is declared once.
    let policy = policy.replacen("[[team]]\nslug = \"a\"\n", "", 1);
    std::fs::write(root.join("policies/p.toml"), policy).unwrap();
    std::fs::write(
        root.join("kb.toml"),
        "policies = \"policies\"\n[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let config = Config::load(&root.join("kb.toml")).unwrap();
    let app = router(Arc::new(AppState::new(Arc::new(
        Broker::from_config(&config).unwrap(),
    ))));
    let etag = |token: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::post("/v1/resolve")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"document": {"literal": "no secrets here"}, "host": "x.example"}"#,
                ))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.headers()[header::ETAG].to_str().unwrap().to_owned()
        }
    };
    let (a, a2, b) = (
        etag("token-a").await,
        etag("token-a2").await,
        etag("token-b").await,
    );
    assert_eq!(a, a2, "one team, one tag for one answer");
    assert_ne!(a, b, "another team's tag for the same answer differs");
}
