//! `[vault_api.jwt] jwks_file` and `[vault_api.kubernetes]` (docs/VAULT-API.md): the JWT
//! login verified by a JWKS file, read again when it changes (a rotated key taken, the old one
//! refused), and the Kubernetes login by its own keys and issuer — a token of one issuer is
//! never taken by the other login.

mod support {
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

use support::server::{Running, folder};

const JWT_ISSUER: &str = "https://ci.example";
const K8S_ISSUER: &str = "https://kubernetes.default.svc";

/// A JWK of the EC P-256 public half of `key`.
fn jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) })
}

fn sign(key: &rcgen::KeyPair, claims: &Value) -> String {
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &enc,
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes `keys` as the JWKS file, with a modification time other than the last one.
fn write_jwks(path: &std::path::Path, keys: &[Value], age: u64) {
    std::fs::write(path, json!({ "keys": keys }).to_string()).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age))
        .unwrap();
}

async fn login(port: u16, method: &str, role: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/auth/{method}/login"))
        .json(&json!({ "role": role, "jwt": token }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_read_again_when_it_changes_and_each_login_has_its_own_keys() {
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let ci_key = rcgen::KeyPair::generate().unwrap();
    let k8s_key = rcgen::KeyPair::generate().unwrap();
    write_jwks(&root.join("jwks.json"), &[jwk(&ci_key, "ci-1")], 100);
    std::fs::write(root.join("k8s.pem"), k8s_key.public_key_pem()).unwrap();
    std::fs::write(
        root.join("policies/p.toml"),
        r#"
[[team]]
slug = "payments"

[[consumer]]
name = "ci"
team = "payments"
jwt = { role = "ci", bound_audiences = ["keybroker"], bound_subject = "runner" }

[[consumer]]
name = "kong-k8s"
team = "payments"
kubernetes = { role = "kong-k8s", service_account = "kong", namespace = "gateways", audience = "keybroker" }
"#,
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
jwt = {{ jwks_file = "jwks.json", bound_issuer = "{JWT_ISSUER}" }}
kubernetes = {{ validation_pubkeys = "k8s.pem", bound_issuer = "{K8S_ISSUER}" }}
[audit]
path = "audit.log"
"#
        ),
    )
    .unwrap();
    let server = Running::start(root, &ca.pem, 0, "info").await;
    let port = server.port_of("vault_api");
    let claims = |iss: &str, sub: &str| json!({ "iss": iss, "aud": "keybroker", "sub": sub, "exp": now() + 300 });
    let sa = "system:serviceaccount:gateways:kong";

    // Each login with its own issuer's token.
    let ci_token = sign(&ci_key, &claims(JWT_ISSUER, "runner"));
    assert_eq!(login(port, "jwt", "ci", &ci_token).await, 200);
    let k8s_token = sign(&k8s_key, &claims(K8S_ISSUER, sa));
    assert_eq!(login(port, "kubernetes", "kong-k8s", &k8s_token).await, 200);
    // Never the other's: the CI key signing a service-account token (its issuer claimed),
    // the cluster's key signing a CI token.
    let forged_sa = sign(&ci_key, &claims(K8S_ISSUER, sa));
    assert_eq!(login(port, "kubernetes", "kong-k8s", &forged_sa).await, 400);
    let forged_sa = sign(&ci_key, &claims(JWT_ISSUER, sa));
    assert_eq!(login(port, "kubernetes", "kong-k8s", &forged_sa).await, 400);
    let forged_ci = sign(&k8s_key, &claims(JWT_ISSUER, "runner"));
    assert_eq!(login(port, "jwt", "ci", &forged_ci).await, 400);

    // The CI issuer rotates its key: the new JWKS is taken without a restart and the old
    // key's tokens are refused.
    let next_key = rcgen::KeyPair::generate().unwrap();
    write_jwks(&root.join("jwks.json"), &[jwk(&next_key, "ci-2")], 10);
    let next_token = sign(&next_key, &claims(JWT_ISSUER, "runner"));
    assert_eq!(login(port, "jwt", "ci", &next_token).await, 200);
    assert_eq!(login(port, "jwt", "ci", &ci_token).await, 400);
    // A changed file that does not load keeps the keys in force.
    std::fs::write(
        root.join("jwks.json"),
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
    )
    .unwrap();
    assert_eq!(login(port, "jwt", "ci", &next_token).await, 200);
    let stderr = std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();
    assert!(stderr.contains("does not load"), "{stderr}");
    for t in [&ci_token, &k8s_token, &next_token] {
        assert!(!stderr.contains(t.as_str()), "a JWT was logged");
    }
}
