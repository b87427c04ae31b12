//! The single conversion from errors to HTTP answers: a stable code, a generic message,
//! and details that never hold a value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::ResolveError;
use crate::reference::{ExpandError, Reason};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [ExpandError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, details): (_, &str, &[ExpandError]) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", &[]),
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code, &[]),
            Self::Resolve(ResolveError::Document(d)) => (StatusCode::BAD_REQUEST, d.code(), &[]),
            Self::Resolve(ResolveError::Unresolved(errors)) => {
                if errors.iter().any(|e| e.reason == Reason::SourceUnavailable) {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "source_unavailable",
                        errors,
                    )
                } else if errors.iter().any(|e| e.reason == Reason::Denied) {
                    (StatusCode::FORBIDDEN, "denied", errors)
                } else {
                    (StatusCode::BAD_REQUEST, "unresolved_references", errors)
                }
            }
        };
        let body = Body {
            error: Inner {
                code,
                message,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, Self::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
