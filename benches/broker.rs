//! A cache hit through `broker.rs`: one reference, a JSON document, the file source behind
//! the cache (so after the first request no source is touched).
//!
//! Run: `cargo bench --bench broker`. Results are recorded in docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

use keybroker::testing::broker::{Ask, Broker, Caller, Document, Expand};
use keybroker::testing::identity::Door;
use keybroker::testing::reference::Layout;
use keybroker::testing::source::FileSource;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    std::fs::write(
        dir.path().join("demo/db.json"),
        r#"{"username": "app", "password": "correct horse battery staple"}"#,
    )
    .unwrap();
    for i in 0..5 {
        std::fs::write(
            dir.path().join(format!("demo/s{i}.json")),
            format!(r#"{{"v": "value {i}"}}"#),
        )
        .unwrap();
    }
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
        rt.block_on(broker.read(Ask::new(
            &Caller::Operator,
            Door::Api,
            Expand {
                document: Document::JsonValue(black_box(doc.clone())),
                layout: Layout::Compact,
            },
        )))
        .unwrap()
    };
    resolve(); // warm the cache
    c.bench_function("broker_resolve_one_reference_cache_hit", |b| {
        b.iter(resolve)
    });
    // Five distinct secrets, all cached: a gateway's usual mTLS bundle and then some.
    let five = json!({
        "a": "$SECRET_demo/s0 $KEY_v", "b": "$SECRET_demo/s1 $KEY_v", "c": "$SECRET_demo/s2 $KEY_v",
        "d": "$SECRET_demo/s3 $KEY_v", "e": "$SECRET_demo/s4 $KEY_v"
    });
    let resolve_five = || {
        rt.block_on(broker.read(Ask::new(
            &Caller::Operator,
            Door::Api,
            Expand {
                document: Document::JsonValue(black_box(five.clone())),
                layout: Layout::Compact,
            },
        )))
        .unwrap()
    };
    resolve_five();
    c.bench_function("broker_resolve_five_secrets_cache_hit", |b| {
        b.iter(resolve_five)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
