//! The broker's audit line: one per decision; refused answers when the trail is
//! fail-closed and cannot be written.

use std::time::Instant;

use super::{Broker, Caller};
use crate::audit::Record;
use crate::policy::Destination;

/// The audit line could not be written and the audit trail is fail-closed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the audit trail cannot be written; refusing to answer")]
pub struct AuditRefused;

/// What one audit line says (see [`Broker::audit`]).
pub(crate) struct AuditEntry<'a> {
    pub action: crate::audit::Action,
    /// `None`: the caller could not be authenticated.
    pub caller: Option<&'a Caller>,
    pub subjects: Vec<String>,
    pub host: Option<&'a Destination>,
    pub decision: crate::audit::Outcome,
    pub reason: &'a str,
    pub repairs: Vec<&'static str>,
    pub stale: bool,
    pub started: Instant,
    /// On a summary line: failed authentications of one peer that were not written.
    pub suppressed: Option<u64>,
    /// The door the request came through (written as `via` when not the main API).
    pub door: crate::identity::Door,
    /// The line as announced when the request started ([`Broker::announce_audit`]).
    pub ticket: Option<crate::audit::Ticket>,
    /// The serial of the client certificate handed out.
    pub serial: Option<&'a str>,
}

impl<'a> AuditEntry<'a> {
    /// A line of `action` by `caller` with this outcome; no subjects, host or repairs (set
    /// them with struct update syntax where a line has them).
    pub(crate) fn new(
        action: crate::audit::Action,
        caller: Option<&'a Caller>,
        decision: crate::audit::Outcome,
        reason: &'a str,
        started: Instant,
    ) -> Self {
        Self {
            action,
            caller,
            subjects: Vec::new(),
            host: None,
            decision,
            reason,
            repairs: Vec::new(),
            stale: false,
            started,
            suppressed: None,
            door: crate::identity::Door::Api,
            serial: None,
            ticket: None,
        }
    }
}

/// What a blocking query's asks have written to the audit trail. A re-ask whose decision,
/// reason and answer are those of the last line written writes none (THREATS row 43: held
/// waiters re-reading every second wrote a line each with nothing changing); a change of
/// any of them is written before it is answered. The answer is remembered as a digest keyed
/// per wait, never as its bytes.
pub struct AuditMemo {
    key: hmac::HmacReset<sha2::Sha256>,
    last: std::sync::Mutex<Option<(crate::audit::Outcome, String, [u8; 32])>>,
}

impl std::fmt::Debug for AuditMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMemo")
    }
}

impl Default for AuditMemo {
    fn default() -> Self {
        use hmac::KeyInit;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        // Without an OS random source no key can be made safely.
        getrandom::fill(&mut *key).expect("the OS random number generator is available");
        Self {
            key: hmac::HmacReset::new_from_slice(&*key).expect("HMAC takes keys of any length"),
            last: std::sync::Mutex::default(),
        }
    }
}

impl AuditMemo {
    /// Whether this ask's line would repeat the last one written; if not, it is remembered as
    /// the last one (the caller then writes it).
    pub(super) fn repeats<'a>(
        &self,
        decision: crate::audit::Outcome,
        reason: &str,
        answer: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        let digest = crate::secret::keyed_digest(&self.key, answer);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let same = last
            .as_ref()
            .is_some_and(|(d, r, a)| *d == decision && r == reason && *a == digest);
        if !same {
            *last = Some((decision, reason.to_owned(), digest));
        }
        same
    }
}

impl Broker {
    /// Announces the audit line of a request that starts now, so that a synced batch waits
    /// for it (docs/DESIGN.md §9); pass the ticket in its [`AuditEntry`].
    pub(crate) fn announce_audit(&self) -> Option<crate::audit::Ticket> {
        self.audit.as_ref().and_then(|a| a.announce())
    }

    /// Writes one audit line; `Err` only when it failed and the audit is fail-closed.
    pub(crate) async fn audit(&self, e: AuditEntry<'_>) -> Result<(), AuditRefused> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let (consumer, team) = match e.caller {
            None => ("anonymous", None),
            Some(Caller::Operator) => ("operator", None),
            Some(Caller::Consumer(c)) => (c.name(), Some(c.team())),
        };
        let (subjects, subjects_omitted, subjects_digest) = audit.subjects(&e.subjects);
        let host = e.host.map(ToString::to_string);
        let record = Record {
            time: crate::audit::Timestamp::now(),
            action: e.action,
            consumer,
            team,
            subjects,
            subjects_omitted,
            subjects_digest,
            host: host.as_deref().map(|h| audit.identifier(h)),
            decision: e.decision,
            reason: e.reason,
            repairs: e.repairs,
            stale: e.stale,
            latency_us: u64::try_from(e.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            suppressed: e.suppressed,
            via: e.door.via(),
            serial: e.serial,
        };
        match audit.write_announced(&record, e.ticket).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.metrics.audit_failure();
                tracing::error!(error = %err, fail_closed = audit.fail_closed(), "audit write failed");
                if audit.fail_closed() {
                    Err(AuditRefused)
                } else {
                    Ok(())
                }
            }
        }
    }
}
