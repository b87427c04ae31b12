//! Short-lived client certificates from a real OpenBao PKI mount (docs/PKI.md): a root CA and a
//! role in OpenBao, a `kind = "pki"` source, an mtls credential whose values name one of its
//! profiles. The certificate verifies against the CA, has the profile's name and `clientAuth`,
//! lives at most its TTL, is issued once for concurrent first uses and reused after, and the
//! private key never reaches a log.

mod support {
    pub mod fixture;
    pub mod nginx;
    pub mod openbao;
    pub mod pki;
    pub mod pki_bao;
    pub mod ports;
    pub mod server;
}

use serde_json::{Value, json};
use x509_parser::prelude::*;

use support::fixture;
use support::openbao::OpenBao;
use support::pki_bao::{answered, audited_bao, pem_der, pki_mount, sign, signed_count};
use support::server::{Running, folder};

const GW: &str = "pki-gw-token";
const OPS: &str = "pki-ops-token";
/// A consumer of another team, holding only public material.
const INTRUDER: &str = "pki-intruder-token";

/// Seconds since the epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (polling the clock, at most one minute) until a rotation period of `period`
/// seconds is at least a minute from its end, so a step that expects one certificate is not
/// cut by the schedule's own change of certificate.
async fn clear_of_a_period_end(period: u64) {
    while period - unix_now() % period < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn serve(bao: &OpenBao) -> (tempfile::TempDir, Running) {
    serve_with(bao, "").await
}

async fn serve_with(bao: &OpenBao, extra: &str) -> (tempfile::TempDir, Running) {
    serve_as(bao, None, extra).await
}

/// As [`serve_with`]; with `token`, the vault source uses that fixed token (the
/// environment's `VAULT_TOKEN`, which a login cannot replace) instead of the root token.
async fn serve_as(bao: &OpenBao, token: Option<&str>, extra: &str) -> (tempfile::TempDir, Running) {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    fixture::Policy::new()
        .team("payments")
        .consumer("gw", "payments", GW)
        .and("vault_api_host = \"api.partner.example\"")
        .consumer("ops", "payments", OPS)
        .and("admin = true")
        .team("other")
        .consumer("intruder", "other", INTRUDER)
        .and("[[credential]]\nname = \"partner-sign\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:gateway-sign $KEY_certificate\"")
        .and("[[credential]]\nname = \"partner-pki\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:gateway $KEY_certificate\"\nclient_private_key = \"$SECRET_pki:gateway $KEY_private_key\"\nroot_certificate = \"$SECRET_pki:gateway $KEY_issuing_ca\"")
        .grant("payments", "pki", &["fast"], &["api.partner.example"])
        .and("[[credential]]\nname = \"partner-fast\"\nmode = \"mtls\"\nteam = \"payments\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:fast $KEY_certificate\"\nclient_private_key = \"$SECRET_pki:fast $KEY_private_key\"\nroot_certificate = \"$SECRET_pki:fast $KEY_issuing_ca\"")
        .write(root);
    fixture::Config::tls()
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.gateway]\nrole = \"gateway\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\n[source.profiles.fast]\nrole = \"fast\"\ncommon_name = \"fast.payments.example\"\nttl = \"30s\"\n[source.profiles.gateway-sign]\nrole = \"signer\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\nissue = \"sign\"\nkey_type = \"ec\"\n{extra}",
            bao.addr
        ))
        .audit()
        .write(root);
    std::fs::write(root.join("server-ca.pem"), &ca.pem).unwrap();
    let running = match token {
        Some(t) => Running::start_with_vault_token(root, &ca.pem, "info", t).await,
        None => Running::start(root, &ca.pem, 0, "info").await,
    };
    (dir, running)
}

/// `POST /v1/admin/cache/purge` of the `pki` source, as the operator's admin.
async fn purge_pki(s: &Running) {
    let purged = s
        .client
        .post(s.url("/v1/admin/cache/purge"))
        .bearer_auth(OPS)
        .json(&json!({ "source": "pki" }))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
}

async fn material(s: &Running) -> (u16, Value) {
    let resp = s
        .client
        .post(s.url("/v1/credentials/partner-pki/material"))
        .bearer_auth(GW)
        .json(&json!({ "host": "api.partner.example" }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Issuances OpenBao answered, from its own audit log (a file audit device the test enables).
fn issued_count(audit: &std::path::Path) -> usize {
    answered(audit, "pki/issue/gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_issued_once_verified_and_reused() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    let ca_pem = pki_mount(&bao);
    let (dir, s) = serve(&bao).await;
    // Nothing issued before first use (the start-up sweep skips issued credentials unless
    // `[expiry] issue = true`); purged anyway, so the next uses are first uses whatever ran.
    purge_pki(&s).await;
    // The 1h profile rotates every 20 minutes: one period for the whole step.
    clear_of_a_period_end(1200).await;
    let before = issued_count(&bao_audit);

    // Ten first uses at once: one issuance.
    let answers = futures_like_join(&s, 10).await;
    let mut serials = Vec::new();
    for (status, m) in &answers {
        assert_eq!(*status, 200, "{m}");
        let der = pem_der(m["certificate"].as_str().unwrap());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        serials.push(cert.raw_serial_as_string());
    }
    serials.dedup();
    assert_eq!(
        serials.len(),
        1,
        "one certificate for concurrent first uses"
    );
    assert_eq!(
        issued_count(&bao_audit) - before,
        1,
        "one issuance in OpenBao"
    );

    // What was issued: the profile's name, a client certificate, at most its TTL, signed by
    // the mount's CA.
    let m = &answers[0].1;
    let der = pem_der(m["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "gw.payments.example");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth, "clientAuth");
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        life <= 3600 + 60,
        "lives at most its TTL (+ OpenBao's 30 s backdate): {life}"
    );
    let ca_der = pem_der(&ca_pem);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the PKI mount's CA");
    assert_eq!(
        m["ca"].as_str().unwrap().trim(),
        ca_pem.trim(),
        "the issuing CA is the credential's root"
    );

    // Reused: a later read is the same certificate, and nothing more is issued.
    let (_, again) = material(&s).await;
    assert_eq!(again["certificate"], m["certificate"]);
    assert_eq!(issued_count(&bao_audit) - before, 1);

    // The private key never reaches keybroker's logs or its audit trail; the serial does
    // reach the log (what an operator traces an issuance by).
    let key = m["private_key"].as_str().unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let body_line = key.lines().nth(1).unwrap();
    for f in ["stderr.log", "stdout.log", "audit.log"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        assert!(!text.contains(body_line), "the key in {f}");
    }
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("pki: certificate issued"), "{log}");
    // The audit line of each hand-out carries the certificate's serial.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let serial = format!("\"serial\":\"{}\"", cert.raw_serial_as_string());
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"credential.material\"") && l.contains(&serial)),
        "no material line with {serial}:\n{audit}"
    );

    // A consumer cannot issue by naming the source in a document: without a grant on `pki`
    // it is denied (the credential's decision covers only the credential), for a profile that
    // exists and one that does not alike — and nothing more is issued.
    for reference in [
        "$SECRET_pki:gateway $KEY_private_key",
        "$SECRET_pki:no-such-profile $KEY_private_key",
    ] {
        let resp = s
            .client
            .post(s.url("/v1/resolve"))
            .bearer_auth(GW)
            .json(&json!({ "document": { "k": reference }, "host": "api.partner.example" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{reference}");
    }
    assert_eq!(issued_count(&bao_audit) - before, 1);
}

/// Issue 44, one truth about a source: a pki source answers when the vault it issues through
/// does and refuses when it refuses. Its token revoked while serving, a read that needs an
/// issuance is the same outage a refused token at start is (503, `source_credentials_refused`
/// — not 502 `credential_unresolved`/`source_denied`); `/readyz` and the
/// `keybroker_source_available` gauge say the same; `check --online` reads the roles and
/// issues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_one_outage_for_the_pki_source_and_check_issues_nothing() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    pki_mount(&bao);
    let token = bao
        .cli(&["token", "create", "-field=token"])
        .trim()
        .to_owned();
    let (dir, s) = serve_as(&bao, Some(&token), "").await;
    let (status, m) = material(&s).await;
    assert_eq!(status, 200, "{m}");

    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
            .args(["check", "--online", "--config", "kb.toml"])
            .current_dir(dir.path())
            .env("VAULT_TOKEN", &token)
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_ADDR")
            .output()
            .unwrap()
    };
    let before = issued_count(&bao_audit);
    let out = check();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok: source pki: its vault source vault answered")
            && stdout.contains("ok: source pki: profile gateway: role pki/roles/gateway readable")
            && stdout.contains("ok: credential payments/partner-pki: not read"),
        "{stdout}"
    );
    assert_eq!(
        issued_count(&bao_audit),
        before,
        "check issued a certificate"
    );

    bao.cli(&["token", "revoke", &token]);
    purge_pki(&s).await;
    let (status, m) = material(&s).await;
    assert_eq!(status, 503, "{m}");
    assert_eq!(m["error"]["code"], "source_unavailable", "{m}");
    let reasons: Vec<&str> = m["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| *r == "source_credentials_refused"),
        "{m}"
    );
    // The probe and the gauge agree with the answer, and with each other.
    let ready: Value = s
        .client
        .get(s.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pki = ready["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "pki")
        .unwrap();
    assert_eq!(pki["available"], false, "{ready}");
    for source in ready["sources"].as_array().unwrap() {
        assert!(
            source["answered"] == true || source["available"] == false,
            "never answered, yet available: {ready}"
        );
    }
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keybroker_source_available{source=\"pki\"} 0"),
        "{metrics}"
    );
    // Started with the token already revoked: the same answer, and no source that never
    // answered is called available.
    let (_dir2, s2) = serve_as(&bao, Some(&token), "").await;
    let (status2, m2) = material(&s2).await;
    assert_eq!((status2, &m2), (status, &m));
    let ready: Value = s2
        .client
        .get(s2.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for source in ready["sources"].as_array().unwrap() {
        assert_eq!(source["answered"], false, "{ready}");
        assert_eq!(source["available"], false, "{ready}");
    }
    // The log lines about it are plain, and name what they are about.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let lines = support::server::log_lines(&log);
    let issued = support::server::logged(&lines, "pki: certificate issued").expect("{log}");
    assert_eq!(issued["source"], "pki", "{issued}");
    assert!(
        issued["period"].as_str().unwrap().parse::<u64>().is_ok(),
        "a period number: {issued}"
    );
    // And check says so, for the source and the vault under it.
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("problem: source pki: its vault source vault:")
            && stderr.contains("refused keybroker's own credentials"),
        "{stderr}"
    );
}

async fn futures_like_join(s: &Running, n: usize) -> Vec<(u16, Value)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url) = (
            s.client.clone(),
            s.url("/v1/credentials/partner-pki/material"),
        );
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(GW)
                .json(&json!({ "host": "api.partner.example" }))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The egress proxy presents the issued certificate to an upstream (a real nginx) that trusts
/// only the PKI mount's CA — the key never leaves keybroker — and verifies that upstream's
/// server certificate against the same CA (the credential's `root_certificate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_proxy_presents_the_issued_certificate_to_an_upstream_trusting_only_the_pki_ca()
{
    let bao = OpenBao::start();
    let ca_pem = pki_mount(&bao);
    bao.cli(&[
        "write",
        "pki/roles/server",
        "allowed_domains=api.partner.example",
        "allow_bare_domains=true",
        "server_flag=true",
        "client_flag=false",
        "max_ttl=2h",
    ]);
    let issued: Value = bao
        .cli(&[
            "write",
            "-format=json",
            "pki/issue/server",
            "common_name=api.partner.example",
            "ttl=1h",
        ])
        .parse()
        .unwrap();
    let up_dir = tempfile::tempdir().unwrap();
    let prefix = up_dir.path().join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(
        prefix.join("server.pem"),
        issued["data"]["certificate"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(
        prefix.join("server-key.pem"),
        issued["data"]["private_key"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(prefix.join("pki-ca.pem"), &ca_pem).unwrap();
    let (_nginx, ports) = support::nginx::Nginx::start(&prefix, 1, |ports| {
        format!(
            r#"
  access_log off;
  server {{
    listen 127.0.0.1:{up} ssl;
    server_name api.partner.example;
    ssl_certificate {p}/server.pem;
    ssl_certificate_key {p}/server-key.pem;
    ssl_client_certificate {p}/pki-ca.pem;
    ssl_verify_client on;
    location / {{ return 200 "verified $ssl_client_s_dn\n"; }}
  }}
"#,
            up = ports[0],
            p = prefix.display(),
        )
    });
    let (dir, s) = serve_with(
        &bao,
        "[egress]\nlisten = \"127.0.0.1:0\"\nresolve = { \"api.partner.example\" = \"127.0.0.1\" }\n[vault_api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-x",
            &format!("http://127.0.0.1:{}", s.port_of("egress")),
            "-H",
            &format!("Proxy-Authorization: Bearer {GW}"),
            "-H",
            "Keybroker-Credential: partner-pki",
            &format!("http://api.partner.example:{}/", ports[0]),
        ])
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("verified") && body.contains("CN=gw.payments.example"),
        "{body}\n{}",
        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
    );
    // The Vault-compatible API serves the same issued certificate (one issuance, one cache).
    let (_, m) = material(&s).await;
    let kv: Value = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/v1/credentials/data/partner-pki",
            s.port_of("vault_api")
        ))
        .header("X-Vault-Token", GW)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kv["data"]["data"]["certificate"], m["certificate"], "{kv}");
    assert!(
        kv["data"]["data"]["private_key"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );
}

/// Staged rotation: with `include_next`, the next period's certificate comes beside the
/// current one with when it takes over; it verifies against the CA like the current one, and
/// it is the very certificate served as current once its period begins (a gateway that
/// pre-loaded it switches to what keybroker then serves). A profile of `ttl = "30s"` rotates
/// every 10 s; the test polls the clock with a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_certificate_is_staged_ahead_and_becomes_the_current_one() {
    let bao = OpenBao::start();
    let ca_pem = pki_mount(&bao);
    let (dir, s) = serve(&bao).await;
    let read = |include_next: bool| {
        let req = s
            .client
            .post(s.url("/v1/credentials/partner-fast/material"))
            .bearer_auth(GW)
            .json(&json!({ "host": "api.partner.example", "include_next": include_next }))
            .send();
        async move {
            let resp = req.await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, m) = read(true).await;
    assert_eq!(status, 200, "{m}");
    let next = &m["next"];
    let (current_cert, next_cert) = (
        m["certificate"].as_str().unwrap().to_owned(),
        next["certificate"].as_str().unwrap().to_owned(),
    );
    assert_ne!(current_cert, next_cert, "the next is another certificate");
    assert!(
        next["private_key"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // Canary: the staged key reaches no log and no audit line.
    let next_key_line = next["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    for f in ["stderr.log", "stdout.log", "audit.log"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        assert!(!text.contains(&next_key_line), "the staged key in {f}");
    }
    let not_before = humantime::parse_rfc3339(next["not_before"].as_str().unwrap()).unwrap();
    let at = not_before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(at % 10, 0, "takes over at a period's start: {at}");
    assert!(
        at > unix_now().saturating_sub(1) && at <= unix_now() + 10,
        "{at}"
    );
    let ca_der = pem_der(&ca_pem);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let der = pem_der(&next_cert);
    let (_, staged) = X509Certificate::from_der(&der).unwrap();
    staged
        .verify_signature(Some(ca.public_key()))
        .expect("the next certificate is signed by the PKI CA");
    assert!(
        staged.validity().not_after.timestamp() >= i64::try_from(at).unwrap() + 20,
        "valid for all of its period and one more"
    );
    // Without include_next: no next.
    let (_, plain) = read(false).await;
    assert!(plain.get("next").is_none(), "{plain}");

    // When the certificate served changes, it changes to the staged one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, now) = read(false).await;
        assert_eq!(status, 200, "{now}");
        let served = now["certificate"].as_str().unwrap();
        if served != current_cert {
            assert_eq!(served, next_cert, "a certificate other than the staged one");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A version outside the current and next periods is refused: no one can make OpenBao
    // issue for arbitrary periods (the team has a grant on the `fast` profile).
    let resolve = |version: u64| {
        let req = s
            .client
            .post(s.url("/v1/resolve"))
            .bearer_auth(GW)
            .json(&json!({
                "document": { "k": format!("$SECRET_pki:fast@{version} $KEY_certificate") },
                "host": "api.partner.example",
            }))
            .send();
        async move {
            let resp = req.await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, text) = resolve(unix_now() / 10).await;
    assert_eq!(status, 200, "the current period, named: {text}");
    let (status, text) = resolve(unix_now() / 10 + 100).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("unsupported"), "{text}");
}

/// The agent stages the next certificate in `next/` (with `not_before`) ahead of the switch,
/// and the files it switches to at the period's start are exactly the staged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stages_the_next_certificate_and_switches_to_exactly_it() {
    let bao = OpenBao::start();
    pki_mount(&bao);
    // Blocking queries ask again every half cache TTL: every 500 ms here.
    let (dir, s) = serve_with(&bao, "[cache]\nttl = \"1s\"\n").await;
    let root = dir.path();
    std::fs::write(root.join("gw-token"), GW).unwrap();
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nurl = \"https://127.0.0.1:{}\"\nca_cert = \"server-ca.pem\"\ntoken_file = \"gw-token\"\nwait = \"5s\"\n[[output]]\ncredential = \"partner-fast\"\nhost = \"api.partner.example\"\ndir = \"certs\"\nfiles = [\"cert.pem\", \"key.pem\", \"ca.pem\"]\nnext = true\n",
            s.port
        ),
    )
    .unwrap();
    let _agent = agent(&config, root);
    let read = |p: &str| std::fs::read_to_string(root.join("certs").join(p)).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut current, staged, takes_over) = loop {
        if let (Some(n), Some(at), Some(c)) = (
            read("next/cert.pem"),
            read("next/not_before"),
            read("cert.pem"),
        ) {
            let at = humantime::parse_rfc3339(at.trim()).unwrap();
            break (c, n, at);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no files within 30 s:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(current, staged);
    assert!(read("next/key.pem").unwrap().contains("PRIVATE KEY"));
    loop {
        let now = read("cert.pem").unwrap_or_default();
        // A switch before the staged one's start (the files were read across a pass) is
        // the current period's; the one at its start must be the staged certificate.
        if now != current && std::time::SystemTime::now() < takes_over {
            current = now;
        } else if now != current {
            assert_eq!(
                now, staged,
                "the agent switched to a certificate other than the staged one"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(15),
            "no switch:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A gateway's whole path: `keybroker agent` keeps an issued certificate (rotating every
/// 10 s) as nginx's `proxy_ssl_certificate`, reloading nginx at each switch; an upstream that
/// trusts only the PKI CA sees the serial change while a request loop through nginx runs —
/// and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_certificate_rotates_through_nginx_without_a_failed_request() {
    use std::time::{Duration, Instant};
    let bao = OpenBao::start();
    let ca_pem = pki_mount(&bao);
    let (dir, s) = serve_with(&bao, "[cache]\nttl = \"1s\"\n").await;
    let root = dir.path().to_owned();
    std::fs::write(root.join("gw-token"), GW).unwrap();
    let config = root.join("agent.toml");
    let write_config = |reload: &[String]| {
        let reload = reload
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "[server]\nurl = \"https://127.0.0.1:{}\"\nca_cert = \"server-ca.pem\"\ntoken_file = \"gw-token\"\nwait = \"5s\"\n[[output]]\ncredential = \"partner-fast\"\nhost = \"api.partner.example\"\ndir = \"certs\"\nfiles = [\"cert.pem\", \"key.pem\"]\nnext = true\nreload = [{reload}]\n",
                s.port
            ),
        )
        .unwrap();
    };
    // The first files, before nginx starts (it needs them to start).
    write_config(&[]);
    let once = std::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        once.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let prefix = root.join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    std::fs::write(prefix.join("pki-ca.pem"), &ca_pem).unwrap();
    let upstream = support::pki::Ca::new("upstream server CA").server(&prefix, "upstream");
    let (nginx, ports) = support::nginx::gateway(
        &prefix,
        &prefix.join("pki-ca.pem"),
        &upstream.cert,
        &upstream.key,
        &root.join("certs"),
        "$ssl_client_serial",
    );
    write_config(&nginx.reload_argv());
    let _agent = agent(&config, &root);
    // A new connection per request: a reload closes idle keep-alive connections.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/", ports[1]);
    let (mut serials, mut failed, mut ok) = (
        std::collections::BTreeSet::<String>::new(),
        Vec::new(),
        0u32,
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    // Until the upstream has seen two rotations (three serials) through the loop itself.
    // (Just after a reload an old nginx worker may still take a connection and present the
    // previous certificate — still valid, so still a success.)
    while serials.len() < 3 {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                ok += 1;
                serials.insert(r.text().await.unwrap_or_default().trim().to_owned());
            }
            Ok(r) => failed.push(r.status().to_string()),
            Err(e) => failed.push(e.to_string()),
        }
        assert!(
            Instant::now() < deadline,
            "serials seen {serials:?}:\n{}",
            std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
}

/// `keybroker agent --config config`, logging into `root/agent.log`; killed when dropped.
fn agent(config: &std::path::Path, root: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A CSR made by openssl in `dir` (`req` arguments after `-new`), and its key's
/// SubjectPublicKeyInfo (DER).
fn openssl_csr(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, Vec<u8>) {
    let key = dir.join(format!("{name}-key.pem"));
    let csr = dir.join(format!("{name}.csr"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(args)
        .output()
        .expect("openssl is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (std::fs::read_to_string(&csr).unwrap(), public.stdout)
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// Issue 47: the key is born where it is used. The caller's CSR is signed with the profile's
/// name; the certificate carries the caller's key and chains to the PKI's CA; OpenBao's own
/// audit log shows a `sign` and no `issue`; keybroker's audit line names the serial and the
/// key's fingerprint; no answer carries a private key — keybroker never had one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_is_signed_with_the_profiles_name_and_no_key_travels() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    let ca_pem = pki_mount(&bao);
    let (dir, s) = serve(&bao).await;
    let work = tempfile::tempdir().unwrap();
    let mut args = P256.to_vec();
    args.extend(["-subj", "/CN=gw.payments.example"]);
    let (csr, spki) = openssl_csr(work.path(), "gw", &args);

    let (status, body) = sign(&s, GW, "partner-sign", &csr).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("private_key").is_none(), "{body}");
    assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    let der = pem_der(body["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        spki.as_slice(),
        "the caller's own key"
    );
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["gw.payments.example"]);
    assert!(!cert.is_ca());
    let ca_der = pem_der(&ca_pem);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the PKI's CA");
    assert_eq!(body["issuing_ca"].as_str().unwrap().trim(), ca_pem.trim());

    // OpenBao signed once and issued nothing more for it.
    assert_eq!(signed_count(&bao_audit), 1);
    let issued = String::from_utf8_lossy(&std::fs::read(&bao_audit).unwrap())
        .matches("pki/issue/signer")
        .count();
    assert_eq!(issued, 0, "a signing profile issues no key");

    // keybroker's audit line: the action, the serial, the key's fingerprint.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let line = audit
        .lines()
        .find(|l| {
            l.contains("\"action\":\"credential.sign\"") && l.contains("\"decision\":\"allowed\"")
        })
        .unwrap_or_else(|| panic!("no credential.sign line in {audit}"));
    let serial = body["serial_number"].as_str().unwrap();
    assert!(line.contains(serial), "{line}");
    assert!(
        line.contains(body["key_sha256"].as_str().unwrap()),
        "{line}"
    );

    // A signing credential has no key to hand out: its material is refused, never a key.
    let resp = s
        .client
        .post(s.url("/v1/credentials/partner-sign/material"))
        .bearer_auth(GW)
        .json(&json!({ "host": "api.partner.example" }))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status().as_u16(), 200);
    assert!(!resp.text().await.unwrap().contains("PRIVATE KEY"));
    assert_eq!(signed_count(&bao_audit), 1, "nothing more was signed");
    drop(s);
}

/// Issue 47's attacker: a CSR asking for another name, a CA, a weak key, with a broken
/// signature, or not a CSR at all — refused with its code before OpenBao is asked; a
/// consumer of another team is answered like a credential that does not exist; the signing
/// budget holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_asking_for_more_is_refused_and_nothing_is_signed() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    pki_mount(&bao);
    let (_dir, s) = serve(&bao).await;
    let work = tempfile::tempdir().unwrap();
    let with = |extra: &[&'static str]| {
        let mut a = P256.to_vec();
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(&str, String)> = vec![
        // The role allows any subdomain; the profile gives one name.
        (
            "csr_name_not_allowed",
            openssl_csr(
                work.path(),
                "other-cn",
                &with(&["-subj", "/CN=admin.payments.example"]),
            )
            .0,
        ),
        (
            "csr_name_not_allowed",
            openssl_csr(
                work.path(),
                "other-san",
                &with(&[
                    "-subj",
                    "/CN=gw.payments.example",
                    "-addext",
                    "subjectAltName=DNS:admin.payments.example",
                ]),
            )
            .0,
        ),
        (
            "csr_name_not_allowed",
            openssl_csr(work.path(), "no-cn", &with(&["-subj", "/O=payments"])).0,
        ),
        (
            "csr_extension_not_allowed",
            openssl_csr(
                work.path(),
                "ca",
                &with(&[
                    "-subj",
                    "/CN=gw.payments.example",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                ]),
            )
            .0,
        ),
        (
            "csr_key_not_allowed",
            openssl_csr(
                work.path(),
                "rsa1024",
                &["-newkey", "rsa:1024", "-subj", "/CN=gw.payments.example"],
            )
            .0,
        ),
        (
            "csr_key_not_allowed",
            openssl_csr(
                work.path(),
                "rsa2048",
                &["-newkey", "rsa:2048", "-subj", "/CN=gw.payments.example"],
            )
            .0,
        ),
        (
            "csr_key_not_allowed",
            openssl_csr(
                work.path(),
                "p521",
                &[
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-521",
                    "-subj",
                    "/CN=gw.payments.example",
                ],
            )
            .0,
        ),
        (
            "not_a_csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
        ),
        ("not_a_csr", String::new()),
    ];
    let (good, _) = openssl_csr(
        work.path(),
        "good",
        &with(&["-subj", "/CN=gw.payments.example"]),
    );
    // The signature broken: one byte of the base64 body near its end changed.
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let last = lines.len() - 2;
    let flipped: String = lines[last]
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 2 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    lines[last] = flipped;
    let tampered = lines.join("\n") + "\n";
    let twice = format!("{good}{good}");
    let huge = format!("{good}{}", " ".repeat(20_000));
    let mut cases = cases;
    cases.push(("csr_bad_signature", tampered));
    cases.push(("not_a_csr", twice));
    cases.push(("csr_too_large", huge));
    for (code, csr) in &cases {
        let (status, body) = sign(&s, GW, "partner-sign", csr).await;
        // A tampered body may no longer parse at all: refused either way, never signed.
        if *code == "csr_bad_signature" {
            assert_eq!(status, 400, "{body}");
            let got = body["error"]["code"].as_str().unwrap();
            assert!(got == "csr_bad_signature" || got == "not_a_csr", "{body}");
        } else {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some(*code)),
                "{body}"
            );
        }
    }
    assert_eq!(signed_count(&bao_audit), 0, "nothing was signed");

    // Another team's consumer, with a good CSR: the same answer as for no credential at all.
    let (denied, d) = sign(&s, INTRUDER, "partner-sign", &good).await;
    let (missing, m) = sign(&s, INTRUDER, "no-such-credential", &good).await;
    assert_eq!((denied, missing), (403, 403), "{d} {m}");
    assert_eq!(d, m);
    // A credential whose certificate is issued, not signed: no CSR makes it sign.
    let (status, body) = sign(&s, GW, "partner-pki", &good).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("not_a_signing_credential"))
    );
    assert_eq!(signed_count(&bao_audit), 0, "nothing was signed");

    // The budget: two per consumer, profile and period; the third is refused unsigned.
    for _ in 0..keybroker::testing::broker::SIGNS_PER_PERIOD {
        let (status, body) = sign(&s, GW, "partner-sign", &good).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = sign(&s, GW, "partner-sign", &good).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("sign_budget_exhausted"))
    );
    assert_eq!(
        signed_count(&bao_audit),
        keybroker::testing::broker::SIGNS_PER_PERIOD as usize
    );
}

/// `GET /metrics` as the operator's admin.
async fn metrics(s: &Running) -> String {
    let resp = s.client.get(s.url("/metrics")).bearer_auth(OPS).send();
    resp.await.unwrap().text().await.unwrap()
}

/// Issue 48: the expiry sweep at start issues no certificate for a credential a pki source
/// issues (a read would issue before any use) — unless `[expiry] issue = true`, when it
/// issues each one once. The sweep's end is its series of the server's own certificate,
/// noted after every credential; the issuances are counted in OpenBao's audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_sweep_issues_a_certificate_only_when_asked() {
    let (bao, bao_audit, _audit_dir) = audited_bao();
    pki_mount(&bao);
    let swept = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("keybroker_certificate_expiry_timestamp_seconds{kind=\"server\"")
        })
    };
    for (extra, issued) in [("", 0), ("[expiry]\nissue = true\n", 1)] {
        let before = (
            issued_count(&bao_audit),
            answered(&bao_audit, "pki/issue/fast"),
        );
        let (_dir, s) = serve_with(&bao, extra).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !swept(&metrics(&s).await) {
            assert!(std::time::Instant::now() < deadline, "no sweep within 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let after = (
            issued_count(&bao_audit),
            answered(&bao_audit, "pki/issue/fast"),
        );
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (issued, issued),
            "issuances by the start-up sweep with {extra:?}"
        );
        assert_eq!(
            signed_count(&bao_audit),
            0,
            "a signing profile signs nothing"
        );
    }
}
