//! Liveness, readiness and metrics. The probes are unauthenticated, like the kubelets that
//! call them; none carries a value or a secret's path. `/metrics` on the consumer-facing
//! listener answers admins only, with every series — those naming teams' credentials and
//! consumers included; on `ops_listen` it answers anyone who reaches it, without those.

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
    #[derive(serde::Serialize)]
    struct Ready {
        #[serde(flatten)]
        broker: crate::broker::Readiness,
        /// A shared store's pulls: a replica that cannot pull is not ready once its view is
        /// older than `[store] stale_after`.
        #[serde(skip_serializing_if = "Option::is_none")]
        store: Option<crate::manage::StoreHealth>,
    }
    let mut ready = Ready {
        broker: state.broker.readiness(),
        store: state.manager.store_health(),
    };
    if ready.store.is_some_and(|s| s.stale) {
        ready.broker.ready = false;
    }
    let status = if ready.broker.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &ready)
}

/// `/metrics` on the consumer-facing listener: for the operator and admin consumers only.
pub(super) async fn admin_metrics(
    State(state): State<Arc<AppState>>,
    super::Authenticated(caller): super::Authenticated,
) -> Result<Response, super::ApiError> {
    state.admin(caller, crate::audit::Action::Metrics).await?;
    state.broker.update_gauges().await;
    Ok(exposition(state.broker.metrics().render()))
}

/// `/metrics` on `ops_listen`: no series names a team's credential or consumer.
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.broker.update_gauges().await;
    exposition(state.broker.metrics().render_unnamed())
}

fn exposition(text: String) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
