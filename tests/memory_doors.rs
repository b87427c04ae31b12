//! docs/THREATS.md row 29, every door and every source (issue 49): values read from OpenBao
//! KV v2 and KV v1 (with escapes in their JSON), a key issued by OpenBao PKI, a key ingested through the
//! management API (flattened, so it is repaired) and a text value ingested alike — each read at
//! `/v1/resolve` (one field and the whole secret), at `/material`, at the Vault-compatible API
//! and, for a key, used by the egress proxy for an mTLS call to a real nginx — leaves no copy
//! in the server process once its cache entries are purged: searched by a 16-byte prefix of
//! each random part (a half-overwritten leftover still holds one), in every encoding the value
//! passes through (raw and JSON-escaped text hold the same random run; a key also as a run of
//! its PEM base64 body and as its DER scalar).
//!
//! Ten server processes, each with fresh values: five purge the cache, five let it expire (a 1 s
//! TTL, nothing purged). A leftover that shows in one process of two escapes five with
//! probability 1/32 — and issue 49's showed in 7 of 8.

#![cfg(target_os = "linux")]

mod support {
    pub mod memscan;
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use support::memscan::{key_needles, left_after, scan};
use support::pki::Ca;
use support::server::{Running, folder, token_sha256};

const GW: &str = "doors-gw-token";
const RUNS: usize = 10;
const ROUNDS: usize = 4;

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw[..]).unwrap();
    hex::encode(raw)
}

fn pki_mount(bao: &support::openbao::OpenBao) {
    bao.cli(&["secrets", "enable", "pki"]);
    bao.cli(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
    bao.cli(&[
        "write",
        "-field=certificate",
        "pki/root/generate/internal",
        "common_name=keybroker memory test root",
        "ttl=87600h",
    ]);
    bao.cli(&[
        "write",
        "pki/roles/gateway",
        "allowed_domains=payments.example",
        "allow_subdomains=true",
        "client_flag=true",
        "server_flag=false",
        "max_ttl=2h",
        "key_type=ec",
        "key_bits=256",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_door_and_no_source_leaves_a_copy_after_purge() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bao = support::openbao::OpenBao::start();
    pki_mount(&bao);
    bao.cli(&["secrets", "enable", "-path=kvone", "-version=1", "kv"]);

    // One nginx for every run: it requires a client certificate of `partner` and answers 200
    // with the subject it verified.
    let base = tempfile::tempdir().unwrap();
    let prefix = base.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let upstream_ca = Ca::new("upstream CA");
    let upstream = upstream_ca.server_for(&prefix, "upstream", &["api.partner.example"]);
    let partner = Ca::new("partner CA");
    partner.write(&prefix.join("partner-ca.pem"));
    let (_nginx, ports) = support::nginx::Nginx::start(&prefix, 1, |ports| {
        format!(
            r#"
  server {{
    listen 127.0.0.1:{up} ssl;
    server_name api.partner.example;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {p}/partner-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 "verified $ssl_client_s_dn\n"; }}
  }}
"#,
            up = ports[0],
            p = prefix.display(),
            cert = upstream.cert.display(),
            key = upstream.key.display(),
        )
    });
    let up = ports[0];

    for run in 0..RUNS {
        // Fresh values per run; the random parts' lengths vary, so where their bytes fall in
        // a hasher's block or a buffer differs from run to run.
        // Odd runs never purge: their copies must go by expiry.
        let expiry = run % 2 == 1;
        let r_field = random_hex(8 + run);
        let r_tail = random_hex(8);
        let r_user = random_hex(8 + run);
        let r_text = random_hex(8 + run);
        let r_v1 = random_hex(8 + run);
        let v1_value = format!("{r_v1}-kv1\n\"v1\"");
        let password = format!("{r_field}-vault\n{r_tail} \"q\" \\ end");
        let user = format!("{r_user}-vuser");
        let text = format!("{r_text}-ingested\nline \"two\"");
        let (dir, ca) = folder("unused");
        let root = dir.path();
        let vault_client = partner.client(root, "vault-client", "vault-client");
        let ingest_client = partner.client(root, "ingest-client", "ingest-client");
        bao.cli(&[
            "kv",
            "put",
            "secret/doors/app",
            &format!("password={password}"),
            &format!("user={user}"),
        ]);
        bao.cli(&[
            "kv",
            "put",
            "kvone/doors/app",
            &format!("password={v1_value}"),
        ]);
        bao.cli(&[
            "kv",
            "put",
            "secret/doors/tls",
            &format!("cert={}", vault_client.cert_pem),
            &format!("key={}", vault_client.key_pem),
        ]);
        upstream_ca.write(&root.join("upstream-ca.pem"));
        std::fs::write(
            root.join("policies/p.toml"),
            format!(
                r#"
[[team]]
slug = "payments"
[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{gw}"
admin = true
admin_teams = ["payments"]
vault_api_host = "api.partner.example"
[[grant]]
team = "payments"
source = "vault"
paths = ["doors/*"]
allowed_hosts = ["api.partner.example"]
[[grant]]
team = "payments"
source = "vault1"
paths = ["doors/*"]
allowed_hosts = ["api.partner.example"]
[[grant]]
team = "payments"
source = "pki"
paths = ["gateway"]
allowed_hosts = ["api.partner.example"]
[[credential]]
name = "vdb"
mode = "fields"
team = "payments"
allowed_hosts = ["api.partner.example"]
value = "$SECRET_vault:doors/app"
[[credential]]
name = "v1db"
mode = "text"
team = "payments"
allowed_hosts = ["api.partner.example"]
value = "$SECRET_vault1:doors/app $KEY_password"
[[credential]]
name = "vault-tls"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_vault:doors/tls $KEY_cert"
client_private_key = "$SECRET_vault:doors/tls $KEY_key"
[[credential]]
name = "pki-tls"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_pki:gateway $KEY_certificate"
client_private_key = "$SECRET_pki:gateway $KEY_private_key"
root_certificate = "$SECRET_pki:gateway $KEY_issuing_ca"
"#,
                gw = token_sha256(GW)
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("kb.toml"),
            format!(
                r#"
policies = "policies"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
[vault_api]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
[egress]
listen = "127.0.0.1:0"
resolve = {{ "api.partner.example" = "127.0.0.1" }}
timeout = "10s"
ca_cert = "upstream-ca.pem"
[store]
kind = "file"
path = "store"
[cache]
ttl = "{ttl}"
max_stale = "0s"
[[source]]
name = "vault"
kind = "vault"
address = "{addr}"
[[source]]
name = "vault1"
kind = "vault"
address = "{addr}"
mount = "kvone"
[[source]]
name = "pki"
kind = "pki"
vault = "vault"
[source.profiles.gateway]
role = "gateway"
common_name = "gw.payments.example"
ttl = "{pki_ttl}"
"#,
                addr = bao.addr,
                ttl = if expiry { "1s" } else { "1h" },
                // An issued certificate's entry lives until its period (a third of the
                // profile's TTL) ends, whatever the cache's TTL: that is how it is reused.
                pki_ttl = if expiry { "3s" } else { "1h" },
            ),
        )
        .unwrap();
        let mut running = Running::start(root, &ca.pem, 0, "warn").await;
        let pid = running.pid();
        let client = running.client.clone();
        let vault_api = format!("https://localhost:{}", running.port_of("vault_api"));
        let egress = running.port_of("egress");
        let post = |path: &str, body: Value| {
            client
                .post(running.url(path))
                .bearer_auth(GW)
                .json(&body)
                .send()
        };

        // The management API's ingest: a text value with escapes, and a key flattened as CCP
        // hands it back (so the PEM repair runs over it).
        for body in [
            json!({"name": "ingested-text", "team": "payments", "mode": "text",
                   "value": text, "allowed_hosts": ["api.partner.example"]}),
            json!({"name": "ingested-tls", "team": "payments", "mode": "mtls",
                   "client_certificate": ingest_client.cert_pem,
                   "client_private_key": ingest_client.key_pem.trim_end().replace('\n', " "),
                   "root_certificate": partner.pem, "upstream_ca": upstream_ca.pem,
                   "allowed_hosts": ["api.partner.example"]}),
        ] {
            let r = post("/v1/credentials", body).await.unwrap();
            // The connection that carried the values closes with the answer.
            assert_eq!(
                r.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..])
            );
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        }
        // The store's definitions reach the policy by a reload: poll until served.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = post(
                "/v1/credentials/ingested-text/material",
                json!({"host": "api.partner.example"}),
            )
            .await
            .unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ingested credential is not served: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut pki_key = String::new();
        for _ in 0..ROUNDS {
            for document in [
                json!({ "p": "$SECRET_vault:doors/app $KEY_password" }),
                json!({ "all": "$SECRET_vault:doors/app" }),
            ] {
                let r = post(
                    "/v1/resolve",
                    json!({ "document": document, "host": "api.partner.example" }),
                )
                .await
                .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
            for name in [
                "vdb",
                "v1db",
                "vault-tls",
                "pki-tls",
                "ingested-text",
                "ingested-tls",
            ] {
                let r = post(
                    &format!("/v1/credentials/{name}/material"),
                    json!({"host": "api.partner.example"}),
                )
                .await
                .unwrap();
                assert_eq!(r.status(), 200, "{name}");
                let m: Value = r.json().await.unwrap();
                match name {
                    "vdb" => assert_eq!(m["fields"]["password"], password.as_str()),
                    "ingested-text" => assert_eq!(m["value"], text.as_str()),
                    "v1db" => assert_eq!(m["value"], v1_value.as_str()),
                    "vault-tls" => assert_eq!(m["private_key"], vault_client.key_pem.as_str()),
                    "ingested-tls" => {
                        assert_eq!(m["private_key"], ingest_client.key_pem.as_str())
                    }
                    _ => pki_key = m["private_key"].as_str().unwrap().to_owned(),
                }
            }
            for path in [
                "/v1/vault/data/doors/app",
                "/v1/vault1/data/doors/app",
                "/v1/credentials/data/vdb",
                "/v1/credentials/data/vault-tls",
                "/v1/credentials/data/ingested-text",
                "/v1/credentials/data/pki-tls",
            ] {
                let r = client
                    .get(format!("{vault_api}{path}"))
                    .header("x-vault-token", GW)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{path}");
            }
            for credential in ["vault-tls", "ingested-tls"] {
                let out = Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "-",
                        "-w",
                        "\n%{http_code}",
                        "-x",
                        &format!("http://127.0.0.1:{egress}"),
                        "-H",
                        &format!("Proxy-Authorization: Bearer {GW}"),
                        "-H",
                        &format!("Keybroker-Credential: {credential}"),
                        &format!("http://api.partner.example:{up}/"),
                    ])
                    .output()
                    .expect("curl runs");
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(out.ends_with("\n200"), "{credential}: {out}");
                assert!(out.contains("verified"), "{credential}: {out}");
            }
        }

        let mut needles = vec![
            ("vault field".to_owned(), r_field.as_bytes()[..16].to_vec()),
            (
                "vault field after its escape".to_owned(),
                r_tail.as_bytes()[..16].to_vec(),
            ),
            ("vault user".to_owned(), r_user.as_bytes()[..16].to_vec()),
            ("ingested text".to_owned(), r_text.as_bytes()[..16].to_vec()),
            ("kv v1 value".to_owned(), r_v1.as_bytes()[..16].to_vec()),
        ];
        needles.extend(key_needles("vault key", &vault_client.key_pem));
        needles.extend(key_needles("ingested key", &ingest_client.key_pem));
        needles.extend(key_needles("pki key", &pki_key));
        // Positive control (where entries live an hour): while cached, the scan sees them.
        let seen = if expiry {
            Vec::new()
        } else {
            scan(pid, &needles)
        };
        for label in [
            "vault field",
            "ingested text",
            "vault key (PEM base64)",
            "pki key (PEM base64)",
        ] {
            assert!(
                expiry || seen.iter().any(|s| s.starts_with(&format!("{label} at"))),
                "the scan cannot see the cached {label}: it would prove nothing"
            );
        }

        if !expiry {
            for source in ["vault", "vault1", "pki", "store"] {
                let r = post("/v1/admin/cache/purge", json!({ "source": source }))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "purge {source}");
            }
        }
        // Expiry: the 1 s entries (the issued certificate's: its 1 s period), the cache's
        // maintenance each second, connections at most half a TTL, the egress clients at most
        // `keep_alive` (5 s).
        let wait = Duration::from_secs(if expiry { 8 } else { 4 });
        let left = left_after(pid, &needles, wait).await;
        running.child.kill().await.unwrap();
        let how = if expiry { "expiry" } else { "purge" };
        assert!(
            left.is_empty(),
            "run {run}, after {how}: copies left: {left:#?}"
        );
    }
}
