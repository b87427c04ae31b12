//! The API over real TLS (docs/THREATS.md rows 8 and 15, issue 7's "done when"): client
//! certificates, the forwarded-certificate header from trusted proxies only, bearer tokens,
//! credentials, reload keeping the old policy, the audit trail and metrics.

mod support {
    pub mod pki;
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use keybroker::testing::api;
use keybroker::testing::app::App;
use keybroker::testing::config::Config;
use support::pki::{Ca, Issued};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The one trusted proxy address of the fixture.
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const HEADER: &str = "X-Gravitee-Client-Cert";
const FRAUD_CANARY: &str = "FRAUD-CANARY-7d1e0c";

struct Fixture {
    dir: tempfile::TempDir,
    server_ca: Ca,
    /// The client CA (`client_ca`, and the fraud workers' `issuer_ca`).
    clients: Ca,
    /// Pinned by fingerprint: consumer `gw-payments`.
    payments: Issued,
    /// Matches the issuer ACL of `fraud-workers`.
    fraud: Issued,
    /// From the client CA, but known to no consumer.
    stranger: Issued,
    /// Self-signed; its fingerprint is pinned, but it does not chain to client_ca.
    rogue: Issued,
    partner_cert: String,
    partner_key: String,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Fixture {
    fn new(audit: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["tls", "secrets/payments", "secrets/fraud", "policies"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let tls = root.join("tls");
        let server_ca = Ca::new("keybroker test server CA");
        server_ca.server(&tls, "server");
        let clients = Ca::new("gateway clients CA");
        clients.write(&tls.join("clients-ca.pem"));
        let payments = clients.client(&tls, "payments", "gw-1.payments.example");
        let fraud = clients.client(&tls, "fraud", "worker-7.fraud.example");
        let stranger = clients.client(&tls, "stranger", "stranger.example");
        let rogue = Ca::new("rogue").client(&tls, "rogue", "gw-1.payments.example");

        // The partner's mTLS material; the key is stored as CyberArk CCP flattens it.
        let partner_ca = Ca::new("partner bank CA");
        let partner = partner_ca.client(&tls, "partner", "client.partner.example");
        let flat_key = partner.key_pem.trim_end().replace('\n', " ");
        std::fs::write(
            root.join("secrets/payments/partner.json"),
            json!({"cert": partner.cert_pem, "key": flat_key, "ca": partner_ca.pem}).to_string(),
        )
        .unwrap();
        std::fs::write(
            root.join("secrets/fraud/internal.json"),
            json!({ "token": FRAUD_CANARY }).to_string(),
        )
        .unwrap();

        let policy = format!(
            r#"
[[team]]
slug = "payments"
[[team]]
slug = "fraud"

[[consumer]]
name = "gw-payments"
team = "payments"
cert_sha256 = [{{ fingerprint = "{}" }}]

[[consumer]]
name = "fraud-workers"
team = "fraud"
issuer_ca = "../tls/clients-ca.pem"
subject = "CN=worker-*.fraud.example"

[[consumer]]
name = "pinned-rogue"
team = "payments"
cert_sha256 = [{{ fingerprint = "{}" }}]

[[consumer]]
name = "ops"
team = "payments"
token_sha256 = "{}"
admin = true

[[consumer]]
name = "viewer"
team = "fraud"
token_sha256 = "{}"

[[credential]]
name = "partner-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_payments/partner $KEY_cert"
client_private_key = "$SECRET_payments/partner $KEY_key"
root_certificate = "$SECRET_payments/partner $KEY_ca"

[[credential]]
name = "fraud-internal"
mode = "text"
team = "fraud"
allowed_hosts = ["*.fraud.example"]
value = "$SECRET_fraud/internal $KEY_token"
"#,
            payments.fingerprint(),
            rogue.fingerprint(),
            sha256_hex("ops-token"),
            sha256_hex("viewer-token"),
        );
        std::fs::write(root.join("policies/teams.toml"), policy).unwrap();
        std::fs::write(
            root.join("keybroker.toml"),
            format!(
                r#"
policies = "policies"
default_source = "files"

[server]
listen = "127.0.0.1:0"
tls_cert = "tls/server.pem"
tls_key = "tls/server-key.pem"
client_ca = "tls/clients-ca.pem"
client_auth = "optional"
trusted_proxies = ["127.0.0.2/32"]
client_cert_header = "{HEADER}"

[[source]]
name = "files"
kind = "file"
path = "secrets"

{audit}
"#
            ),
        )
        .unwrap();
        Self {
            dir,
            server_ca,
            clients,
            payments,
            fraud,
            stranger,
            rogue,
            partner_cert: partner.cert_pem,
            partner_key: partner.key_pem,
        }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: &Path) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = Config::load(config).unwrap();
        // What `serve` assembles, as `serve` does.
        let options = keybroker::testing::app::Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            dev: false,
            open_audit: true,
        };
        let App {
            broker, state, tls, ..
        } = App::build(&config, &options).unwrap();
        assert!(tls.is_tls());
        broker.spawn_startup_checks();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(keybroker::testing::door::listen::serve(
            listener,
            tls,
            api::router(Arc::new(state)),
            (&config.limits).into(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn client(fx: &Fixture, identity: Option<&Issued>, from: IpAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fx.server_ca.pem.as_bytes()).unwrap())
        .local_address(from)
        .resolve("localhost", SocketAddr::from((LOCAL, 0)));
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(&id.identity_pem()).unwrap());
    }
    b.build().unwrap()
}

async fn material(
    c: &reqwest::Client,
    s: &Server,
    name: &str,
    host: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let mut req = c
        .post(s.url(&format!("/v1/credentials/{name}/material")))
        .json(&json!({ "host": host }));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    (status, resp.json().await.unwrap())
}

fn b64_der(i: &Issued) -> String {
    base64::engine::general_purpose::STANDARD.encode(&i.der)
}

#[tokio::test]
async fn client_certificates_decide_who_gets_mtls_material() {
    let fx = Fixture::new("[audit]\npath = \"audit.log\"\nfsync = \"never\"");
    let s = Server::start(&fx.path("keybroker.toml")).await;

    // The pinned gateway gets the partner material for the allowed host, the key restored
    // byte for byte from its flattened form.
    let gw = client(&fx, Some(&fx.payments), LOCAL);
    let (status, body) = material(&gw, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credential"], "partner-api");
    assert_eq!(body["certificate"], fx.partner_cert.as_str());
    assert_eq!(body["private_key"], fx.partner_key.as_str());
    assert!(
        body["ca"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(body["metadata"]["repairs"][0]["role"], "client_private_key");
    assert!(
        body["metadata"]["certificate"]["days_left"]
            .as_i64()
            .unwrap()
            > 0
    );

    // A disallowed host, another team's TEAM credential and a credential that does not
    // exist: the same 403, the same body.
    let (status, wrong_host) = material(&gw, &s, "partner-api", "evil.example", &[]).await;
    assert_eq!(status, 403);
    let (status, other_team) = material(&gw, &s, "fraud-internal", "x.fraud.example", &[]).await;
    assert_eq!(status, 403);
    let (status, missing) = material(&gw, &s, "no-such-credential", "x.fraud.example", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(wrong_host, other_team);
    assert_eq!(other_team, missing);
    assert_eq!(missing["error"]["code"], "denied");

    // The issuer ACL identifies the fraud worker, who gets its own team's credential.
    let fraud = client(&fx, Some(&fx.fraud), LOCAL);
    let (status, body) = material(&fraud, &s, "fraud-internal", "a.fraud.example", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], FRAUD_CANARY);
    let (status, _) = material(&fraud, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 403);

    // No certificate, and a valid certificate of nobody: 401.
    let anonymous = client(&fx, None, LOCAL);
    let (status, body) = material(&anonymous, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let stranger = client(&fx, Some(&fx.stranger), LOCAL);
    let (status, _) = material(&stranger, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 401);
    // A certificate from another CA fails the handshake itself.
    let rogue = client(&fx, Some(&fx.rogue), LOCAL);
    let refused = rogue
        .post(s.url("/v1/credentials/partner-api/material"))
        .json(&json!({"host": "api.partner.example"}))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a rogue certificate must not complete the handshake"
    );

    // Listing and metadata show only what the caller may see, never values.
    let list: Value = gw
        .get(s.url("/v1/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["partner-api"]);
    let info = gw
        .get(s.url("/v1/credentials/partner-api"))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info_text = info.text().await.unwrap();
    assert!(!info_text.contains("PRIVATE KEY"), "{info_text}");
    let info: Value = serde_json::from_str(&info_text).unwrap();
    assert_eq!(info["status"], "ok");
    assert_eq!(info["certificate"]["subject"], "CN=client.partner.example");
    let hidden = gw
        .get(s.url("/v1/credentials/fraud-internal"))
        .send()
        .await
        .unwrap();
    let missing = gw
        .get(s.url("/v1/credentials/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (hidden.status().as_u16(), missing.status().as_u16()),
        (404, 404)
    );

    // Every decision left one audit line, none with a value.
    let audit = std::fs::read_to_string(fx.path("audit.log")).unwrap();
    assert!(!audit.contains(FRAUD_CANARY) && !audit.contains("PRIVATE KEY"));
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let material_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["action"] == "credential.material")
        .collect();
    // 401s are audited as `authenticate`; the failed handshake never reached HTTP.
    assert_eq!(material_lines.len(), 6, "{audit}");
    assert_eq!(material_lines[0]["consumer"], "gw-payments");
    assert_eq!(material_lines[0]["decision"], "allowed");
    assert_eq!(material_lines[0]["repairs"][0], "spaces_to_newlines");
    assert_eq!(material_lines[1]["decision"], "denied");
    assert_eq!(material_lines[1]["host"], "evil.example");
    // The trail tells the auditor why; the caller only got "denied".
    assert_eq!(material_lines[1]["reason"], "host_not_allowed");
    assert!(
        lines
            .iter()
            .any(|l| l["action"] == "authenticate" && l["reason"] == "missing_credentials"),
        "{audit}"
    );

    // Metrics name teams' credentials: on the consumer-facing listener, an anonymous caller
    // and a consumer that is not an admin are refused.
    let refused = anonymous.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = anonymous
        .get(s.url("/metrics"))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // Metrics count the requests and show the certificate's days to expiry.
    let metrics = anonymous
        .get(s.url("/metrics"))
        .bearer_auth("ops-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "keybroker_requests_total{door=\"api\",route=\"/v1/credentials/{name}/material\",decision=\"ok\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "keybroker_certificate_expiry_timestamp_seconds{kind=\"credential\",name=\"payments/partner-api\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("keybroker_cache_requests_total{result=\"hit\"}"));
    let ready = anonymous.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    s.stop().await;
}

/// THREATS row 19: a certificate of the trusted client CA whose attribute *values* render
/// like the fraud workers' subject (`CN=worker-*.fraud.example`) is nobody — over TLS and
/// through the forwarded-certificate header. The subject is matched attribute by attribute.
#[tokio::test]
async fn threat_19_injected_subject_attributes_do_not_impersonate() {
    use rcgen::DnType;
    let fx = Fixture::new("");
    let s = Server::start(&fx.path("keybroker.toml")).await;
    let clients = &fx.clients;
    let tls = fx.path("tls");
    let forged = [
        clients.client_dn(
            &tls,
            "inject-cn",
            &[(DnType::CommonName, "gateway-9, CN=worker-1.fraud.example")],
        ),
        clients.client_dn(
            &tls,
            "inject-ou",
            &[
                (
                    DnType::OrganizationalUnitName,
                    "x, CN=worker-1.fraud.example",
                ),
                (DnType::CommonName, "gateway-9"),
            ],
        ),
    ];
    let proxy = client(&fx, None, PROXY);
    for cert in &forged {
        let direct = client(&fx, Some(cert), LOCAL);
        let (status, body) = material(&direct, &s, "fraud-internal", "a.fraud.example", &[]).await;
        assert_eq!(status, 401, "over TLS: {body}");
        let header = [(HEADER, b64_der(cert))];
        let (status, body) =
            material(&proxy, &s, "fraud-internal", "a.fraud.example", &header).await;
        assert_eq!(status, 401, "forwarded: {body}");
        assert!(!body.to_string().contains(FRAUD_CANARY));
    }
    // The genuine worker still gets in, both ways.
    let worker = client(&fx, Some(&fx.fraud), LOCAL);
    let (status, _) = material(&worker, &s, "fraud-internal", "a.fraud.example", &[]).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn the_certificate_header_counts_only_from_trusted_proxies() {
    let fx = Fixture::new("");
    let s = Server::start(&fx.path("keybroker.toml")).await;
    let forwarded = vec![(HEADER, b64_der(&fx.payments))];

    // A forged header from an address that is not a trusted proxy: 401.
    let direct = client(&fx, None, LOCAL);
    let (status, _) = material(
        &direct,
        &s,
        "partner-api",
        "api.partner.example",
        &forwarded,
    )
    .await;
    assert_eq!(status, 401);

    // From the trusted proxy, in each encoding gateways use: 200.
    let proxy = client(&fx, None, PROXY);
    let pem = fx.payments.cert_pem.clone();
    let encodings = [
        b64_der(&fx.payments),
        base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string(),
    ];
    for value in encodings {
        let (status, body) = material(
            &proxy,
            &s,
            "partner-api",
            "api.partner.example",
            &[(HEADER, value)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["private_key"], fx.partner_key.as_str());
    }

    // Still verified: a pinned certificate that does not chain to client_ca is refused.
    let rogue = vec![(HEADER, b64_der(&fx.rogue))];
    let (status, _) = material(&proxy, &s, "partner-api", "api.partner.example", &rogue).await;
    assert_eq!(status, 401);
    // The header twice, or named hop-by-hop in Connection: refused.
    let twice = vec![
        (HEADER, b64_der(&fx.payments)),
        (HEADER, b64_der(&fx.fraud)),
    ];
    let (status, _) = material(&proxy, &s, "partner-api", "api.partner.example", &twice).await;
    assert_eq!(status, 401);
    let hop = vec![
        (HEADER, b64_der(&fx.payments)),
        ("Connection", HEADER.to_owned()),
    ];
    let (status, _) = material(&proxy, &s, "partner-api", "api.partner.example", &hop).await;
    assert_eq!(status, 401);
    // Garbage in the header: 401, not 500.
    let junk = vec![(HEADER, "bm90IGEgY2VydGlmaWNhdGU=".to_owned())];
    let (status, _) = material(&proxy, &s, "partner-api", "api.partner.example", &junk).await;
    assert_eq!(status, 401);

    // A TLS client certificate wins over the header: the fraud worker stays the fraud worker.
    let fraud_via_proxy = client(&fx, Some(&fx.fraud), PROXY);
    let (status, _) = material(
        &fraud_via_proxy,
        &s,
        "partner-api",
        "api.partner.example",
        &forwarded,
    )
    .await;
    assert_eq!(status, 403);
    s.stop().await;
}

#[tokio::test]
async fn a_broken_policy_on_reload_keeps_the_old_one() {
    let fx = Fixture::new("[audit]\npath = \"audit.log\"");
    let s = Server::start(&fx.path("keybroker.toml")).await;
    let gw = client(&fx, Some(&fx.payments), LOCAL);
    let ops = client(&fx, None, LOCAL);
    let reload = || {
        ops.post(s.url("/v1/admin/reload"))
            .bearer_auth("ops-token")
            .send()
    };

    // Non-admins may not reload.
    let viewer = ops
        .post(s.url("/v1/admin/reload"))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 403);

    let good = std::fs::read_to_string(fx.path("policies/teams.toml")).unwrap();
    std::fs::write(fx.path("policies/broken.toml"), "[[consumer]]\nname = 3\n").unwrap();
    let resp = reload().await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "policy_invalid");
    assert!(
        body["error"]["details"][0]
            .as_str()
            .unwrap()
            .contains("broken.toml:2"),
        "{body}"
    );
    let (status, _) = material(&gw, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 200, "the old policy stays in force");

    // A valid change takes effect: the gateway's pin is removed.
    std::fs::remove_file(fx.path("policies/broken.toml")).unwrap();
    let without_pin = good.replace(&fx.payments.fingerprint(), &fx.stranger.fingerprint());
    std::fs::write(fx.path("policies/teams.toml"), without_pin).unwrap();
    let resp = reload().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (status, _) = material(&gw, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 401);

    // Purge: admin only, unknown sources are 404.
    let purge = |token: &'static str, source: &'static str| {
        ops.post(s.url("/v1/admin/cache/purge"))
            .bearer_auth(token)
            .json(&json!({ "source": source }))
            .send()
    };
    assert_eq!(purge("ops-token", "files").await.unwrap().status(), 200);
    assert_eq!(purge("ops-token", "nope").await.unwrap().status(), 404);
    assert_eq!(purge("viewer-token", "files").await.unwrap().status(), 403);
    s.stop().await;

    // The refusals and the reloads are in the audit trail.
    let audit = std::fs::read_to_string(fx.path("audit.log")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said = |action: &str, consumer: &str, reason: &str| {
        lines
            .iter()
            .any(|l| l["action"] == action && l["consumer"] == consumer && l["reason"] == reason)
    };
    assert!(said("admin.reload", "viewer", "admin_required"), "{audit}");
    assert!(said("admin.purge", "viewer", "admin_required"), "{audit}");
    assert!(said("admin.reload", "ops", "rejected"), "{audit}");
    assert!(said("admin.reload", "ops", "allowed"), "{audit}");
}

#[tokio::test]
async fn an_unwritable_audit_trail_fails_closed_unless_configured_open() {
    // /dev/full accepts the open and refuses every write (ENOSPC).
    let closed = Fixture::new("[audit]\npath = \"/dev/full\"\nfsync = \"never\"");
    let s = Server::start(&closed.path("keybroker.toml")).await;
    let gw = client(&closed, Some(&closed.payments), LOCAL);
    let (status, body) = material(&gw, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert!(!body.to_string().contains("PRIVATE KEY"));
    // Admin actions are refused the same way.
    let reload = client(&closed, None, LOCAL)
        .post(s.url("/v1/admin/reload"))
        .bearer_auth("ops-token")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 503);
    let body: Value = reload.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    s.stop().await;

    let open =
        Fixture::new("[audit]\npath = \"/dev/full\"\nfsync = \"never\"\nfail_closed = false");
    let s = Server::start(&open.path("keybroker.toml")).await;
    let gw = client(&open, Some(&open.payments), LOCAL);
    let (status, _) = material(&gw, &s, "partner-api", "api.partner.example", &[]).await;
    assert_eq!(status, 200);
    s.stop().await;
}
