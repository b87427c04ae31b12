//! The one place where a request is decided. Every door reads through [`Broker::read`] (an
//! [`Ask`]: who, through which door, towards where, what); identity, policy, cache and PEM
//! stages slot in here and nowhere else.
//!
//! The path of a document: caller → prepare the document (find and check every reference) →
//! map each reference to a source and a read → the policy decides each read for a consumer →
//! read every distinct secret once, through the cache, concurrently → render all or nothing
//! into a zeroizing buffer → one audit line. Named credentials (`credentials.rs`) take the
//! same path with a credential decision instead of per-reference grants.
//!
//! The files follow that path: `build.rs` (sources, cache, policy, audit from the
//! configuration), `resolve.rs` (the pipeline), `plan.rs` (decision, then source and read),
//! `read.rs` (cache, permit, breaker, retries, PEM stage), `audit.rs` (the audit line),
//! `credentials.rs`, `ops.rs` (reload, readiness, purge). This file holds the types.

mod ask;
mod audit;
mod build;
mod credentials;
mod event;
mod expiry;
mod failure;
mod fair;
mod ops;
mod plan;
mod read;
mod renew;
mod resolve;
mod seen;
mod sign;
mod single;
mod verdict;

pub use ask::{Ask, Expand};
pub(crate) use ask::{CredentialRead, ReadFailure};
pub(crate) use audit::AuditEntry;
pub(crate) use audit::{AuditMemo, AuditRefused};
pub(crate) use credentials::{CredentialError, CredentialInfo, Material, RoleError};
pub use failure::Failure;
pub(crate) use ops::{Readiness, ReloadError};
pub(crate) use read::source_reason;
pub(crate) use renew::{RenewError, Renewal, SelfRenew};
use resolve::{pick, repair_names};
pub use sign::SIGNS_PER_PERIOD;
pub(crate) use sign::{SignError, SignRead};
pub(crate) use single::{SecretList, SecretRead};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use serde::Serialize;
use serde_json::Value;

use crate::audit::{Audit, AuditError};
use crate::cache::SecretCache;
use crate::identity::Snapshot;
pub use crate::identity::{Caller, ConsumerRef};
use crate::metrics::Metrics;
use crate::pem::{self, RepairKind};
use crate::policy::PolicyError;
use crate::reference::{DocumentError, ExpandError, Format};
use crate::resilience::CircuitBreaker;
use crate::secret::SecretBuf;
use crate::source::{ReadRequest, SecretSource};

/// A document to expand, as received.
#[derive(Debug)]
pub enum Document {
    /// A JSON value already parsed (the `document` of a `/v1/resolve` body).
    JsonValue(Value),
    /// Text in the given format (a file, or a YAML/text `document` string).
    Text { format: Format, text: String },
}

/// The expanded document and what is known about how it was made.
#[derive(Debug)]
pub struct Resolution {
    pub format: Format,
    /// JSON (when `format` is json) or the expanded text.
    pub document: SecretBuf,
    pub metadata: ResolveMetadata,
}

/// Facts about a resolution; never a value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResolveMetadata {
    /// True when any value came from a cache past its TTL (set from issue 8 on).
    pub stale: bool,
    /// PEM repairs applied to the values used, per field.
    pub repairs: Vec<RepairUse>,
    /// Each distinct secret read, in first-use order.
    pub secrets: Vec<SecretUse>,
}

/// The PEM repairs applied to one field of one secret.
#[derive(Clone, Debug, Serialize)]
pub struct RepairUse {
    pub source: String,
    pub path: String,
    pub field: String,
    pub repairs: Vec<RepairKind>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretUse {
    /// The source's name as configured (shared with the source table).
    pub source: Arc<str>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The references that failed, with location and reason: the first `[limits]
    /// max_errors` in document order, and how many more.
    #[error("{} reference(s) could not be resolved", .errors.len() + .omitted)]
    Unresolved {
        errors: Vec<ExpandError>,
        omitted: usize,
    },
    /// The audit line could not be written and `fail_closed` is set.
    #[error(transparent)]
    AuditUnavailable(#[from] crate::broker::AuditRefused),
    /// The document needs more distinct reads than `[limits] max_references`; refused before
    /// any read.
    #[error("the document needs more than {limit} distinct secrets ([limits] max_references)")]
    TooManyReferences { limit: usize },
    /// The document holds more reference occurrences than `[limits] max_sites`.
    #[error("the document holds more than {limit} references ([limits] max_sites)")]
    TooManySites { limit: usize },
    /// The expanded answer would be larger than `[limits] max_answer_bytes`; refused before
    /// anything was reserved.
    #[error("the expanded answer would be larger than {limit} bytes ([limits] max_answer_bytes)")]
    TooLarge { limit: usize },
    /// A single read (`SecretRead`): the secret is not there. A document's missing
    /// reference is [`ResolveError::Unresolved`] (a document is not a resource).
    #[error("the secret was not found")]
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid policies:\n{0}")]
    Policy(#[from] PolicyError),
    #[error("source `{name}`: {kind} sources are not available in this version of keybroker yet")]
    SourceNotAvailable { name: String, kind: &'static str },
    #[error("source `{name}`: {source}")]
    Ccp {
        name: String,
        source: crate::source::CcpConfigError,
    },
    #[error("source `{name}`: {source}")]
    Vault {
        name: String,
        source: crate::source::VaultConfigError,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("pki source `{0}`: its `vault` is not a vault source")]
    PkiVault(String),
    #[error("[store] source `{0}` is not a vault source")]
    StoreSource(String),
    #[error("source `{name}`: cannot open {path}: {source}")]
    FileSource {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// Holds the sources; decides and serves requests. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Broker {
    /// Every configured source with what is kept per source, by name.
    sources: HashMap<String, SourceEntry>,
    /// The access policy consumers are held to (none: only the operator may resolve).
    /// Swapped whole on reload; a request keeps the policy it started with.
    policy: ArcSwap<Snapshot>,
    /// Where the policy is reloaded from.
    policies_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<Audit>>,
    /// Verified secrets, shared by all callers; authorization is decided before it is asked.
    cache: Arc<SecretCache>,
    /// `[store]`: where the management API keeps what it creates.
    store: Option<Arc<crate::store::Store>>,
    /// `[notify]`: where expiry and rejection events are pushed, besides the audit trail.
    notifier: Option<crate::notify::Notifier>,
    /// Where references without a source name go (default and CCP sources).
    routes: crate::policy::KnownSources,
    limits: crate::config::LimitsConfig,
    /// Audit lines of failed authentications, per peer address.
    refusals: crate::audit::RefusalBudget,
    expiry: crate::config::ExpiryConfig,
    expiry_state: expiry::ExpiryState,
    /// The server's own certificate file, for the expiry sweep.
    server_cert: Option<PathBuf>,
    /// Whole-credential verdicts, one per cache fill of the credential's values.
    verdicts: verdict::Verdicts,
    /// The pki sources, by name: those of their profiles that sign CSRs (`issue = "sign"`).
    signers: HashMap<String, Arc<crate::source::PkiSource>>,
    /// Signatures made per (consumer, source, profile, period): the signing budget.
    signed: sign::Budget,
    /// What the last policy load read and parsed: a reload parses only what changed.
    load_cache: std::sync::Mutex<crate::policy::LoadCache>,
}

/// One configured source and everything the broker keeps for it.
#[derive(Debug)]
struct SourceEntry {
    /// The source's name, shared by every cache key of its secrets.
    name: Arc<str>,
    source: Arc<dyn SecretSource>,
    /// How its PEM values are treated.
    pem: pem::Mode,
    /// Opens after repeated outages; `/readyz` reports it.
    breaker: Arc<CircuitBreaker>,
    /// Whether the source answered once (start-up check or any read): `/readyz`.
    answered: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the source's last answer refused keybroker's own credentials: `/readyz` and
    /// `keybroker_source_available` report it unavailable until a read succeeds again.
    refused: Arc<std::sync::atomic::AtomicBool>,
    /// Reads in flight, shared by every request (`[limits] source_concurrency`): one request's
    /// fan-out cannot flood a backend or take all of its connections.
    in_flight: Arc<fair::FairPermits>,
}

/// (source name, read) — one backend read, shared by every reference to the same secret.
type ReadKey = (Arc<str>, ReadRequest);
