//! Consumers through the management API against the file store (docs/MANAGEMENT.md,
//! "Consumers"): a token shown once and kept as a digest, team-scoped admins who cannot
//! escalate, If-Match, client certificates through Gravitee's states (a scheduled one does
//! not identify yet, a revoked one no longer does and cannot come back), Apinizer-style issuer
//! ACLs that may not overlap, and every refusal writing nothing.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::time::{Duration, SystemTime};

use rcgen::DnType;
use reqwest::Method;
use serde_json::{Value, json};

use support::fixture;
use support::pki::{Ca, Issued};
use support::server::{Running, folder, token_sha256};

const GW: &str = "consumers-gw-token";
const PAYMENTS_ADMIN: &str = "consumers-payments-admin";
const FRAUD_ADMIN: &str = "consumers-fraud-admin";
/// An admin of `legacy`, a team without identity domains.
const LEGACY_ADMIN: &str = "consumers-legacy-admin";
/// An admin of `legacy-b`, another team without identity domains.
const LEGACY_B_ADMIN: &str = "consumers-legacy-b-admin";
/// The operator's admin consumer (reloads).
const OPS: &str = "consumers-ops";

struct World {
    dir: tempfile::TempDir,
    server: Running,
    server_ca: Ca,
    clients: Ca,
    /// Payments' certificate that the operator's policy file pins (consumer `payments-pinned`).
    pinned: Issued,
}

async fn world() -> World {
    let (dir, server_ca) = folder("unused");
    let root = dir.path();
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    std::fs::create_dir_all(root.join("policies")).unwrap();
    clients.write(&root.join("policies/clients-ca.pem"));
    // The operator pins a certificate to payments whose CN lies in fraud's identity domain:
    // a hand-made inconsistency the rank rule (the operator's claim wins) still holds against.
    let pinned = clients.client_dn(
        root,
        "pinned",
        &[(DnType::CommonName, "pinned.fraud.example")],
    );
    fixture::Policy::new()
        .team("payments")
        .and("identity_domains = [\"payments.example\"]")
        .team("fraud")
        .and("identity_domains = [\"fraud.example\"]")
        // Teams without identity domains: their admins pin certificates one by one.
        .team("legacy")
        .team("legacy-b")
        .and(&format!(
            "[[consumer]]\nname = \"payments-pinned\"\nteam = \"payments\"\ncert_sha256 = [{{ fingerprint = \"{}\" }}]",
            pinned.fingerprint()
        ))
        // Payments' gateways, identified by a file-made issuer ACL (the operator's).
        .and("[[consumer]]\nname = \"payments-gw\"\nteam = \"payments\"\nissuer_ca = \"clients-ca.pem\"\nsubject = \"CN=gw-*.payments.example\"")
        // And gateways outside every identity domain, by another operator's ACL.
        .and("[[consumer]]\nname = \"shared-gw\"\nteam = \"payments\"\nissuer_ca = \"clients-ca.pem\"\nsubject = \"CN=shared-*.example.org\"")
        .consumer("gw", "payments", GW)
        .team_admin("payments-admin", "payments", PAYMENTS_ADMIN, &["payments"])
        .team_admin("fraud-admin", "fraud", FRAUD_ADMIN, &["fraud"])
        .team_admin("legacy-admin", "legacy", LEGACY_ADMIN, &["legacy"])
        .team_admin("legacy-b-admin", "legacy-b", LEGACY_B_ADMIN, &["legacy-b"])
        .consumer("ops", "payments", OPS)
        .and("admin = true")
        .write(root);
    fixture::Config::tls()
        .with("client_ca = \"clients-ca.pem\"\nclient_auth = \"optional\"")
        .with("[store]\nkind = \"file\"\npath = \"store\"")
        .with("[vault_api]\nlisten = \"127.0.0.1:0\"")
        .audit()
        .write(root);
    let server = Running::start(root, &server_ca.pem, 0, "info").await;
    World {
        dir,
        server,
        server_ca,
        clients,
        pinned,
    }
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
    etag: Option<String>,
}

impl World {
    async fn send(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Answer {
        let mut r = self
            .server
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            etag,
        }
    }

    /// `admin` creates consumer `name` of `team`; it must succeed.
    async fn create_consumer(&self, admin: &str, team: &str, name: &str) -> Answer {
        let made = self
            .send(
                Method::POST,
                admin,
                &format!("/v1/teams/{team}/consumers"),
                Some(json!({ "name": name })),
                None,
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
        made
    }

    /// Whether `token` is accepted now (any authenticated route).
    async fn token_works(&self, token: &str) -> u16 {
        self.send(Method::GET, token, "/v1/credentials", None, None)
            .await
            .status
    }

    /// Whether the client certificate `id` authenticates now (a new client: a new handshake).
    async fn certificate_works(&self, id: &Issued) -> u16 {
        self.server
            .status_with_identity(&self.server_ca.pem, &id.identity_pem(), "/v1/credentials")
            .await
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    /// Every file of the store, and its text.
    fn store_text(&self) -> String {
        fn walk(p: &std::path::Path, out: &mut String) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
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

    async fn version(&self, name: &str) -> u64 {
        let a = self
            .send(
                Method::GET,
                PAYMENTS_ADMIN,
                &format!("/v1/teams/payments/consumers/{name}"),
                None,
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.body["version"].as_u64().unwrap()
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_token_is_shown_once_kept_as_a_digest_and_team_admins_cannot_escalate() {
    let w = world().await;
    let made = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "gw2" })),
            None,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let token = made.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kbt_") && token.len() == 68, "{token}");
    assert_eq!(made.body["has_token"], true);
    assert_eq!(made.body["origin"], "api");
    assert_eq!(w.token_works(&token).await, 200);

    // Never again: not in a read, the store, the audit trail or the logs — the digest only.
    let shown = w
        .send(
            Method::GET,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/gw2",
            None,
            None,
        )
        .await;
    assert_eq!(shown.status, 200);
    assert!(!shown.text.contains(&token) && shown.body.get("token").is_none());
    let store = w.store_text();
    assert!(!store.contains(&token));
    assert!(store.contains(&token_sha256(&token)));
    assert!(w.audit().contains("\"consumer.create\""));
    for f in ["audit.log", "stderr.log", "stdout.log"] {
        let text = std::fs::read_to_string(w.dir.path().join(f)).unwrap_or_default();
        assert!(!text.contains(&token), "the token is in {f}");
    }

    // Escalation: another team's admin, admin of a team the caller does not manage, a name
    // already taken (by a policy-file consumer) — each refused, nothing written.
    let before = w.store_text();
    let other_team = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "intruder" })),
            None,
        )
        .await;
    assert_eq!(other_team.status, 403, "{}", other_team.text);
    let escalate = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "sneaky", "admin_teams": ["fraud"] })),
            None,
        )
        .await;
    assert_eq!(escalate.status, 403, "{}", escalate.text);
    let taken = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "gw" })),
            None,
        )
        .await;
    assert_eq!(taken.status, 409, "{}", taken.text);
    let stolen = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/payments/consumers/gw2/token",
            None,
            None,
        )
        .await;
    assert_eq!(stolen.status, 403, "{}", stolen.text);
    assert_eq!(w.store_text(), before, "a refused write changed the store");

    // PATCH needs If-Match; a stale one loses; admin_teams only among the caller's teams.
    let etag = shown.etag.unwrap();
    let path = "/v1/teams/payments/consumers/gw2";
    let patch = json!({ "admin_teams": ["payments"] });
    let no_match = w
        .send(
            Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(patch.clone()),
            None,
        )
        .await;
    assert_eq!(no_match.status, 428, "{}", no_match.text);
    let up = json!({ "admin_teams": ["fraud"] });
    let escalated = w
        .send(Method::PATCH, PAYMENTS_ADMIN, path, Some(up), Some(&etag))
        .await;
    assert_eq!(escalated.status, 403, "{}", escalated.text);
    let patched = w
        .send(
            Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(patch.clone()),
            Some(&etag),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["admin_teams"], json!(["payments"]));
    // `policy explain` decides an API-made consumer like a file-made one, management too.
    let explain = |team: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args([
                "policy",
                "explain",
                "--config",
                "kb.toml",
                "--consumer",
                "gw2",
            ])
            .args(["--manage", team])
            .current_dir(w.dir.path())
            .env_remove("KEYBROKER_CONFIG")
            .output()
            .unwrap()
    };
    let own = explain("payments");
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let d: Value = serde_json::from_slice(&own.stdout).unwrap();
    assert_eq!(
        (d["allowed"].clone(), d["reason"].clone()),
        (json!(true), json!("admin_teams"))
    );
    let other = explain("fraud");
    assert_eq!(other.status.code(), Some(1));
    let d: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(d["reason"], "not_an_admin_of_the_team");
    let stale = w
        .send(
            Method::PATCH,
            PAYMENTS_ADMIN,
            path,
            Some(patch),
            Some(&etag),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);

    // A new token: shown once, the old one stops at once.
    let rotated = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            &format!("{path}/token"),
            None,
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let new_token = rotated.body["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(w.token_works(&token).await, 401);
    assert_eq!(w.token_works(&new_token).await, 200);
    // The same at another door: the Vault-compatible API takes the new token, not the old.
    let vault_api = |t: &str| {
        let req = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/v1/auth/token/lookup-self",
                w.server.port_of("vault_api")
            ))
            .header("X-Vault-Token", t)
            .send();
        async move { req.await.unwrap().status().as_u16() }
    };
    assert_eq!(vault_api(&new_token).await, 200);
    assert_eq!(vault_api(&token).await, 403);
    assert!(w.audit().contains("\"consumer.token\""));

    // Deleted: its token is refused at once.
    let gone = w
        .send(Method::DELETE, PAYMENTS_ADMIN, path, None, None)
        .await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(w.token_works(&new_token).await, 401);
    assert!(w.audit().contains("\"consumer.delete\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_certificates_follow_gravitees_states_and_a_revoked_one_stops_at_once() {
    let w = world().await;
    let root = w.dir.path();
    let made = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "gw2" })),
            None,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let certs = "/v1/teams/payments/consumers/gw2/certificates";
    let now = SystemTime::now();
    let add = |pem: String, extra: Value| {
        let mut body = json!({ "certificate": pem });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    // Scheduled: added now, identifies no one until its start.
    let later = w
        .clients
        .client(root, "later", "gw2-later.payments.example");
    let scheduled = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(add(
                later.cert_pem.clone(),
                json!({ "starts_at": rfc3339(now + Duration::from_secs(3600)) }),
            )),
            None,
        )
        .await;
    assert_eq!(scheduled.status, 201, "{}", scheduled.text);
    assert_eq!(scheduled.body["state"], "scheduled");
    assert_eq!(w.certificate_works(&later).await, 401);

    // Active until an end, sent CCP-flattened: identifies the consumer now.
    let current = w
        .clients
        .client(root, "current", "gw2-current.payments.example");
    let flattened = current.cert_pem.trim_end().replace('\n', " ");
    assert_eq!(
        w.certificate_works(&current).await,
        401,
        "before it is added"
    );
    let active = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(add(
                flattened,
                json!({ "ends_at": rfc3339(now + Duration::from_secs(7200)) }),
            )),
            None,
        )
        .await;
    assert_eq!(active.status, 201, "{}", active.text);
    assert_eq!(active.body["state"], "active_until");
    let fingerprint = active.body["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint, current.fingerprint().replace(':', ""));
    assert_eq!(w.certificate_works(&current).await, 200);

    // Refusals, each writing nothing: a CA, another CA's certificate, garbage, a certificate
    // already identifying someone, an end before now, no key material ever echoed.
    let version = w.version("gw2").await;
    let stranger = Ca::new("stranger CA").client(root, "stranger", "gw2-stranger");
    for (body, status, code) in [
        (
            add(w.clients.pem.clone(), json!({})),
            422,
            "certificate_is_ca",
        ),
        (
            add(stranger.cert_pem.clone(), json!({})),
            422,
            "certificate_untrusted",
        ),
        (
            add(
                "-----BEGIN CERTIFICATE----- bm9wZQ== -----END CERTIFICATE-----".to_owned(),
                json!({}),
            ),
            422,
            "certificate_invalid",
        ),
        (
            add(current.cert_pem.clone(), json!({})),
            409,
            "certificate_in_use",
        ),
        (
            add(
                w.clients
                    .client(root, "past", "gw2-past.payments.example")
                    .cert_pem,
                json!({ "ends_at": rfc3339(now - Duration::from_secs(60)) }),
            ),
            422,
            "certificate_expired",
        ),
        (
            add(current.key_pem.clone(), json!({})),
            422,
            "certificate_invalid",
        ),
    ] {
        let a = w
            .send(Method::POST, PAYMENTS_ADMIN, certs, Some(body), None)
            .await;
        assert_eq!(a.status, status, "{}", a.text);
        assert_eq!(a.body["error"]["code"], code, "{}", a.text);
        assert!(
            !a.text.contains("PRIVATE KEY") && !a.text.contains("MII"),
            "{}",
            a.text
        );
    }
    assert_eq!(
        w.version("gw2").await,
        version,
        "a refused certificate was written"
    );
    // Another team's admin cannot add or revoke.
    let foreign = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            certs,
            Some(add(w.clients.client(root, "f", "f").cert_pem, json!({}))),
            None,
        )
        .await;
    assert_eq!(foreign.status, 403, "{}", foreign.text);

    // Revoked: stops at once, listed as revoked, cannot be added back (here or elsewhere).
    let revoke = w
        .send(
            Method::DELETE,
            PAYMENTS_ADMIN,
            &format!("{certs}/{fingerprint}"),
            None,
            None,
        )
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.text);
    assert_eq!(revoke.body["state"], "revoked");
    assert_eq!(w.certificate_works(&current).await, 401);
    let again = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(add(current.cert_pem.clone(), json!({}))),
            None,
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    let listed = w.send(Method::GET, PAYMENTS_ADMIN, certs, None, None).await;
    let states: Vec<&str> = listed.body["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["scheduled", "revoked"], "{}", listed.text);

    // Over time: a start a moment ahead arrives and the certificate identifies the consumer;
    // an end a moment ahead passes and it no longer does (polled, never slept).
    let soon = w.clients.client(root, "soon", "gw2-soon.payments.example");
    let (start, end) = (
        SystemTime::now() + Duration::from_secs(2),
        SystemTime::now() + Duration::from_secs(5),
    );
    let timed = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(add(
                soon.cert_pem.clone(),
                json!({ "starts_at": rfc3339(start), "ends_at": rfc3339(end) }),
            )),
            None,
        )
        .await;
    assert_eq!(timed.status, 201, "{}", timed.text);
    assert_eq!(timed.body["state"], "scheduled");
    assert_eq!(w.certificate_works(&soon).await, 401, "before its start");
    until(
        "the scheduled certificate identifies once its start arrives",
        || async { w.certificate_works(&soon).await == 200 },
    )
    .await;
    until("the certificate stops once its end passes", || async {
        w.certificate_works(&soon).await == 401
    })
    .await;
    let listed = w.send(Method::GET, PAYMENTS_ADMIN, certs, None, None).await;
    assert!(listed.text.contains("\"expired\""), "{}", listed.text);

    let audit = w.audit();
    assert!(audit.contains("\"consumer.certificate.add\""));
    assert!(audit.contains("\"consumer.certificate.revoke\""));
    assert!(
        audit.contains(&fingerprint),
        "the revocation names the fingerprint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_acl_identifies_by_issuer_and_subject_and_may_not_overlap_another() {
    let w = world().await;
    let root = w.dir.path();
    for (admin, team, name) in [
        (PAYMENTS_ADMIN, "payments", "workers"),
        (FRAUD_ADMIN, "fraud", "fraud-workers"),
    ] {
        let made = w
            .send(
                Method::POST,
                admin,
                &format!("/v1/teams/{team}/consumers"),
                Some(json!({ "name": name })),
                None,
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    let acl = "/v1/teams/payments/consumers/workers/issuer-acl";
    // Apinizer's own field names; its flags cannot be turned off here.
    let off = w
        .send(
            Method::PUT,
            PAYMENTS_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=worker-*.payments.example", "validateACLForIssuer": false })),
            None,
        )
        .await;
    assert_eq!(off.status, 400, "{}", off.text);
    // Another team's admin is refused before its ACL is judged at all.
    let foreign = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            acl,
            Some(json!({ "issuer_ca": "not a certificate", "subject": "CN=x" })),
            None,
        )
        .await;
    assert_eq!(foreign.status, 403, "{}", foreign.text);
    let not_ca = w
        .send(
            Method::PUT,
            PAYMENTS_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.client(root, "leaf", "leaf").cert_pem, "subject": "CN=worker-*.payments.example" })),
            None,
        )
        .await;
    assert_eq!(not_ca.status, 422, "{}", not_ca.text);
    assert_eq!(not_ca.body["error"]["code"], "issuer_not_ca");

    let set = w
        .send(
            Method::PUT,
            PAYMENTS_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=worker-*.payments.example", "validateCertificate": true, "validateACLForIssuer": true })),
            None,
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["issuer_acl"]["issuers"], json!(["CN=clients CA"]));
    let member = w.clients.client_dn(
        root,
        "w1",
        &[(DnType::CommonName, "worker-1.payments.example")],
    );
    let outsider = w.clients.client_dn(
        root,
        "w2",
        &[(DnType::CommonName, "worker-1.fraud.example")],
    );
    assert_eq!(w.certificate_works(&member).await, 200);
    assert_eq!(w.certificate_works(&outsider).await, 401);

    // Another team's ACL outside its own identity domain (one that could claim payments'
    // workers): refused, nothing written.
    let fraud_acl = "/v1/teams/fraud/consumers/fraud-workers/issuer-acl";
    let outside = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            fraud_acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=worker-*" })),
            None,
        )
        .await;
    assert_eq!(outside.status, 422, "{}", outside.text);
    assert_eq!(outside.body["error"]["code"], "outside_identity_domain");
    // An ACL that one certificate could satisfy together with another consumer's: 409,
    // naming nobody.
    w.create_consumer(PAYMENTS_ADMIN, "payments", "workers-2")
        .await;
    let overlap = w
        .send(
            Method::PUT,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/workers-2/issuer-acl",
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=worker-1.payments.example" })),
            None,
        )
        .await;
    assert_eq!(overlap.status, 409, "{}", overlap.text);
    assert_eq!(overlap.body["error"]["code"], "acl_overlap");
    assert!(
        !overlap.text.contains("\"workers\""),
        "the other consumer is named: {}",
        overlap.text
    );
    let disjoint = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            fraud_acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=worker-*.fraud.example" })),
            None,
        )
        .await;
    assert_eq!(disjoint.status, 200, "{}", disjoint.text);
    assert_eq!(w.certificate_works(&outsider).await, 200);

    // Removed: the certificate identifies no one any more.
    let removed = w
        .send(Method::DELETE, PAYMENTS_ADMIN, acl, None, None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert_eq!(removed.body["issuer_acl"], Value::Null);
    assert_eq!(w.certificate_works(&member).await, 401);
    assert!(w.audit().contains("\"consumer.issuer_acl\""));
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an admin trying its luck would do: the same consumer created ten times at once (one
/// wins, one token works), and more live certificates than a consumer may hold (refused at
/// the 17th, nothing written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_make_one_consumer_and_live_certificates_are_bounded() {
    let w = world().await;
    // Ten requests in flight at once (spawned: each on its own connection).
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let sent = w
                .server
                .client
                .post(w.server.url("/v1/teams/payments/consumers"))
                .bearer_auth(PAYMENTS_ADMIN)
                .json(&json!({ "name": "racer" }))
                .send();
            tokio::spawn(async move {
                let r = sent.await.unwrap();
                (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for a in attempts {
        answers.push(a.await.unwrap());
    }
    let made: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(made.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(s, _)| *s == 201 || *s == 409));
    let token = made[0]["token"].as_str().unwrap();
    assert_eq!(w.token_works(token).await, 200);

    let root = w.dir.path();
    let certs = "/v1/teams/payments/consumers/racer/certificates";
    for i in 0..16 {
        let c = w.clients.client(
            root,
            &format!("c{i}"),
            &format!("racer-{i}.payments.example"),
        );
        let a = w
            .send(
                Method::POST,
                PAYMENTS_ADMIN,
                certs,
                Some(json!({ "certificate": c.cert_pem })),
                None,
            )
            .await;
        assert_eq!(a.status, 201, "{i}: {}", a.text);
    }
    let version = w.version("racer").await;
    let extra = w.clients.client(root, "c16", "racer-16.payments.example");
    let a = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(json!({ "certificate": extra.cert_pem })),
            None,
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(
        w.version("racer").await,
        version,
        "a refused certificate was written"
    );
    assert_eq!(w.certificate_works(&extra).await, 401);
}

/// Issue 43, finding 1: a name is a type before it is a path. A team admin of payments tries
/// every management route with names that climb into fraud (`..%2F`, `%2E%2E`, an encoded
/// slash in `?team=`): each is a 400 `invalid`, and fraud's consumer, its token and its
/// credential are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_climbs_out_of_its_team_is_no_name_at_any_management_route() {
    let w = world().await;
    let made = w.create_consumer(FRAUD_ADMIN, "fraud", "fraud-ci").await;
    let fraud_token = made.body["token"].as_str().unwrap().to_owned();
    let cred = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/credentials",
            Some(
                json!({ "name": "fraud-db", "team": "fraud", "mode": "text", "value": "fraud-v1" }),
            ),
            None,
        )
        .await;
    assert_eq!(cred.status, 201, "{}", cred.text);
    let before = w
        .send(
            Method::GET,
            FRAUD_ADMIN,
            "/v1/teams/fraud/credentials/fraud-db",
            None,
            None,
        )
        .await;
    assert_eq!(before.status, 200, "{}", before.text);

    let climbs = [
        "..%2Ffraud%2Ffraud-ci",
        "%2E%2E%2Ffraud%2Ffraud-ci",
        "%2e%2e%2ffraud%2ffraud-ci",
        "..%5Cfraud%5Cfraud-ci",
        "fraud-ci%00",
        "FRAUD-CI",
    ];
    for c in climbs {
        let routes: Vec<(Method, String, Option<Value>)> = vec![
            (
                Method::GET,
                format!("/v1/teams/payments/consumers/{c}"),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/teams/payments/consumers/{c}"),
                Some(json!({})),
            ),
            (
                Method::DELETE,
                format!("/v1/teams/payments/consumers/{c}"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/teams/payments/consumers/{c}/token"),
                None,
            ),
            (
                Method::GET,
                format!("/v1/teams/payments/consumers/{c}/certificates"),
                None,
            ),
            (
                Method::PUT,
                format!("/v1/teams/payments/consumers/{c}/issuer-acl"),
                Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=x" })),
            ),
            (
                Method::DELETE,
                format!("/v1/teams/payments/consumers/{c}/issuer-acl"),
                None,
            ),
            (Method::GET, format!("/v1/teams/{c}/consumers"), None),
            (
                Method::GET,
                format!(
                    "/v1/teams/payments/credentials/{}",
                    c.replace("fraud-ci", "fraud-db")
                ),
                None,
            ),
            (
                Method::DELETE,
                format!(
                    "/v1/credentials/{}?team=payments",
                    c.replace("fraud-ci", "fraud-db")
                ),
                None,
            ),
            (
                Method::GET,
                format!(
                    "/v1/credentials/{}/versions?team=payments",
                    c.replace("fraud-ci", "fraud-db")
                ),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/credentials/{}", c.replace("fraud-ci", "fraud-db")),
                Some(json!({ "team": "payments", "description": "x" })),
            ),
            (
                Method::DELETE,
                format!("/v1/credentials/fraud-db?team={c}"),
                None,
            ),
            (
                Method::GET,
                "/v1/credentials/fraud-db/versions?team=..%2Ffraud".to_owned(),
                None,
            ),
        ];
        for (method, path, body) in routes {
            let a = w
                .send(method.clone(), PAYMENTS_ADMIN, &path, body, Some("\"any\""))
                .await;
            assert!(
                a.status == 400 || a.status == 404 || a.status == 405,
                "{method} {path}: {} {}",
                a.status,
                a.text
            );
            assert!(
                !a.text.contains("fraud-v1") && !a.text.contains("kbt_"),
                "{path}: {}",
                a.text
            );
            if a.status == 400 {
                assert_eq!(a.body["error"]["code"], "invalid", "{path}: {}", a.text);
            }
        }
    }
    // A body naming a team or a shared team that is no name is refused alike.
    for body in [
        json!({ "name": "x", "team": "../fraud", "mode": "text", "value": "v" }),
        json!({ "name": "../fraud/x", "team": "payments", "mode": "text", "value": "v" }),
        json!({ "name": "x", "team": "payments", "mode": "text", "value": "v", "shared_team_slugs": ["../fraud"] }),
    ] {
        let a = w
            .send(
                Method::POST,
                PAYMENTS_ADMIN,
                "/v1/credentials",
                Some(body),
                None,
            )
            .await;
        assert_eq!(a.status, 400, "{}", a.text);
    }
    let a = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers",
            Some(json!({ "name": "../fraud/fraud-ci" })),
            None,
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text);

    // Fraud's consumer still holds its token, and its credential is as it was.
    assert_eq!(w.token_works(&fraud_token).await, 200);
    let after = w
        .send(
            Method::GET,
            FRAUD_ADMIN,
            "/v1/teams/fraud/credentials/fraud-db",
            None,
            None,
        )
        .await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.etag, before.etag, "fraud's credential changed");
    assert!(
        !root_has_escaped(w.dir.path()),
        "a file was written outside its team"
    );
}

/// Whether anything was written beside the store's team folders (a `..` that took effect).
fn root_has_escaped(root: &std::path::Path) -> bool {
    let store = root.join("store");
    [
        "credentials",
        "consumers",
        "records",
        "consumer-records",
        "material",
    ]
    .iter()
    .any(|d| {
        std::fs::read_dir(store.join(d))
            .map(|it| {
                it.flatten()
                    .any(|e| !matches!(e.file_name().to_str(), Some("payments" | "fraud")))
            })
            .unwrap_or(false)
    })
}

/// Issue 43, finding 2: a client certificate is public. Fraud's admin tries to pin payments'
/// gateway certificate — identified by the operator's issuer ACL — to a fraud consumer: 409
/// `identity_claimed` naming nobody, and the gateway stays payments'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_another_consumers_acl_claims_cannot_be_pinned() {
    let w = world().await;
    let root = w.dir.path();
    let gateway = w.clients.client_dn(
        root,
        "gw-1",
        &[(DnType::CommonName, "gw-1.payments.example")],
    );
    assert_eq!(
        w.certificate_works(&gateway).await,
        200,
        "payments' gateway"
    );
    w.create_consumer(FRAUD_ADMIN, "fraud", "fraud-squat").await;
    let pin = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/fraud/consumers/fraud-squat/certificates",
            Some(json!({ "certificate": gateway.cert_pem })),
            None,
        )
        .await;
    assert_eq!(pin.status, 409, "{}", pin.text);
    assert_eq!(pin.body["error"]["code"], "identity_claimed");
    assert!(
        !pin.text.contains("payments"),
        "names the owner: {}",
        pin.text
    );
    let shown = w
        .send(
            Method::GET,
            FRAUD_ADMIN,
            "/v1/teams/fraud/consumers/fraud-squat/certificates",
            None,
            None,
        )
        .await;
    assert_eq!(shown.body["certificates"], json!([]), "nothing written");
    // Still payments': the gateway reads what payments may (its consumer is payments-gw).
    assert_eq!(w.certificate_works(&gateway).await, 200);
    let (_, who) = w
        .server
        .send_with_identity(
            &w.server_ca.pem,
            &gateway.identity_pem(),
            "listen",
            Method::GET,
            "/v1/credentials",
        )
        .await;
    assert!(!who.contains("fraud"), "{who}");

    // Outside every identity domain, the matcher decides: a team without domains cannot pin
    // a certificate the operator's ACL (`shared-gw`) identifies.
    let shared = w.clients.client_dn(
        root,
        "shared-1",
        &[(DnType::CommonName, "shared-1.example.org")],
    );
    w.create_consumer(LEGACY_ADMIN, "legacy", "legacy-squat")
        .await;
    let pin = w
        .send(
            Method::POST,
            LEGACY_ADMIN,
            "/v1/teams/legacy/consumers/legacy-squat/certificates",
            Some(json!({ "certificate": shared.cert_pem })),
            None,
        )
        .await;
    assert_eq!(pin.status, 409, "{}", pin.text);
    assert_eq!(pin.body["error"]["code"], "identity_claimed");
    // And a team with domains pins only inside them.
    let elsewhere = w.clients.client_dn(
        root,
        "free-1",
        &[(DnType::CommonName, "free-1.example.net")],
    );
    let pin = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/fraud/consumers/fraud-squat/certificates",
            Some(json!({ "certificate": elsewhere.cert_pem })),
            None,
        )
        .await;
    assert_eq!(pin.status, 422, "{}", pin.text);
    assert_eq!(pin.body["error"]["code"], "outside_identity_domain");
}

/// Issue 43, finding 3: a CA certificate anyone can make — payments' clients CA's name and
/// public key, signed by the maker — is no issuer an ACL may name (it neither is nor chains
/// to `client_ca`); the real CA with a subject that could match payments' gateways is outside
/// fraud's identity domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_acl_whose_ca_carries_another_cas_key_is_refused() {
    let w = world().await;
    let root = w.dir.path();
    w.create_consumer(FRAUD_ADMIN, "fraud", "fraud-gws").await;
    let acl = "/v1/teams/fraud/consumers/fraud-gws/issuer-acl";
    let forged = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.impostor(), "subject": "CN=gw-*" })),
            None,
        )
        .await;
    assert_eq!(forged.status, 422, "{}", forged.text);
    assert_eq!(forged.body["error"]["code"], "issuer_untrusted");
    let overlapping = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=gw-*" })),
            None,
        )
        .await;
    assert_eq!(overlapping.status, 422, "{}", overlapping.text);
    assert_eq!(overlapping.body["error"]["code"], "outside_identity_domain");
    let gateway = w.clients.client_dn(
        root,
        "gw-2",
        &[(DnType::CommonName, "gw-2.payments.example")],
    );
    assert_eq!(w.certificate_works(&gateway).await, 200);

    // An ACL over a certificate only the operator's policy file pins (a fingerprint: nothing
    // to check the ACL against at write time; here in fraud's own domain) takes nothing and
    // locks nothing out: the operator's claim outranks an API-made one.
    let broad = w
        .send(
            Method::PUT,
            FRAUD_ADMIN,
            acl,
            Some(json!({ "issuer_ca": w.clients.pem, "subject": "CN=pinned.fraud.example" })),
            None,
        )
        .await;
    assert_eq!(broad.status, 200, "{}", broad.text);
    let (status, who) = w
        .server
        .send_with_identity(
            &w.server_ca.pem,
            &w.pinned.identity_pem(),
            "listen",
            Method::GET,
            "/v1/credentials",
        )
        .await;
    assert_eq!(status, 200, "{who}");
}

/// A certificate two consumers claim by any path (here the operator's own files: a pin and an
/// issuer ACL) is refused at authentication — on the main API and at the Vault API's
/// `auth/cert/login` — never given to the first match; audited as `ambiguous_identity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_two_consumers_claim_identifies_nobody() {
    let (dir, server_ca) = folder("unused");
    let root = dir.path();
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    std::fs::create_dir_all(root.join("policies")).unwrap();
    clients.write(&root.join("policies/clients-ca.pem"));
    let both = clients.client_dn(
        root,
        "gw-9",
        &[(DnType::CommonName, "gw-9.payments.example")],
    );
    let pin = both.fingerprint();
    fixture::Policy::new()
        .team("payments")
        .team("fraud")
        .and(&format!("[[consumer]]\nname = \"payments-gw\"\nteam = \"payments\"\nissuer_ca = \"clients-ca.pem\"\nsubject = \"CN=gw-*.payments.example\"\n[[consumer]]\nname = \"fraud-pin\"\nteam = \"fraud\"\ncert_sha256 = [{{ fingerprint = \"{pin}\" }}]"))
        .consumer("ops", "payments", "wall-ops")
        .and("admin = true")
        .write(root);
    fixture::Config::tls()
        .with("client_ca = \"clients-ca.pem\"\nclient_auth = \"optional\"")
        .with("[vault_api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"clients-ca.pem\"")
        .audit()
        .write(root);
    let server = Running::start(root, &server_ca.pem, 0, "info").await;
    let status = server
        .status_with_identity(&server_ca.pem, &both.identity_pem(), "/v1/credentials")
        .await;
    assert_eq!(status, 401);
    let (login, text) = server
        .send_with_identity(
            &server_ca.pem,
            &both.identity_pem(),
            "vault_api",
            Method::POST,
            "/v1/auth/cert/login",
        )
        .await;
    assert_ne!(login, 200, "the Vault API gave it a token: {text}");
    let other = clients.client_dn(
        root,
        "gw-8",
        &[(DnType::CommonName, "gw-8.payments.example")],
    );
    let status = server
        .status_with_identity(&server_ca.pem, &other.identity_pem(), "/v1/credentials")
        .await;
    assert_eq!(status, 200, "a certificate only the ACL claims");
    let audit = std::fs::read_to_string(root.join("audit.log")).unwrap_or_default();
    assert!(audit.contains("ambiguous_identity"), "{audit}");
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .bearer_auth("wall-ops")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keybroker_ambiguous_identities_total 2")),
        "{metrics}"
    );
}

/// Issue 43: a team admin takes a consumer name the operator later adds to a policy file.
/// The operator's reload — which also revokes a token — applies whole: the policy file wins,
/// the store entry is set aside (its token stops working, the gauge says so), and writes go
/// on for every team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_name_never_stops_the_operators_reload() {
    let w = world().await;
    let root = w.dir.path();
    let squat = w
        .create_consumer(FRAUD_ADMIN, "fraud", "payments-api")
        .await;
    let squat_token = squat.body["token"].as_str().unwrap().to_owned();
    assert_eq!(w.token_works(&squat_token).await, 200);
    assert_eq!(w.token_works(GW).await, 200);

    // The operator adds payments-api and revokes gw's token (a new one), in one edit.
    let file = root.join("policies/p.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&token_sha256(GW), &token_sha256("consumers-gw-token-2"));
    std::fs::write(
        &file,
        format!(
            "{text}[[consumer]]\nname = \"payments-api\"\nteam = \"payments\"\ntoken_sha256 = \"{}\"\n",
            token_sha256("consumers-payments-api")
        ),
    )
    .unwrap();
    let reload = w
        .send(Method::POST, OPS, "/v1/admin/reload", None, None)
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text);
    assert_eq!(w.token_works(GW).await, 401, "the revocation applied");
    assert_eq!(w.token_works("consumers-payments-api").await, 200);
    assert_eq!(
        w.token_works(&squat_token).await,
        401,
        "the squatted entry is set aside"
    );
    let metrics = w.send(Method::GET, OPS, "/metrics", None, None).await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == "keybroker_store_entries_quarantined 1"),
        "{}",
        metrics.text
    );
    // Writes go on, for either team.
    w.create_consumer(PAYMENTS_ADMIN, "payments", "payments-ci")
        .await;
    w.create_consumer(FRAUD_ADMIN, "fraud", "fraud-ci").await;
}

/// A write of a team the caller may not manage is decided before the write lock: one audit
/// line (denied), no intent line, nothing written — it queues behind no one's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_is_refused_before_it_takes_the_write_lock() {
    let w = world().await;
    w.create_consumer(PAYMENTS_ADMIN, "payments", "payments-ci")
        .await;
    let refused = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/payments/consumers/payments-ci/token",
            None,
            None,
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let lines: Vec<Value> = w
        .audit()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Value| l["action"] == "consumer.token")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["decision"], "denied", "{lines:#?}");
}

/// Squatting by revocation between teams without identity domains (with domains, another
/// team's certificate cannot be pinned at all): legacy pins a certificate of legacy-b's
/// (public), then revokes it. A revocation binds the team that made it — legacy cannot add it
/// back — but it is no claim on the certificate: legacy-b adds it to its own consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_another_team_revoked_does_not_keep_its_owner_out() {
    let w = world().await;
    let root = w.dir.path();
    let theirs = w
        .clients
        .client_dn(root, "api-2", &[(DnType::CommonName, "api-2.example.net")]);
    w.create_consumer(LEGACY_ADMIN, "legacy", "legacy-squat")
        .await;
    w.create_consumer(LEGACY_B_ADMIN, "legacy-b", "b-api").await;
    let squat = "/v1/teams/legacy/consumers/legacy-squat/certificates";
    let pinned = w
        .send(
            Method::POST,
            LEGACY_ADMIN,
            squat,
            Some(json!({ "certificate": theirs.cert_pem })),
            None,
        )
        .await;
    assert_eq!(pinned.status, 201, "{}", pinned.text);
    let fingerprint = pinned.body["fingerprint"].as_str().unwrap().to_owned();
    let revoked = w
        .send(
            Method::DELETE,
            LEGACY_ADMIN,
            &format!("{squat}/{fingerprint}"),
            None,
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let again = w
        .send(
            Method::POST,
            LEGACY_ADMIN,
            squat,
            Some(json!({ "certificate": theirs.cert_pem })),
            None,
        )
        .await;
    assert_eq!(
        again.status, 409,
        "revoked stays revoked in its team: {}",
        again.text
    );
    let owner = w
        .send(
            Method::POST,
            LEGACY_B_ADMIN,
            "/v1/teams/legacy-b/consumers/b-api/certificates",
            Some(json!({ "certificate": theirs.cert_pem })),
            None,
        )
        .await;
    assert_eq!(owner.status, 201, "{}", owner.text);
    assert_eq!(w.certificate_works(&theirs).await, 200);
}

/// `[store.quota]`: one team cannot spend another's room. Fraud fills its own quota of
/// credentials, bytes and consumers — each refusal 429 `quota_exceeded`, nothing written —
/// and payments still writes. A replace counts the credential once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_spends_only_its_own_store_quota() {
    let (dir, server_ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .team("fraud")
        .team_admin("payments-admin", "payments", PAYMENTS_ADMIN, &["payments"])
        .team_admin("fraud-admin", "fraud", FRAUD_ADMIN, &["fraud"])
        .write(root);
    fixture::Config::tls()
        .with("[store]\nkind = \"file\"\npath = \"store\"\n[store.quota]\ncredentials = 2\nconsumers = 1\nmaterial_bytes = 100")
        .write(root);
    let server = Running::start(root, &server_ca.pem, 0, "info").await;
    let send = |token: &'static str, path: &'static str, body: Value| {
        let req = server
            .client
            .post(server.url(path))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let text = |team: &str, name: &str, value: &str| json!({ "name": name, "team": team, "mode": "text", "value": value });
    let (s, t) = send(
        FRAUD_ADMIN,
        "/v1/credentials",
        text("fraud", "a", &"x".repeat(60)),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    // 60 + 50 bytes > 100: refused, nothing written.
    let (s, t) = send(
        FRAUD_ADMIN,
        "/v1/credentials",
        text("fraud", "b", &"x".repeat(50)),
    )
    .await;
    assert_eq!(s, 429, "{t}");
    assert!(t.contains("quota_exceeded"), "{t}");
    let (s, t) = send(FRAUD_ADMIN, "/v1/credentials", text("fraud", "b", "small")).await;
    assert_eq!(s, 201, "{t}");
    let (s, t) = send(FRAUD_ADMIN, "/v1/credentials", text("fraud", "c", "small")).await;
    assert_eq!(s, 429, "a third credential: {t}");
    assert!(!root.join("store/credentials/fraud/c.toml").exists());
    let (s, t) = send(
        FRAUD_ADMIN,
        "/v1/teams/fraud/consumers",
        json!({ "name": "f1" }),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let (s, t) = send(
        FRAUD_ADMIN,
        "/v1/teams/fraud/consumers",
        json!({ "name": "f2" }),
    )
    .await;
    assert_eq!(s, 429, "{t}");
    // A rotation of a counts a once: 90 + 5 ≤ 100.
    let etag = server
        .client
        .get(server.url("/v1/teams/fraud/credentials/a"))
        .bearer_auth(FRAUD_ADMIN)
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = server
        .client
        .put(server.url("/v1/credentials/a"))
        .bearer_auth(FRAUD_ADMIN)
        .header("if-match", etag)
        .json(&text("fraud", "a", &"y".repeat(90)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Payments' room is its own.
    for name in ["p1", "p2"] {
        let (s, t) = send(
            PAYMENTS_ADMIN,
            "/v1/credentials",
            text("payments", name, &"z".repeat(40)),
        )
        .await;
        assert_eq!(s, 201, "{t}");
    }
    let (s, t) = send(
        PAYMENTS_ADMIN,
        "/v1/teams/payments/consumers",
        json!({ "name": "p1" }),
    )
    .await;
    assert_eq!(s, 201, "{t}");
}

/// While the operator's files do not load (mid-edit), a team admin's write is put back and a
/// delete is stored but not yet in force — both 503, and neither answer carries a loader
/// line (the operator's paths, other teams' names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_operator_file_is_no_loader_output_for_a_team_admin() {
    let w = world().await;
    let root = w.dir.path();
    w.create_consumer(FRAUD_ADMIN, "fraud", "fraud-a").await;
    let file = root.join("policies/p.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!(
            "{good}[[consumer]]\nname = \"payments-secret-name\"\nteam = \"payments\"\nbroken =\n"
        ),
    )
    .unwrap();
    let made = w
        .send(
            Method::POST,
            FRAUD_ADMIN,
            "/v1/teams/fraud/consumers",
            Some(json!({ "name": "fraud-b" })),
            None,
        )
        .await;
    let deleted = w
        .send(
            Method::DELETE,
            FRAUD_ADMIN,
            "/v1/teams/fraud/consumers/fraud-a",
            None,
            None,
        )
        .await;
    for (answer, code) in [(&made, "policy_unavailable"), (&deleted, "reload_pending")] {
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert_eq!(answer.body["error"]["code"], code, "{}", answer.text);
        for leak in ["payments", "p.toml", root.to_str().unwrap()] {
            assert!(!answer.text.contains(leak), "{leak} in {}", answer.text);
        }
    }
    std::fs::write(&file, good).unwrap();
}

/// A revoked fingerprint stays revoked when its consumer is deleted — a tombstone only the
/// operator lifts — so a team admin cannot re-add what was revoked by deleting the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_outlives_its_consumer_until_the_operator_lifts_it() {
    let w = world().await;
    let root = w.dir.path();
    let cert = w.clients.client_dn(
        root,
        "api-9",
        &[(DnType::CommonName, "api-9.payments.example")],
    );
    w.create_consumer(PAYMENTS_ADMIN, "payments", "old-api")
        .await;
    let certs = "/v1/teams/payments/consumers/old-api/certificates";
    let added = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            certs,
            Some(json!({ "certificate": cert.cert_pem })),
            None,
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
    let fingerprint = added.body["fingerprint"].as_str().unwrap().to_owned();
    let revoked = w
        .send(
            Method::DELETE,
            OPS,
            &format!("{certs}/{fingerprint}"),
            None,
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let deleted = w
        .send(
            Method::DELETE,
            PAYMENTS_ADMIN,
            "/v1/teams/payments/consumers/old-api",
            None,
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    w.create_consumer(PAYMENTS_ADMIN, "payments", "new-api")
        .await;
    let new_certs = "/v1/teams/payments/consumers/new-api/certificates";
    let again = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            new_certs,
            Some(json!({ "certificate": cert.cert_pem })),
            None,
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(w.certificate_works(&cert).await, 401);
    // Only the operator lifts it; a team admin cannot.
    let lift = format!("/v1/teams/payments/revoked-certificates/{fingerprint}");
    let by_admin = w
        .send(Method::DELETE, PAYMENTS_ADMIN, &lift, None, None)
        .await;
    assert_eq!(by_admin.status, 403, "{}", by_admin.text);
    let by_operator = w.send(Method::DELETE, OPS, &lift, None, None).await;
    assert_eq!(by_operator.status, 204, "{}", by_operator.text);
    let added = w
        .send(
            Method::POST,
            PAYMENTS_ADMIN,
            new_certs,
            Some(json!({ "certificate": cert.cert_pem })),
            None,
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
}

/// Issue 46: a token of `auth/cert/login` carries the pin that identified its certificate:
/// when a team admin revokes that certificate, the token dies with it at once, while a token
/// of the consumer's other certificate lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_login_token_dies_with_the_pin_that_identified_it() {
    let (dir, server_ca) = folder("unused");
    let root = dir.path();
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    let first = clients.client_dn(root, "c1", &[(DnType::CommonName, "c1.example")]);
    let second = clients.client_dn(root, "c2", &[(DnType::CommonName, "c2.example")]);
    fixture::Policy::new()
        .team("legacy")
        .team_admin("legacy-admin", "legacy", LEGACY_ADMIN, &["legacy"])
        .write(root);
    fixture::Config::tls()
        .with("client_ca = \"clients-ca.pem\"\nclient_auth = \"optional\"")
        .with("[store]\nkind = \"file\"\npath = \"store\"")
        .with("[vault_api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server-key.pem\"\nclient_ca = \"clients-ca.pem\"")
        .audit()
        .write(root);
    let server = Running::start(root, &server_ca.pem, 0, "info").await;
    let send = |method: Method, path: String, body: Option<Value>| {
        let mut r = server
            .client
            .request(method, server.url(&path))
            .bearer_auth(LEGACY_ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, text) = send(
        Method::POST,
        "/v1/teams/legacy/consumers".into(),
        Some(json!({ "name": "gw" })),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    for id in [&first, &second] {
        let (status, text) = send(
            Method::POST,
            "/v1/teams/legacy/consumers/gw/certificates".into(),
            Some(json!({ "certificate": id.cert_pem })),
        )
        .await;
        assert_eq!(status, 201, "{text}");
    }
    let token_of = |id: &Issued| {
        let pem = id.identity_pem();
        let server = &server;
        let ca = server_ca.pem.clone();
        async move {
            let (status, text) = server
                .send_with_identity(&ca, &pem, "vault_api", Method::POST, "/v1/auth/cert/login")
                .await;
            assert_eq!(status, 200, "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            v["auth"]["client_token"].as_str().unwrap().to_owned()
        }
    };
    let lookup = |token: String| {
        let url = format!(
            "https://localhost:{}/v1/auth/token/lookup-self",
            server.port_of("vault_api")
        );
        let client = server.client.clone();
        async move {
            client
                .get(url)
                .header("X-Vault-Token", token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let t1 = token_of(&first).await;
    let t2 = token_of(&second).await;
    assert_eq!(lookup(t1.clone()).await, 200);
    assert_eq!(lookup(t2.clone()).await, 200);
    let (status, text) = send(
        Method::DELETE,
        format!(
            "/v1/teams/legacy/consumers/gw/certificates/{}",
            first.fingerprint()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(lookup(t1).await, 403, "a token of the revoked certificate");
    assert_eq!(
        lookup(t2).await,
        200,
        "a token of the certificate still pinned"
    );
}
