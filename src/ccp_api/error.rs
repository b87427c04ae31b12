//! Every way a CCP-shaped request ends without its account, and the one renderer that gives
//! each CCP's shape (`{"ErrorCode", "ErrorMsg"}`) and status. Handlers return
//! `Result<Response, CcpError>`; nothing else in this door builds an error answer. No message
//! echoes the query (CCP's do; keybroker's never hold what the caller sent).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AskError;
use crate::broker::{CredentialError, Failure, ResolveError};

#[derive(Debug)]
pub enum CcpError {
    /// A class of the one failure classification, as this door renders it ([`status`]).
    Failed(Failure),
    /// The query was refused before anything else.
    Ask(AskError),
    /// A safe, folder or object name no path can hold (`APPAP081E`).
    InvalidCharacters,
    /// A path that is no application: IIS's bare 404.
    NoApplication,
    /// The request outlived the server's `request_timeout`.
    TimedOut,
}

impl From<Failure> for CcpError {
    fn from(class: Failure) -> Self {
        Self::Failed(class)
    }
}

impl From<AskError> for CcpError {
    fn from(e: AskError) -> Self {
        Self::Ask(e)
    }
}

impl From<ResolveError> for CcpError {
    fn from(e: ResolveError) -> Self {
        Self::Failed(e.failure())
    }
}

impl From<CredentialError> for CcpError {
    fn from(e: CredentialError) -> Self {
        Self::Failed(e.failure())
    }
}

impl IntoResponse for CcpError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Failed(class) => status(class),
            Self::Ask(AskError::NoAppId) => {
                (StatusCode::BAD_REQUEST, "AIMWS031E", "AppID is missing")
            }
            Self::Ask(AskError::BadQuery) => {
                (StatusCode::BAD_REQUEST, "AIMWS030E", "Invalid query format")
            }
            Self::InvalidCharacters => (StatusCode::BAD_REQUEST, "APPAP081E", "Invalid characters"),
            Self::TimedOut => (StatusCode::INTERNAL_SERVER_ERROR, "APPAP282E", "timed out"),
            Self::NoApplication => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
        };
        let body = serde_json::json!({ "ErrorCode": code, "ErrorMsg": message }).to_string();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// The CCP API's answer for each failure class — this door's row of the one table
/// (`tests/doors.rs`): the caller's denials and what does not exist are one "not found"; an
/// outage is CCP's "cannot reach its vault" (which clients retry), as CCP answers it (400).
pub fn status(class: Failure) -> (StatusCode, &'static str, &'static str) {
    match class {
        Failure::Unauthenticated => (
            StatusCode::FORBIDDEN,
            "APPAP306E",
            "Failed to verify application authentication data",
        ),
        Failure::Invalid | Failure::TooMany | Failure::TooLarge => {
            (StatusCode::BAD_REQUEST, "AIMWS030E", "Invalid query format")
        }
        Failure::Ambiguous => (
            StatusCode::BAD_REQUEST,
            "APPAP227E",
            "Too many objects match the query",
        ),
        Failure::Unavailable
        | Failure::SourceCredentialsRefused
        | Failure::SourceMisconfigured
        | Failure::AuditUnavailable => (
            StatusCode::BAD_REQUEST,
            "APPAP007E",
            "The provider cannot reach the vault; try again later",
        ),
        Failure::Rejected | Failure::Broken => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "APPAP004E",
            "The object's values could not be served",
        ),
        Failure::Unresolved | Failure::NotFound | Failure::Denied => (
            StatusCode::NOT_FOUND,
            "APPAP004E",
            "Password object matching query was not found (Diagnostic Info: 5)",
        ),
    }
}
