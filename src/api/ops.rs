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

/// 200 when keybroker itself is ready (docs/DESIGN.md §15), else 503; the body says why and
/// how each source is.
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let readiness = state.broker.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &readiness)
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.broker.update_gauges().await;
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.broker.metrics().render(),
    )
        .into_response()
}
