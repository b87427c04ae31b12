//! The CCP test double (tests/support/ccp.rs) as a process, for bench/run.sh's cold-miss row:
//! a safe `Bench` with objects `obj-0` … `obj-<N-1>`, AppID `keybroker` allowed from loopback
//! with the generated client certificate. Prints one JSON line with the URL and the folder of
//! the PKI (ca.pem, client.pem, client-key.pem), then serves until killed.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/ccp.rs"]
mod ccp;

use ccp::{CcpDouble, Object, Pki, Store};

fn main() {
    let mut objects = 1000usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--objects" => objects = value.parse().expect("--objects"),
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let pki = Pki::new();
        let mut store = Store::for_keybroker(&pki);
        let objs = (0..objects)
            .map(|i| Object {
                folder: "Root".into(),
                name: format!("obj-{i}"),
                props: [("Content".to_owned(), format!("bench-value-{i}"))].into(),
                changing: false,
            })
            .collect();
        store
            .safes
            .insert("Bench".into(), (vec!["keybroker".into()], objs));
        let double = CcpDouble::start(&pki, store).await;
        println!(
            "{}",
            serde_json::json!({"url": double.url, "dir": pki.dir.path()})
        );
        std::future::pending::<()>().await;
    });
}
