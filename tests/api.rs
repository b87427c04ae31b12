//! The HTTP API driven through the router, without a socket.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use keybroker::testing::api::{AppState, router};
use keybroker::testing::broker::Broker;
use keybroker::testing::config::Config;
use keybroker::testing::identity::TokenDigest;

const TOKEN: &str = "test-token-1234";
const CANARY: &str = "canary-9d3e2f-never-log";

/// The dev example tree plus a secret holding the canary.
fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets/team");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("db.json"),
        json!({"username": "svc", "password": CANARY}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("kb.toml"),
        "[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n",
    )
    .unwrap();
    let config = Config::load(&dir.path().join("kb.toml")).unwrap();
    let state = AppState::new(Arc::new(Broker::from_config(&config).unwrap()))
        .with_dev_token(TokenDigest::of(TOKEN));
    (router(Arc::new(state)), dir)
}

async fn post(
    app: &axum::Router,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Option<String>, String) {
    let mut req = Request::post("/v1/resolve").header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let cache = resp
        .headers()
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, cache, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn healthz_answers() {
    let (app, _dir) = app();
    let resp = app
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn resolve_requires_the_token() {
    let (app, _dir) = app();
    let body = r#"{"document": "$SECRET_team/db $KEY_password"}"#;
    for token in [None, Some("wrong"), Some("")] {
        let (status, _, text) = post(&app, token, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!text.contains(CANARY));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
}

#[tokio::test]
async fn resolve_json_yaml_and_text() {
    let (app, _dir) = app();
    let (status, cache, text) = post(
        &app,
        Some(TOKEN),
        r#"{"document": {"pw": "$SECRET_team/db $KEY_password", "all": "$SECRET_team/db"}, "format": "json"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["document"],
        json!({"pw": CANARY, "all": {"password": CANARY, "username": "svc"}})
    );
    assert_eq!(v["metadata"]["stale"], false);
    assert_eq!(
        v["metadata"]["secrets"],
        json!([{"source": "files", "path": "team/db"}])
    );

    let (status, _, text) = post(
        &app,
        Some(TOKEN),
        r#"{"document": "db:\n  user: $SECRET_team/db $KEY_username\n", "format": "yaml"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let yaml: Value = serde_saphyr::from_str(v["document"].as_str().unwrap()).unwrap();
    assert_eq!(yaml, json!({"db": {"user": "svc"}}));

    let (status, _, text) = post(
        &app,
        Some(TOKEN),
        r#"{"document": "user=$SECRET_team/db $KEY_username\n", "format": "text"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["document"], "user=svc\n");
}

#[tokio::test]
async fn errors_are_typed_and_never_carry_values() {
    let (app, _dir) = app();
    let cases = [
        // A good reference next to failing ones: the good value must not appear.
        (
            r#"{"document": {"ok": "$SECRET_team/db $KEY_password", "no": "$SECRET_team/db $KEY_nope", "bad": "$SECRET_a/../b $KEY_c"}}"#,
            StatusCode::BAD_REQUEST,
            "unresolved_references",
        ),
        (
            r#"{"document": 1, "format": "yaml"}"#,
            StatusCode::BAD_REQUEST,
            "wrong_document_shape",
        ),
        (
            r#"{"document": "a: [", "format": "yaml"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_yaml",
        ),
        (
            r#"{"documents": "canary-9d3e2f-never-log"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"document": "x", "format": "xml"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "not json canary-9d3e2f-never-log",
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, cache, text) = post(&app, Some(TOKEN), body).await;
        assert_eq!(status, want_status, "{body}: {text}");
        assert_eq!(cache.as_deref(), Some("no-store"));
        assert!(!text.contains(CANARY), "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], want_code, "{body}: {text}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let (app, _dir) = app();
    let big = format!(
        r#"{{"document": "{}"}}"#,
        "a".repeat(keybroker::testing::api::MAX_BODY_BYTES)
    );
    let (status, _, _) = post(&app, Some(TOKEN), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A CCP-style flattened certificate and key are repaired on the way out; the repairs are
/// reported; a PEM value that cannot be repaired is refused with its code and no value.
#[tokio::test]
async fn flattened_pem_is_repaired_and_broken_pem_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let key_pem = key.serialize_pem();
    let (app, dir) = app();
    let flat = |s: &str| s.replace("\r\n", "\n").replace('\n', " ").trim().to_owned();
    std::fs::write(
        dir.path().join("secrets/team/mtls.json"),
        json!({"cert": flat(&cert), "key": flat(&key_pem)}).to_string(),
    )
    .unwrap();
    let broken = flat(&key_pem).replacen("-----END PRIVATE KEY-----", "", 1) + " " + CANARY;
    std::fs::write(
        dir.path().join("secrets/team/broken.json"),
        json!({"key": broken}).to_string(),
    )
    .unwrap();

    let (status, _, text) = post(
        &app,
        Some(TOKEN),
        r#"{"document": {"c": "$SECRET_team/mtls $KEY_cert", "k": "$SECRET_team/mtls $KEY_key"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["document"]["c"], cert.replace("\r\n", "\n"));
    assert_eq!(v["document"]["k"], key_pem.replace("\r\n", "\n"));
    let repairs = v["metadata"]["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), 2, "{text}");
    assert_eq!(repairs[0]["field"], "cert");
    assert_eq!(repairs[0]["repairs"], json!(["spaces_to_newlines"]));

    for doc in [
        r#"{"document": {"k": "$SECRET_team/broken $KEY_key"}}"#,
        r#"{"document": {"all": "$SECRET_team/broken"}}"#,
    ] {
        let (status, _, text) = post(&app, Some(TOKEN), doc).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(!text.contains(CANARY), "{text}");
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["details"][0]["code"], "pem_rejected", "{text}");
        assert!(
            v["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("missing_end"),
            "{text}"
        );
    }
}

/// Cached and uncached secrets in one document (hits are answered inline, misses read from
/// the source): values and metadata in document order, a cached value served from the cache,
/// and one missing secret fails the whole document.
#[tokio::test]
async fn hits_and_misses_in_one_document_answer_in_document_order() {
    let (app, dir) = app();
    let team = dir.path().join("secrets/team");
    for name in ["a", "b", "c"] {
        std::fs::write(
            team.join(format!("{name}.json")),
            json!({ "v": format!("value-{name}") }).to_string(),
        )
        .unwrap();
    }
    let ask = |doc: Value| json!({ "document": doc }).to_string();
    let (status, _, _) = post(
        &app,
        Some(TOKEN),
        &ask(json!({"x": "$SECRET_team/a $KEY_v"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let three = ask(json!({
        "p": "$SECRET_team/c $KEY_v", "q": "$SECRET_team/a $KEY_v", "r": "$SECRET_team/b $KEY_v"
    }));
    let (status, _, body) = post(&app, Some(TOKEN), &three).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["document"],
        json!({"p": "value-c", "q": "value-a", "r": "value-b"})
    );
    let paths: Vec<&str> = v["metadata"]["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["team/c", "team/a", "team/b"]);

    // All three are cached now: a changed file is not read again within the TTL.
    std::fs::write(team.join("b.json"), json!({"v": "changed"}).to_string()).unwrap();
    let (status, _, body) = post(&app, Some(TOKEN), &three).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["document"]["r"], "value-b");

    let with_missing = ask(json!({"q": "$SECRET_team/a $KEY_v", "z": "$SECRET_team/none $KEY_v"}));
    let (status, _, body) = post(&app, Some(TOKEN), &with_missing).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(!body.contains("value-a"), "{body}");
    assert!(body.contains("not_found"), "{body}");
}
