//! Reference expansion throughput: a JSON document with 10,000 references.
//!
//! Run: `cargo bench --bench expand`. Results are recorded in docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

use keybroker::testing::broker::{Ask, Broker, Caller, Document, Expand};
use keybroker::testing::identity::Door;
use keybroker::testing::reference::{Layout, Prepared, Reason, Reference, Resolved};
use keybroker::testing::secret::{Secret, SecretMeta, secret_string};
use keybroker::testing::source::FileSource;

const REFS: usize = 10_000;
const SECRETS: usize = 100;

/// `{"items": [{"user": "$SECRET_s/<n> $KEY_user", "dsn": "pg://$SECRET_… $KEY_pass@h"}, …]}`
/// — half whole-value, half interpolated references, over 100 distinct secrets.
fn document() -> Value {
    let items: Vec<Value> = (0..REFS / 2)
        .map(|i| {
            let n = i % SECRETS;
            serde_json::json!({
                "user": format!("$SECRET_s/{n} $KEY_user"),
                "dsn": format!("pg://x:$SECRET_s/{n} $KEY_pass@db-{i}.internal:5432/app"),
                "n": i,
            })
        })
        .collect();
    serde_json::json!({ "items": items })
}

fn secret() -> Secret {
    let mut f = BTreeMap::new();
    f.insert("user".to_owned(), secret_string("service-account"));
    f.insert(
        "pass".to_owned(),
        secret_string("correct horse battery staple 0123456789"),
    );
    Secret::new(f, SecretMeta::default())
}

fn bench(c: &mut Criterion) {
    let doc = document();
    let doc_bytes = serde_json::to_vec(&doc).unwrap().len() as u64;
    let s = secret();
    let lookup = |r: &Reference| -> Result<Resolved<'_>, Reason> {
        s.field(r.field.as_deref().unwrap_or("user"))
            .map(Resolved::Value)
            .ok_or(Reason::FieldNotFound)
    };

    let mut g = c.benchmark_group("expand_10k_refs_json");
    g.throughput(Throughput::Bytes(doc_bytes));
    // Baseline: the clone of the input that every `prepare` iteration below includes.
    g.bench_function("clone_document_baseline", |b| {
        b.iter(|| black_box(doc.clone()))
    });
    g.bench_function("prepare", |b| {
        b.iter(|| Prepared::json(black_box(doc.clone()), Layout::Compact).unwrap())
    });
    let prepared = Prepared::json(doc.clone(), Layout::Compact).unwrap();
    g.bench_function("render", |b| {
        b.iter(|| {
            prepared
                .render(
                    &lookup,
                    keybroker::testing::reference::RenderLimits::default(),
                )
                .unwrap()
        })
    });
    g.bench_function("prepare_and_render", |b| {
        b.iter(|| {
            Prepared::json(black_box(doc.clone()), Layout::Compact)
                .unwrap()
                .render(
                    &lookup,
                    keybroker::testing::reference::RenderLimits::default(),
                )
                .unwrap()
        })
    });

    // Faithful expansion (issue 29): the document as text, expanded in its own bytes.
    let text = serde_json::to_string(&doc).unwrap();
    g.bench_function("prepare_text", |b| {
        b.iter(|| Prepared::json_text(black_box(&text)).unwrap())
    });
    g.bench_function("prepare_text_and_render", |b| {
        b.iter(|| {
            Prepared::json_text(black_box(&text))
                .unwrap()
                .render(
                    &lookup,
                    keybroker::testing::reference::RenderLimits::default(),
                )
                .unwrap()
        })
    });
    // 1 MiB of JSON that is mostly not references (10 of them): the cost of passing the rest
    // through untouched.
    let mut big = String::from("{\"items\": [");
    let mut n = 0;
    while big.len() < 1 << 20 {
        if n > 0 {
            big.push(',');
        }
        if n % 2_000 == 0 && n / 2_000 < 10 {
            big.push_str(&format!(
                "{{\"id\": {n}, \"dsn\": \"$SECRET_s/{} $KEY_user\"}}",
                n / 2_000
            ));
        } else {
            big.push_str(&format!(
                "{{\"id\": {n}, \"amount\": 12345678901234567890.10, \"note\": \"plain text, no references here\"}}"
            ));
        }
        n += 1;
    }
    big.push_str("]}");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("one_mib_ten_refs_prepare_and_render", |b| {
        b.iter(|| {
            Prepared::json_text(black_box(&big))
                .unwrap()
                .render(
                    &lookup,
                    keybroker::testing::reference::RenderLimits::default(),
                )
                .unwrap()
        })
    });
    g.throughput(Throughput::Bytes(doc_bytes));

    // End to end through the broker and the file source (100 distinct files read per run).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("s")).unwrap();
    for n in 0..SECRETS {
        std::fs::write(
            dir.path().join(format!("s/{n}.json")),
            r#"{"user": "service-account", "pass": "correct horse battery staple 0123456789"}"#,
        )
        .unwrap();
    }
    let broker = Broker::new(
        vec![Arc::new(FileSource::new("files", dir.path()).unwrap())],
        Some("files".to_owned()),
        None,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    g.bench_function("broker_file_source", |b| {
        b.iter(|| {
            rt.block_on(broker.read(Ask::new(
                &Caller::Operator,
                Door::Api,
                Expand {
                    document: Document::JsonValue(doc.clone()),
                    layout: Layout::Compact,
                },
            )))
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
