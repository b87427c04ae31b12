//! The machine's ceiling for bench/run.sh (row e): keybroker's own listener and accept loop
//! (`api::listen::serve`, HTTP/1.1, same timeouts) with a handler that reads the request body
//! and returns a fixed body of the given size — what keybroker would cost if deciding and
//! expanding were free.
//!
//!     cargo run --release --example baseline -- --listen 127.0.0.1:9080 --bytes 120

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:9080".parse().unwrap();
    let mut bytes = 120usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value.parse().expect("--listen"),
            "--bytes" => bytes = value.parse().expect("--bytes"),
            other => panic!("unknown argument {other}"),
        }
    }
    let body = Bytes::from(format!(
        "{{\"document\":\"{}\"}}",
        "x".repeat(bytes.saturating_sub(15))
    ));
    let answer = body.clone();
    let handler = move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    };
    // As issue 21 defines the bare handler: it reads the request body (as keybroker's
    // handlers do, through axum's `Bytes` extractor) and answers the same number of bytes.
    let reads_body = move |request: Bytes| {
        let body = answer.clone();
        async move {
            drop(request);
            ([(header::CONTENT_TYPE, "application/json")], body)
        }
    };
    let app = Router::new()
        .route("/", get(handler))
        .route("/v1/resolve", post(reads_body));
    // The same runtime shape as `keybroker serve`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        println!(
            "baseline listening on http://{}",
            listener.local_addr().unwrap()
        );
        keybroker::testing::door::listen::serve(
            listener,
            std::sync::Arc::new(keybroker::testing::api::ServerTls::plain()),
            app,
            (&keybroker::testing::config::LimitsConfig::default()).into(),
            std::future::pending(),
        )
        .await;
    });
}
