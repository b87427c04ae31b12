//! One request through the whole router, without a socket: the part of a request's cost that
//! is keybroker's own (authentication, body parsing, decision, cache hit, answer) next to a
//! `/healthz` that does none of it.
//!
//! Run: `cargo bench --bench api`. Results are recorded in docs/PERFORMANCE.md.

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

use keybroker::testing::app::{App, Options};
use keybroker::testing::config::Config;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = rt.block_on(async {
        let config = Config::load(&repo.join("examples/dev/keybroker.toml")).unwrap();
        // The same assembly `serve` runs (audit opened as configured).
        let options = Options {
            open_audit: true,
            ..Options::check(&config)
        };
        App::build(&config, &options).unwrap().router()
    });
    let body = r#"{"document":{"v":"$SECRET_demo/db $KEY_password"},"host":"a.payments.example"}"#;
    let resolve = || {
        let req = Request::post("/v1/resolve")
            .header("authorization", "Bearer dev-gateway-token")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = rt.block_on(app.clone().oneshot(req)).unwrap();
        assert!(resp.status().is_success());
        resp
    };
    resolve();
    c.bench_function("api_resolve_consumer_cache_hit", |b| b.iter(resolve));
    c.bench_function("api_healthz", |b| {
        b.iter(|| {
            rt.block_on(
                app.clone()
                    .oneshot(Request::get("/healthz").body(Body::empty()).unwrap()),
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
