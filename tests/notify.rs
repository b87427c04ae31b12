//! `[notify]`: expiry and rejection events pushed to a webhook over verified TLS, signed with
//! the configured key, each once per change however many requests see it, and never a value.

mod support {
    pub mod fixture;
    pub mod openbao;
    pub mod pki;
    pub mod ports;
    pub mod server;
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use support::fixture;
use support::pki::Ca;
use support::server::{Running, folder};

const GW: &str = "notify-gw-token";
const ADMIN: &str = "notify-admin-token";
const KEY: &str = "a webhook signing key of enough bytes";

type Received = Arc<Mutex<Vec<(Value, String)>>>;

/// A webhook receiver over TLS (a certificate of `ca` for localhost) that keeps every body
/// with its signature header; its port.
async fn receiver(dir: &std::path::Path, ca: &Ca) -> (u16, Received) {
    use rustls::pki_types::pem::PemObject as _;
    let issued = ca.server(dir, "hook");
    let got: Received = Arc::default();
    let keep = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let keep = Arc::clone(&keep);
            async move {
                let sig = headers
                    .get("x-keybroker-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                // The signature is checked here, over the bytes received.
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
                mac.update(&body);
                let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                keep.lock()
                    .unwrap()
                    .push((v, if sig == want { "valid".into() } else { sig }));
                "ok"
            }
        }),
    );
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |r| tower::ServiceExt::oneshot(app.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_rejection_events_reach_the_webhook_once_each_signed() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (dir, ca) = folder("unused");
    let root = dir.path();
    let hook_ca = Ca::new("webhook CA");
    hook_ca.write(&root.join("hook-ca.pem"));
    let (hook, got) = receiver(root, &hook_ca).await;
    std::fs::write(root.join("hook.key"), KEY).unwrap();

    // A good credential (expiring inside warn_before) and a mismatched pair (rejected).
    let partner = Ca::new("partner CA");
    let good = partner.client(root, "good", "good-client");
    let other = partner.client(root, "other", "other-client");
    std::fs::create_dir_all(root.join("secrets/creds")).unwrap();
    for (name, cert, key) in [
        ("good", &good.cert_pem, &good.key_pem),
        ("mismatched", &good.cert_pem, &other.key_pem),
        ("late", &other.cert_pem, &good.key_pem),
    ] {
        std::fs::write(
            root.join(format!("secrets/creds/{name}.json")),
            json!({ "cert": cert, "key": key, "ca": partner.pem }).to_string(),
        )
        .unwrap();
    }
    let mut policy = fixture::Policy::new()
        .team("payments")
        .consumer("gw", "payments", GW)
        .team_admin("payments-admin", "payments", ADMIN, &["payments"]);
    for name in ["good", "mismatched", "late"] {
        policy = policy.mtls(
            name,
            "payments",
            &["api.partner.example"],
            &format!("files:creds/{name}"),
        );
    }
    policy.write(root);
    fixture::Config::tls()
        .files("files", "secrets")
        .with(&format!(
            "[expiry]\ninterval = \"1h\"\nwarn_before = \"1000000d\"\n[notify]\nwebhook = \"https://localhost:{hook}/hook\"\nca_cert = \"hook-ca.pem\"\nhmac_key_file = \"hook.key\"\n[store]\nkind = \"file\"\npath = \"store\""
        ))
        .write(root);
    let server = Running::start(root, &ca.pem, 0, "info").await;
    let material = |name: &'static str| {
        server
            .client
            .post(server.url(&format!("/v1/credentials/{name}/material")))
            .bearer_auth(GW)
            .json(&json!({ "host": "api.partner.example" }))
            .send()
    };
    // The rejected credential, asked for three times: one event. Then another rejected one:
    // events go out in order from one queue, so once its event arrived, every earlier one has.
    for _ in 0..3 {
        assert_eq!(material("mismatched").await.unwrap().status(), 502);
    }
    assert_eq!(material("late").await.unwrap().status(), 502);
    let events = |name: &str| {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| v["event"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let good_expiring = |events: &[(Value, String)]| {
        events
            .iter()
            .filter(|(v, _)| v["subject"] == "credential:payments/good")
            .count()
    };
    while !events("credential.rejected")
        .iter()
        .any(|(v, _)| v["subject"] == "payments/late:client_private_key")
        || good_expiring(&events("certificate.expiring")) == 0
    {
        assert!(
            Instant::now() < deadline,
            "events received: {:?}\n{}",
            got.lock().unwrap(),
            std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The log says the same in plain values a person can act on.
    let log = std::fs::read_to_string(root.join("stderr.log")).unwrap();
    let lines = support::server::log_lines(&log);
    let expiry = lines
        .iter()
        .map(|l| &l["fields"])
        .find(|f| f["message"] == "certificate expiry" && f["name"] == "payments/good")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(expiry["days_left"].as_i64().is_some(), "{expiry}");
    let not_after = expiry["not_after"].as_str().unwrap_or_default();
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z'),
        "RFC 3339: {expiry}"
    );
    let rejected = events("credential.rejected");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(
        rejected[0].0["subject"],
        "payments/mismatched:client_private_key"
    );
    assert_eq!(rejected[0].0["reason"], "key_certificate_mismatch");
    // The start-up sweep: one event per certificate (expiring inside warn_before).
    let expiring = events("certificate.expiring");
    assert_eq!(good_expiring(&expiring), 1, "{expiring:?}");
    let mut ids = std::collections::BTreeSet::new();
    for (v, sig) in got.lock().unwrap().iter() {
        assert_eq!(sig, "valid", "signed with the configured key: {v}");
        // A delivery id under the signature: a replayed delivery can be told apart.
        let id = v["delivery_id"].as_str().unwrap_or_default();
        assert!(id.len() == 32 && ids.insert(id.to_owned()), "{v}");
        let text = v.to_string();
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
            "{text}"
        );
    }

    // A credential written through the management API is announced when it is written — the
    // sweep runs every hour here, so only the write can have raised it (issue 44).
    let fresh = partner.client(root, "fresh", "fresh-client");
    let made = server
        .client
        .post(server.url("/v1/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({
            "name": "api-made", "team": "payments", "mode": "mtls",
            "client_certificate": fresh.cert_pem, "client_private_key": fresh.key_pem,
            "root_certificate": partner.pem, "allowed_hosts": ["api.partner.example"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201, "{}", made.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events("certificate.expiring")
        .iter()
        .any(|(v, _)| v["subject"] == "credential:payments/api-made")
    {
        assert!(
            Instant::now() < deadline,
            "no event for the API-made credential: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
