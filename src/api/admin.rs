//! `/v1/admin/…`: policy reload and cache purge, for the operator and admin consumers.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, AppState, Authenticated, json_response, parse_body};
use crate::audit::Action;

pub(super) async fn reload(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    let caller = state.admin(caller, Action::AdminReload).await?;
    let started = Instant::now();
    let result = state.broker.reload_policy();
    let tls = state.reload_tls();
    state
        .broker
        .audit_admin(
            &caller,
            Action::AdminReload,
            Vec::new(),
            result.is_ok() && tls.is_ok(),
            started,
        )
        .await?;
    let summary = result?;
    // Objects that left the policy lose their expiry series; new ones get theirs.
    state.broker.sweep_expiry().await;
    tls?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "reloaded": true, "policy": summary }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    source: String,
    /// Path prefix (`a/b`); empty or absent: the whole source.
    #[serde(default)]
    prefix: String,
}

pub(super) async fn purge(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.admin(caller, Action::AdminPurge).await?;
    let body: PurgeBody = parse_body(&body, "{\"source\": \"…\", \"prefix\": \"a/b\"}")?;
    let prefix: Vec<String> = body
        .prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let started = Instant::now();
    let found = state.broker.purge(&body.source, &prefix).await;
    let subject = format!("{}:{}", body.source, prefix.join("/"));
    state
        .broker
        .audit_admin(&caller, Action::AdminPurge, vec![subject], found, started)
        .await?;
    if !found {
        return Err(ApiError::UnknownSource(body.source));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "purged": true, "source": body.source, "prefix": body.prefix }),
    ))
}
