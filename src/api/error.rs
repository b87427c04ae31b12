//! The single conversion from errors to HTTP answers: a stable code, a generic message,
//! and details that never hold a value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::{AuditRefused, CredentialError, Failure, ReloadError, ResolveError};
use crate::identity::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One generic answer whatever the cause (the cause is logged at debug).
    #[error("authentication required: a client certificate or a valid bearer token")]
    Unauthorized(AuthError),
    #[error("this endpoint is for admin consumers")]
    NotAdmin,
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request took longer than the server's request_timeout")]
    Timeout,
    #[error(
        "this consumer holds as many blocking queries as it may ([limits] max_waiting_per_consumer)"
    )]
    TooManyWaiting,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Sign(#[from] crate::broker::SignError),
    #[error(transparent)]
    Renew(#[from] crate::broker::RenewError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error("the TLS settings were not reloaded; the previous ones stay in force: {0}")]
    TlsReload(#[from] crate::api::TlsSetupError),
    #[error("no source named {0:?}")]
    UnknownSource(String),
    #[error(transparent)]
    Audit(#[from] AuditRefused),
    #[error(transparent)]
    Manage(#[from] crate::manage::ManageError),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Details::is_empty")]
    details: Details<'a>,
    /// Failures not listed in `details` (over `[limits] max_errors`).
    #[serde(skip_serializing_if = "is_zero")]
    omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(untagged)]
enum Details<'a> {
    None,
    References(&'a [crate::reference::ExpandError]),
    Roles(&'a [crate::broker::RoleError]),
    Rejected([Rejected<'a>; 1]),
    Lines(Vec<String>),
}

/// A verification refusal in the shape of a role's failure (`role`, `reason`).
#[derive(Serialize)]
struct Rejected<'a> {
    role: &'a str,
    reason: &'a str,
}

impl Details<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Self::None => true,
            Self::References(d) => d.is_empty(),
            Self::Roles(d) => d.is_empty(),
            Self::Rejected(_) => false,
            Self::Lines(d) => d.is_empty(),
        }
    }
}

impl ApiError {
    /// The status and stable code of this error. Broker failures take their status from
    /// their class ([`status`]); the code names the case.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotAdmin => (StatusCode::FORBIDDEN, "admin_required"),
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::TooManyWaiting => (StatusCode::TOO_MANY_REQUESTS, "too_many_waiting"),
            Self::UnknownSource(_) => (StatusCode::NOT_FOUND, "unknown_source"),
            Self::Audit(AuditRefused) => (
                status(Failure::AuditUnavailable),
                Failure::AuditUnavailable.code(),
            ),
            Self::Resolve(e) => (status(e.failure()), e.code()),
            Self::Credential(e) => (status(e.failure()), e.code()),
            Self::Sign(crate::broker::SignError::Budget) => {
                (StatusCode::TOO_MANY_REQUESTS, "sign_budget_exhausted")
            }
            Self::Sign(e) => (status(e.failure()), e.code()),
            Self::Renew(crate::broker::RenewError::Budget) => {
                (StatusCode::TOO_MANY_REQUESTS, "renew_budget_exhausted")
            }
            Self::Renew(e) => (status(e.failure()), e.code()),
            Self::Reload(ReloadError::NoPolicies) => (StatusCode::CONFLICT, "no_policies"),
            Self::Reload(ReloadError::Invalid(_)) => (StatusCode::CONFLICT, "policy_invalid"),
            Self::TlsReload(_) => (StatusCode::CONFLICT, "tls_invalid"),
            Self::Manage(e) => {
                use crate::manage::ManageError as M;
                let status = match (e.failure(), e) {
                    (Some(class), _) => status(class),
                    (
                        None,
                        M::Exists | M::CertificateInUse | M::AclOverlap | M::IdentityClaimed,
                    ) => StatusCode::CONFLICT,
                    (None, M::PreconditionRequired) => StatusCode::PRECONDITION_REQUIRED,
                    (None, M::QuotaExceeded(_)) => StatusCode::TOO_MANY_REQUESTS,
                    (None, M::Stale) => StatusCode::PRECONDITION_FAILED,
                    (None, _) => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (status, e.code())
            }
        }
    }
}

/// The main API's status for each failure class: this door's row of the one table
/// (`tests/doors.rs`).
pub fn status(class: Failure) -> StatusCode {
    match class {
        Failure::Unauthenticated => StatusCode::UNAUTHORIZED,
        Failure::Invalid | Failure::TooMany | Failure::Unresolved => StatusCode::BAD_REQUEST,
        Failure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Failure::NotFound => StatusCode::NOT_FOUND,
        Failure::Denied => StatusCode::FORBIDDEN,
        Failure::Ambiguous => StatusCode::CONFLICT,
        Failure::Unavailable
        | Failure::SourceCredentialsRefused
        | Failure::SourceMisconfigured
        | Failure::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Failure::Rejected | Failure::Broken => StatusCode::BAD_GATEWAY,
    }
}

/// Loader lines an answer carries at most (the rest are counted in `omitted`).
const MAX_LINES: usize = 20;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if let Self::Unauthorized(why) = &self {
            tracing::debug!(reason = why.code(), "request not authenticated");
        }
        let details = match &self {
            Self::Resolve(ResolveError::Unresolved { errors, .. }) => Details::References(errors),
            Self::Credential(CredentialError::Unresolved(e)) => Details::Roles(e),
            Self::Credential(CredentialError::Rejected(r))
            | Self::Manage(crate::manage::ManageError::Rejected(r)) => {
                Details::Rejected([Rejected {
                    role: r.role,
                    reason: r.code,
                }])
            }
            Self::Manage(crate::manage::ManageError::PemRejected { role, code }) => {
                Details::Rejected([Rejected { role, reason: code }])
            }
            Self::Manage(crate::manage::ManageError::PolicyRefused(lines)) => {
                Details::Lines(lines.iter().take(MAX_LINES).cloned().collect())
            }
            // Policy files are not secret; their diagnostics tell the admin what to fix.
            Self::Reload(ReloadError::Invalid(crate::policy::PolicyError::Invalid(list))) => {
                Details::Lines(
                    list.iter()
                        .take(MAX_LINES)
                        .map(ToString::to_string)
                        .collect(),
                )
            }
            _ => Details::None,
        };
        // Lists are capped: the first MAX_LINES and how many more there were.
        let omitted = match &self {
            Self::Resolve(ResolveError::Unresolved { omitted, .. }) => *omitted,
            Self::Manage(crate::manage::ManageError::PolicyRefused(lines)) => {
                lines.len().saturating_sub(MAX_LINES)
            }
            Self::Reload(ReloadError::Invalid(crate::policy::PolicyError::Invalid(list))) => {
                list.len().saturating_sub(MAX_LINES)
            }
            _ => 0,
        };
        let body = Body {
            error: Inner {
                code,
                message: self.to_string(),
                details,
                omitted,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, Self::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::ManageError;
    use crate::source::{Outage, SourceError};
    use crate::store::StoreError;

    /// An answer's list of lines is capped: the first 20 and how many more.
    #[test]
    fn loader_lines_are_capped_with_a_count() {
        let lines: Vec<String> = (0..500).map(|i| format!("line {i}: refused")).collect();
        let response = ApiError::Manage(ManageError::PolicyRefused(lines)).into_response();
        let body = futures_body(response);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["error"]["details"].as_array().map(Vec::len),
            Some(20),
            "{v}"
        );
        assert_eq!(v["error"]["omitted"], 480, "{v}");
    }

    fn futures_body(response: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    /// The management routes answer through the one classification: a store whose vault is
    /// down is "try again later" (503), not a server error; a store whose vault refuses
    /// keybroker's own token is the operator's outage (503), like a read's.
    #[test]
    fn a_store_outage_is_503_at_the_management_routes() {
        let down = ApiError::Manage(ManageError::Store(StoreError::Remote(
            SourceError::Unavailable(Outage::VaultNoLeader),
        )));
        assert_eq!(
            down.status_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        );
        let refused = ApiError::Manage(ManageError::Store(StoreError::Remote(
            SourceError::Unavailable(Outage::CredentialsRefused),
        )));
        assert_eq!(refused.status_code().0, StatusCode::SERVICE_UNAVAILABLE);
        let not_allowed = ApiError::Manage(ManageError::NotAllowed("fraud".to_owned()));
        assert_eq!(not_allowed.status_code().0, status(Failure::Denied));
        let stale = ApiError::Manage(ManageError::Stale);
        assert_eq!(stale.status_code().0, StatusCode::PRECONDITION_FAILED);
    }
}
