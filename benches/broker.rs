//! A cache hit through `broker.rs`: one reference, a JSON document, the file source behind
//! the cache (so after the first request no source is touched).
//!
//! Run: `cargo bench --bench broker`. Results are recorded in docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use keybroker::broker::{Broker, Caller, Document};
use keybroker::reference::Layout;
use keybroker::source::FileSource;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    std::fs::write(
        dir.path().join("demo/db.json"),
        r#"{"username": "app", "password": "correct horse battery staple"}"#,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(async {
        Broker::new(
            vec![Arc::new(FileSource::new("files", dir.path()).unwrap())],
            Some("files".to_owned()),
            None,
        )
    });
    let doc = json!({"password": "$SECRET_demo/db $KEY_password"});
    let resolve = || {
        rt.block_on(broker.resolve(
            &Caller::Operator,
            Document::JsonValue(black_box(doc.clone())),
            Layout::Compact,
            None,
        ))
        .unwrap()
    };
    resolve(); // warm the cache
    c.bench_function("broker_resolve_one_reference_cache_hit", |b| {
        b.iter(resolve)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
