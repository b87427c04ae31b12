//! The vault source against a real OpenBao server (docs/DESIGN.md §3, issue 4).

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use keybroker::testing::source::Outage;
use std::path::PathBuf;
use std::process::Command;

use secrecy::ExposeSecret;

use keybroker::testing::config::{Config, SourceConfig};
use keybroker::testing::reference::SecretPath;
use keybroker::testing::source::{ReadRequest, SecretSource, SourceError, VaultEnv, VaultSource};
use support::openbao::{OpenBao, ROOT_TOKEN};

fn source(toml: &str, env: VaultEnv) -> VaultSource {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(toml, &dir.path().join("kb.toml")).unwrap();
    let SourceConfig::Vault(v) = &cfg.sources[0] else {
        panic!("a vault source")
    };
    VaultSource::new(v, &env).unwrap()
}

fn env(bao: &OpenBao, token: &str) -> VaultEnv {
    VaultEnv {
        addr: Some(bao.addr.clone()),
        token: Some(keybroker::testing::secret::secret_string(token)),
        ..VaultEnv::default()
    }
}

fn req(path: &str, version: Option<u64>) -> ReadRequest {
    ReadRequest {
        path: SecretPath::from_segments(path.split('/')).unwrap(),
        version,
    }
}

/// A Vault policy `demo-only`: read under `secret/data/demo/` and nothing else.
fn demo_only_policy(bao: &OpenBao) {
    let file = bao.approle_dir.path().join("demo.hcl");
    std::fs::write(
        &file,
        "path \"secret/data/demo/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.cli(&["policy", "write", "demo-only", file.to_str().unwrap()]);
}

const KV2: &str = "[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"secret\"\n";

#[tokio::test]
async fn kv_v2_fields_versions_and_metadata() {
    let bao = OpenBao::start();
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "demo/db",
        "username=app",
        "password=second",
    ]);
    let src = source(KV2, env(&bao, ROOT_TOKEN));
    let latest = src.read(&req("demo/db", None)).await.unwrap();
    assert_eq!(latest.field("password").unwrap().expose_secret(), "second");
    assert_eq!(latest.meta().version, Some(2));
    assert!(latest.meta().created_time.is_some());
    let first = src.read(&req("demo/db", Some(1))).await.unwrap();
    assert_eq!(
        first.field("password").unwrap().expose_secret(),
        "dev-only-Zq8#w2!v"
    );
    assert_eq!(
        src.read(&req("demo/none", None)).await.unwrap_err(),
        SourceError::NotFound
    );
    assert_eq!(
        src.read(&req("demo/db", Some(9))).await.unwrap_err(),
        SourceError::NotFound
    );
    // A deleted version reads as not found.
    bao.cli(&["kv", "delete", "-mount=secret", "demo/db"]);
    assert_eq!(
        src.read(&req("demo/db", None)).await.unwrap_err(),
        SourceError::NotFound
    );
}

#[tokio::test]
async fn kv_v1_is_detected_from_the_mount() {
    let bao = OpenBao::start();
    let src = source(
        "[[source]]\nname = \"legacy\"\nkind = \"vault\"\nmount = \"kv1\"\n",
        env(&bao, ROOT_TOKEN),
    );
    let s = src.read(&req("legacy/app", None)).await.unwrap();
    assert_eq!(s.field("token").unwrap().expose_secret(), "v1-token-7f2");
    assert_eq!(s.meta().version, None);
    assert!(matches!(
        src.read(&req("legacy/app", Some(1))).await,
        Err(SourceError::Unsupported(_))
    ));
}

#[tokio::test]
async fn permission_denied_is_not_not_found() {
    let bao = OpenBao::start();
    demo_only_policy(&bao);
    let token = bao.token("demo-only", "1h");
    let src = source(&format!("{KV2}kv_version = 2\n"), env(&bao, &token));
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    assert_eq!(
        src.read(&req("payments/partner", None)).await.unwrap_err(),
        SourceError::Denied
    );
    assert_eq!(
        src.read(&req("demo/absent", None)).await.unwrap_err(),
        SourceError::NotFound
    );
}

#[tokio::test]
async fn token_file_is_reread_when_it_changes() {
    let bao = OpenBao::start();
    demo_only_policy(&bao);
    let file = bao.approle_dir.path().join("token");
    std::fs::write(&file, format!("{}\n", bao.token("demo-only", "1h"))).unwrap();
    let toml = format!(
        "{KV2}kv_version = 2\nauth = {{ method = \"token\", token_file = {:?} }}\n",
        file
    );
    let src = source(
        &toml,
        VaultEnv {
            addr: Some(bao.addr.clone()),
            ..VaultEnv::default()
        },
    );
    assert_eq!(
        src.read(&req("payments/partner", None)).await.unwrap_err(),
        SourceError::Denied
    );
    // Rotate: a token with the keybroker policy. A different size makes the change visible
    // even on file systems with coarse modification times.
    std::fs::write(&file, format!("  {}\n\n", bao.token("keybroker", "1h"))).unwrap();
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert!(src.read(&req("payments/partner", None)).await.is_ok());
}

fn approle_toml(bao: &OpenBao) -> String {
    let dir = bao.approle_dir.path();
    format!(
        "{KV2}auth = {{ method = \"approle\", role_id_file = {:?}, secret_id_file = {:?} }}\n",
        dir.join("role_id"),
        dir.join("secret_id")
    )
}

#[tokio::test]
async fn approle_login_and_relogin_after_revocation() {
    let bao = OpenBao::start();
    let src = source(
        &approle_toml(&bao),
        VaultEnv {
            addr: Some(bao.addr.clone()),
            ..VaultEnv::default()
        },
    );
    assert!(src.read(&req("payments/partner", None)).await.is_ok());
    // Revoke every token the AppRole issued: the next read logs in again, once.
    bao.cli(&["token", "revoke", "-mode=path", "auth/approle/login"]);
    let s = src.read(&req("demo/db", None)).await.unwrap();
    assert_eq!(s.field("username").unwrap().expose_secret(), "app");
}

#[tokio::test]
async fn a_short_ttl_token_is_renewed_across_more_than_its_ttl() {
    let bao = OpenBao::start();
    let token = bao.token("keybroker", "4s");
    let src = source(KV2, env(&bao, &token));
    // Reads at 0 s, 3 s and 6 s: past two thirds of the TTL each time, so each renews; without
    // renewal the token would have expired at 4 s.
    for _ in 0..3 {
        assert!(src.read(&req("demo/db", None)).await.is_ok());
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    let lookup = bao.cli(&["token", "lookup", "-format=json", &token]);
    assert!(lookup.contains("\"ttl\""), "{lookup}");
}

#[tokio::test]
async fn openbao_stopped_means_unavailable() {
    let mut bao = OpenBao::start();
    let src = source(&format!("{KV2}timeout = \"2s\"\n"), env(&bao, ROOT_TOKEN));
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    bao.stop();
    assert!(matches!(
        src.read(&req("demo/db", None)).await,
        Err(SourceError::Unavailable(_))
    ));
}

#[test]
fn resolve_end_to_end_with_only_vault_addr_and_token() {
    let bao = OpenBao::start();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args([
            "resolve",
            "--config",
            "examples/vault/keybroker.toml",
            "examples/vault/document.json",
        ])
        .current_dir(&repo)
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["database"],
        "postgres://app:dev-only-Zq8#w2!v@db.internal.example/app"
    );
    assert_eq!(doc["legacy_token"], "v1-token-7f2");
    assert!(
        doc["partner_cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    // Canary: neither the values nor the token reach the log at trace level.
    assert!(!stderr.contains("dev-only-Zq8"), "{stderr}");
    assert!(!stderr.contains("v1-token-7f2"), "{stderr}");
}

/// TLS certificate auth through an mTLS listener added with `-config=`; keybroker presents a
/// client certificate, trusts a custom CA, and logs in with `auth/cert`.
#[tokio::test]
async fn cert_auth_through_an_mtls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = support::pki::Ca::new("bao test CA");
    ca.write(&d.join("ca.pem"));
    ca.server(d, "server");
    ca.client(d, "client", "keybroker");
    let extra = d.join("extra.hcl");
    std::fs::write(
        &extra,
        format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:0\"\n  tls_cert_file = {:?}\n  tls_key_file = {:?}\n  tls_client_ca_file = {:?}\n}}\n",
            d.join("server.pem"),
            d.join("server-key.pem"),
            d.join("ca.pem")
        ),
    )
    .unwrap();
    let bao = OpenBao::start_with_config(Some(&extra));
    let tls_port = bao.extra_port();
    bao.cli(&["auth", "enable", "cert"]);
    bao.cli(&[
        "write",
        "auth/cert/certs/keybroker",
        "display_name=keybroker",
        "token_policies=keybroker",
        &format!("certificate=@{}", d.join("ca.pem").display()),
    ]);
    let toml = format!(
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\naddress = \"https://127.0.0.1:{tls_port}\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\nauth = {{ method = \"cert\", name = \"keybroker\" }}\n",
        d.join("ca.pem"),
        d.join("client.pem"),
        d.join("client-key.pem")
    );
    let src = source(&toml, VaultEnv::default());
    let s = src
        .read(&req("payments/partner", None))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", bao.log()));
    assert!(
        s.field("cert")
            .unwrap()
            .expose_secret()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // The same listener with a CA keybroker does not trust: refused, not silently accepted.
    support::pki::Ca::new("other CA").write(&d.join("other-ca.pem"));
    let wrong = toml.replace("ca.pem", "other-ca.pem");
    let src = source(&wrong, VaultEnv::default());
    assert!(matches!(
        src.read(&req("payments/partner", None)).await,
        Err(SourceError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_sealed_server_is_unavailable_and_failed_logins_back_off() {
    let bao = OpenBao::start();
    let src = source(KV2, env(&bao, ROOT_TOKEN));
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    bao.cli(&["operator", "seal"]);
    assert_eq!(
        src.read(&req("demo/db", None)).await.unwrap_err(),
        SourceError::Unavailable(Outage::VaultSealed)
    );

    // A wrong AppRole secret: the first read tries to log in, the next one backs off instead
    // of hammering the server.
    let bao = OpenBao::start();
    std::fs::write(
        bao.approle_dir.path().join("secret_id"),
        "not-the-secret-id",
    )
    .unwrap();
    let src = source(
        &approle_toml(&bao),
        VaultEnv {
            addr: Some(bao.addr.clone()),
            ..VaultEnv::default()
        },
    );
    // A refused login is keybroker's own credentials failing: an outage for every caller
    // (not a caller's denial), and still so while the next login backs off.
    assert_eq!(
        src.read(&req("demo/db", None)).await.unwrap_err(),
        SourceError::Unavailable(Outage::CredentialsRefused)
    );
    assert_eq!(
        src.read(&req("demo/db", None)).await.unwrap_err(),
        SourceError::Unavailable(Outage::CredentialsRefused)
    );
}

/// A JWT signed with `key` (Ed25519, `alg = EdDSA`) for `aud`.
fn jwt(key: &rcgen::KeyPair, aud: &str) -> String {
    use base64::Engine;
    use rcgen::SigningKey;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({
        "iss": "keybroker-test", "sub": "keybroker", "aud": aud,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
    .to_string()
    .as_bytes());
    let signed = format!("{header}.{claims}");
    let signature = key.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

/// OpenBao's JWT auth at `mount`, trusting `key`, with a role `keybroker` for audience
/// `keybroker` and the `keybroker` policy.
fn jwt_auth(bao: &OpenBao, mount: &str, key: &rcgen::KeyPair) {
    let pubkey = bao.approle_dir.path().join(format!("{mount}.pub.pem"));
    std::fs::write(&pubkey, key.public_key_pem()).unwrap();
    bao.cli(&["auth", "enable", &format!("-path={mount}"), "jwt"]);
    bao.cli(&[
        "write",
        &format!("auth/{mount}/config"),
        &format!("jwt_validation_pubkeys=@{}", pubkey.display()),
        "bound_issuer=keybroker-test",
    ]);
    bao.cli(&[
        "write",
        &format!("auth/{mount}/role/keybroker"),
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=keybroker",
        "token_policies=keybroker",
        "token_ttl=1h",
    ]);
}

/// An OpenBao whose JWT auth is mounted at `method`'s default mount, and a vault source with
/// `auth = { method, role, token_file }`, the file holding a good JWT.
fn jwt_source(method: &str) -> (OpenBao, rcgen::KeyPair, PathBuf, VaultSource) {
    let bao = OpenBao::start();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    jwt_auth(&bao, method, &key);
    let file = bao.approle_dir.path().join(format!("{method}.jwt"));
    std::fs::write(&file, jwt(&key, "keybroker")).unwrap();
    let src = source(
        &format!(
            "{KV2}auth = {{ method = \"{method}\", role = \"keybroker\", token_file = {file:?} }}\n"
        ),
        VaultEnv {
            addr: Some(bao.addr.clone()),
            ..VaultEnv::default()
        },
    );
    (bao, key, file, src)
}

#[tokio::test]
async fn jwt_login_rereads_its_token_file_at_every_login() {
    let (bao, key, file, src) = jwt_source("jwt");
    assert!(src.read(&req("demo/db", None)).await.is_ok());

    // The file now holds a JWT for another audience, and the login's token is revoked: the
    // next login reads the file again and is refused (a cached JWT would have logged in).
    std::fs::write(&file, jwt(&key, "someone-else")).unwrap();
    bao.cli(&["token", "revoke", "-mode=path", "auth/jwt/login"]);
    let refused = src.read(&req("demo/db", None)).await;
    assert!(
        matches!(
            refused,
            Err(SourceError::Unavailable(Outage::CredentialsRefused))
        ),
        "{:?}",
        refused.err()
    );
    // A good JWT again: once the login back-off has passed, reads work.
    std::fs::write(&file, jwt(&key, "keybroker")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match src.read(&req("demo/db", None)).await {
            Ok(s) => {
                assert_eq!(s.field("username").unwrap().expose_secret(), "app");
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "no login: {e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `method = "kubernetes"` sends Vault's Kubernetes login (`{role, jwt}` to
/// `auth/kubernetes/login`); without a Kubernetes API here, OpenBao's JWT auth mounted at
/// `kubernetes` checks the same request.
#[tokio::test]
async fn kubernetes_login_sends_the_service_account_token_to_the_kubernetes_mount() {
    let (bao, _key, _file, src) = jwt_source("kubernetes");
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    // No VAULT_TOKEN: the token came from that mount. Revoked, it is replaced by a new login.
    bao.cli(&["token", "revoke", "-mode=path", "auth/kubernetes/login"]);
    assert!(src.read(&req("demo/db", None)).await.is_ok());
}

/// An OpenBao TLS listener whose certificate names only `vault.internal` (not 127.0.0.1),
/// issued by `ca`; returns the server and the listener's port.
fn bao_named_tls(d: &std::path::Path, ca: &support::pki::Ca) -> (OpenBao, u16) {
    ca.server_for(d, "named", &["vault.internal"]);
    let extra = d.join("named.hcl");
    std::fs::write(
        &extra,
        format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:0\"\n  tls_cert_file = {:?}\n  tls_key_file = {:?}\n}}\n",
            d.join("named.pem"),
            d.join("named-key.pem"),
        ),
    )
    .unwrap();
    let bao = OpenBao::start_with_config(Some(&extra));
    let tls_port = bao.extra_port();
    (bao, tls_port)
}

#[tokio::test]
async fn tls_server_name_checks_the_certificate_for_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = support::pki::Ca::new("bao named CA");
    ca.write(&d.join("ca.pem"));
    let (_bao, port) = bao_named_tls(d, &ca);
    let base = format!(
        "{KV2}address = \"https://127.0.0.1:{port}\"\nca_cert = {:?}\n",
        d.join("ca.pem")
    );
    let token = VaultEnv {
        token: Some(keybroker::testing::secret::secret_string(ROOT_TOKEN)),
        ..VaultEnv::default()
    };
    // The certificate does not name 127.0.0.1: refused without a server name.
    let src = source(&base, VaultEnv { ..token.clone() });
    assert!(matches!(
        src.read(&req("demo/db", None)).await,
        Err(SourceError::Unavailable(_))
    ));
    // The setting, then the environment variable: checked for vault.internal, read.
    let src = source(
        &format!("{base}tls_server_name = \"vault.internal\"\n"),
        token.clone(),
    );
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    let src = source(
        &base,
        VaultEnv {
            tls_server_name: Some("vault.internal".to_owned()),
            ..token.clone()
        },
    );
    assert!(src.read(&req("demo/db", None)).await.is_ok());
    // A name the certificate does not carry is refused, not waved through.
    let src = source(
        &format!("{base}tls_server_name = \"other.internal\"\n"),
        token,
    );
    assert!(matches!(
        src.read(&req("demo/db", None)).await,
        Err(SourceError::Unavailable(_))
    ));
}

/// VAULT_CACERT replaces the system roots, as the Vault CLI treats it: with the system roots
/// (SSL_CERT_FILE) holding OpenBao's CA, a VAULT_CACERT of another CA still fails — exit 75.
#[test]
fn vault_cacert_replaces_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = support::pki::Ca::new("bao named CA");
    ca.write(&d.join("ca.pem"));
    support::pki::Ca::new("unrelated CA").write(&d.join("other-ca.pem"));
    let (_bao, port) = bao_named_tls(d, &ca);
    std::fs::write(
        d.join("kb.toml"),
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"secret\"\ntls_server_name = \"vault.internal\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("doc.json"),
        r#"{"u": "$SECRET_demo/db $KEY_username"}"#,
    )
    .unwrap();
    // keybroker resolve with the system roots (as rustls-platform-verifier reads them on
    // Linux) holding OpenBao's CA, and `vars` on top.
    let run = |vars: &[(&str, std::path::PathBuf)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        c.args(["resolve", "--config", "kb.toml", "doc.json"])
            .current_dir(d)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BAO_ADDR", format!("https://127.0.0.1:{port}"))
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("SSL_CERT_FILE", d.join("ca.pem"));
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let cacert = |file: &str| [("VAULT_CACERT", d.join(file))];
    let system = run(&[]);
    assert!(
        system.status.success(),
        "the system roots accept OpenBao's certificate: {}",
        String::from_utf8_lossy(&system.stderr)
    );
    assert!(String::from_utf8_lossy(&system.stdout).contains("\"app\""));
    let replaced = run(&cacert("other-ca.pem"));
    assert_eq!(
        replaced.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert!(run(&cacert("ca.pem")).status.success());
    // A bundle trusts every certificate in it, not only the first.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(d.join("other-ca.pem")).unwrap(),
        ca.pem
    );
    std::fs::write(d.join("bundle.pem"), bundle).unwrap();
    assert!(run(&cacert("bundle.pem")).status.success());
    // VAULT_CAPATH: a folder of CA files, replacing the system roots the same way.
    let capath = |files: &[&str]| {
        let folder = tempfile::tempdir_in(d).unwrap();
        for f in files {
            std::fs::copy(d.join(f), folder.path().join(f)).unwrap();
        }
        run(&[("VAULT_CAPATH", folder.path().to_owned())])
            .status
            .code()
    };
    assert_eq!(capath(&["other-ca.pem"]), Some(75));
    assert_eq!(capath(&["other-ca.pem", "ca.pem"]), Some(0));
}

/// A mount that does not exist: with a root token Vault answers 403, which alone would read
/// as "refused keybroker's credentials"; the log names the mount and both explanations.
#[test]
fn a_missing_mount_is_named_in_the_log() {
    let bao = OpenBao::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("kb.toml"),
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"nosuch\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("doc.json"),
        r#"{"u": "$SECRET_demo/db $KEY_username"}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args([
            "--log-format",
            "text",
            "resolve",
            "--config",
            "kb.toml",
            "doc.json",
        ])
        .current_dir(d)
        .env("BAO_ADDR", &bao.addr)
        .env("BAO_TOKEN", ROOT_TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mount=nosuch"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("status=403"), "{stderr}");
}

/// `serve --dev` with BAO_ADDR set adds a `vault` source; the token comes from BAO_TOKEN or,
/// as the CLIs do, from ~/.vault-token.
#[tokio::test]
async fn serve_dev_adds_the_vault_of_the_environment() {
    use std::io::BufRead;
    let bao = OpenBao::start();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".vault-token"), ROOT_TOKEN).unwrap();
    for token_from_env in [true, false] {
        let ready = home.path().join(format!("ready-{token_from_env}.json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_keybroker"));
        command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ADDR")
            .env_remove("KEYBROKER_CONFIG")
            .env("BAO_ADDR", &bao.addr)
            .env("HOME", home.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if token_from_env {
            command.env("BAO_TOKEN", ROOT_TOKEN);
        } else {
            command.env_remove("BAO_TOKEN");
        }
        let mut child = command.spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let token = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("dev bearer token (new on every start): ")
                    .nth(1)
                    .map(|t| t.trim().to_owned())
            })
            .expect("the dev banner");
        let listen = support::server::ready(&ready).await["listen"];
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{listen}/v1/resolve"))
            .bearer_auth(&token)
            .json(
                &serde_json::json!({ "document": { "u": "$SECRET_vault:demo/db $KEY_username" } }),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            answer["document"]["u"], "app",
            "token from env {token_from_env}: {answer}"
        );
    }
}

/// Client sockets of this process's kind to `port` that are open (ESTABLISHED), from
/// /proc/net/tcp: the connections a source keeps to that OpenBao.
#[cfg(target_os = "linux")]
fn open_connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16).unwrap() == port && f[3] == "01"
        })
        .count()
}

/// THREATS row 29: a connection is kept for the next read, but an answer whose lease is
/// shorter than twice `keep_alive` (here a KV v1 `ttl` of 1 s) closes the connection that
/// carried it — its read buffers must not outlive the cache entry.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_short_lease_closes_the_connection_that_carried_it() {
    let bao = OpenBao::start();
    bao.cli(&["kv", "put", "kv1/lease/long", "value=kept"]);
    bao.cli(&["kv", "put", "kv1/lease/short", "value=brief", "ttl=1s"]);
    let src = source(
        "[[source]]\nname = \"legacy\"\nkind = \"vault\"\nmount = \"kv1\"\nkv_version = 1\nkeep_alive = \"1h\"\n",
        env(&bao, ROOT_TOKEN),
    );
    let port = bao.port();
    let settle = |want: usize| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let open = open_connections_to(port);
            if open == want || std::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let long = src.read(&req("lease/long", None)).await.unwrap();
    // OpenBao answers KV v1's default lease (32 days) for it: not the value's TTL, so the
    // cache's own `ttl` applies.
    assert_eq!(long.meta().ttl, None);
    assert_eq!(
        settle(1).await,
        1,
        "the connection is kept for the next read"
    );
    let short = src.read(&req("lease/short", None)).await.unwrap();
    assert_eq!(short.meta().ttl, Some(std::time::Duration::from_secs(1)));
    assert_eq!(
        settle(0).await,
        0,
        "the connection that carried a 1 s lease is closed"
    );
}
