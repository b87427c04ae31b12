//! The one place where a request is decided. `keybroker resolve` and `POST /v1/resolve`
//! both call [`Broker::resolve`]; later stages (identity, policy, cache, PEM) slot in here
//! and nowhere else.
//!
//! The path of a document: caller → prepare the document (find and check every reference) →
//! map each reference to a source and a read → the policy decides each read for a consumer →
//! read every distinct secret once, through the cache, concurrently → render all or nothing
//! into a zeroizing buffer → one audit line. Named credentials (`credentials.rs`) take the
//! same path with a credential decision instead of per-reference grants.

mod credentials;
mod ops;

pub use credentials::{
    CredentialError, CredentialInfo, CredentialSummary, Material, MaterialMetadata, RoleError,
    RoleRepair,
};
pub use ops::{PolicySummary, ReloadError, SourceHealth};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::audit::{Audit, AuditError, Record};
use crate::cache::{Fetched, SecretCache};
use crate::config::{Config, SourceConfig};
use crate::metrics::Metrics;
use crate::pem::{self, CheckedSecret, RepairKind};
use crate::policy::{Destination, Policy, PolicyError, Subject};
use crate::reference::{
    DocumentError, ExpandError, Format, Layout, Prepared, Reason, Reference, RenderError, Resolved,
    Target,
};
use crate::resilience::{CircuitBreaker, with_retries};
use crate::secret::SecretBuf;
use crate::source::{
    CcpSource, FileSource, ReadRequest, SecretSource, SourceError, VaultEnv, VaultSource,
};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// The CLI without `--as`, or the `serve --dev` token: keybroker's own source
    /// credentials, no access policy.
    Operator,
    /// An authenticated consumer of the policy (by name): every reference is decided by
    /// the policy, on every request.
    Consumer(String),
}

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
    pub source: String,
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
    #[error("the audit trail cannot be written; refusing to answer")]
    AuditUnavailable,
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
    sources: HashMap<String, Arc<dyn SecretSource>>,
    /// How PEM values of each source are treated (repair when not listed).
    pem_modes: HashMap<String, pem::Mode>,
    /// The access policy consumers are held to (none: only the operator may resolve).
    /// Swapped whole on reload; a request keeps the policy it started with.
    policy: ArcSwap<Policy>,
    /// Where the policy is reloaded from.
    policies_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<Audit>>,
    /// Verified secrets, shared by all callers; authorization is decided before it is asked.
    cache: Arc<SecretCache>,
    /// One circuit breaker per source.
    breakers: std::sync::Mutex<HashMap<String, Arc<CircuitBreaker>>>,
    default_source: Option<String>,
    ccp_source: Option<String>,
    limits: crate::config::LimitsConfig,
    /// Reads in flight per source, shared by every request (`[limits] source_concurrency`):
    /// one request's fan-out cannot flood a backend or take all of its connections.
    in_flight: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Audit lines of failed authentications, per peer address.
    refusals: crate::audit::RefusalBudget,
}

/// (source name, read) — one backend read, shared by every reference to the same secret.
type ReadKey = (String, ReadRequest);

impl Broker {
    pub fn from_config(config: &Config) -> Result<Self, BuildError> {
        Self::from_config_with_env(config, &VaultEnv::from_process())
    }

    /// As [`Broker::from_config`], with the `VAULT_*` environment given explicitly.
    pub fn from_config_with_env(config: &Config, env: &VaultEnv) -> Result<Self, BuildError> {
        let mut sources: Vec<Arc<dyn SecretSource>> = Vec::new();
        let mut pem_modes = HashMap::new();
        for s in &config.sources {
            let mode = match s {
                SourceConfig::File(f) => f.pem,
                SourceConfig::Vault(v) => v.pem,
                SourceConfig::Ccp(c) => c.pem,
            };
            pem_modes.insert(s.name().to_owned(), mode);
            match s {
                SourceConfig::File(f) => {
                    let source = FileSource::new(&f.name, &f.path).map_err(|source| {
                        BuildError::FileSource {
                            name: f.name.clone(),
                            path: f.path.display().to_string(),
                            source,
                        }
                    })?;
                    sources.push(Arc::new(source));
                }
                SourceConfig::Vault(v) => {
                    let source = VaultSource::new(v, env).map_err(|source| BuildError::Vault {
                        name: v.name.clone(),
                        source,
                    })?;
                    if tokio::runtime::Handle::try_current().is_ok() {
                        source.spawn_renewer();
                    }
                    sources.push(Arc::new(source));
                }
                SourceConfig::Ccp(c) => {
                    let source = CcpSource::new(c).map_err(|source| BuildError::Ccp {
                        name: c.name.clone(),
                        source,
                    })?;
                    sources.push(Arc::new(source));
                }
            }
        }
        let mut broker = Self::new(
            sources,
            config.default_source().map(str::to_owned),
            config.ccp_source().map(str::to_owned),
        );
        broker.pem_modes = pem_modes;
        broker.set_limits(config.limits.clone());
        broker.cache = Arc::new(SecretCache::new(&config.cache));
        if tokio::runtime::Handle::try_current().is_ok() {
            broker.cache.spawn_maintenance();
        }
        if let Some(dir) = &config.policies {
            let policy = crate::policy::load_checked(dir, &broker.known_sources())?;
            for w in &policy.warnings {
                tracing::warn!(warning = %w, "policy");
            }
            broker.policy = ArcSwap::from_pointee(policy);
            broker.policies_dir = Some(dir.clone());
        }
        if let Some(audit) = &config.audit {
            broker.audit = Some(Arc::new(Audit::open(audit)?));
        }
        Ok(broker)
    }

    pub fn new(
        sources: Vec<Arc<dyn SecretSource>>,
        default_source: Option<String>,
        ccp_source: Option<String>,
    ) -> Self {
        let sources: HashMap<String, Arc<dyn SecretSource>> = sources
            .into_iter()
            .map(|s| (s.name().to_owned(), s))
            .collect();
        let limits = crate::config::LimitsConfig::default();
        let in_flight = semaphores(&sources, &limits);
        Self {
            sources,
            pem_modes: HashMap::new(),
            policy: ArcSwap::from_pointee(Policy::default()),
            policies_dir: None,
            metrics: Arc::new(Metrics::default()),
            audit: None,
            cache: Arc::new(SecretCache::new(&crate::config::CacheConfig::default())),
            breakers: std::sync::Mutex::new(HashMap::new()),
            default_source,
            ccp_source,
            limits,
            in_flight,
            refusals: crate::audit::RefusalBudget::default(),
        }
    }

    /// The source names policies are checked against.
    pub fn known_sources(&self) -> crate::policy::KnownSources {
        crate::policy::KnownSources {
            names: self.sources.keys().cloned().collect(),
            default: self.default_source.clone(),
            ccp: self.ccp_source.clone(),
        }
    }

    /// Sets the `[limits]` (and sizes the per-source read semaphores by them).
    pub fn with_limits(mut self, limits: crate::config::LimitsConfig) -> Self {
        self.set_limits(limits);
        self
    }

    fn set_limits(&mut self, limits: crate::config::LimitsConfig) {
        self.in_flight = semaphores(&self.sources, &limits);
        self.limits = limits;
    }

    /// Replaces the access policy.
    pub fn with_policy(self, policy: Policy) -> Self {
        self.policy.store(Arc::new(policy));
        self
    }

    /// Writes an audit line per decision to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = Some(Arc::new(audit));
        self
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets how PEM values of source `name` are treated (default: repair).
    pub fn with_pem_mode(mut self, name: &str, mode: pem::Mode) -> Self {
        self.pem_modes.insert(name.to_owned(), mode);
        self
    }

    /// Expands every reference in `document`, or reports every one that fails. Writes one
    /// audit line either way.
    pub async fn resolve(
        &self,
        caller: &Caller,
        document: Document,
        layout: Layout,
        host: Option<&Destination>,
    ) -> Result<Resolution, ResolveError> {
        let started = Instant::now();
        let mut subjects = Vec::new();
        let result = self
            .resolve_unaudited(caller, document, layout, host, &mut subjects)
            .await;
        let (decision, reason) = match &result {
            Ok(_) => ("allowed", "allowed"),
            Err(ResolveError::Document(d)) => ("failed", d.code()),
            Err(ResolveError::Unresolved { errors, .. }) => {
                let denied = errors.iter().any(|e| e.reason == Reason::Denied);
                let first = errors.first().map_or("unresolved", |e| e.reason.code());
                if denied {
                    ("denied", "denied")
                } else {
                    ("failed", first)
                }
            }
            Err(ResolveError::AuditUnavailable) => ("failed", "audit_unavailable"),
            Err(ResolveError::TooManyReferences { .. } | ResolveError::TooManySites { .. }) => {
                ("failed", "too_many_references")
            }
            Err(ResolveError::TooLarge { .. }) => ("failed", "too_large"),
        };
        let (repairs, stale) = result.as_ref().map_or((Vec::new(), false), |r| {
            let lists = r.metadata.repairs.iter().map(|u| &u.repairs[..]);
            (repair_names(lists), r.metadata.stale)
        });
        let entry = AuditEntry {
            action: "resolve",
            caller: Some(caller),
            subjects,
            host,
            decision,
            reason,
            repairs,
            stale,
            suppressed: None,
            started,
        };
        // A resolution that cannot be audited is dropped (and wiped) unanswered.
        self.audit(entry)
            .await
            .map_err(|AuditRefused| ResolveError::AuditUnavailable)?;
        result
    }

    async fn resolve_unaudited(
        &self,
        caller: &Caller,
        document: Document,
        layout: Layout,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Resolution, ResolveError> {
        let policy = self.policy.load();
        let large = match &document {
            Document::JsonValue(_) => false,
            Document::Text { text, .. } => text.len() > LARGE_DOCUMENT,
        };
        let prepared = heavy(large, || match document {
            Document::JsonValue(v) => Prepared::json(v, layout),
            Document::Text { format, text } => match format {
                Format::Json => Prepared::json_text(&text, layout),
                Format::Yaml => Prepared::yaml(&text),
                Format::Text => Prepared::text(&text),
            },
        })?;
        let large = large || prepared.occurrences() > LARGE_OCCURRENCES;
        if prepared.occurrences() > self.limits.max_sites {
            return Err(ResolveError::TooManySites {
                limit: self.limits.max_sites,
            });
        }

        // Each distinct reference is mapped once; each distinct read happens once.
        let mut order: Vec<ReadKey> = Vec::new();
        let mut read_index: HashMap<ReadKey, usize> = HashMap::new();
        let mut plan: HashMap<&Reference, Result<usize, Reason>> = HashMap::new();
        for (reference, _) in prepared.references_unlocated() {
            if plan.contains_key(reference) {
                continue;
            }
            subjects.push(reference.to_string());
            let step = self.plan(&policy, caller, reference, host).map(|key| {
                *read_index.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    order.len() - 1
                })
            });
            plan.insert(reference, step);
            if order.len() > self.limits.max_references {
                return Err(ResolveError::TooManyReferences {
                    limit: self.limits.max_references,
                });
            }
        }
        // Through the cache; PEM values are repaired and verified before they are cached
        // (docs/DESIGN.md §4), so nothing unverified is ever written.
        let secrets: Vec<Result<Fetched, SourceError>> = self.read_all(&order).await;
        let lookup = |r: &Reference| -> Result<Resolved<'_>, Reason> {
            let index = plan.get(r).cloned().unwrap_or(Err(Reason::UnknownSource))?;
            let fetched = secrets[index].as_ref().map_err(source_reason)?;
            pick(r, &fetched.secret)
        };
        let limits = crate::reference::RenderLimits {
            max_answer_bytes: usize::try_from(self.limits.max_answer_bytes.0).unwrap_or(usize::MAX),
            max_errors: self.limits.max_errors,
        };
        let document = heavy(large, || prepared.render(&lookup, limits)).map_err(|e| match e {
            RenderError::Unresolved { errors, omitted } => {
                ResolveError::Unresolved { errors, omitted }
            }
            RenderError::TooLarge { limit } => ResolveError::TooLarge { limit },
        })?;
        let mut metadata = ResolveMetadata::default();
        for ((source, req), fetched) in order.iter().zip(&secrets) {
            let checked = fetched.as_ref().ok().map(|f| &*f.secret);
            metadata.stale |= fetched.as_ref().is_ok_and(|f| f.stale);
            metadata.secrets.push(SecretUse {
                source: source.clone(),
                path: req.path.to_string(),
                version: checked
                    .and_then(|c| c.secret.meta().version)
                    .or(req.version),
            });
            for (field, repairs) in checked.map_or(&[][..], |c| &c.repaired[..]) {
                metadata.repairs.push(RepairUse {
                    source: source.clone(),
                    path: req.path.to_string(),
                    field: field.clone(),
                    repairs: repairs.clone(),
                });
            }
        }
        Ok(Resolution {
            format: prepared.format(),
            document,
            metadata,
        })
    }

    /// The read of `r` for `caller`. For a consumer the policy decides first, on the source
    /// name as written (or the default/CCP source): an unknown source is denied like any
    /// other reference the consumer may not read, so no consumer learns which sources exist
    /// (THREATS row 33).
    fn plan(
        &self,
        policy: &Policy,
        caller: &Caller,
        r: &Reference,
        host: Option<&Destination>,
    ) -> Result<ReadKey, Reason> {
        if let Caller::Consumer(name) = caller {
            let source = self.source_of(r).map_err(|_| Reason::Denied)?;
            let request = request_of(r)?;
            authorize(policy, name, source, &request, host)?;
        }
        self.read_key(r)
    }

    /// The source a reference names, or the default (`$SECRET_` without `<source>:`) or CCP
    /// (`$SAFE_`) source; not checked to exist.
    fn source_of<'a>(&'a self, r: &'a Reference) -> Result<&'a str, Reason> {
        match &r.target {
            Target::Secret {
                source: Some(name), ..
            } => Ok(name),
            Target::Secret { source: None, .. } => self
                .default_source
                .as_deref()
                .ok_or(Reason::NoDefaultSource),
            Target::Ccp { .. } => self.ccp_source.as_deref().ok_or(Reason::UnknownSource),
        }
    }

    /// Which source and which read a reference needs (no policy: the operator's view, and
    /// the credentials', whose decision covers their own references).
    fn read_key(&self, r: &Reference) -> Result<ReadKey, Reason> {
        let source = self.source_of(r)?;
        if !self.sources.contains_key(source) {
            return Err(Reason::UnknownSource);
        }
        let request = request_of(r)?;
        check_lengths(&request.path)?;
        Ok((source.to_owned(), request))
    }

    /// Reads each key once, all concurrently; the answers are in the order of `keys`.
    async fn read_all(&self, keys: &[ReadKey]) -> Vec<Result<Fetched, SourceError>> {
        // One key (the common case): no task to spawn and join.
        if let [key] = keys {
            return vec![self.read_one(key.clone()).await];
        }
        let mut tasks = JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let read = self.read_one(key.clone());
            tasks.spawn(async move { (i, read.await) });
        }
        let mut out: Vec<Result<Fetched, SourceError>> = (0..keys.len())
            .map(|_| Err(SourceError::Unavailable("read task failed")))
            .collect();
        // A read task only panics on a bug; its key then stays "unavailable".
        while let Some(joined) = tasks.join_next().await {
            if let Ok((i, result)) = joined {
                out[i] = result;
            }
        }
        out
    }

    /// One read through the cache: on a miss, the source (with retries), then the PEM stage.
    pub(crate) fn read_one(
        &self,
        key: ReadKey,
    ) -> impl std::future::Future<Output = Result<Fetched, SourceError>> + Send + 'static {
        let source = Arc::clone(&self.sources[&key.0]);
        let breaker = self.breaker(&key.0);
        let in_flight = Arc::clone(&self.in_flight[&key.0]);
        let cache = Arc::clone(&self.cache);
        let metrics = Arc::clone(&self.metrics);
        let options = pem::Options {
            mode: self.pem_modes.get(&key.0).copied().unwrap_or_default(),
            ..pem::Options::default()
        };
        async move {
            let request = key.1.clone();
            let name = key.0.clone();
            let missed = std::sync::atomic::AtomicBool::new(false);
            let fetch = || async {
                missed.store(true, std::sync::atomic::Ordering::Relaxed);
                let started = Instant::now();
                // Each attempt holds a permit only while it talks to the source.
                let attempt = || async {
                    let _permit = in_flight.acquire().await;
                    source.read(&request).await
                };
                let read = breaker
                    .call(|| with_retries(RETRY_ATTEMPTS, RETRY_BASE, attempt))
                    .await;
                let outcome = match &read {
                    Ok(_) => "ok",
                    Err(e) => source_reason(e).code(),
                };
                metrics.source_read(&name, outcome, started.elapsed());
                let checked = pem::check_secret(&read?, &options);
                for (_, kinds) in &checked.repaired {
                    for k in kinds {
                        metrics.repaired(pem::repair_name(*k));
                    }
                }
                Ok(checked)
            };
            let fetched = cache.get_or_fetch(key, fetch).await;
            metrics.cache(!missed.load(std::sync::atomic::Ordering::Relaxed));
            fetched
        }
    }

    /// The circuit breaker of source `name` (made on first use).
    fn breaker(&self, name: &str) -> Arc<CircuitBreaker> {
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            all.entry(name.to_owned()).or_insert_with(|| {
                Arc::new(CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOL_DOWN))
            }),
        )
    }

    /// The cache, for purging (admin) and inspection.
    pub fn cache(&self) -> &SecretCache {
        &self.cache
    }
}

/// The policy's decision for one read by consumer `name`, before anything is read: a denial
/// never depends on whether the secret (or its source) exists.
fn authorize(
    policy: &Policy,
    name: &str,
    source: &str,
    request: &ReadRequest,
    host: Option<&Destination>,
) -> Result<(), Reason> {
    let subject = Subject::Reference {
        source,
        path: &request.path,
    };
    let decision = policy.decide(name, subject, host);
    if decision.allowed {
        Ok(())
    } else {
        tracing::debug!(consumer = %name, source = %source, reason = decision.reason, "reference denied");
        Err(Reason::Denied)
    }
}

/// The read a reference asks for (path and version), whatever its source.
fn request_of(r: &Reference) -> Result<ReadRequest, Reason> {
    match &r.target {
        Target::Secret { path, version, .. } => Ok(ReadRequest {
            path: path.clone(),
            version: *version,
        }),
        Target::Ccp { safe, object } => Ok(ReadRequest {
            path: crate::reference::SecretPath::from_segments([safe.as_str(), object])
                .map_err(Reason::Syntax)?,
            version: None,
        }),
    }
}

/// Names longer than any backend takes are the caller's failure, found before any source
/// call (a source would answer ENAMETOOLONG, 414 or a URI error — THREATS row 20).
fn check_lengths(path: &crate::reference::SecretPath) -> Result<(), Reason> {
    use crate::source::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES};
    let segments = path.segments();
    if segments.iter().any(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Err(Reason::InvalidReference(
            "a path segment is longer than 255 bytes",
        ));
    }
    let total: usize = segments.iter().map(|s| s.len() + 1).sum();
    if total > MAX_PATH_BYTES + 1 {
        return Err(Reason::InvalidReference(
            "the path is longer than 1024 bytes",
        ));
    }
    Ok(())
}

/// One semaphore per source, of `source_concurrency` permits.
fn semaphores(
    sources: &HashMap<String, Arc<dyn SecretSource>>,
    limits: &crate::config::LimitsConfig,
) -> HashMap<String, Arc<tokio::sync::Semaphore>> {
    sources
        .keys()
        .map(|name| {
            let permits = limits.source_concurrency.max(1);
            (name.clone(), Arc::new(tokio::sync::Semaphore::new(permits)))
        })
        .collect()
}

/// The names of the repairs in `lists`, for the audit trail.
fn repair_names<'a>(lists: impl Iterator<Item = &'a [RepairKind]>) -> Vec<&'static str> {
    lists
        .flat_map(|l| l.iter().map(|k| pem::repair_name(*k)))
        .collect()
}

/// The audit line could not be written and the audit trail is fail-closed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the audit trail cannot be written; refusing to answer")]
pub struct AuditRefused;

/// What one audit line says (see [`Broker::audit`]).
pub(crate) struct AuditEntry<'a> {
    pub action: &'static str,
    /// `None`: the caller could not be authenticated.
    pub caller: Option<&'a Caller>,
    pub subjects: Vec<String>,
    pub host: Option<&'a Destination>,
    pub decision: &'static str,
    pub reason: &'a str,
    pub repairs: Vec<&'static str>,
    pub stale: bool,
    pub started: Instant,
    /// On a summary line: failed authentications of one peer that were not written.
    pub suppressed: Option<u64>,
}

impl Broker {
    /// Writes one audit line; `Err` only when it failed and the audit is fail-closed.
    pub(crate) async fn audit(&self, e: AuditEntry<'_>) -> Result<(), AuditRefused> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let policy = self.policy.load();
        let (consumer, team) = match e.caller {
            None => ("anonymous", None),
            Some(Caller::Operator) => ("operator", None),
            Some(Caller::Consumer(name)) => (
                name.as_str(),
                policy
                    .consumers
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| c.team.as_str()),
            ),
        };
        let (subjects, subjects_omitted, subjects_digest) = audit.subjects(&e.subjects);
        let record = Record {
            time: crate::audit::now_rfc3339(),
            action: e.action,
            consumer,
            team,
            subjects,
            subjects_omitted,
            subjects_digest,
            host: e.host.map(|h| audit.identifier(&h.to_string())),
            decision: e.decision,
            reason: e.reason,
            repairs: e.repairs,
            stale: e.stale,
            latency_us: u64::try_from(e.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            suppressed: e.suppressed,
        };
        match audit.write(&record).await {
            Ok(()) => Ok(()),
            Err(err) => {
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

/// Documents longer than this are prepared and rendered where they cannot hold up a runtime
/// worker (THREATS row 22: two large requests must not stall `/healthz`) …
const LARGE_DOCUMENT: usize = 64 << 10;
/// … and so are documents with more reference occurrences than this.
const LARGE_OCCURRENCES: usize = 1000;

/// Runs CPU-heavy `work` (when `large`) with the runtime told to move this worker's other
/// tasks elsewhere meanwhile; inline otherwise, and on a current-thread runtime, which has no
/// other worker to move them to.
fn heavy<T>(large: bool, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if large && multi {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// After this many consecutive failed (retried) reads a source's circuit opens …
const BREAKER_THRESHOLD: u32 = 5;
/// … for this long.
const BREAKER_COOL_DOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// Transient source failures are retried this many times in all …
const RETRY_ATTEMPTS: u32 = 3;
/// … starting from this delay, doubled each time, with jitter.
const RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(100);

/// The part of a secret a reference asks for; a rejected PEM value is an error, also when
/// it is one field of a whole secret.
fn pick<'s>(r: &Reference, checked: &'s CheckedSecret) -> Result<Resolved<'s>, Reason> {
    let field = match (&r.target, r.field.as_deref()) {
        (Target::Secret { .. }, None) => {
            if let Some(e) = checked.rejected.values().next() {
                return Err(Reason::PemRejected(e.code()));
            }
            return Ok(Resolved::Whole(&checked.secret));
        }
        (Target::Ccp { .. }, None) => "Content",
        (_, Some(f)) => f,
    };
    if let Some(e) = checked.rejected.get(field) {
        return Err(Reason::PemRejected(e.code()));
    }
    checked
        .secret
        .field(field)
        .map(Resolved::Value)
        .ok_or(Reason::FieldNotFound)
}

fn source_reason(e: &SourceError) -> Reason {
    match e {
        SourceError::NotFound => Reason::NotFound,
        SourceError::Denied => Reason::SourceDenied,
        SourceError::Unavailable(_) | SourceError::RateLimited { .. } => Reason::SourceUnavailable,
        SourceError::Invalid(why) => Reason::InvalidReference(why),
        SourceError::Unsupported(why) => Reason::Unsupported(why),
        SourceError::Malformed(why) => Reason::Malformed(why),
        SourceError::Ambiguous => Reason::Ambiguous,
    }
}
