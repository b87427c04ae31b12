//! The CCP-shaped door (docs/CCP-API.md, "keybroker as CCP") with a real CCP client:
//! Ansible's `cyberark.pas.cyberark_credential`, pointed at keybroker instead of CyberArk,
//! reads a key stored flattened in CCP and gets it repaired, byte for byte; a named
//! credential reads under the `keybroker` safe. The caller is its client certificate plus an
//! `AppID` it holds; a refused read answers CCP's "not found" whether or not the object exists.

mod support {
    pub mod ccp;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::process::Command;

use support::ccp::{CcpDouble, Object, Pki, Store, flatten};
use support::pki::Ca;
use support::server::{Running, folder};

struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    running: Running,
    gw: support::pki::Issued,
    stranger: support::pki::Issued,
    key_pem: String,
    _double: CcpDouble,
}

/// A password stored in CCP (`Payments/db-password`): it may appear in granted answers only.
const CANARY: &str = "CCP-DOOR-CANARY-b81f";

async fn world() -> World {
    world_logging("info").await
}

/// The world, with the server logging at `level`.
async fn world_logging(level: &str) -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let partner = Ca::new("partner CA").client(root, "partner", "partner.example");
    std::fs::create_dir_all(root.join("secrets/partner")).unwrap();
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
        props: [
            ("Content".to_owned(), flatten(&partner.key_pem)),
            ("UserName".to_owned(), "svc-partner".to_owned()),
        ]
        .into(),
        changing: false,
    };
    let password = Object {
        folder: "Root".into(),
        name: "db-password".into(),
        props: [
            ("Content".to_owned(), CANARY.to_owned()),
            ("UserName".to_owned(), "svc-db".to_owned()),
        ]
        .into(),
        changing: false,
    };
    store.safes.insert(
        "Payments".into(),
        (vec!["keybroker".into()], vec![key, password]),
    );
    let double = CcpDouble::start(&pki, store).await;
    let clients = Ca::new("clients CA");
    clients.write(&root.join("clients-ca.pem"));
    let gw = clients.client(root, "gw", "gw-1");
    let stranger = clients.client(root, "stranger", "stranger-1");
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
cert_sha256 = [{{ fingerprint = "{gw}" }}]
ccp_app_ids = ["gateway-app"]
vault_api_host = "api.partner.example"

[[consumer]]
name = "stranger"
team = "other"
cert_sha256 = [{{ fingerprint = "{stranger}" }}]
ccp_app_ids = ["gateway-app"]
vault_api_host = "api.partner.example"

[[grant]]
team = "payments"
source = "ccp"
paths = ["Payments/*"]
allowed_hosts = ["api.partner.example"]

[[credential]]
name = "partner-api"
mode = "mtls"
team = "payments"
allowed_hosts = ["api.partner.example"]
client_certificate = "$SECRET_files:partner/cert $KEY_cert"
client_private_key = "$SAFE_Payments $NAME_partner-key"
"#,
            gw = gw.fingerprint(),
            stranger = stranger.fingerprint(),
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
[ccp_api]
listen = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server-key.pem"
client_ca = "clients-ca.pem"
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
"#,
            ccp = double.url,
            ca = p.join("ca.pem"),
            cert = p.join("client.pem"),
            key = p.join("client-key.pem"),
        ),
    )
    .unwrap();
    ca.write(&root.join("ca.pem"));
    let running = Running::start(root, &ca.pem, 0, level).await;
    World {
        key_pem: partner.key_pem,
        dir,
        ca,
        running,
        gw,
        stranger,
        _double: double,
    }
}

impl World {
    async fn get(&self, who: &support::pki::Issued, query: &str) -> (u16, String) {
        self.running
            .send_with_identity(
                &self.ca.pem,
                &who.identity_pem(),
                "ccp_api",
                reqwest::Method::GET,
                &format!("/AIMWebService/api/Accounts?{query}"),
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansibles_cyberark_credential_reads_a_repaired_key_through_keybroker() {
    let w = world().await;
    let root = w.dir.path();
    let port = w.running.port_of("ccp_api");
    std::fs::create_dir_all(root.join("out")).unwrap();
    let task = |name: &str, query: &str| {
        format!(
            r#"
    - name: {name}
      cyberark.pas.cyberark_credential:
        api_base_url: "https://localhost:{port}"
        app_id: gateway-app
        query: "{query}"
        client_cert: "{cert}"
        client_key: "{key}"
        validate_certs: true
      register: read_{name}
    - copy:
        content: "{{{{ read_{name}.result.Content }}}}"
        dest: "{out}/{name}.pem"
"#,
            cert = w.gw.cert.display(),
            key = w.gw.key.display(),
            out = root.join("out").display(),
        )
    };
    let playbook = format!(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n{}{}",
        task("account", "Safe=Payments;Object=partner-key"),
        task(
            "credential",
            "Safe=keybroker;Folder=payments;Object=partner-api#private_key"
        ),
    );
    std::fs::write(root.join("playbook.yml"), playbook).unwrap();
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = Command::new("ansible-playbook")
        .args(["-i", "localhost,", "-c", "local", "playbook.yml"])
        .arg("-e")
        .arg(format!("ansible_python_interpreter={}", python.trim()))
        .current_dir(root)
        .env("SSL_CERT_FILE", root.join("ca.pem"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .output()
        .expect("ansible-playbook runs (scripts/test.sh installs ansible)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["account", "credential"] {
        let got = std::fs::read_to_string(root.join(format!("out/{name}.pem"))).unwrap();
        assert_eq!(got, w.key_pem, "{name}: repaired, byte for byte");
    }
    let audit = std::fs::read_to_string(root.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("\"via\":\"ccp_api\""))
            .count()
            >= 2,
        "{audit}"
    );
}

/// A refused read is CCP's "not found", identical whether or not the object exists; an
/// `AppID` the certificate's consumer does not hold, or a certificate no consumer holds, is
/// CCP's "not authorized"; CCP's 400s for a query it would not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_as_ccp_and_say_nothing_of_what_exists() {
    let w = world().await;
    let (status, body) = w
        .get(&w.gw, "AppID=gateway-app&Safe=Payments&Object=partner-key")
        .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Content"], w.key_pem.as_str());
    assert_eq!(v["UserName"], "svc-partner");
    let not_found = (
        404,
        r#"{"ErrorCode":"APPAP004E","ErrorMsg":"Password object matching query was not found (Diagnostic Info: 5)"}"#
            .to_owned(),
    );
    for (who, query) in [
        (
            &w.gw,
            "AppID=gateway-app&Safe=Payments&Object=no-such-object",
        ),
        (&w.gw, "AppID=gateway-app&Safe=Elsewhere&Object=partner-key"),
        (
            &w.gw,
            "AppID=gateway-app&Safe=keybroker&Folder=other&Object=partner-api%23private_key",
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=no-such%23private_key",
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=partner-api%23nope",
        ),
        // Another team's consumer: the object exists, the answer is the same.
        (
            &w.stranger,
            "AppID=gateway-app&Safe=Payments&Object=partner-key",
        ),
        (
            &w.stranger,
            "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=partner-api%23private_key",
        ),
    ] {
        assert_eq!(w.get(who, query).await, not_found, "{query}");
    }
    // Refused credential reads are the broker's refusals, audited (attack review: they left no
    // line); the reserved safe in another spelling is still the reserved safe.
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap_or_default();
    let denied = audit
        .lines()
        .filter(|l| l.contains("\"via\":\"ccp_api\"") && l.contains("\"decision\":\"denied\""))
        .count();
    assert!(denied >= 4, "{audit}");
    assert_eq!(
        w.get(
            &w.stranger,
            "AppID=gateway-app&Safe=KEYBROKER%20&Folder=payments&Object=partner-api%23private_key"
        )
        .await,
        not_found
    );
    let (status, body) = w
        .get(&w.gw, "AppID=someone-else&Safe=Payments&Object=partner-key")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("APPAP306E"), "{body}");
    // Refusals are audited within the refusal budget shared by every door (THREATS row 27):
    // 10 lines per peer address per minute, the rest counted.
    for _ in 0..12 {
        let (status, _) = w
            .get(&w.gw, "AppID=nope&Safe=Payments&Object=partner-key")
            .await;
        assert_eq!(status, 403);
    }
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap_or_default();
    assert_eq!(audit.matches("ccp_app_id_refused").count(), 10, "{audit}");
    let (status, body) = w.get(&w.gw, "Safe=Payments&Object=partner-key").await;
    assert_eq!((status, body.contains("AIMWS031E")), (400, true), "{body}");
    for query in [
        "AppID=gateway-app&Safe=Payments",
        "AppID=gateway-app&AppID=other&Safe=Payments&Object=partner-key",
        "AppID=gateway-app&UserName=root&Safe=Payments&Object=partner-key",
    ] {
        let (status, body) = w.get(&w.gw, query).await;
        assert_eq!(
            (status, body.contains("AIMWS030E")),
            (400, true),
            "{query}: {body}"
        );
    }
    // No answer or log line but the granted one holds the key.
    let stderr = std::fs::read_to_string(w.dir.path().join("stderr.log")).unwrap_or_default();
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap_or_default();
    let line = w.key_pem.lines().nth(1).unwrap();
    assert!(!stderr.contains(line) && !audit.contains(line));
}

/// Issue 46 canary: over a run of CCP answers — granted, denied, missing, malformed, wrong
/// `AppID`, another team's caller, repeated — the password and the private key appear only
/// in the granted answers: in no error body, and in no log line (at `debug`) or audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ccp_value_reaches_only_the_granted_answers() {
    let w = world_logging("debug").await;
    let key_lines: Vec<&str> = w
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let leaks = |text: &str| text.contains(CANARY) || key_lines.iter().any(|l| text.contains(l));
    let mut granted = 0;
    for _ in 0..5 {
        let (status, body) = w
            .get(&w.gw, "AppID=gateway-app&Safe=Payments&Object=db-password")
            .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["Content"], CANARY);
        let (status, body) = w
            .get(
                &w.gw,
                "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=partner-api%23private_key",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        granted += 2;
    }
    let refused: Vec<(&support::pki::Issued, String)> = vec![
        (
            &w.stranger,
            "AppID=gateway-app&Safe=Payments&Object=db-password".into(),
        ),
        (
            &w.stranger,
            "AppID=gateway-app&Query=Safe=Payments;Object=db-password".into(),
        ),
        (
            &w.stranger,
            "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=partner-api%23private_key"
                .into(),
        ),
        (
            &w.gw,
            "AppID=someone-else&Safe=Payments&Object=db-password".into(),
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=Payments&Object=db-password&Object=db-password".into(),
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=Payments&Folder=Root&Object=db-password%2F..".into(),
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=Payments&Object=db-password%00".into(),
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=Payments&Object=no-such-object".into(),
        ),
        (&w.gw, "AppID=&Safe=Payments&Object=db-password".into()),
        (
            &w.gw,
            "AppID=gateway-app&Safe=keybroker&Folder=other&Object=partner-api%23private_key".into(),
        ),
        (
            &w.gw,
            "AppID=gateway-app&Safe=keybroker&Folder=payments&Object=partner-api%23nope".into(),
        ),
    ];
    // A long Reason is CCP's free text: granted, and still the one answer carrying it.
    let (status, _) = w
        .get(
            &w.gw,
            &format!(
                "AppID=gateway-app&Safe=Payments&Object=db-password&Reason={}",
                "r".repeat(10_000)
            ),
        )
        .await;
    assert_eq!(status, 200);
    for (who, query) in &refused {
        let (status, body) = w.get(who, query).await;
        assert_ne!(status, 200, "{query:.100}: {body}");
        assert!(!leaks(&body), "{query:.100}: a value in a refusal: {body}");
    }
    let stderr = std::fs::read_to_string(w.dir.path().join("stderr.log")).unwrap_or_default();
    let stdout = std::fs::read_to_string(w.dir.path().join("stdout.log")).unwrap_or_default();
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap_or_default();
    assert!(
        stderr.contains("DEBUG") || stderr.contains("\"debug\""),
        "not logging at debug"
    );
    for (name, text) in [("stderr", &stderr), ("stdout", &stdout), ("audit", &audit)] {
        assert!(!leaks(text), "a value is in {name}");
    }
    assert!(
        granted > 0 && audit.contains("ccp_app_id_refused"),
        "{audit}"
    );
}
