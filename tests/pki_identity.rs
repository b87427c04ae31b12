//! Issue 47, the agent renews its own identity: a consumer the operator gives an
//! `identity_profile` renews its client certificate through
//! `POST /v1/consumers/self/certificates` (a real OpenBao signs), the new certificate is pinned
//! to it until its own end, and `keybroker agent` switches to it before the old one ends — and
//! nobody else can renew, reuse or claim it.

mod support {
    pub mod fixture;
    pub mod identity;
    pub mod openbao;
    pub mod pki;
    pub mod pki_bao;
    pub mod ports;
    pub mod server;
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use x509_parser::prelude::*;

use support::fixture;
use support::identity::{
    ADMIN, CN, GW, OTHER_ADMIN, fingerprint, good_policy, identity_role, issued,
};
use support::openbao::OpenBao;
use support::pki_bao::{answered, audited_bao, pem_der, pki_mount};
use support::server::{Running, folder};

fn not_after(pem: &str) -> i64 {
    let der = pem_der(pem);
    X509Certificate::from_der(&der)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp()
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

struct Env {
    bao: OpenBao,
    bao_audit: PathBuf,
    _audit_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    server_ca: String,
    s: Running,
    /// The agent's first certificate and key, and `plain`'s.
    agent: (String, String),
    plain: (String, String),
}

impl Env {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A client presenting `cert` and `key` (PEM), trusting the server.
    fn client(&self, cert: &str, key: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.server_ca.as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap())
            .resolve("localhost", ([127, 0, 0, 1], 0).into())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    async fn renew(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
        csr: &str,
    ) -> (u16, Value) {
        let mut req = client
            .post(self.s.url("/v1/consumers/self/certificates"))
            .json(&json!({ "csr": csr }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn signed(&self) -> usize {
        answered(&self.bao_audit, "pki/sign/ident")
    }

    fn logs(&self) -> String {
        ["stdout.log", "stderr.log", "audit.log", "agent.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.root().join(f)).unwrap_or_default())
            .collect()
    }
}

/// keybroker trusting OpenBao's PKI for client certificates, with the signing profile
/// `agent-id` (`ttl`) for identities, an issuing profile, a file source and a file store.
async fn start(ttl: &str, agent_ttl: &str) -> Env {
    let (bao, bao_audit, audit_dir) = audited_bao();
    let pki_ca = pki_mount(&bao);
    identity_role(&bao);
    let agent = issued(&bao, "ident", CN, agent_ttl);
    let plain = issued(&bao, "gateway", "plain.payments.example", "1h");
    let (dir, ca) = folder("token-v1");
    let root = dir.path();
    std::fs::write(root.join("pki-ca.pem"), &pki_ca).unwrap();
    std::fs::write(root.join("server-ca.pem"), &ca.pem).unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        good_policy(&fingerprint(&agent.0), &fingerprint(&plain.0)),
    )
    .unwrap();
    fixture::Config::tls()
        .with("client_ca = \"pki-ca.pem\"")
        .files("files", "secrets")
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.agent-id]\nrole = \"ident\"\ncommon_name = \"{CN}\"\nttl = \"{ttl}\"\nissue = \"sign\"\nkey_type = \"ec\"\n[source.profiles.gw-issue]\nrole = \"gateway\"\ncommon_name = \"gw.payments.example\"\nttl = \"1h\"\n",
            bao.addr
        ))
        .with("[cache]\nttl = \"1s\"\n[store]\nkind = \"file\"\npath = \"store\"")
        .audit()
        .write(root);
    let s = Running::start(root, &ca.pem, 0, "debug").await;
    Env {
        bao,
        bao_audit,
        _audit_dir: audit_dir,
        server_ca: ca.pem.clone(),
        dir,
        s,
        agent,
        plain,
    }
}

/// A new P-256 key (PEM) and a CSR for it naming `cn` (none: a nameless CSR).
fn csr(cn: Option<&str>) -> (String, String, Vec<u8>) {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr, key.subject_public_key_info())
}

/// The base64 body lines of a PEM key: what a leak of it would show.
fn key_lines(key_pem: &str) -> Vec<String> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

/// Polls `f` every 50 ms until it is true, failing after `secs` with `what`.
async fn until(secs: u64, what: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent whose client certificate lives 30 s keeps working past its end: it renews at two
/// thirds of the life (a new key made here, a CSR signed through `agent-id`), writes key and
/// certificate over its files, and the template it keeps is still fetched after the first
/// certificate's `not_after`; the metrics follow the new `not_after`; the first certificate is
/// refused after its end; no key is in any log or audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_working_past_its_first_certificates_end() {
    let env = start("30s", "30s").await;
    let root = env.root().to_owned();
    let first_end = not_after(&env.agent.0);
    std::fs::write(root.join("agent-cert.pem"), &env.agent.0).unwrap();
    std::fs::write(root.join("agent-key.pem"), &env.agent.1).unwrap();
    // A connection of the first certificate, kept alive past its end.
    let old = env.client(&env.agent.0, &env.agent.1);
    let r = old.get(env.s.url("/v1/credentials")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    std::fs::write(
        root.join("t.in"),
        "token=$SECRET_files:app/token $KEY_value\n",
    )
    .unwrap();
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "ops_listen = \"127.0.0.1:0\"\n[server]\nurl = \"https://localhost:{}\"\nca_cert = \"server-ca.pem\"\nclient_cert = \"agent-cert.pem\"\nclient_key = \"agent-key.pem\"\nwait = \"2s\"\n[[template]]\nsource = \"t.in\"\ndestination = \"out/t.conf\"\nhost = \"api.partner.example\"\nmode = \"0600\"\n",
            env.s.port
        ),
    )
    .unwrap();
    let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = root.join("out/t.conf");
    let log = || std::fs::read_to_string(root.join("agent.log")).unwrap_or_default();
    let holds = |v: &str| std::fs::read_to_string(&out).is_ok_and(|t| t.contains(v));
    until(20, log, || holds("token=token-v1")).await;
    // Renewed at two thirds of its life: a new certificate and key in the agent's files.
    let first_fp = fingerprint(&env.agent.0);
    let current = || std::fs::read_to_string(root.join("agent-cert.pem")).unwrap_or_default();
    until(40, log, || {
        let c = current();
        c.contains("BEGIN CERTIFICATE") && fingerprint(&c) != first_fp
    })
    .await;
    let mut keys = vec![std::fs::read_to_string(root.join("agent-key.pem")).unwrap()];
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(root.join("agent-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(not_after(&current()) > first_end);
    // Time passing is the point here: the first certificate's end.
    until(40, log, || now() > first_end + 1).await;
    std::fs::write(
        root.join("secrets/app/token.json"),
        json!({ "value": "token-v2" }).to_string(),
    )
    .unwrap();
    until(30, log, || holds("token=token-v2")).await;
    // The renewed certificate (pinned by the store) renews itself in turn.
    until(40, log, || env.signed() >= 2).await;
    keys.push(std::fs::read_to_string(root.join("agent-key.pem")).unwrap());
    // The first certificate no longer identifies anyone: not on the connection it kept, nor
    // on a new one (the handshake refuses it).
    let (_, csr_pem, _) = csr(None);
    match old
        .post(env.s.url("/v1/consumers/self/certificates"))
        .json(&json!({ "csr": csr_pem }))
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 401, "the kept connection after its end"),
        Err(e) => panic!("the kept connection was closed, not refused: {e}"),
    }
    let fresh = env.client(&env.agent.0, &env.agent.1);
    let refused = fresh.get(env.s.url("/v1/credentials")).send().await;
    assert!(refused.is_err() || refused.unwrap().status() == 401);
    // The metrics follow the renewed identity.
    let text = log();
    let at = "\"ops_listen\":\"127.0.0.1:";
    let port: String = text[text.find(at).unwrap() + at.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("keybroker_agent_identity_expiry_timestamp_seconds "))
        .unwrap();
    let exported: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(exported > first_end, "{line}");
    drop(agent);
    // Audited, and no key anywhere keybroker writes or the agent logs.
    let logs = env.logs();
    assert!(logs.contains("consumer.renew"), "audited");
    for key in &keys {
        for line in key_lines(key) {
            assert!(!logs.contains(&line), "a key in a log or audit line");
        }
    }
    assert!(!logs.contains("PRIVATE KEY"));
    drop(env);
}

/// Nobody but a profiled consumer's own certificate renews, once per period, with the
/// profile's names; the renewed certificate identifies that consumer and another team's admin
/// cannot pin it to a consumer of its own; no key in any answer, log or audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_profiled_certificate_renews_itself_and_nobody_else_claims_the_result() {
    let env = start("1h", "1h").await;
    let (_, nameless, _) = csr(None);
    // A bearer token, even a profiled consumer's colleague's: refused, nothing signed.
    let plain_http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.server_ca.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .build()
        .unwrap();
    let (status, body) = env.renew(&plain_http, Some(GW), &nameless).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("certificate_required")),
        "{body}"
    );
    let (status, _) = env.renew(&plain_http, None, &nameless).await;
    assert_eq!(status, 401);
    // A certificate whose consumer has no identity_profile.
    let plain = env.client(&env.plain.0, &env.plain.1);
    let (status, body) = env.renew(&plain, None, &nameless).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("no_identity_profile")),
        "{body}"
    );
    assert_eq!(env.signed(), 0);
    // A CSR asking for another name: refused before OpenBao is asked.
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (_, evil, _) = csr(Some("evil.payments.example"));
    let (status, body) = env.renew(&agent, None, &evil).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("csr_name_not_allowed")),
        "{body}"
    );
    assert_eq!(env.signed(), 0);
    // The one renewal of the period: the profile's names, the CSR's key.
    let (key, csr_pem, spki) = csr(None);
    let (status, body) = env.renew(&agent, None, &csr_pem).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("PRIVATE"));
    let renewed = body["certificate"].as_str().unwrap().to_owned();
    let der = pem_der(&renewed);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.public_key().raw, spki.as_slice());
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cns, [CN]);
    assert_eq!(body["fingerprint"], fingerprint(&renewed));
    assert_eq!(env.signed(), 1);
    // A second one in the same period: refused, nothing signed.
    let (_, again, _) = csr(None);
    let (status, body) = env.renew(&agent, None, &again).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("renew_budget_exhausted")),
        "{body}"
    );
    assert_eq!(env.signed(), 1);
    // The renewed certificate identifies the agent's consumer (pinned in the store).
    let next = env.client(&renewed, &key);
    let r = next.get(env.s.url("/v1/credentials")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().await.unwrap();
    assert!(listed.to_string().contains("app-token"), "{listed}");
    // Another team's admin cannot pin the (public) renewed certificate to its own consumer.
    let r = plain_http
        .post(env.s.url("/v1/teams/other/consumers"))
        .bearer_auth(OTHER_ADMIN)
        .json(&json!({ "name": "thief" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = plain_http
        .post(env.s.url("/v1/teams/other/consumers/thief/certificates"))
        .bearer_auth(OTHER_ADMIN)
        .json(&json!({ "certificate": renewed }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 409, "{body}");
    let r = next.get(env.s.url("/v1/credentials")).send().await.unwrap();
    assert_eq!(r.status(), 200, "still the agent's");
    // The operator revokes the first certificate (its pin removed from the file): it renews
    // nothing more, and the certificates renewed from it go with it — they descend from the
    // identity the operator gave, which is no more (THREATS row 96).
    let revoked = good_policy(
        "0000000000000000000000000000000000000000000000000000000000000002",
        &fingerprint(&env.plain.0),
    );
    std::fs::write(env.root().join("policies/p.toml"), revoked).unwrap();
    let r = plain_http
        .post(env.s.url("/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, after, _) = csr(None);
    let (status, _) = env.renew(&agent, None, &after).await;
    assert_eq!(status, 401, "a revoked certificate renews nothing");
    assert_eq!(env.signed(), 1);
    let r = next.get(env.s.url("/v1/credentials")).send().await;
    assert!(
        r.is_err() || r.unwrap().status() == 401,
        "the renewed certificate went with its first"
    );
    // No key in keybroker's logs or audit; the renewal is audited with serial and key.
    let logs = env.logs();
    assert!(logs.contains("consumer.renew"));
    for line in key_lines(&key) {
        assert!(!logs.contains(&line));
    }
    assert!(!logs.contains("PRIVATE KEY"));
    drop(env.bao);
}

/// Each way an `identity_profile` could make a certificate identify two consumers (or none
/// the operator meant) is refused at load; the policy in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_profiles_that_would_share_an_identity_are_refused_at_load() {
    let env = start("1h", "1h").await;
    let root = env.root().to_owned();
    let good = good_policy(&fingerprint(&env.agent.0), &fingerprint(&env.plain.0));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(env.server_ca.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .build()
        .unwrap();
    let agent_line = "identity_profile = \"agent-id\"";
    let other = "[[consumer]]\nname = \"other-agent\"\nteam = \"other\"\ncert_sha256 = [{ fingerprint = \"0000000000000000000000000000000000000000000000000000000000000001\" }]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown",
            good.replace(agent_line, "identity_profile = \"nope\""),
            "no such pki profile",
        ),
        (
            "issuing",
            good.replace(agent_line, "identity_profile = \"gw-issue\""),
            "not a signing profile",
        ),
        (
            "twice",
            format!("{good}{other}identity_profile = \"pki:agent-id\"\n"),
            "same identity_profile",
        ),
        (
            "credential",
            format!(
                "{good}[[credential]]\nname = \"steal\"\nteam = \"other\"\nmode = \"mtls\"\nallowed_hosts = [\"api.partner.example\"]\nclient_certificate = \"$SECRET_pki:agent-id $KEY_certificate\"\n"
            ),
            "no credential may use it",
        ),
        (
            "acl",
            format!(
                "{good}[[consumer]]\nname = \"acl\"\nteam = \"other\"\nissuer_ca = \"../pki-ca.pem\"\nsubject = \"CN={CN}\"\n"
            ),
            "renews through its identity_profile",
        ),
    ];
    for (case, text, why) in cases {
        std::fs::write(root.join("policies/p.toml"), &text).unwrap();
        let r = http
            .post(env.s.url("/v1/admin/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 409, "{case}: {body}");
        assert_eq!(body["error"]["code"], "policy_invalid", "{case}");
        assert!(body.to_string().contains(why), "{case}: {body}");
        // The good policy stays: its token consumer still reads.
        let r = http
            .get(env.s.url("/v1/credentials"))
            .bearer_auth(GW)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{case}");
    }
    std::fs::write(root.join("policies/p.toml"), &good).unwrap();
    let r = http
        .post(env.s.url("/v1/admin/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
