//! docs/THREATS.md row 11: canaries planted in a file secret, in OpenBao, in a CCP
//! `Content` and in CCP's `ErrorMsg`; the real `keybroker serve` binary over TLS at
//! `RUST_LOG=trace`; every route, successes and errors (denials, not found, a CCP HTML error
//! page, OpenBao down). No canary — nor its base64 or hex — may appear in the logs, the audit
//! trail, the metrics or any error body; the success bodies must carry them (or the test
//! proves nothing).

mod support {
    pub mod ccp;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use support::ccp::{CcpDouble, ERRORMSG_CANARY, Fault, Object, Pki, Store};
use support::openbao::OpenBao;

const FILE_CANARY: &str = "FILE-CANARY-0a9f31";
const VAULT_CANARY: &str = "VAULT-CANARY-c41b77";
const CCP_CANARY: &str = "CCP-CANARY-5e20d8";

fn forms(c: &str) -> [String; 3] {
    [
        c.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(c),
        hex::encode(c),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for c in [FILE_CANARY, VAULT_CANARY, CCP_CANARY, ERRORMSG_CANARY] {
        for f in forms(c) {
            assert!(!text.contains(&f), "{what} carries {f}:\n{text}");
        }
    }
}

fn ccp_store(pki: &Pki) -> Store {
    let mut s = Store::for_keybroker(pki);
    let token = Object {
        folder: "Root".into(),
        name: "api-token".into(),
        props: [("Content".to_owned(), CCP_CANARY.to_owned())].into(),
        changing: false,
    };
    s.safes
        .insert("Payments".into(), (vec!["keybroker".into()], vec![token]));
    s
}

struct Call {
    name: &'static str,
    status: u16,
    body: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn no_canary_leaves_through_logs_audit_metrics_or_error_bodies() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bao = OpenBao::start();
    bao.cli(&[
        "kv",
        "put",
        "secret/app/db",
        &format!("password={VAULT_CANARY}"),
    ]);
    let pki = Pki::new();
    let double = CcpDouble::start(&pki, ccp_store(&pki)).await;

    let (dir, server_ca) = support::server::folder(FILE_CANARY);
    let root = dir.path();
    let sha = support::server::token_sha256;
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "payments"
[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{}"
[[consumer]]
name = "ops"
team = "payments"
token_sha256 = "{}"
admin = true
[[grant]]
team = "payments"
source = "files"
paths = ["**"]
allowed_hosts = ["*.payments.example"]
[[grant]]
team = "payments"
source = "vault"
paths = ["**"]
allowed_hosts = ["*.payments.example"]
[[grant]]
team = "payments"
source = "ccp"
paths = ["**"]
allowed_hosts = ["*.payments.example"]
[[credential]]
name = "file-cred"
mode = "text"
team = "payments"
allowed_hosts = ["*.payments.example"]
value = "$SECRET_files:app/token $KEY_value"
[[credential]]
name = "vault-cred"
mode = "text"
team = "payments"
allowed_hosts = ["*.payments.example"]
value = "$SECRET_vault:app/db $KEY_password"
[[credential]]
name = "ccp-cred"
mode = "text"
team = "payments"
allowed_hosts = ["*.payments.example"]
value = "$SAFE_Payments $NAME_api-token"
"#,
            sha("gw-token"),
            sha("ops-token")
        ),
    )
    .unwrap();
    let p = pki.dir.path();
    std::fs::write(
        root.join("kb.toml"),
        format!(
            r#"
policies = "policies"
default_source = "files"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
[[source]]
name = "files"
kind = "file"
path = "secrets"
[[source]]
name = "vault"
kind = "vault"
address = "{bao}"
[[source]]
name = "ccp"
kind = "ccp"
url = "{ccp}"
app_id = "keybroker"
ca_cert = {ca:?}
client_cert = {cert:?}
client_key = {key:?}
timeout = "2s"
[audit]
path = "audit.log"
"#,
            bao = bao.addr,
            ccp = double.url,
            ca = p.join("ca.pem"),
            cert = p.join("client.pem"),
            key = p.join("client-key.pem"),
        ),
    )
    .unwrap();

    let running = support::server::Running::start(root, &server_ca.pem, 0, "trace").await;
    let client = &running.client;
    let url = |path: &str| running.url(path);
    let stderr = || std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();

    let mut calls: Vec<Call> = Vec::new();
    macro_rules! call {
        ($name:expr, $req:expr) => {{
            let resp = $req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            calls.push(Call {
                name: $name,
                status,
                body,
            });
        }};
    }
    let all_refs = "$SECRET_files:app/token $KEY_value $SECRET_vault:app/db $KEY_password $SAFE_Payments $NAME_api-token";
    let host = "a.payments.example";
    call!("healthz", client.get(url("/healthz")));
    call!("readyz", client.get(url("/readyz")));
    call!(
        "resolve ok",
        client
            .post(url("/v1/resolve"))
            .bearer_auth("gw-token")
            .json(&json!({"document": {"all": all_refs}, "host": host}))
    );
    call!(
        "resolve yaml",
        client
            .post(url("/v1/resolve"))
            .bearer_auth("gw-token")
            .json(
                &json!({"document": format!("all: {all_refs}\n"), "format": "yaml", "host": host})
            )
    );
    call!(
        "resolve denied",
        client
            .post(url("/v1/resolve"))
            .bearer_auth("gw-token")
            .json(&json!({"document": {"all": all_refs}, "host": "evil.example"}))
    );
    call!(
        "resolve ccp not found",
        client
            .post(url("/v1/resolve"))
            .bearer_auth("gw-token")
            .json(&json!({"document": {"x": "$SAFE_Payments $NAME_nope"}, "host": host}))
    );
    call!(
        "resolve bad body",
        client
            .post(url("/v1/resolve"))
            .bearer_auth("gw-token")
            .body(format!("{{\"document\": \"{FILE_CANARY}\""))
    );
    call!(
        "resolve no token",
        client
            .post(url("/v1/resolve"))
            .json(&json!({"document": {"all": all_refs}, "host": host}))
    );
    call!(
        "resolve wrong token",
        client
            .post(url("/v1/resolve"))
            .bearer_auth(FILE_CANARY)
            .json(&json!({"document": {"all": all_refs}, "host": host}))
    );
    call!(
        "list",
        client.get(url("/v1/credentials")).bearer_auth("gw-token")
    );
    for name in ["file-cred", "vault-cred", "ccp-cred"] {
        call!(
            "info",
            client
                .get(url(&format!("/v1/credentials/{name}")))
                .bearer_auth("gw-token")
        );
        call!(
            "material ok",
            client
                .post(url(&format!("/v1/credentials/{name}/material")))
                .bearer_auth("gw-token")
                .json(&json!({ "host": host }))
        );
        call!(
            "material denied",
            client
                .post(url(&format!("/v1/credentials/{name}/material")))
                .bearer_auth("gw-token")
                .json(&json!({ "host": "evil.example" }))
        );
        // Change detection: 304 (no body), a wait that ends in 304, a wait refused.
        call!(
            "material not modified",
            client
                .post(url(&format!("/v1/credentials/{name}/material")))
                .bearer_auth("gw-token")
                .header("if-none-match", "*")
                .json(&json!({ "host": host }))
        );
        call!(
            "material wait",
            client
                .post(url(&format!("/v1/credentials/{name}/material?wait=200ms")))
                .bearer_auth("gw-token")
                .header("if-none-match", "*")
                .json(&json!({ "host": host }))
        );
        call!(
            "material bad wait",
            client
                .post(url(&format!(
                    "/v1/credentials/{name}/material?wait={FILE_CANARY}"
                )))
                .bearer_auth("gw-token")
                .header("if-none-match", FILE_CANARY)
                .json(&json!({ "host": host }))
        );
    }
    call!(
        "resolve wait",
        client
            .post(url("/v1/resolve?wait=200ms"))
            .bearer_auth("gw-token")
            .header("if-none-match", "*")
            .json(&json!({"document": {"all": all_refs}, "host": host}))
    );
    // CCP answers with an HTML error page that carries the ErrorMsg canary.
    double.set_fault(Some(Fault::HtmlError));
    call!(
        "purge ccp",
        client
            .post(url("/v1/admin/cache/purge"))
            .bearer_auth("ops-token")
            .json(&json!({"source": "ccp"}))
    );
    call!(
        "material ccp html",
        client
            .post(url("/v1/credentials/ccp-cred/material"))
            .bearer_auth("gw-token")
            .json(&json!({ "host": host }))
    );
    double.set_fault(None);
    // OpenBao goes away; the purged secret cannot be served.
    call!(
        "purge vault",
        client
            .post(url("/v1/admin/cache/purge"))
            .bearer_auth("ops-token")
            .json(&json!({"source": "vault"}))
    );
    drop(bao);
    call!(
        "material vault down",
        client
            .post(url("/v1/credentials/vault-cred/material"))
            .bearer_auth("gw-token")
            .json(&json!({ "host": host }))
    );
    call!(
        "reload",
        client
            .post(url("/v1/admin/reload"))
            .bearer_auth("ops-token")
    );
    call!(
        "reload not admin",
        client.post(url("/v1/admin/reload")).bearer_auth("gw-token")
    );
    call!(
        "metrics",
        client.get(url("/metrics")).bearer_auth("ops-token")
    );

    // SIGHUP reloads the policy (and says so in the log).
    let mut child = running.child;
    let pid = child.id().unwrap().to_string();
    // (The admin reload above logged it once already.)
    let before = stderr().matches("policy reloaded").count();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reloaded = false;
    for _ in 0..100 {
        if stderr().matches("policy reloaded").count() > before {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the policy:\n{}", stderr());

    // SIGTERM: a graceful stop flushes everything.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", stderr());

    let expect = |name: &str, status: u16| {
        let c = calls.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.status, status, "{name}: {}", c.body);
    };
    expect("resolve ok", 200);
    expect("resolve yaml", 200);
    expect("resolve denied", 403);
    expect("resolve ccp not found", 400);
    expect("resolve bad body", 400);
    expect("resolve no token", 401);
    expect("resolve wrong token", 401);
    expect("material ccp html", 503);
    expect("material vault down", 503);
    expect("reload", 200);
    expect("reload not admin", 403);
    expect("material not modified", 304);
    expect("material wait", 304);
    expect("material bad wait", 400);
    expect("resolve wait", 304);

    // Positive control: the values did flow where they should.
    let ok = calls.iter().find(|c| c.name == "resolve ok").unwrap();
    for c in [FILE_CANARY, VAULT_CANARY, CCP_CANARY] {
        assert!(ok.body.contains(c), "{}", ok.body);
    }
    let materials: Vec<&Call> = calls.iter().filter(|c| c.name == "material ok").collect();
    assert_eq!(materials.len(), 3);
    for (m, c) in materials
        .iter()
        .zip([FILE_CANARY, VAULT_CANARY, CCP_CANARY])
    {
        assert_eq!(m.status, 200, "{}", m.body);
        let v: Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(v["value"], c);
    }

    for c in calls
        .iter()
        .filter(|c| !matches!(c.name, "resolve ok" | "resolve yaml" | "material ok"))
    {
        assert_clean(c.name, &c.body);
    }
    let logs = stderr();
    assert!(logs.contains("TRACE"), "trace logging was not on:\n{logs}");
    assert_clean("stderr", &logs);
    assert_clean(
        "stdout",
        &std::fs::read_to_string(root.join("stdout.log")).unwrap(),
    );
    let audit = std::fs::read_to_string(root.join("audit.log")).unwrap();
    assert!(audit.lines().count() >= 15, "{audit}");
    assert_clean("audit", &audit);
}
