//! docs/openapi.yaml describes exactly the routes the router serves: the same (method, path)
//! pairs as `api::ROUTES`, and the router answers each of them — and only them — on those
//! paths.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use keybroker::testing::api::{AppState, ROUTES, router};
use keybroker::testing::broker::Broker;

fn described() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (p, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), p.clone()));
        }
    }
    out
}

#[test]
fn openapi_describes_every_route_and_nothing_else() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(described(), routes);
}

#[tokio::test]
async fn the_router_serves_exactly_the_listed_routes() {
    let app = router(Arc::new(AppState::new(Arc::new(Broker::new(
        Vec::new(),
        None,
        None,
    )))));
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        let uri = path.replace("{name}", "x");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            let listed = ROUTES.contains(&(method.as_str(), path));
            let resp = app
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method.clone())
                        .uri(&uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            let routed = status != StatusCode::METHOD_NOT_ALLOWED
                && !String::from_utf8_lossy(&body).contains("no_route");
            assert_eq!(routed, listed, "{method} {path}: {status}");
        }
    }
    let resp = app
        .oneshot(Request::get("/v1/secrets").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Every `/v1/` route needs a caller: without credentials each answers 401 before it looks at
/// the path or the body (a handler that forgot the `Authenticated` extractor would answer 400
/// to this body, or worse).
#[tokio::test]
async fn every_v1_route_refuses_an_anonymous_caller() {
    let app = router(Arc::new(AppState::new(Arc::new(Broker::new(
        Vec::new(),
        None,
        None,
    )))));
    for (method, path) in ROUTES.iter().filter(|(_, p)| p.starts_with("/v1/")) {
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(*method)
                    .uri(path.replace("{name}", "x"))
                    .header("content-type", "application/json")
                    .body(Body::from("{not json"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}
