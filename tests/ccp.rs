//! The ccp source against the CCP double of tests/support/ccp.rs (docs/CCP-API.md).

mod support {
    pub mod ccp;
}

use keybroker::testing::source::Outage;
use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::json;

use keybroker::testing::broker::{Broker, Caller, Document, ResolveError};
use keybroker::testing::config::{Config, SourceConfig};
use keybroker::testing::reference::{Layout, SecretPath};
use keybroker::testing::source::{CcpSource, ReadRequest, SecretSource, SourceError};
use support::ccp::{
    AppAuth, CcpDouble, ERRORMSG_CANARY, Fault, Object, Pki, Store, flatten, stored_as,
};

fn object(name: &str, props: &[(&str, &str)]) -> Object {
    Object {
        folder: "Root".into(),
        name: name.into(),
        props: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        changing: false,
    }
}

/// The seeds' scenario material: a key and its certificate, as CCP flattens them.
fn partner() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw.payments.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        cert.pem().replace("\r\n", "\n"),
        key.serialize_pem().replace("\r\n", "\n"),
    )
}

fn store(pki: &Pki, cert: &str, key: &str) -> Store {
    let mut s = Store::for_keybroker(pki);
    s.apps.insert(
        "nocert-app".into(),
        AppAuth {
            serials: vec!["00".into()],
            ..AppAuth::default()
        },
    );
    let mut objects = vec![
        object(
            "partner-key",
            &[("Content", &flatten(key)), ("UserName", "svc-partner")],
        ),
        object("partner-cert", &[("Content", &flatten(cert))]),
        object(
            "db",
            &[
                ("Content", "pw-7d1e"),
                ("UserName", "app"),
                ("Address", "10.0.0.5"),
                ("Port", "5432"),
            ],
        ),
        object("dup", &[("Content", "a")]),
        object("dup", &[("Content", "b")]),
    ];
    let mut changing = object("rotating", &[("Content", "old-value")]);
    changing.changing = true;
    objects.push(changing);
    s.safes.insert(
        "Payments".into(),
        (vec!["keybroker".into(), "nocert-app".into()], objects),
    );
    s.safes.insert(
        "Other".into(),
        (
            vec!["someone-else".into()],
            vec![object("x", &[("Content", "hidden")])],
        ),
    );
    s
}

/// The test PKI, the partner certificate and key, and a double seeded with `store`.
async fn started() -> (Pki, String, String, CcpDouble) {
    let pki = Pki::new();
    let (cert, key) = partner();
    let double = CcpDouble::start(&pki, store(&pki, &cert, &key)).await;
    (pki, cert, key, double)
}

fn config(pki: &Pki, url: &str, extra: &str) -> Config {
    let d = pki.dir.path();
    let text = format!(
        "[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"{url}\"\napp_id = \"keybroker\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\ntimeout = \"3s\"\n{extra}",
        d.join("ca.pem"),
        d.join("client.pem"),
        d.join("client-key.pem")
    );
    Config::parse(&text, &d.join("kb.toml")).unwrap()
}

fn source(cfg: &Config) -> CcpSource {
    let SourceConfig::Ccp(c) = &cfg.sources[0] else {
        panic!("ccp")
    };
    CcpSource::new(c).unwrap()
}

/// Resolves a JSON document as the operator.
async fn expand(
    broker: &Broker,
    doc: serde_json::Value,
) -> Result<keybroker::testing::broker::Resolution, ResolveError> {
    broker
        .read(keybroker::testing::broker::Ask::new(
            &Caller::Operator,
            keybroker::testing::identity::Door::Cli,
            keybroker::testing::broker::Expand {
                document: Document::JsonValue(doc),
                layout: Layout::Compact,
            },
        ))
        .await
}

fn req(path: &str) -> ReadRequest {
    ReadRequest {
        path: SecretPath::from_segments(path.split('/')).unwrap(),
        version: None,
    }
}

#[tokio::test]
async fn the_seeds_scenario_key_and_certificate_from_ccp_come_back_intact() {
    let (pki, cert, key, double) = started().await;
    let broker = Broker::from_config(&config(&pki, &double.url, "")).unwrap();
    let doc = json!({
        "cert": "$SAFE_Payments $NAME_partner-cert",
        "key": "$SAFE_Payments $NAME_partner-key",
        "user": "$SAFE_Payments $NAME_partner-key $KEY_UserName",
        "db": "$SECRET_ccp:Payments/db $KEY_Address"
    });
    let r = expand(&broker, doc).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(r.document.as_bytes()).unwrap();
    assert_eq!(v["cert"], cert, "byte-exact certificate");
    assert_eq!(v["key"], key, "byte-exact key");
    assert_eq!(v["user"], "svc-partner");
    assert_eq!(v["db"], "10.0.0.5");
    let repaired: Vec<_> = r.metadata.repairs.iter().map(|x| x.path.clone()).collect();
    assert!(
        repaired.contains(&"Payments/partner-key".to_owned()),
        "{repaired:?}"
    );
    // The key must be the certificate's: a bundle of the two verifies.
    let bundle = format!(
        "{}{}",
        v["cert"].as_str().unwrap(),
        v["key"].as_str().unwrap()
    );
    keybroker::testing::pem::repair(&bundle, &keybroker::testing::pem::Options::default()).unwrap();
    // On the wire: AppID first and exactly once in every query.
    for q in double.queries() {
        assert!(q.starts_with("AppID=keybroker&"), "{q}");
        assert_eq!(q.to_ascii_lowercase().matches("appid=").count(), 1, "{q}");
    }
}

#[tokio::test]
async fn every_error_row_is_classified() {
    let (pki, _, _, double) = started().await;
    let src = source(&config(&pki, &double.url, ""));
    assert_eq!(
        src.read(&req("Payments/nope")).await.unwrap_err(),
        SourceError::NotFound
    );
    assert_eq!(
        src.read(&req("Other/x")).await.unwrap_err(),
        SourceError::Denied,
        "403 before 404"
    );
    assert_eq!(
        src.read(&req("Unknown/x")).await.unwrap_err(),
        SourceError::Denied
    );
    assert_eq!(
        src.read(&req("Payments/dup")).await.unwrap_err(),
        SourceError::Ambiguous
    );
    double.set_fault(Some(Fault::VaultUnreachable));
    assert_eq!(
        src.read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Unavailable(Outage::CcpVaultUnreachable)
    );
    double.set_fault(None);
    // Forbidden characters never leave keybroker.
    let before = double.queries().len();
    for bad in [
        "Payments/a;Safe=Other",
        "Payments/a&AppID=x",
        "Payments/a+b",
        "Payments/a=b",
    ] {
        let r = ReadRequest {
            path: SecretPath::from_segments(bad.split('/')).unwrap(),
            version: None,
        };
        assert!(
            matches!(src.read(&r).await, Err(SourceError::Invalid(_))),
            "{bad}"
        );
    }
    assert_eq!(double.queries().len(), before, "nothing was sent");
    // Unknown AppID, and an AppID whose certificate serial does not match.
    let cfg = config(&pki, &double.url, "");
    let SourceConfig::Ccp(mut c) = cfg.sources[0].clone() else {
        panic!()
    };
    for app in ["stranger", "nocert-app"] {
        c.app_id = app.into();
        assert_eq!(
            CcpSource::new(&c)
                .unwrap()
                .read(&req("Payments/db"))
                .await
                .unwrap_err(),
            SourceError::Denied,
            "{app}"
        );
    }
}

#[tokio::test]
async fn password_change_in_process_both_forms_and_fail_on_change() {
    let (pki, _, _, double) = started().await;
    let src = source(&config(&pki, &double.url, ""));
    let s = src.read(&req("Payments/rotating")).await.unwrap();
    assert_eq!(
        s.field("PasswordChangeInProcess").unwrap().expose_secret(),
        "True"
    );
    double.set_fault(Some(Fault::BoolPasswordChange));
    let s = src.read(&req("Payments/rotating")).await.unwrap();
    assert_eq!(
        s.field("PasswordChangeInProcess").unwrap().expose_secret(),
        "true"
    );
    assert_eq!(s.field("Content").unwrap().expose_secret(), "old-value");
    double.set_fault(None);
    let strict = source(&config(
        &pki,
        &double.url,
        "fail_request_on_password_change = true\n",
    ));
    assert_eq!(
        strict.read(&req("Payments/rotating")).await.unwrap_err(),
        SourceError::Unavailable(Outage::CcpPasswordChange)
    );
    assert!(strict.read(&req("Payments/db")).await.is_ok());
}

#[tokio::test]
async fn transport_faults_html_redirect_reset_and_wrong_service_path() {
    let (pki, _, _, double) = started().await;
    let src = source(&config(&pki, &double.url, ""));
    double.set_fault(Some(Fault::HtmlError));
    assert_eq!(
        src.read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Unavailable(Outage::CcpErrorPage)
    );
    double.set_fault(Some(Fault::Redirect));
    assert_eq!(
        src.read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Unavailable(Outage::Redirected)
    );
    // A reset happens at connect: a fresh client, with no pooled connection, meets it.
    double.set_fault(Some(Fault::Reset));
    let fresh = source(&config(&pki, &double.url, ""));
    assert!(matches!(
        fresh.read(&req("Payments/db")).await,
        Err(SourceError::Unavailable(_))
    ));
    double.set_fault(Some(Fault::Slow(std::time::Duration::from_secs(5))));
    assert_eq!(
        src.read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Unavailable(Outage::TimedOut)
    );
    double.set_fault(None);
    let wrong = source(&config(
        &pki,
        &double.url,
        "service_path = \"AIMWebServiceX\"\n",
    ));
    assert_eq!(
        wrong.read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Unavailable(Outage::CcpBare404)
    );
    // Without a client certificate the serial check fails: denied.
    let d = pki.dir.path();
    let text = format!(
        "[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"{}\"\napp_id = \"keybroker\"\nca_cert = {:?}\n",
        double.url,
        d.join("ca.pem")
    );
    let cfg = Config::parse(&text, &d.join("kb.toml")).unwrap();
    assert_eq!(
        source(&cfg).read(&req("Payments/db")).await.unwrap_err(),
        SourceError::Denied
    );
}

#[tokio::test]
async fn errormsg_and_values_never_reach_an_error_answer() {
    let (pki, _, _, double) = started().await;
    let broker = Arc::new(Broker::from_config(&config(&pki, &double.url, "")).unwrap());
    let doc = json!({"ok": "$SAFE_Payments $NAME_db", "missing": "$SAFE_Payments $NAME_nope", "other": "$SAFE_Other $NAME_x"});
    let err = expand(&broker, doc).await.unwrap_err();
    let ResolveError::Unresolved { errors, .. } = &err else {
        panic!("{err:?}")
    };
    let shown = serde_json::to_string(errors).unwrap();
    assert!(!shown.contains(ERRORMSG_CANARY), "{shown}");
    assert!(!shown.contains("pw-7d1e"), "{shown}");
    assert!(!shown.contains(&pki.client_serial), "{shown}");
    let codes: BTreeMap<String, String> = errors
        .iter()
        .map(|e| (e.location.to_string(), e.reason.code().to_owned()))
        .collect();
    assert_eq!(codes["/missing"], "not_found");
    assert_eq!(codes["/other"], "source_denied");
}

#[tokio::test]
async fn query_and_query_format_carry_the_same_lookup() {
    let (pki, _, _, double) = started().await;
    let src = source(&config(
        &pki,
        &double.url,
        "use_query = true\nreason = \"keybroker test\"\nconnection_timeout = 5\n",
    ));
    let s = src.read(&req("Payments/db")).await.unwrap();
    assert_eq!(s.field("Content").unwrap().expose_secret(), "pw-7d1e");
    let q = double.queries().pop().unwrap();
    assert_eq!(
        q,
        "AppID=keybroker&Reason=keybroker%20test&ConnectionTimeout=5&Query=Safe%3DPayments%3BObject%3Ddb&QueryFormat=Exact"
    );
}

/// The CLI at trace level against the double: no value, no ErrorMsg in any log line.
#[tokio::test(flavor = "multi_thread")]
async fn cli_logs_carry_no_value_and_no_errormsg() {
    let (pki, _, _, double) = started().await;
    let d = pki.dir.path();
    std::fs::write(
        d.join("kb.toml"),
        format!(
            "[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"{}\"\napp_id = \"keybroker\"\nca_cert = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client-key.pem\"\n",
            double.url
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("doc.txt"),
        "pw=$SAFE_Payments $NAME_db\nx=$SAFE_Payments $NAME_nope\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["resolve", "--config", "kb.toml", "doc.txt"])
        .current_dir(d)
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_found"), "{err}");
    assert!(!err.contains(ERRORMSG_CANARY), "{err}");
    assert!(!err.contains("pw-7d1e"), "{err}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn every_storage_form_of_a_key_is_repaired_and_damage_is_rejected() {
    let pki = Pki::new();
    let (cert, key) = partner();
    let mut st = store(&pki, &cert, &key);
    let objects = &mut st.safes.get_mut("Payments").unwrap().1;
    for how in ["newlines_kept", "crlf_kept", "spaces", "whitespace_removed"] {
        objects.push(object(
            &format!("key-{how}"),
            &[("Content", &stored_as(&key, how))],
        ));
    }
    // Damaged beyond repair: a run of base64 lost from the middle.
    let flat = flatten(&key);
    let damaged = format!("{}{}", &flat[..60], &flat[90..]);
    objects.push(object("key-damaged", &[("Content", &damaged)]));
    let mut rotated = object("rotated", &[("Content", "new-secret")]);
    rotated
        .props
        .insert("PreviousContent".into(), "old-secret".into());
    objects.push(rotated);
    let double = CcpDouble::start(&pki, st).await;
    let broker = Broker::from_config(&config(&pki, &double.url, "")).unwrap();
    for how in ["newlines_kept", "crlf_kept", "spaces", "whitespace_removed"] {
        let doc = json!({"k": format!("$SAFE_Payments $NAME_key-{how}")});
        let r = expand(&broker, doc).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(r.document.as_bytes()).unwrap();
        assert_eq!(v["k"], key, "{how}");
    }
    let doc = json!({"k": "$SAFE_Payments $NAME_key-damaged"});
    let err = expand(&broker, doc).await.unwrap_err();
    let ResolveError::Unresolved { errors, .. } = err else {
        panic!()
    };
    assert_eq!(errors[0].reason.code(), "pem_rejected");
    assert!(
        errors[0].reason.to_string().contains("bad_"),
        "{}",
        errors[0].reason
    );

    // CCP's own cache serving the value from before a rotation.
    let src = source(&config(&pki, &double.url, ""));
    assert_eq!(
        src.read(&req("Payments/rotated"))
            .await
            .unwrap()
            .field("Content")
            .unwrap()
            .expose_secret(),
        "new-secret"
    );
    double.set_fault(Some(Fault::Stale));
    assert_eq!(
        src.read(&req("Payments/rotated"))
            .await
            .unwrap()
            .field("Content")
            .unwrap()
            .expose_secret(),
        "old-secret"
    );
}

#[tokio::test]
async fn a_wrong_client_certificate_is_denied() {
    let pki = Pki::new();
    pki.second_client();
    let (cert, key) = partner();
    let double = CcpDouble::start(&pki, store(&pki, &cert, &key)).await;
    let cfg = config(&pki, &double.url, "");
    let SourceConfig::Ccp(mut c) = cfg.sources[0].clone() else {
        panic!()
    };
    c.client_cert = Some(pki.dir.path().join("client2.pem"));
    c.client_key = Some(pki.dir.path().join("client2-key.pem"));
    assert_eq!(
        CcpSource::new(&c)
            .unwrap()
            .read(&req("Payments/db"))
            .await
            .unwrap_err(),
        SourceError::Denied
    );
}

/// A wrong `service_path`: CCP's web server answers a bare 404 to every query. That is the
/// configuration, not an outage to retry: `resolve` exits 2 with the hint, and the log says it
/// at WARN once.
#[tokio::test]
async fn a_wrong_service_path_is_a_configuration_error_with_its_hint() {
    let (pki, _, _, double) = started().await;
    let d = pki.dir.path();
    std::fs::write(
        d.join("wrong.toml"),
        format!(
            "[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"{}\"\napp_id = \"keybroker\"\nservice_path = \"AIMWebServiceX\"\nca_cert = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client-key.pem\"\n",
            double.url
        ),
    )
    .unwrap();
    std::fs::write(d.join("one.txt"), "pw=$SAFE_Payments $NAME_db\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["resolve", "--config", "wrong.toml", "one.txt"])
        .current_dir(d)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("service_path"), "{err}");
    assert!(err.contains("source_misconfigured"), "{err}");
    assert_eq!(
        err.matches("answers a bare 404 to every query: check service_path")
            .count(),
        1,
        "one WARN, no retries: {err}"
    );
    assert!(out.stdout.is_empty());
}

/// THREATS row 29: reads share a keep-alive connection (no TLS handshake per cache miss), a
/// purge of the source's cache closes it (its read buffers hold what was purged), and
/// `keep_alive = "0s"` opens one connection per read.
#[tokio::test]
async fn misses_share_a_connection_until_a_purge_closes_it() {
    async fn miss(broker: &Broker, name: &str) {
        let doc = json!({ "v": format!("$SAFE_Payments $NAME_{name}") });
        expand(broker, doc).await.unwrap();
    }
    let (pki, _, _, double) = started().await;
    let broker = Broker::from_config(&config(&pki, &double.url, "keep_alive = \"1h\"")).unwrap();
    miss(&broker, "partner-key").await;
    miss(&broker, "partner-cert").await;
    assert_eq!(
        double.connections(),
        1,
        "the second miss reused the connection"
    );
    assert!(broker.purge("ccp", &[]).await);
    miss(&broker, "partner-key").await;
    assert_eq!(
        double.connections(),
        2,
        "a purge closes the idle connection"
    );

    let (pki, _, _, double) = started().await;
    let broker = Broker::from_config(&config(&pki, &double.url, "keep_alive = \"0s\"")).unwrap();
    miss(&broker, "partner-key").await;
    miss(&broker, "partner-cert").await;
    assert_eq!(
        double.connections(),
        2,
        "keep_alive = 0s: a connection per read"
    );
}
