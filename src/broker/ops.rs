//! Operating the broker: policy reload (the old policy stays in force on any error), source
//! readiness for `/readyz`, cache purge.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::Broker;

/// How often each source's own credentials are checked (`spawn_self_checks`).
const SELF_CHECK_EVERY: Duration = Duration::from_secs(15);
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
    /// The source has answered at least once (its start-up check, or any read).
    pub answered: bool,
    /// True when the source has answered, its circuit breaker is closed and it does not refuse
    /// keybroker's own credentials. Reported, not counted against readiness once started:
    /// stale answers may still flow.
    pub available: bool,
}

/// What `/readyz` answers (docs/DESIGN.md §15): ready when every source answered once, the
/// policy is loaded and the audit trail was writable at its last write. A source failing
/// later is only reported.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Every source answered once.
    pub started: bool,
    pub policy_loaded: bool,
    pub audit_writable: bool,
    pub sources: Vec<SourceHealth>,
}

impl Broker {
    /// Reads the policies folder again and swaps the policy in whole, or keeps the old one.
    /// Requests already running finish under the policy they started with.
    pub fn reload_policy(&self) -> Result<PolicySummary, ReloadError> {
        self.reload(None)
    }

    /// As [`Broker::reload_policy`] after store writes or a pull that changed exactly these
    /// definition files: only they are read again; the folders are not walked and the other
    /// files not looked at (a policy file edited meanwhile waits for SIGHUP or a full reload).
    pub fn reload_policy_changed(
        &self,
        changed: &[std::path::PathBuf],
    ) -> Result<PolicySummary, ReloadError> {
        self.reload(Some(changed))
    }

    fn reload(&self, changed: Option<&[std::path::PathBuf]>) -> Result<PolicySummary, ReloadError> {
        if self.policies_dir.is_none() {
            return Err(ReloadError::NoPolicies);
        }
        match self.load_policy(changed) {
            Ok(policy) => {
                let summary = PolicySummary::of(&policy);
                self.report_quarantined(&policy);
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

    /// Store entries a load set aside: a warning each, and the gauge.
    pub(super) fn report_quarantined(&self, policy: &crate::policy::Policy) {
        for q in &policy.quarantined {
            tracing::warn!(entry = %q, "store entry set aside: the policy files win, or it conflicts");
        }
        self.metrics.quarantined(policy.quarantined.len());
    }

    /// Whether keybroker itself is ready, and each source's state.
    /// Brings the gauges that are read, not counted, up to date: source availability, cache
    /// size, Vault token TTLs (before each `/metrics` exposition).
    pub async fn update_gauges(&self) {
        let _ = self.readiness();
        self.metrics.update_process();
        // moka counts lazily: settle its pending bookkeeping so the sizes are current.
        self.cache.run_pending_tasks().await;
        self.metrics
            .cache_size(self.cache.entry_count(), self.cache.weighted_size());
        for e in self.sources.values() {
            if e.source.kind() == crate::source::SourceKind::Vault {
                self.metrics
                    .token_ttl(e.source.name(), e.source.token_ttl());
            }
        }
    }

    pub fn readiness(&self) -> Readiness {
        let mut sources: Vec<SourceHealth> = self
            .sources
            .values()
            .map(|e| SourceHealth {
                name: e.source.name().to_owned(),
                kind: e.source.kind(),
                answered: e.answered.load(Ordering::Relaxed),
                // Not before it answered once: a source never heard from is not known to work.
                available: e.answered.load(Ordering::Relaxed)
                    && !e.breaker.is_open()
                    && !e.refused.load(Ordering::Relaxed),
            })
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        for s in &sources {
            self.metrics.source_available(&s.name, s.available);
        }
        let started = sources.iter().all(|s| s.answered);
        // The policy is loaded before the broker exists, and a bad reload keeps the old one.
        let policy_loaded = true;
        let audit_writable = self.audit.as_ref().is_none_or(|a| a.writable());
        Readiness {
            ready: started && policy_loaded && audit_writable,
            started,
            policy_loaded,
            audit_writable,
            sources,
        }
    }

    /// The broker's background work, started once by the server's operations
    /// (`app/operations.rs`) and by nothing else: the sources' own (token renewal) and the
    /// store's, the cache's maintenance, the start-of-service audit line, the start-up and self
    /// checks, and the expiry sweep.
    pub async fn start(self: &Arc<Self>) {
        for e in self.sources.values() {
            e.source.start();
        }
        if let Some(store) = &self.store {
            store.start();
        }
        self.cache.spawn_maintenance();
        if let Some(notifier) = &self.notifier {
            notifier.start();
        }
        // Readiness: the trail proves writable, each source answers once; then expiry sweeps.
        self.audit_start().await;
        self.spawn_startup_checks();
        self.spawn_self_checks();
        self.spawn_expiry_sweep();
    }

    /// Probes every source that has not answered yet, with growing pauses (1 s to 30 s),
    /// until all have: what `/readyz` waits for at start.
    pub fn spawn_startup_checks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            loop {
                let Some(broker) = weak.upgrade() else { return };
                let mut waiting = 0;
                for e in broker.sources.values() {
                    if e.answered.load(Ordering::Relaxed) {
                        continue;
                    }
                    let probed = e.source.probe().await;
                    super::read::note_credentials(&e.refused, probed.as_ref().err());
                    match probed {
                        Ok(()) => {
                            e.answered.store(true, Ordering::Relaxed);
                            tracing::info!(source = e.source.name(), "source answered");
                        }
                        Err(why) => {
                            waiting += 1;
                            tracing::warn!(source = e.source.name(), %why, "source not answering yet");
                        }
                    }
                }
                drop(broker);
                if waiting == 0 {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// `check --online`: each source probed (logged in to), then each credential read and
    /// verified as a whole, as the operator; `(ok, line)` per item, never a value.
    pub async fn check_online(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.sources.keys().collect();
        names.sort();
        for name in names {
            out.extend(self.sources[name].source.verify().await);
        }
        let snapshot = self.policy();
        for cred in &snapshot.policy().credentials {
            let label = format!("credential {}/{}", cred.team, cred.name);
            // Reading would issue a certificate: the source's check read its roles instead.
            if let Some(issuer) = self.issuing_source(cred) {
                out.push((
                    true,
                    format!("{label}: not read: its values are issued by source {issuer} (check issues nothing)"),
                ));
                continue;
            }
            let values = self.read_roles(cred, super::read::BACKGROUND).await;
            match self
                .usable(cred, &values, super::verdict::Phase::Current)
                .await
            {
                Ok(()) => out.push((true, format!("{label}: ok"))),
                Err(super::CredentialError::Rejected(r)) => {
                    out.push((false, format!("{label}: rejected: {}: {}", r.role, r.code)));
                }
                Err(super::CredentialError::Unresolved(errors)) => {
                    let why: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.role, e.reason.code()))
                        .collect();
                    out.push((false, format!("{label}: unresolved: {}", why.join(", "))));
                }
                Err(e) => out.push((false, format!("{label}: {e}"))),
            }
        }
        out
    }

    /// The first source among `cred`'s values (as in force now) whose reads issue something.
    pub(super) fn issuing_source<'a>(
        &'a self,
        cred: &'a crate::policy::Credential,
    ) -> Option<&'a str> {
        let values = cred.values_at(std::time::SystemTime::now());
        values.by_role.values().find_map(|r| {
            let name = self.source_of(r).ok()?;
            self.sources
                .get(name)
                .filter(|e| e.source.reads_issue())
                .map(|_| name)
        })
    }

    /// Every `SELF_CHECK_EVERY`, each source checks that keybroker's own credentials still
    /// work (a revoked Vault token is found without waiting for a read): `/readyz` and
    /// `keybroker_source_available` follow, and a change is logged once.
    pub fn spawn_self_checks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SELF_CHECK_EVERY).await;
                let Some(broker) = weak.upgrade() else { return };
                for e in broker.sources.values() {
                    let result = e.source.self_check().await;
                    // Only refusals and their end are this check's business; outages are
                    // the breaker's.
                    let was = super::read::note_credentials(&e.refused, result.as_ref().err());
                    let refused = e.refused.load(Ordering::Relaxed);
                    if refused && !was {
                        tracing::error!(
                            source = e.source.name(),
                            "self-check: the source refuses keybroker's own credentials; reads fail until they are fixed"
                        );
                    } else if !refused && was {
                        tracing::info!(
                            source = e.source.name(),
                            "self-check: the source accepts keybroker's credentials again"
                        );
                    }
                }
            }
        });
    }

    /// The start-of-service audit line (it also shows whether the trail is writable).
    pub async fn audit_start(&self) {
        let entry = super::AuditEntry::new(
            crate::audit::Action::ServiceStart,
            Some(&super::Caller::Operator),
            crate::audit::Outcome::Notice,
            "start",
            std::time::Instant::now(),
        );
        // Refused or not, nothing is answered here; readiness reports it.
        let _ = self.audit(entry).await;
    }

    /// Drops cached secrets of `source` under `prefix` (all of the source when empty).
    /// Returns false for an unknown source.
    pub async fn purge(&self, source: &str, prefix: &[String]) -> bool {
        let Some(entry) = self.sources.get(source) else {
            return false;
        };
        self.cache.purge(source, prefix).await;
        entry.source.close_connections();
        // What was built from purged values (the egress proxy's clients) goes too.
        self.cache.announce_change();
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
    /// Reopens the audit file by its path before its next line (SIGHUP, after logrotate).
    pub fn reopen_audit(&self) {
        if let Some(audit) = &self.audit {
            audit.reopen();
        }
    }

    /// The caller of a request at any door: the one authenticator under the current policy
    /// snapshot, and every refusal audited through the peer address's budget (THREATS rows
    /// 27 and 32 at every door, by construction).
    pub async fn authenticate(
        &self,
        authenticator: &crate::identity::Authenticator,
        presented: crate::identity::Presented<'_>,
    ) -> Result<(super::Caller, crate::identity::Via), crate::identity::AuthError> {
        let snapshot = self.policy();
        let found = authenticator.authenticate(&snapshot, presented);
        if let Err(why) = &found {
            if *why == crate::identity::AuthError::AmbiguousIdentity {
                self.metrics.ambiguous_identity();
            }
            // Refused either way; a failing audit sink changes nothing here.
            let _ = self.audit_unauthenticated(why.code(), presented.peer).await;
        }
        found
    }

    /// A successful login through a door (`via`): the consumer now holds a token.
    pub async fn audit_login(
        &self,
        caller: &super::Caller,
        door: crate::identity::Door,
    ) -> Result<(), super::AuditRefused> {
        self.audit(super::AuditEntry {
            door,
            ..super::AuditEntry::new(
                crate::audit::Action::Login,
                Some(caller),
                crate::audit::Outcome::Allowed,
                "allowed",
                std::time::Instant::now(),
            )
        })
        .await
    }

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
