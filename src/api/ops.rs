//! Liveness, readiness and metrics. Unauthenticated, like the probes and scrapers that call
//! them; none of them carries a value or a secret's path.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, json_response};

pub(super) async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

/// 200 when every source takes reads (no circuit open), else 503 with the sources listed.
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let sources = state.broker.readiness();
    let ready = sources.iter().all(|s| s.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &serde_json::json!({ "ready": ready, "sources": sources }),
    )
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.broker.metrics().render(),
    )
        .into_response()
}
