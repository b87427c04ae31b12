//! Issue 47 under attack: another team's admin (public material only), an ordinary consumer of
//! another team, or a holder of a renewed certificate's public part tries to become the
//! profiled consumer, claim or void its renewed certificate, renew for it or past its budget,
//! or smuggle names through the CSR. `attack_` tests reproduce a weakness (ignored while it is
//! real); `held_` tests assert the refusal.

mod support {
    pub mod fixture;
    pub mod identity;
    pub mod openbao;
    pub mod pki;
    pub mod pki_bao;
    pub mod ports;
    pub mod server;
}

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use x509_parser::prelude::*;

use support::fixture;
use support::identity::{
    ADMIN, CN, GW, OTHER_ADMIN, PROFILE_LINE, fingerprint, good_policy, identity_role, issued,
};
use support::openbao::OpenBao;
use support::pki_bao::{answered, audited_bao, pem_der, pki_mount};
use support::server::{Running, folder};

const HEADER: &str = "x-client-cert";

struct Env {
    bao: OpenBao,
    bao_audit: std::path::PathBuf,
    _audit_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    server_ca: String,
    pki_ca: String,
    s: Running,
    agent: (String, String),
    plain: (String, String),
}

impl Env {
    fn root(&self) -> &Path {
        self.dir.path()
    }

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

    /// A client with no certificate (tokens only).
    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.server_ca.as_bytes()).unwrap(),
            )
            .resolve("localhost", ([127, 0, 0, 1], 0).into())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    async fn renew(&self, client: &reqwest::Client, csr: &str) -> (u16, Value) {
        let resp = client
            .post(self.s.url("/v1/consumers/self/certificates"))
            .json(&json!({ "csr": csr }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn signed(&self) -> usize {
        answered(&self.bao_audit, "pki/sign/ident")
    }

    async fn reload(&self, policy: &str) -> (u16, Value) {
        std::fs::write(self.root().join("policies/p.toml"), policy).unwrap();
        let r = self
            .http()
            .post(self.s.url("/v1/admin/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The team admin of `other` calls `method path` with `body`.
    async fn other_admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http()
            .request(method, self.s.url(path))
            .bearer_auth(OTHER_ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn good(&self) -> String {
        good_policy(&fingerprint(&self.agent.0), &fingerprint(&self.plain.0))
    }
}

/// Who `client` is: the status of `GET /v1/credentials` and whether it lists the agent's
/// credential (`app-token`, granted to team payments).
async fn whoami(env: &Env, client: &reqwest::Client) -> (u16, bool) {
    let r = client
        .get(env.s.url("/v1/credentials"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, text.contains("app-token"))
}

async fn start(ttl: &str, server_extra: &str) -> Env {
    let (bao, bao_audit, audit_dir) = audited_bao();
    let pki_ca = pki_mount(&bao);
    identity_role(&bao);
    let agent = issued(&bao, "ident", CN, "1h");
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
        .with(&format!("client_ca = \"pki-ca.pem\"\n{server_extra}"))
        .files("files", "secrets")
        .with(&format!(
            "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n[[source]]\nname = \"pki\"\nkind = \"pki\"\nvault = \"vault\"\n[source.profiles.agent-id]\nrole = \"ident\"\ncommon_name = \"{CN}\"\nttl = \"{ttl}\"\nissue = \"sign\"\nkey_type = \"ec\"\n",
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
        pki_ca,
        dir,
        s,
        agent,
        plain,
    }
}

/// A new P-256 key (PEM) and a CSR for it naming `cn`, with `sans` (DNS names) and `extra`
/// subject attributes.
fn csr_with(cn: Option<&str>, sans: &[&str], extra: &[(rcgen::DnType, &str)]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    for (t, v) in extra {
        params.distinguished_name.push(t.clone(), *v);
    }
    params.subject_alt_names = sans
        .iter()
        .map(|s| rcgen::SanType::DnsName((*s).try_into().unwrap()))
        .collect();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

fn csr() -> (String, String) {
    csr_with(None, &[], &[])
}

/// Another team's admin, holding only the public renewed certificate, cannot pin it while the
/// operator's file stops naming the profile (an operator pausing renewal, editing the
/// consumer): the store's identity records count as claims whatever the policy attaches
/// right now (THREATS row 95). Before, the pin was taken (201), the certificate identified
/// `thief`, and once the profile was named again every renewal of the agent was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_renewed_certificate_cannot_be_claimed_while_the_profile_is_dropped() {
    let env = start("60s", "").await;
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (key, csr_pem) = csr();
    let (status, body) = env.renew(&agent, &csr_pem).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["certificate"].as_str().unwrap().to_owned();
    let next = env.client(&renewed, &key);
    assert_eq!(whoami(&env, &next).await, (200, true), "the agent's");
    // The operator drops the profile line for a moment (renewal paused, consumer edited).
    let good = env.good();
    let (status, body) = env.reload(&good.replace(PROFILE_LINE, "")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .other_admin(
            reqwest::Method::POST,
            "/v1/teams/other/consumers",
            json!({ "name": "thief" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = env
        .other_admin(
            reqwest::Method::POST,
            "/v1/teams/other/consumers/thief/certificates",
            json!({ "certificate": renewed }),
        )
        .await;
    assert_eq!(status, 409, "pinned by another team: {body}");
    assert_eq!(body["error"]["code"], "certificate_in_use", "{body}");
    // The operator names the profile again: the renewed certificate is the agent's, and the
    // agent renews in the next period.
    let (status, body) = env.reload(&good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&env, &next).await, (200, true), "the agent's again");
    let period = 20;
    // Letting the budget's period pass is the point here, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(period - (support_now() % period) + 1)).await;
    let (_, again) = csr();
    let (status, body) = env.renew(&next, &again).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("thief"), "{body}");
    drop(env.bao);
}

fn support_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Names smuggled through the CSR — SANs inside and outside the role's domain, a second CN,
/// extra subject attributes, the right CN plus a SAN — are refused before OpenBao is asked;
/// two renewals raced in one period sign exactly once; the renewed certificate carries the
/// profile's CN only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_csr_smuggling_and_raced_renewals() {
    let env = start("1h", "").await;
    let agent = env.client(&env.agent.0, &env.agent.1);
    let evil: Vec<(&str, (String, String))> = vec![
        (
            "san in the role's domain",
            csr_with(None, &["evil.payments.example"], &[]),
        ),
        (
            "right cn plus a san",
            csr_with(Some(CN), &["gw.payments.example"], &[]),
        ),
        ("san outside", csr_with(None, &["evil.example.org"], &[])),
        (
            "upper-case cn",
            csr_with(Some("AGENT.PAYMENTS.EXAMPLE"), &[], &[]),
        ),
        (
            "plain's cn",
            csr_with(Some("plain.payments.example"), &[], &[]),
        ),
        (
            "organizational unit, no cn",
            csr_with(
                None,
                &[],
                &[(rcgen::DnType::OrganizationalUnitName, "admins")],
            ),
        ),
    ];
    for (case, (_, pem)) in &evil {
        let (status, body) = env.renew(&agent, pem).await;
        assert_eq!(status, 400, "{case}: {body}");
    }
    assert_eq!(env.signed(), 0, "nothing signed for a smuggling CSR");
    // Two renewals raced, with subject attributes the profile does not give: one signs (the
    // profile's CN only, the attributes dropped), the other is over budget.
    let (_, a) = csr_with(Some(CN), &[], &[(rcgen::DnType::OrganizationName, "other")]);
    let (_, b) = csr_with(
        Some(CN),
        &[],
        &[(rcgen::DnType::OrganizationName, "payments")],
    );
    let (ra, rb) = tokio::join!(env.renew(&agent, &a), env.renew(&agent, &b));
    let mut statuses = [ra.0, rb.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{ra:?} {rb:?}");
    assert_eq!(env.signed(), 1);
    let won = if ra.0 == 200 { &ra.1 } else { &rb.1 };
    let der = pem_der(won["certificate"].as_str().unwrap());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject().to_string(), format!("CN={CN}"));
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sans, [format!("DNSName({CN})")]);
    // No key material in the answer.
    assert!(!won.to_string().contains("PRIVATE"));
    drop(env.bao);
}

/// A certificate forwarded by a trusted proxy's header (the renewed certificate's public part,
/// or the agent's first), a bearer token of the agent's team beside another consumer's
/// certificate, and a token alone: none renews the agent; nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_forwarded_certificates_and_tokens_never_renew() {
    use base64::Engine as _;
    let env = start(
        "1h",
        &format!("trusted_proxies = [\"127.0.0.1/32\"]\nclient_cert_header = \"{HEADER}\""),
    )
    .await;
    let http = env.http();
    let forwarded = base64::engine::general_purpose::STANDARD.encode(pem_der(&env.agent.0));
    // The header does identify the agent (the proxy's word): reads work...
    let r = http
        .get(env.s.url("/v1/credentials"))
        .header(HEADER, &forwarded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("app-token"));
    // ...but it renews nothing.
    let (_, c) = csr();
    let r = http
        .post(env.s.url("/v1/consumers/self/certificates"))
        .header(HEADER, &forwarded)
        .json(&json!({ "csr": c }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("certificate_required")),
        "{body}"
    );
    // The agent's team's token beside plain's certificate: plain (no profile).
    let plain = env.client(&env.plain.0, &env.plain.1);
    let r = plain
        .post(env.s.url("/v1/consumers/self/certificates"))
        .bearer_auth(GW)
        .json(&json!({ "csr": c }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another team's admin token: not a certificate.
    let r = http
        .post(env.s.url("/v1/consumers/self/certificates"))
        .bearer_auth(OTHER_ADMIN)
        .json(&json!({ "csr": c }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(env.signed(), 0);
    // The agent renews for real; the renewed certificate forwarded renews nothing either.
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (_, c2) = csr();
    let (status, body) = env.renew(&agent, &c2).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["certificate"].as_str().unwrap();
    let fwd = base64::engine::general_purpose::STANDARD.encode(pem_der(renewed));
    let (_, c3) = csr();
    let r = http
        .post(env.s.url("/v1/consumers/self/certificates"))
        .header(HEADER, &fwd)
        .json(&json!({ "csr": c3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(env.signed(), 1);
    drop(env.bao);
}

/// Another team's admin, with public material only, cannot claim or collide with the profiled
/// consumer: no consumer of its name (any case, encoded, `../`), no issuer ACL on the PKI's CA
/// matching the profile's CN (exact or wildcard), no pin of the renewed certificate, no read
/// or delete of the agent; through all of it the renewed certificate stays the agent's, and
/// the good policy stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_other_team_admin_cannot_claim_collide_or_reach_the_identity() {
    let env = start("1h", "").await;
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (key, c) = csr();
    let (status, body) = env.renew(&agent, &c).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["certificate"].as_str().unwrap().to_owned();
    let next = env.client(&renewed, &key);
    assert_eq!(whoami(&env, &next).await, (200, true));
    // Names that would collide with the agent or its store entry.
    for name in [
        "agent",
        "Agent",
        "AGENT",
        "..%2Fagent",
        "agent%00",
        "ａgent",
        "../agent",
    ] {
        let (status, body) = env
            .other_admin(
                reqwest::Method::POST,
                "/v1/teams/other/consumers",
                json!({ "name": name }),
            )
            .await;
        assert!(status == 400 || status == 409, "{name}: {status} {body}");
    }
    // Encoded team paths reaching payments' entries.
    for path in [
        "/v1/teams/payments/consumers/agent",
        "/v1/teams/other%2F..%2Fpayments/consumers/agent",
        "/v1/teams/other/..%2Fpayments/consumers/agent",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
            let (status, body) = env.other_admin(method.clone(), path, Value::Null).await;
            assert!(
                matches!(status, 400 | 403 | 404 | 405),
                "{method} {path}: {status} {body}"
            );
        }
    }
    // An issuer ACL on the PKI's CA matching the profile's CN, exact and wildcard.
    let (status, body) = env
        .other_admin(
            reqwest::Method::POST,
            "/v1/teams/other/consumers",
            json!({ "name": "thief" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for subject in [
        format!("CN={CN}"),
        "CN=*.payments.example".to_owned(),
        "CN=*".to_owned(),
    ] {
        let (status, body) = env
            .other_admin(
                reqwest::Method::PUT,
                "/v1/teams/other/consumers/thief/issuer-acl",
                json!({ "issuer_ca": env.pki_ca, "subject": subject }),
            )
            .await;
        assert!(
            (400..500).contains(&status),
            "an ACL claiming the agent's names: {subject}: {status} {body}"
        );
        assert_eq!(whoami(&env, &next).await, (200, true), "{subject}");
        assert_eq!(whoami(&env, &agent).await, (200, true), "{subject}");
    }
    // The renewed and the first certificate: neither pins to another team's consumer.
    for cert in [&renewed, &env.agent.0] {
        let (status, body) = env
            .other_admin(
                reqwest::Method::POST,
                "/v1/teams/other/consumers/thief/certificates",
                json!({ "certificate": cert }),
            )
            .await;
        assert_eq!(status, 409, "{body}");
    }
    assert_eq!(whoami(&env, &next).await, (200, true));
    // Deleting and recreating the attacker's own consumer changes nothing for the agent.
    let (status, _) = env
        .other_admin(
            reqwest::Method::DELETE,
            "/v1/teams/other/consumers/thief",
            Value::Null,
        )
        .await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(whoami(&env, &next).await, (200, true));
    // A token consumer of payments renews nothing; the good policy is in force (gw reads).
    let r = env
        .http()
        .get(env.s.url("/v1/credentials"))
        .bearer_auth(GW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(env.signed(), 1);
    drop(env.bao);
}

/// A renewed certificate cut off by replacing the consumer's first certificate (a host
/// compromised, its key stolen) stays cut off when `identity_profile` is named again for a
/// new host: each renewed pin records the identity the operator gave the consumer when it
/// renewed, and counts only while it is the same (THREATS row 96). Before, the store's pins
/// came back with the profile and the stolen certificate was the agent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_renewed_certificate_stays_cut_off_when_the_profile_is_named_again() {
    let env = start("1h", "").await;
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (key, c) = csr();
    let (status, body) = env.renew(&agent, &c).await;
    assert_eq!(status, 200, "{body}");
    // The renewed key is stolen; the operator cuts it off as documented (and the first pin).
    let stolen = env.client(body["certificate"].as_str().unwrap(), &key);
    assert_eq!(whoami(&env, &stolen).await, (200, true));
    let cut = good_policy(
        "0000000000000000000000000000000000000000000000000000000000000002",
        &fingerprint(&env.plain.0),
    )
    .replace(PROFILE_LINE, "");
    let (status, body) = env.reload(&cut).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&env, &stolen).await.0, 401, "cut off");
    // A new host for `agent`: a new first certificate, renewal named again.
    let fresh = issued(&env.bao, "ident", CN, "1h");
    let (status, body) = env
        .reload(&good_policy(
            &fingerprint(&fresh.0),
            &fingerprint(&env.plain.0),
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        whoami(&env, &stolen).await.0,
        401,
        "the cut-off renewed certificate identifies the agent again"
    );
    // The new host is the agent.
    let new_host = env.client(&fresh.0, &fresh.1);
    assert_eq!(whoami(&env, &new_host).await, (200, true));
    drop(env.bao);
}

/// THREATS row 94: a pinned certificate identifies only inside its own validity, also for a
/// blocking query held across its end: when the secret changes after the end, the wait ends
/// unauthenticated instead of answering the new value (before: 200 with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_blocking_query_ends_with_the_renewed_certificate() {
    let env = start("20s", "").await;
    let agent = env.client(&env.agent.0, &env.agent.1);
    let (key, c) = csr();
    let (status, body) = env.renew(&agent, &c).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["certificate"].as_str().unwrap().to_owned();
    let end = {
        let der = pem_der(&renewed);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        u64::try_from(cert.validity().not_after.timestamp()).unwrap()
    };
    let next = env.client(&renewed, &key);
    let url = env.s.url("/v1/credentials/app-token/material");
    let r = next
        .post(&url)
        .json(&json!({ "host": "api.partner.example" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let waiter = {
        let req = next
            .post(format!("{url}?wait=60s"))
            .header("if-none-match", &etag)
            .timeout(Duration::from_secs(90))
            .json(&json!({ "host": "api.partner.example" }));
        tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        })
    };
    // Past the renewed certificate's end: a new request with it is refused.
    let wait = end.saturating_sub(support_now()) + 2;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let fresh = env.client(&renewed, &key);
    let r = fresh
        .post(&url)
        .json(&json!({ "host": "api.partner.example" }))
        .send()
        .await;
    assert!(
        r.is_err() || r.unwrap().status() == 401,
        "a new request past the end"
    );
    // The secret changes after the end.
    std::fs::write(
        env.root().join("secrets/app/token.json"),
        json!({ "value": "token-v2" }).to_string(),
    )
    .unwrap();
    let (status, text) = waiter.await.unwrap();
    assert!(
        !text.contains("token-v2"),
        "a secret changed after the certificate's end was answered to it: {status} {text}"
    );
    assert_eq!(status, 401, "{text}");
    drop(env.bao);
}
