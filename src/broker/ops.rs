//! Operating the broker: policy reload (the old policy stays in force on any error), source
//! readiness for `/readyz`, cache purge.

use std::sync::Arc;

use serde::Serialize;

use super::Broker;
use crate::identity::Snapshot;
use crate::metrics::ReloadOutcome;
use crate::policy::PolicyError;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no policies folder is configured")]
    NoPolicies,
    /// The new policy is invalid; the previous one is still in force.
    #[error("the policy was not reloaded; the previous policy stays in force:\n{0}")]
    Invalid(#[from] PolicyError),
}

/// One source as `/readyz` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceHealth {
    pub name: String,
    pub kind: crate::source::SourceKind,
    /// False while the source's circuit breaker is open (repeated failures).
    pub ready: bool,
}

impl Broker {
    /// Reads the policies folder again and swaps the policy in whole, or keeps the old one.
    /// Requests already running finish under the policy they started with.
    pub fn reload_policy(&self) -> Result<PolicySummary, ReloadError> {
        let dir = self.policies_dir.as_ref().ok_or(ReloadError::NoPolicies)?;
        match crate::policy::load_checked(dir, &self.known_sources()) {
            Ok(policy) => {
                let summary = PolicySummary::of(&policy);
                self.policy.store(Arc::new(Snapshot::new(policy)));
                self.metrics.reload(ReloadOutcome::Ok);
                // Answers may differ under the new policy: blocking queries ask again.
                self.cache.announce_change();
                tracing::info!(
                    consumers = summary.consumers,
                    credentials = summary.credentials,
                    "policy reloaded"
                );
                Ok(summary)
            }
            Err(e) => {
                self.metrics.reload(ReloadOutcome::Rejected);
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                Err(e.into())
            }
        }
    }

    /// Each source and whether it is taking reads.
    pub fn readiness(&self) -> Vec<SourceHealth> {
        let mut all: Vec<SourceHealth> = self
            .sources
            .values()
            .map(|e| SourceHealth {
                name: e.source.name().to_owned(),
                kind: e.source.kind(),
                ready: !e.breaker.is_open(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Drops cached secrets of `source` under `prefix` (all of the source when empty).
    /// Returns false for an unknown source.
    pub fn purge(&self, source: &str, prefix: &[String]) -> bool {
        if !self.sources.contains_key(source) {
            return false;
        }
        self.cache.purge(source, prefix);
        true
    }
}

impl Broker {
    /// The audit line of an admin action; `Err` when it cannot be written and must refuse.
    pub async fn audit_admin(
        &self,
        caller: &super::Caller,
        action: crate::audit::Action,
        subjects: Vec<String>,
        ok: bool,
        started: std::time::Instant,
    ) -> Result<(), super::AuditRefused> {
        let (decision, reason) = if ok {
            (crate::audit::Outcome::Allowed, "allowed")
        } else {
            (crate::audit::Outcome::Failed, "rejected")
        };
        self.audit(super::AuditEntry {
            subjects,
            ..super::AuditEntry::new(action, Some(caller), decision, reason, started)
        })
        .await
    }
}

impl Broker {
    /// The audit line of a caller refused an admin endpoint.
    pub async fn audit_not_admin(
        &self,
        caller: &super::Caller,
        action: crate::audit::Action,
    ) -> Result<(), super::AuditRefused> {
        self.audit(super::AuditEntry::new(
            action,
            Some(caller),
            crate::audit::Outcome::Denied,
            "admin_required",
            std::time::Instant::now(),
        ))
        .await
    }

    /// The audit line of a request whose caller could not be authenticated.
    pub async fn audit_unauthenticated(
        &self,
        reason: &'static str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), super::AuditRefused> {
        use crate::audit::Admit;
        let admit = peer.map_or(Admit::Write, |ip| {
            self.refusals.admit(ip, std::time::Instant::now())
        });
        let entry = |reason, suppressed| super::AuditEntry {
            suppressed,
            ..super::AuditEntry::new(
                crate::audit::Action::Authenticate,
                None,
                crate::audit::Outcome::Denied,
                reason,
                std::time::Instant::now(),
            )
        };
        match admit {
            Admit::Suppress => return Ok(()),
            Admit::WriteAfterSuppressed(n) => {
                self.audit(entry("failures_suppressed", Some(n))).await?;
            }
            Admit::Write => {}
        }
        self.audit(entry(reason, None)).await
    }
}

/// Sizes of a policy, for logs and the reload answer.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PolicySummary {
    pub teams: usize,
    pub consumers: usize,
    pub credentials: usize,
    pub grants: usize,
}

impl PolicySummary {
    fn of(p: &crate::policy::Policy) -> Self {
        Self {
            teams: p.teams.len(),
            consumers: p.consumers.len(),
            credentials: p.credentials.len(),
            grants: p.grants.len(),
        }
    }
}
