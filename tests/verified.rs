//! Verified credentials: an mTLS credential is served only as a verified whole (its key is the
//! leaf's, the leaf is a client certificate within its validity, keys are not weak, the chain
//! reaches the root), and every door refuses the same way — `/material` and the egress proxy
//! with 502 `credential_rejected` naming the role and the code, the Vault API with Vault's
//! error shape, metadata with `status: "rejected"` — without a byte of the material anywhere.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use support::server::{Running, folder, token_sha256};

const GW: &str = "verified-gw-token";
const OPS: &str = "verified-ops-token";

struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn root(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    fn intermediate(&self, cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let pem = params.signed_by(&key, &issuer).unwrap().pem();
        Self { params, key, pem }
    }

    /// A leaf for `cn`, shaped by `edit`; (certificate PEM, key PEM).
    fn leaf(&self, cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        edit(&mut params);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap().pem();
        (cert, key.serialize_pem())
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every class of the issue: (credential name, cert, key, root, expected role and code; None
/// for a credential that must be served).
struct Case {
    name: &'static str,
    cert: String,
    key: String,
    root: Option<String>,
    refused: Option<(&'static str, &'static str)>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let root = Authority::root("verified root");
    let inter = root.intermediate("verified intermediate");
    let other_root = Authority::root("some other root");
    let now = time::OffsetDateTime::now_utc();
    let (leaf, leaf_key) = inter.leaf("gw", |_| {});
    let (_, other_key) = inter.leaf("other", |_| {});
    let chain = format!("{leaf}{}", inter.pem);
    let (expired, expired_key) = inter.leaf("expired", |p| {
        p.not_before = now - time::Duration::days(10);
        p.not_after = now - time::Duration::days(1);
    });
    let (future, future_key) = inter.leaf("future", |p| {
        p.not_before = now + time::Duration::days(1);
        p.not_after = now + time::Duration::days(10);
    });
    let (server_only, server_only_key) = inter.leaf("server-only", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let (signing_only, signing_only_key) = inter.leaf("encipher-only", |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    });
    // A CA presented as a client certificate, with its own key.
    let ca_key = inter.key.serialize_pem();
    // An RSA-1024 leaf and a leaf whose key is encrypted, made with openssl.
    std::fs::write(dir.join("inter.pem"), &inter.pem).unwrap();
    std::fs::write(dir.join("inter-key.pem"), &ca_key).unwrap();
    std::fs::write(dir.join("leaf-key.pem"), &leaf_key).unwrap();
    openssl(dir, &["genrsa", "-out", "weak-key.pem", "1024"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "weak-key.pem",
            "-subj",
            "/CN=weak",
            "-out",
            "weak.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "weak.csr",
            "-CA",
            "inter.pem",
            "-CAkey",
            "inter-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "weak.pem",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:test",
            "-in",
            "leaf-key.pem",
            "-out",
            "encrypted-key.pem",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let weak = format!("{}{}", read("weak.pem"), inter.pem);
    let case = |name, cert: &str, key: &str, root: Option<&str>, refused| Case {
        name,
        cert: cert.to_owned(),
        key: key.to_owned(),
        root: root.map(str::to_owned),
        refused,
    };
    let r = Some(root.pem.as_str());
    vec![
        case("good", &chain, &leaf_key, r, None),
        case("good-no-root", &chain, &leaf_key, None, None),
        case(
            "mismatch",
            &chain,
            &other_key,
            r,
            Some(("client_private_key", "key_certificate_mismatch")),
        ),
        case(
            "ca-as-client",
            &inter.pem,
            &ca_key,
            r,
            Some(("client_certificate", "ca_not_leaf")),
        ),
        case(
            "expired",
            &format!("{expired}{}", inter.pem),
            &expired_key,
            r,
            Some(("client_certificate", "expired")),
        ),
        case(
            "not-yet-valid",
            &format!("{future}{}", inter.pem),
            &future_key,
            r,
            Some(("client_certificate", "not_yet_valid")),
        ),
        case(
            "server-only",
            &format!("{server_only}{}", inter.pem),
            &server_only_key,
            r,
            Some(("client_certificate", "wrong_key_usage")),
        ),
        case(
            "no-signature",
            &format!("{signing_only}{}", inter.pem),
            &signing_only_key,
            r,
            Some(("client_certificate", "wrong_key_usage")),
        ),
        case(
            "weak",
            &weak,
            &read("weak-key.pem"),
            r,
            Some(("client_private_key", "weak_key")),
        ),
        case(
            "encrypted",
            &chain,
            &read("encrypted-key.pem"),
            r,
            Some(("client_private_key", "encrypted_key")),
        ),
        case(
            "missing-intermediate",
            &leaf,
            &leaf_key,
            r,
            Some(("client_certificate", "untrusted_chain")),
        ),
        case(
            "other-root",
            &chain,
            &leaf_key,
            Some(&other_root.pem),
            Some(("client_certificate", "untrusted_chain")),
        ),
    ]
}

struct World {
    dir: tempfile::TempDir,
    server: Running,
    vault_port: u16,
    egress: u16,
    upstream: u16,
    accepted: Arc<AtomicUsize>,
    cases: Vec<Case>,
}

async fn world() -> World {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let cases = cases(root);
    std::fs::create_dir_all(root.join("secrets/creds")).unwrap();
    let mut policy = format!(
        r#"
[[team]]
slug = "payments"
[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{}"
vault_api_host = "api.partner.example"
[[consumer]]
name = "ops"
team = "payments"
token_sha256 = "{}"
admin = true
"#,
        token_sha256(GW),
        token_sha256(OPS)
    );
    for c in &cases {
        let mut secret = json!({ "cert": c.cert, "key": c.key });
        if let Some(r) = &c.root {
            secret["ca"] = r.clone().into();
        }
        std::fs::write(
            root.join(format!("secrets/creds/{}.json", c.name)),
            secret.to_string(),
        )
        .unwrap();
        policy.push_str(&format!(
            r#"
[[credential]]
name = "{n}"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:creds/{n} $KEY_cert"
client_private_key = "$SECRET_files:creds/{n} $KEY_key"
"#,
            n = c.name
        ));
        if c.root.is_some() {
            policy.push_str(&format!(
                "root_certificate = \"$SECRET_files:creds/{} $KEY_ca\"\n",
                c.name
            ));
        }
    }
    std::fs::write(root.join("policies/p.toml"), policy).unwrap();
    // The upstream the egress proxy would reach: a bare listener that counts connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    std::fs::write(
        root.join("kb.toml"),
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
resolve = { "api.partner.example" = "127.0.0.1" }
timeout = "10s"
[[source]]
name = "files"
kind = "file"
path = "secrets"
[audit]
path = "audit.log"
"#,
    )
    .unwrap();
    let server = Running::start(root, &ca.pem, 0, "debug").await;
    let vault_port = server.port_of("vault_api");
    let egress = server.port_of("egress");
    World {
        dir,
        server,
        vault_port,
        egress,
        upstream,
        accepted,
        cases,
    }
}

impl World {
    async fn get(&self, url: String, header: (&str, &str)) -> (u16, Value) {
        let resp = self
            .server
            .client
            .get(url)
            .header(header.0, header.1)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn material(&self, name: &str) -> (u16, Value) {
        let resp = self
            .server
            .client
            .post(self.server.url(&format!("/v1/credentials/{name}/material")))
            .bearer_auth(GW)
            .json(&json!({ "host": "api.partner.example" }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn metadata(&self, name: &str) -> Value {
        let auth = format!("Bearer {GW}");
        let (status, body) = self
            .get(
                self.server.url(&format!("/v1/credentials/{name}")),
                ("authorization", &auth),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn vault_api(&self, name: &str) -> (u16, Value) {
        self.get(
            format!(
                "https://localhost:{}/v1/credentials/data/{name}",
                self.vault_port
            ),
            ("x-vault-token", GW),
        )
        .await
    }

    async fn egress(&self, name: &str) -> (u16, Value) {
        let proxy = reqwest::Proxy::http(format!("http://127.0.0.1:{}", self.egress))
            .unwrap()
            .custom_http_auth(format!("Bearer {GW}").parse().unwrap());
        let client = reqwest::Client::builder()
            .proxy(proxy)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let resp = client
            .get(format!("http://api.partner.example:{}/", self.upstream))
            .header("keybroker-credential", name)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Every class is refused at every door with its role and code; the good credentials are
/// served; no refusal opens an upstream connection; no PEM byte reaches any answer, log or
/// audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_serves_only_verified_credentials() {
    let w = world().await;
    let mut bodies = String::new();
    for c in &w.cases {
        let (status, body) = w.material(c.name).await;
        let meta = w.metadata(c.name).await;
        let (vstatus, vbody) = w.vault_api(c.name).await;
        match c.refused {
            None => {
                assert_eq!(status, 200, "{}: {body}", c.name);
                assert_eq!(meta["status"], "ok", "{}: {meta}", c.name);
                assert_eq!(vstatus, 200, "{}: {vbody}", c.name);
            }
            Some((role, code)) => {
                bodies.push_str(&format!("{body}{meta}{vbody}"));
                assert_eq!(status, 502, "{}: {body}", c.name);
                assert_eq!(body["error"]["code"], "credential_rejected", "{}", c.name);
                assert_eq!(
                    body["error"]["details"],
                    json!([{ "role": role, "reason": code }]),
                    "{}",
                    c.name
                );
                assert_eq!(meta["status"], "rejected", "{}: {meta}", c.name);
                assert_eq!(
                    meta["rejected"],
                    json!({ "role": role, "code": code }),
                    "{}",
                    c.name
                );
                assert_eq!(vstatus, 502, "{}: {vbody}", c.name);
                assert!(vbody.get("data").is_none(), "{}: {vbody}", c.name);
                assert_eq!(
                    vbody["errors"][0],
                    format!("credential_rejected: {role}: {code}"),
                    "{}",
                    c.name
                );
                let (estatus, ebody) = w.egress(c.name).await;
                bodies.push_str(&ebody.to_string());
                assert_eq!(estatus, 502, "{}: {ebody}", c.name);
                assert_eq!(ebody["error"]["code"], "credential_rejected", "{}", c.name);
                assert_eq!(
                    ebody["error"]["details"],
                    json!([{ "role": role, "reason": code }]),
                    "{}",
                    c.name
                );
                assert_eq!(
                    w.accepted.load(Ordering::SeqCst),
                    0,
                    "{}: the egress proxy connected upstream",
                    c.name
                );
            }
        }
    }
    // The good credential through the egress proxy does reach the upstream (which is no TLS
    // server, so the call itself fails): the counter above could count.
    let _ = w.egress("good").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a verified credential never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Canary: no line of any certificate or key in an answer, a log or the audit trail.
    let logs = ["stdout.log", "stderr.log", "audit.log"]
        .iter()
        .map(|f| std::fs::read_to_string(w.dir.path().join(f)).unwrap_or_default())
        .collect::<String>();
    let refusals = bodies;
    for c in w.cases.iter().filter(|c| c.refused.is_some()) {
        for pem in [&c.cert, &c.key] {
            // Full body lines: a short last line ("AQAB==") could occur anywhere by chance.
            for line in pem
                .lines()
                .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
            {
                assert!(!refusals.contains(line), "{}: PEM in an answer", c.name);
                assert!(!logs.contains(line), "{}: PEM in a log line", c.name);
            }
        }
    }
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"key_certificate_mismatch\""), "{audit}");
    // Each refusal is reported once per change of verdict, not once per request (every
    // refused credential was asked for four times above): one audit event each, one count
    // per code in the metric, which names no credential.
    let events: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"credential.rejected\""))
        .collect();
    let refused = w.cases.iter().filter(|c| c.refused.is_some()).count();
    assert_eq!(events.len(), refused, "{events:#?}");
    let metrics = w
        .server
        .client
        .get(w.server.url("/metrics"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keybroker_credential_rejections_total{code=\"wrong_key_usage\"} 2"),
        "{metrics}"
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("keybroker_credential_rejections_total"))
    {
        assert!(
            line.starts_with("keybroker_credential_rejections_total{code=\""),
            "{line}"
        );
        assert_eq!(line.matches('=').count(), 1, "one label, the code: {line}");
    }
}
