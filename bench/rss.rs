//! Resident memory with N secrets in the cache (bench/run.sh): a file source of N small JSON
//! secrets, each read once through `Broker::resolve`, then VmRSS from /proc/self/status.
//!
//!     cargo run --release --example rss -- 100000
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use keybroker::testing::broker::{Broker, Caller, Document};
use keybroker::testing::config::Config;
use keybroker::testing::reference::{Format, Layout};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of secrets"))
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets/s");
    std::fs::create_dir_all(&secrets).unwrap();
    for i in 0..n {
        std::fs::write(
            secrets.join(format!("k-{i}.json")),
            format!("{{\"value\":\"bench-secret-value-{i:06}-0123456789abcdef0123456789abcdef\"}}"),
        )
        .unwrap();
    }
    let cfg = dir.path().join("kb.toml");
    std::fs::write(
        &cfg,
        "[[source]]\nname = \"files\"\nkind = \"file\"\npath = \"secrets\"\n[cache]\nttl = \"1h\"\nmax_bytes = \"1GiB\"\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let broker = Arc::new(Broker::from_config(&Config::load(&cfg).unwrap()).unwrap());
        let before = rss_kib();
        for i in 0..n {
            let doc = Document::Text {
                format: Format::Text,
                text: format!("$SECRET_s/k-{i} $KEY_value"),
            };
            broker
                .read(keybroker::testing::broker::Ask::new(
                    &Caller::Operator,
                    keybroker::testing::identity::Door::Cli,
                    keybroker::testing::broker::Expand {
                        document: doc,
                        layout: Layout::Compact,
                    },
                ))
                .await
                .unwrap();
        }
        broker.cache().maintain().await;
        let after = rss_kib();
        let entries = broker.cache().entry_count();
        assert_eq!(entries, n as u64, "every secret is cached");
        println!(
            "{n} cached secrets: RSS {:.1} MiB ({:.1} MiB over the empty broker, {:.0} B per secret)",
            after as f64 / 1024.0,
            (after - before) as f64 / 1024.0,
            (after - before) as f64 * 1024.0 / n as f64
        );
    });
}
