//! The HTTP API (shared/DESIGN.md §6). Handlers are thin: authenticate, parse the body into
//! types, call the broker, write the answer. Errors become HTTP in `error.rs` only.
//!
//! **Boundary:** the API decides nothing about secrets; it calls [`crate::broker`].

mod auth;
mod error;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

pub use auth::TokenDigest;
pub use error::ApiError;

use crate::broker::{Broker, Caller, Document};
use crate::policy::Destination;
use crate::reference::{DocumentError, Format, Layout};
use crate::secret::SecretBuf;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// The `serve --dev` bearer token; it authenticates as the operator.
    pub dev_token: TokenDigest,
}

/// The router; tests drive it without a socket.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/resolve", post(resolve))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    document: Value,
    #[serde(default = "json_format")]
    format: Format,
    /// Where the caller will use the values; consumers must give it (allowed_hosts).
    #[serde(default)]
    host: Option<String>,
}

fn json_format() -> Format {
    Format::Json
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .ok_or(ApiError::Unauthorized)?;
    if state.dev_token.verify(presented) {
        return Ok(Caller::Operator);
    }
    match state.broker.policy().consumer_by_token(presented) {
        Some(name) => Ok(Caller::Consumer(name.to_owned())),
        None => Err(ApiError::Unauthorized),
    }
}

async fn resolve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers)?;
    // Parsed here, not with `Json<_>`: serde's messages can quote the input.
    let body: ResolveBody = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        code: "invalid_body",
        message: format!(
            "the body must be {{\"document\": …, \"format\": \"json\"|\"yaml\"|\"text\"}} (line {}, column {})",
            e.line(),
            e.column()
        ),
    })?;
    let host = match body.host.as_deref() {
        None => None,
        Some(h) => Some(Destination::parse(h).map_err(|e| ApiError::BadRequest {
            code: e.code(),
            message: format!("host: {e}"),
        })?),
    };
    let document = match (body.format, body.document) {
        (Format::Json, v) => Document::JsonValue(v),
        (format, Value::String(text)) => Document::Text { format, text },
        _ => return Err(ApiError::Resolve(DocumentError::WrongShape.into())),
    };
    let resolution = state
        .broker
        .resolve(&caller, document, Layout::Compact, host.as_ref())
        .await?;

    let doc = resolution.document.as_bytes();
    let mut out = SecretBuf::with_capacity(doc.len() + doc.len() / 8 + 256);
    out.push_str("{\"document\":");
    match resolution.format {
        Format::Json => out.extend_from_slice(doc),
        Format::Yaml | Format::Text => {
            // The expanded text came from a `String` and UTF-8 secrets.
            let text = std::str::from_utf8(doc).expect("expanded text is UTF-8");
            out.push_quoted(text);
        }
    }
    out.push_str(",\"metadata\":");
    serde_json::to_writer(&mut out, &resolution.metadata)
        .expect("metadata serializes into a buffer that cannot fail");
    out.push_str("}");
    drop(resolution);
    Ok(secret_response(out))
}

/// A 200 answer whose body is zeroized when hyper drops it.
fn secret_response(body: SecretBuf) -> Response {
    let mut response = Response::new(Body::from(Bytes::from_owner(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
