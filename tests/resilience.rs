//! Cache and resilience (issue 8) against real OpenBao and the CCP double.

mod support {
    pub mod ccp;
    pub mod openbao;
    pub mod ports;
    pub mod proxy;
}

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use keybroker::testing::broker::{Broker, Caller, Document, ResolveError};
use keybroker::testing::config::Config;
use keybroker::testing::reference::{Layout, Reason};
use keybroker::testing::source::VaultEnv;
use support::openbao::{OpenBao, ROOT_TOKEN};
use support::proxy::counting_proxy;

fn broker(addr: &str, cache: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"secret\"\nkv_version = 2\ntimeout = \"2s\"\n{cache}"
    );
    let cfg = Config::parse(&text, &dir.path().join("kb.toml")).unwrap();
    let env = VaultEnv {
        addr: Some(addr.to_owned()),
        token: Some(keybroker::testing::secret::secret_string(ROOT_TOKEN)),
        ..VaultEnv::default()
    };
    Broker::from_config_with_env(&cfg, &env).unwrap()
}

async fn resolve(
    b: &Broker,
    reference: &str,
) -> Result<keybroker::testing::broker::Resolution, ResolveError> {
    b.read(keybroker::testing::broker::Ask::new(
        &Caller::Operator,
        keybroker::testing::identity::Door::Cli,
        keybroker::testing::broker::Expand {
            document: Document::JsonValue(json!({ "v": reference })),
            layout: Layout::Compact,
        },
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_for_one_cold_secret_make_one_openbao_read() {
    let bao = OpenBao::start();
    let upstream = bao.addr.trim_start_matches("http://").to_owned();
    let (proxy, reads) = counting_proxy(upstream, b"GET /v1/secret/data/demo/db").await;
    let b = Arc::new(broker(&proxy, ""));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            resolve(&b, "$SECRET_demo/db $KEY_username")
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(reads.matches(), 1, "exactly one OpenBao read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_killed_stale_within_max_stale_unavailable_otherwise_then_recovery() {
    let mut bao = OpenBao::start();
    let listen = bao.addr.trim_start_matches("http://").to_owned();
    let b = broker(&bao.addr, "[cache]\nttl = \"300ms\"\nmax_stale = \"1h\"\n");
    let fresh = resolve(&b, "$SECRET_demo/db $KEY_username").await.unwrap();
    assert!(!fresh.metadata.stale);
    bao.stop();
    // Poll (with a deadline) until the 300 ms TTL has passed: until then the fresh entry
    // answers; after it, the source is asked, is down, and the stale value stands in.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let r = resolve(&b, "$SECRET_demo/db $KEY_username").await.unwrap();
        if r.metadata.stale {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let v: serde_json::Value = serde_json::from_slice(stale.document.as_bytes()).unwrap();
    assert_eq!(v["v"], "app");
    // Never cached: a clear "unavailable".
    let Err(ResolveError::Unresolved { errors, .. }) =
        resolve(&b, "$SECRET_payments/partner $KEY_cert").await
    else {
        panic!("an uncached secret cannot be served while OpenBao is down")
    };
    assert_eq!(errors[0].reason, Reason::SourceUnavailable);
    // OpenBao comes back (same address, re-seeded): keybroker recovers without a restart.
    let _bao = OpenBao::start_at(&listen, None);
    let back = resolve(&b, "$SECRET_payments/partner $KEY_cert")
        .await
        .unwrap();
    assert!(!back.metadata.stale);
    let again = resolve(&b, "$SECRET_demo/db $KEY_username").await.unwrap();
    assert!(!again.metadata.stale, "refreshed once the source answers");
}

#[tokio::test]
async fn ccp_transient_errors_are_retried_and_denials_are_not() {
    use support::ccp::{AppAuth, CcpDouble, Object, Pki, Store};
    let pki = Pki::new();
    let mut store = Store::default();
    store.apps.insert(
        "keybroker".into(),
        AppAuth {
            serials: vec![pki.client_serial.clone()],
            ..AppAuth::default()
        },
    );
    let props = [("Content".to_owned(), "pw-1".to_owned())]
        .into_iter()
        .collect();
    let objects = vec![Object {
        folder: "Root".into(),
        name: "db".into(),
        props,
        changing: false,
    }];
    store
        .safes
        .insert("Payments".into(), (vec!["keybroker".into()], objects));
    store
        .safes
        .insert("Other".into(), (vec!["else".into()], Vec::new()));
    store.unreachable_next = 2;
    let double = CcpDouble::start(&pki, store).await;
    let d = pki.dir.path();
    let text = format!(
        "[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"{}\"\napp_id = \"keybroker\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        double.url,
        d.join("ca.pem"),
        d.join("client.pem"),
        d.join("client-key.pem")
    );
    let b = Broker::from_config(&Config::parse(&text, &d.join("kb.toml")).unwrap()).unwrap();
    let r = resolve(&b, "$SAFE_Payments $NAME_db").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(r.document.as_bytes()).unwrap();
    assert_eq!(v["v"], "pw-1");
    assert_eq!(
        double.queries().len(),
        3,
        "two APPAP007E answers, then success"
    );
    let before = double.queries().len();
    assert!(resolve(&b, "$SAFE_Other $NAME_x").await.is_err());
    assert_eq!(double.queries().len(), before + 1, "a 403 is not retried");
}
