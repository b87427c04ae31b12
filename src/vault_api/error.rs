//! Every way a Vault API request ends without its answer, and the one renderer that gives each
//! Vault's shape (`{"errors": [...]}`) and status. Handlers return `Result<Response, VaultError>`;
//! nothing else in this door builds an error answer.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::broker::{CredentialError, Failure, ResolveError};
use crate::identity::AuthError;
use crate::pem::credential::Rejection;

#[derive(Debug)]
pub enum VaultError {
    /// A class of the one failure classification, as this door renders it ([`status`]).
    Failed(Failure),
    /// A malformed request, in Vault's words (never the caller's input echoed).
    BadRequest(&'static str),
    /// An authentication refused as malformed (a repeated or conflicting credential).
    BadAuth(AuthError),
    /// A path that holds nothing: Vault's 404 with no messages.
    NotFound,
    /// A path this API does not serve.
    Unsupported,
    /// A write, delete or a list of what cannot be listed.
    ReadOnly,
    /// A credential whose material did not verify: the role and the check, no data.
    Rejected(Rejection),
    /// The request outlived the server's `request_timeout`.
    TimedOut,
}

impl From<Failure> for VaultError {
    fn from(class: Failure) -> Self {
        Self::Failed(class)
    }
}

impl From<ResolveError> for VaultError {
    fn from(e: ResolveError) -> Self {
        Self::Failed(e.failure())
    }
}

impl From<CredentialError> for VaultError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Rejected(r) => Self::Rejected(r),
            e => Self::Failed(e.failure()),
        }
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        match self {
            Self::Failed(class) => match status(class) {
                (code, "") => error(code, &[]),
                (code, message) => error(code, &[message]),
            },
            Self::BadRequest(message) => error(StatusCode::BAD_REQUEST, &[message]),
            Self::BadAuth(why) => error(status(why.into()).0, &[&why.to_string()]),
            Self::NotFound => error(StatusCode::NOT_FOUND, &[]),
            Self::Unsupported => error(StatusCode::NOT_FOUND, &["unsupported path"]),
            Self::ReadOnly => error(
                StatusCode::METHOD_NOT_ALLOWED,
                &["keybroker's Vault API is read-only: writes, deletes and lists are not served"],
            ),
            Self::Rejected(r) => error(
                status(Failure::Rejected).0,
                &[&format!("credential_rejected: {}: {}", r.role, r.code)],
            ),
            Self::TimedOut => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &["the request took longer than the server's request_timeout"],
            ),
        }
    }
}

/// The Vault API's answer for each failure class: this door's row of the one table
/// (`tests/doors.rs`). Vault answers 403 "permission denied" to a missing or wrong token and
/// to a denial alike, and 404 with no messages to a path that holds nothing.
pub fn status(class: Failure) -> (StatusCode, &'static str) {
    match class {
        Failure::Unauthenticated | Failure::Denied => (StatusCode::FORBIDDEN, "permission denied"),
        Failure::NotFound => (StatusCode::NOT_FOUND, ""),
        Failure::Invalid | Failure::TooMany | Failure::Unresolved => {
            (StatusCode::BAD_REQUEST, "the secret could not be read")
        }
        Failure::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the answer would be too large",
        ),
        Failure::Ambiguous => (
            StatusCode::CONFLICT,
            "ambiguous: several teams define this credential",
        ),
        Failure::Unavailable | Failure::SourceCredentialsRefused | Failure::SourceMisconfigured => {
            (StatusCode::SERVICE_UNAVAILABLE, "source unavailable")
        }
        Failure::AuditUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit trail cannot be written",
        ),
        Failure::Rejected => (StatusCode::BAD_GATEWAY, "credential_rejected"),
        Failure::Broken => (
            StatusCode::BAD_GATEWAY,
            "credential_unresolved: the credential's values could not be resolved",
        ),
    }
}

/// Vault's error shape.
fn error(status: StatusCode, messages: &[&str]) -> Response {
    let body = serde_json::json!({ "errors": messages }).to_string();
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
