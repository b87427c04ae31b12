//! What the operator must hear about without asking — a certificate expiring or expired, a
//! credential refused by verification — as values with one [`Broker::emit`] that logs, counts,
//! notifies and audits each alike, so no place reports an event by hand and forgets a channel.

use std::time::Instant;

use super::{AuditEntry, Broker, Caller};
use crate::audit::{Action, Outcome};
use crate::metrics::ExpiryKind;
use crate::pem::credential::Rejection;

/// One event. Subjects name a series or a credential, never a value.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A certificate entered its warning window (`expired: false`) or ended.
    Expiry {
        kind: ExpiryKind,
        name: &'a str,
        expired: bool,
        not_after: i64,
        now: i64,
    },
    /// A credential's values do not make a usable credential (`next`: its next period's).
    Rejected {
        team: &'a str,
        name: &'a str,
        next: bool,
        rejection: Rejection,
    },
}

impl Event<'_> {
    /// The notification's event name.
    fn name(&self) -> &'static str {
        match self {
            Self::Expiry { expired: true, .. } => "certificate.expired",
            Self::Expiry { .. } => "certificate.expiring",
            Self::Rejected { .. } => "credential.rejected",
        }
    }

    fn action(&self) -> Action {
        match self {
            Self::Expiry { expired: true, .. } => Action::CertificateExpired,
            Self::Expiry { .. } => Action::CertificateExpiring,
            Self::Rejected { .. } => Action::CredentialRejected,
        }
    }

    /// The notification's and the audit line's reason.
    fn reason(&self) -> &'static str {
        match self {
            Self::Expiry { kind, .. } => kind.code(),
            Self::Rejected { rejection, .. } => rejection.code,
        }
    }

    /// The notification's and the audit line's subject.
    fn subject(&self) -> String {
        match self {
            Self::Expiry { kind, name, .. } => format!("{}:{name}", kind.code()),
            Self::Rejected {
                team,
                name,
                next,
                rejection,
            } => {
                let next = if *next { " (next)" } else { "" };
                format!("{team}/{name}:{}{next}", rejection.role)
            }
        }
    }

    fn log(&self) {
        match self {
            Self::Expiry {
                kind,
                name,
                expired,
                not_after,
                now,
            } => {
                let days_left = (*not_after - now).div_euclid(86_400);
                let at = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u64::try_from(*not_after).unwrap_or(0));
                let not_after = humantime::format_rfc3339_seconds(at).to_string();
                tracing::warn!(kind = kind.code(), %name, %not_after, days_left, expired, "certificate expiry");
            }
            Self::Rejected {
                team,
                name,
                rejection,
                ..
            } => {
                tracing::warn!(%team, credential = %name, role = rejection.role, code = rejection.code, "credential refused by verification");
            }
        }
    }
}

impl Broker {
    /// Logs, counts, notifies and audits `event`. An event, not a decision: a failing audit
    /// trail refuses nothing here.
    pub(crate) async fn emit(&self, event: Event<'_>) {
        event.log();
        if let Event::Rejected { rejection, .. } = &event {
            self.metrics.credential_rejected(rejection.code);
        }
        let subject = event.subject();
        let reason = event.reason();
        if let Some(n) = &self.notifier {
            n.send(crate::notify::Event::now(
                event.name(),
                subject.clone(),
                reason,
            ));
        }
        let _ = self
            .audit(AuditEntry {
                subjects: vec![subject],
                ..AuditEntry::new(
                    event.action(),
                    Some(&Caller::Operator),
                    Outcome::Notice,
                    reason,
                    Instant::now(),
                )
            })
            .await;
    }
}
