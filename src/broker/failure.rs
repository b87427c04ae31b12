//! The one classification of a failed request. The broker's errors (and the identity's) say
//! which class they are; each door maps a class once, to its own dialect: the main API to an
//! HTTP status, the Vault API to Vault's status and `errors`, the egress proxy to a proxy
//! status, the CLI to an exit code. `tests/doors.rs` holds the whole table.

use crate::identity::AuthError;
use crate::reference::Reason;

use super::{CredentialError, ResolveError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No valid credential was presented.
    Unauthenticated,
    /// The request is malformed: document or reference syntax, repeated credential headers.
    Invalid,
    /// The request asks for more reads or occurrences than `[limits]` allow.
    TooMany,
    /// The answer would be larger than `[limits] max_answer_bytes`.
    TooLarge,
    /// The caller's references do not resolve for a reason on the caller's side (no such
    /// field, no such secret in a document).
    Unresolved,
    /// The one thing asked for does not exist (told only to callers allowed to read it).
    NotFound,
    /// The policy refuses (for a consumer, also what does not exist).
    Denied,
    /// Several credentials or objects match.
    Ambiguous,
    /// A source is down, slow or rate limited: worth retrying.
    Unavailable,
    /// A source refused keybroker's own credentials: down for everyone until an operator
    /// acts; retrying does not help.
    SourceCredentialsRefused,
    /// A source's answers show keybroker's configuration of it to be wrong.
    SourceMisconfigured,
    /// The audit line could not be written and the trail is fail-closed.
    AuditUnavailable,
    /// A credential's values were read but fail verification together.
    Rejected,
    /// The operator's credential definition does not resolve (a missing field, a rejected
    /// PEM value): the server's failure, not the caller's.
    Broken,
}

impl Failure {
    /// Every class, for tables and tests.
    pub const ALL: [Self; 14] = [
        Self::Unauthenticated,
        Self::Invalid,
        Self::TooMany,
        Self::TooLarge,
        Self::Unresolved,
        Self::NotFound,
        Self::Denied,
        Self::Ambiguous,
        Self::Unavailable,
        Self::SourceCredentialsRefused,
        Self::SourceMisconfigured,
        Self::AuditUnavailable,
        Self::Rejected,
        Self::Broken,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Invalid => "invalid",
            Self::TooMany => "too_many",
            Self::TooLarge => "too_large",
            Self::Unresolved => "unresolved",
            Self::NotFound => "not_found",
            Self::Denied => "denied",
            Self::Ambiguous => "ambiguous",
            Self::Unavailable => "unavailable",
            Self::SourceCredentialsRefused => "source_credentials_refused",
            Self::SourceMisconfigured => "source_misconfigured",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Rejected => "rejected",
            Self::Broken => "broken",
        }
    }

    /// Whether a source (not the caller) is at fault: a 503 at every HTTP door.
    pub fn is_outage(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::SourceCredentialsRefused | Self::SourceMisconfigured
        )
    }

    /// The class of a set of reference failures: the most serious for everyone first (a
    /// source outage is not the caller's fault), then a denial (which hides the rest).
    pub fn of_reasons<'a>(reasons: impl IntoIterator<Item = &'a Reason>) -> Self {
        let mut worst = None;
        for reason in reasons {
            let class = Self::of_reason(reason);
            worst = Some(match (worst, class) {
                (None, c) => c,
                (Some(w), c) => std::cmp::max_by_key(w, c, |f: &Self| f.rank()),
            });
        }
        worst.unwrap_or(Self::Unresolved)
    }

    /// The class of one reference's failure.
    pub fn of_reason(reason: &Reason) -> Self {
        match reason {
            Reason::SourceUnavailable => Self::Unavailable,
            Reason::SourceCredentialsRefused => Self::SourceCredentialsRefused,
            Reason::SourceMisconfigured => Self::SourceMisconfigured,
            Reason::Denied => Self::Denied,
            Reason::NotFound => Self::NotFound,
            Reason::Ambiguous => Self::Ambiguous,
            _ => Self::Unresolved,
        }
    }

    /// Which class wins when one request meets several (higher wins).
    fn rank(self) -> u8 {
        match self {
            Self::SourceCredentialsRefused => 9,
            Self::SourceMisconfigured => 8,
            Self::Unavailable => 7,
            Self::Denied => 6,
            Self::Ambiguous => 3,
            Self::Unresolved => 2,
            Self::NotFound => 1,
            _ => 0,
        }
    }
}

impl ResolveError {
    /// This error's class. A document whose references fail is `Unresolved` as a whole even
    /// when each reference is not found (a document is not a resource); outages and denials
    /// keep their class.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Document(_) => Failure::Invalid,
            Self::Unresolved { errors, .. } => {
                match Failure::of_reasons(errors.iter().map(|e| &e.reason)) {
                    Failure::NotFound | Failure::Ambiguous => Failure::Unresolved,
                    other => other,
                }
            }
            Self::AuditUnavailable(_) => Failure::AuditUnavailable,
            Self::TooManyReferences { .. } | Self::TooManySites { .. } => Failure::TooMany,
            Self::TooLarge { .. } => Failure::TooLarge,
            Self::NotFound => Failure::NotFound,
        }
    }

    /// The stable code every door answers this error with (the API's `error.code`, the CLI's
    /// JSON error line): the one table of them.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Document(d) => d.code(),
            Self::TooManyReferences { .. } | Self::TooManySites { .. } => "too_many_references",
            Self::TooLarge { .. } => "too_large",
            Self::NotFound => "not_found",
            Self::AuditUnavailable(_) => super::Failure::AuditUnavailable.code(),
            Self::Unresolved { .. } => match self.failure() {
                f if f.is_outage() => "source_unavailable",
                Failure::Denied => "denied",
                _ => "unresolved_references",
            },
        }
    }
}

impl CredentialError {
    /// The stable code every door answers this error with: the one table of them.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::NotFound => "not_found",
            Self::Ambiguous => "ambiguous_credential",
            Self::AuditUnavailable(_) => super::Failure::AuditUnavailable.code(),
            Self::Rejected(_) => "credential_rejected",
            Self::NoneFits(_) => "credential_required",
            Self::Unresolved(_) if self.failure().is_outage() => "source_unavailable",
            Self::Unresolved(_) => "credential_unresolved",
        }
    }

    pub fn failure(&self) -> Failure {
        match self {
            Self::Denied(_) => Failure::Denied,
            Self::NotFound => Failure::NotFound,
            Self::Ambiguous => Failure::Ambiguous,
            Self::Unresolved(errors) => match Failure::of_reasons(errors.iter().map(|e| &e.reason))
            {
                f if f.is_outage() => f,
                _ => Failure::Broken,
            },
            Self::Rejected(_) => Failure::Rejected,
            Self::NoneFits(_) => Failure::Invalid,
            Self::AuditUnavailable(_) => Failure::AuditUnavailable,
        }
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        if e.is_bad_request() {
            Self::Invalid
        } else {
            Self::Unauthenticated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_outranks_a_denial_which_outranks_the_callers_mistakes() {
        let r = [Reason::NotFound, Reason::Denied, Reason::SourceUnavailable];
        assert_eq!(Failure::of_reasons(&r), Failure::Unavailable);
        assert_eq!(Failure::of_reasons(&r[..2]), Failure::Denied);
        assert_eq!(
            Failure::of_reasons(&[Reason::FieldNotFound, Reason::NotFound]),
            Failure::Unresolved
        );
        assert_eq!(
            Failure::of_reasons(&[Reason::SourceUnavailable, Reason::SourceCredentialsRefused]),
            Failure::SourceCredentialsRefused
        );
    }

    #[test]
    fn codes_are_distinct() {
        let codes: std::collections::HashSet<_> = Failure::ALL.iter().map(|f| f.code()).collect();
        assert_eq!(codes.len(), Failure::ALL.len());
    }
}
