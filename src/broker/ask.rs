//! The one read every door makes: [`Broker::read`] of an [`Ask`] — who asks, through which
//! door, towards which destination, and what ([`Expand`] a document, [`SecretRead`] one
//! secret, [`CredentialRead`] a credential by name or the one for the destination). Every
//! read is decided, read and audited here the same way: one audit line per ask (or none when
//! a blocking query's ask would repeat the last), and an answer that cannot be audited is
//! dropped unanswered.

use std::future::Future;
use std::time::Instant;

use super::{AuditEntry, AuditMemo, AuditRefused, Broker, Caller, Document};
use crate::audit::{Action, Outcome};
use crate::identity::Door;
use crate::policy::Destination;
use crate::reference::Layout;

/// One read: `want`, asked by `caller` through `door`, for use at `host`.
#[derive(Debug)]
pub struct Ask<'a, W> {
    pub caller: &'a Caller,
    pub door: Door,
    pub host: Option<&'a Destination>,
    pub want: W,
    /// A blocking query's memory of its last audit line: a line that would repeat it is not
    /// written.
    pub memo: Option<&'a AuditMemo>,
}

impl<'a, W: Want> Ask<'a, W> {
    /// `want` for `caller` through `door`, towards no particular destination.
    pub fn new(caller: &'a Caller, door: Door, want: W) -> Self {
        Self {
            caller,
            door,
            host: None,
            want,
            memo: None,
        }
    }

    /// For use at `host` (the credential's `allowed_hosts` decide).
    #[must_use]
    pub fn towards(mut self, host: Option<&'a Destination>) -> Self {
        self.host = host;
        self
    }

    /// One ask of a blocking query, remembered by `memo`.
    #[must_use]
    pub fn remembered(mut self, memo: Option<&'a AuditMemo>) -> Self {
        self.memo = memo;
        self
    }
}

/// Expand every reference in a document, all or nothing.
#[derive(Debug)]
pub struct Expand {
    pub document: Document,
    pub layout: Layout,
}

/// A credential's values: by name, or the one credential whose `allowed_hosts` fit the
/// destination (the egress proxy's choice, decided and audited here like a named read).
#[derive(Clone, Debug)]
pub(crate) struct CredentialRead {
    pub name: Option<String>,
    /// Also the values that take over next (`include_next`).
    pub next: bool,
}

impl CredentialRead {
    pub(crate) fn named(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            next: false,
        }
    }

    /// The one credential the destination's host fits.
    pub(crate) fn for_destination() -> Self {
        Self {
            name: None,
            next: false,
        }
    }
}

/// What can be asked for: each kind of read knows how it is made and what its audit line
/// says; [`Broker::read`] does the rest the same way for all.
pub trait Want: Sized + Send {
    type Answer: Send;
    type Error: ReadFailure + From<AuditRefused> + Send;
    /// The audit line's action.
    const ACTION: Action;

    /// Decides and reads, unaudited; `subjects` gets what was asked for (the audit line's
    /// subjects).
    #[doc(hidden)]
    fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> impl Future<Output = Result<Self::Answer, Self::Error>> + Send;

    /// What the audit line says about an answer: the repairs made, whether it was stale and
    /// the serial of a certificate handed out.
    #[doc(hidden)]
    fn facts(answer: &Self::Answer) -> Facts<'_>;

    /// The answer's bytes, for a blocking query's "same as last time".
    #[doc(hidden)]
    fn answer_bytes(answer: &Self::Answer) -> Vec<&[u8]>;
}

/// An audit line's facts about an answer.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub repairs: Vec<&'static str>,
    pub stale: bool,
    pub serial: Option<&'a str>,
}

/// What every read's error tells its audit line.
pub trait ReadFailure {
    /// The audit line's decision and reason.
    fn outcome(&self) -> (Outcome, &'static str);
}

impl Broker {
    /// The one read: decides, reads and audits `ask`. Every door reads through here.
    pub async fn read<W: Want>(&self, ask: Ask<'_, W>) -> Result<W::Answer, W::Error> {
        let started = Instant::now();
        let ticket = self.announce_audit();
        let mut subjects = Vec::new();
        let result = ask
            .want
            .read_unaudited(self, ask.caller, ask.host, &mut subjects)
            .await;
        let (decision, reason) = match &result {
            Ok(_) => (Outcome::Allowed, "allowed"),
            Err(e) => e.outcome(),
        };
        if let Some(memo) = ask.memo {
            let answer = result.as_ref().map_or(Vec::new(), W::answer_bytes);
            if memo.repeats(decision, reason, answer) {
                return result;
            }
        }
        let facts = result.as_ref().map_or(Facts::default(), W::facts);
        let entry = AuditEntry {
            subjects,
            host: ask.host,
            repairs: facts.repairs,
            stale: facts.stale,
            serial: facts.serial,
            door: ask.door,
            ticket,
            ..AuditEntry::new(W::ACTION, Some(ask.caller), decision, reason, started)
        };
        // An answer that cannot be audited is dropped (and wiped) unanswered.
        match self.audit(entry).await {
            Ok(()) => result,
            Err(refused) => Err(refused.into()),
        }
    }
}
