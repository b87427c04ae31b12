//! Who is calling, in one place: the client certificate parsed once at accept
//! ([`ClientCert`]), the identity index built with each policy snapshot ([`Identities`]), the
//! authentication of a request ([`Authenticator`]) and its outcome, a [`Caller`] tied to the
//! [`Snapshot`] it was authenticated under.
//!
//! **Boundary:** imports `policy` (the consumers) and nothing above it; `api` and `broker`
//! use it. No I/O.

mod authenticate;
mod cert;
mod index;
mod token;

use std::sync::Arc;
use std::time::SystemTime;

pub(crate) use authenticate::{
    AuthError, Authenticator, IssuedTokens, Login, Presented, Via, presented_token,
};
pub use authenticate::{Door, IssuedTo, decode_certificate};
pub use cert::ClientCert;
pub use index::Identities;
pub(crate) use index::{Ambiguous, acl_matches};
pub use token::TokenDigest;

use crate::policy::{Consumer, Policy};

/// A policy and its identity index, loaded together and swapped together: a request is
/// authenticated, decided and audited under one snapshot.
#[derive(Debug)]
pub struct Snapshot {
    policy: Policy,
    identities: Identities,
}

impl Snapshot {
    pub fn new(policy: Policy) -> Self {
        policy.build_index();
        let identities = Identities::of(&policy);
        Self { policy, identities }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn identities(&self) -> &Identities {
        &self.identities
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// The CLI without `--as`, or the `serve --dev` token: keybroker's own source
    /// credentials, no access policy.
    Operator,
    /// An authenticated consumer of the policy: every reference is decided by the policy,
    /// on every request — by the policy snapshot the consumer was authenticated under.
    Consumer(ConsumerRef),
}

impl Caller {
    /// This caller under the policy snapshot `now`: see [`ConsumerRef::under`].
    pub fn under(&self, now: &Arc<Snapshot>) -> Option<Self> {
        match self {
            Self::Operator => Some(Self::Operator),
            Self::Consumer(c) => c.under(now).map(Self::Consumer),
        }
    }

    /// Whether this caller may manage what team `team` owns through the management API:
    /// the operator, a global admin, or an admin of that team (`admin_teams`).
    pub fn may_manage(&self, team: &str) -> bool {
        match self {
            Self::Operator => true,
            Self::Consumer(c) => c.consumer().manages(team).is_some(),
        }
    }

    /// Whether this caller may use the admin endpoints (reload, purge).
    pub fn may_administer(&self) -> bool {
        match self {
            Self::Operator => true,
            Self::Consumer(c) => c.consumer().admin,
        }
    }
}

/// An authenticated consumer: an index into the snapshot it was found in. A reload in the
/// middle of a request cannot authenticate it under one policy and decide it under another.
#[derive(Clone)]
pub struct ConsumerRef {
    snapshot: Arc<Snapshot>,
    index: usize,
    /// The end of the certificate it was identified by: a held wait does not outlive it.
    until: Option<SystemTime>,
}

impl ConsumerRef {
    /// Consumer `name` of `snapshot`, if it has one (`keybroker resolve --as`).
    pub fn of(snapshot: Arc<Snapshot>, name: &str) -> Option<Self> {
        let index = snapshot
            .policy
            .consumers
            .iter()
            .position(|c| c.name == name)?;
        Some(Self {
            snapshot,
            index,
            until: None,
        })
    }

    /// The consumer whose bearer token is `token` in `snapshot` (a digest lookup in the
    /// identity index). For doors other than the main API: the Vault API, the egress proxy.
    pub fn by_token(snapshot: &Arc<Snapshot>, token: &str) -> Option<Self> {
        let index = snapshot.identities.by_token(token)?;
        Some(Self::at(snapshot, index))
    }

    /// Consumer number `index` of `snapshot` (from its identity index).
    fn at(snapshot: &Arc<Snapshot>, index: usize) -> Self {
        Self {
            snapshot: Arc::clone(snapshot),
            index,
            until: None,
        }
    }

    /// Identified by a certificate that ends at `until`.
    fn identified_until(mut self, until: Option<SystemTime>) -> Self {
        self.until = until;
        self
    }

    pub fn consumer(&self) -> &Consumer {
        &self.snapshot.policy.consumers[self.index]
    }

    pub fn name(&self) -> &str {
        &self.consumer().name
    }

    pub fn team(&self) -> &str {
        &self.consumer().team
    }

    /// The snapshot this consumer was authenticated under.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The same consumer under `now` (a newer policy), if it is there unchanged; `None` when
    /// it was removed or its entry changed (e.g. a rotated token): what it was authenticated
    /// as no longer holds.
    /// Past the end of the certificate it was identified by, it is no one (THREATS row 94).
    pub fn under(&self, now: &Arc<Snapshot>) -> Option<Self> {
        if self.until.is_some_and(|t| SystemTime::now() > t) {
            return None;
        }
        if Arc::ptr_eq(&self.snapshot, now) {
            return Some(self.clone());
        }
        let again = Self::of(Arc::clone(now), self.name())?.identified_until(self.until);
        (again.consumer() == self.consumer()).then_some(again)
    }
}

impl PartialEq for ConsumerRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.snapshot, &other.snapshot) && self.index == other.index
    }
}

impl Eq for ConsumerRef {}

impl std::fmt::Debug for ConsumerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Consumer({})", self.name())
    }
}
