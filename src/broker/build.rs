//! Building a broker: sources from the configuration, the cache, the policy checked
//! against the source names, the audit trail, the per-source read semaphores.

use super::read::{BREAKER_COOL_DOWN, BREAKER_THRESHOLD};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Broker, BuildError, Caller, SourceEntry};
use crate::audit::Audit;
use crate::cache::SecretCache;
use crate::config::{Config, SourceConfig};
use crate::identity::Snapshot;
use crate::metrics::Metrics;
use crate::pem;
use crate::policy::Policy;
use crate::resilience::CircuitBreaker;
use crate::source::{CcpSource, FileSource, SecretSource, VaultEnv, VaultSource};

/// A source's `keep_alive` bounded by the cache's TTL too (the source bounds it by its own):
/// a connection closes before an answer it carried leaves the cache.
fn within_cache(
    keep_alive: Option<crate::config::Dur>,
    config: &Config,
) -> Option<crate::config::Dur> {
    let age =
        crate::source::connection_max_age(keep_alive.map(|d| d.0), &[Some(config.cache.ttl.0)]);
    Some(crate::config::Dur(age))
}

impl Broker {
    pub fn from_config(config: &Config) -> Result<Self, BuildError> {
        Self::from_config_with_env(config, &VaultEnv::from_process())
    }

    /// As [`Broker::from_config`], with the `VAULT_*` environment given explicitly.
    pub fn from_config_with_env(config: &Config, env: &VaultEnv) -> Result<Self, BuildError> {
        let Built {
            mut sources,
            pem_modes,
            vaults,
            signers,
        } = build_sources(config, env)?;
        let store = build_store(config, env, &vaults, &mut sources)?;
        let mut broker = Self::new(
            sources,
            config.default_source().map(str::to_owned),
            config.ccp_source().map(str::to_owned),
        );
        for (name, mode) in pem_modes {
            if let Some(entry) = broker.sources.get_mut(&name) {
                entry.pem = mode;
            }
        }
        broker.set_limits(config.limits.clone());
        broker.expiry = config.expiry.clone();
        broker.server_cert = config.server.tls_cert.clone();
        broker.cache = Arc::new(SecretCache::new(&config.cache));
        broker.store = store;
        broker.signers = signers.into_iter().collect();
        broker.routes = crate::policy::KnownSources::of(config);
        if let Some(dir) = &config.policies {
            broker.policies_dir = Some(dir.clone());
            let policy = broker.load_policy(None)?;
            for w in &policy.warnings {
                tracing::warn!(warning = %w, "policy");
            }
            broker.report_quarantined(&policy);
            broker.policy = ArcSwap::from_pointee(Snapshot::new(policy));
        }
        if let Some(audit) = &config.audit {
            broker.audit = Some(Arc::new(Audit::open(audit)?));
        }
        if let Some(notify) = &config.notify {
            broker.notifier = Some(crate::notify::Notifier::new(notify)?);
        }
        Ok(broker)
    }

    pub fn new(
        sources: Vec<Arc<dyn SecretSource>>,
        default_source: Option<String>,
        ccp_source: Option<String>,
    ) -> Self {
        let limits = crate::config::LimitsConfig::default();
        let sources = sources
            .into_iter()
            .map(|source| {
                let entry = SourceEntry {
                    name: Arc::from(source.name()),
                    source: Arc::clone(&source),
                    pem: pem::Mode::default(),
                    breaker: Arc::new(CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOL_DOWN)),
                    in_flight: semaphore(&limits),
                    answered: Arc::default(),
                    refused: Arc::default(),
                };
                (source.name().to_owned(), entry)
            })
            .collect();
        Self {
            sources,
            policy: ArcSwap::from_pointee(Snapshot::default()),
            policies_dir: None,
            metrics: Arc::new(Metrics::default()),
            audit: None,
            cache: Arc::new(SecretCache::new(&crate::config::CacheConfig::default())),
            notifier: None,
            store: None,
            routes: crate::policy::KnownSources {
                names: std::collections::BTreeSet::new(),
                default: default_source,
                ccp: ccp_source,
                store: None,
                issuing: Default::default(),
                signing: Default::default(),
                pki_names: Default::default(),
            },
            limits,
            refusals: crate::audit::RefusalBudget::default(),
            expiry: crate::config::ExpiryConfig::default(),
            expiry_state: super::expiry::ExpiryState::default(),
            server_cert: None,
            verdicts: super::verdict::Verdicts::default(),
            signers: std::collections::HashMap::new(),
            signed: super::sign::Budget::default(),
            load_cache: std::sync::Mutex::default(),
        }
    }

    /// The folders the policy is loaded from: the policy folder, then the store's
    /// definitions.
    /// `changed`: every file changed since the last load, when known (see
    /// `policy::load_checked_dirs_cached`).
    pub(super) fn load_policy(
        &self,
        changed: Option<&[std::path::PathBuf]>,
    ) -> Result<crate::policy::Policy, crate::policy::PolicyError> {
        let dirs: Vec<std::path::PathBuf> = self.policies_dir.iter().cloned().collect();
        let store = self
            .store
            .as_ref()
            .map(|s| s.definitions_dirs())
            .unwrap_or_default();
        let mut cache = self
            .load_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::policy::load_checked_dirs_cached(
            &dirs,
            &store,
            &self.known_sources(),
            &mut cache,
            changed,
        )
    }

    /// What policies are checked against: the configuration's facts ([`KnownSources::of`]),
    /// named by the sources this broker holds.
    ///
    /// [`KnownSources::of`]: crate::policy::KnownSources::of
    pub fn known_sources(&self) -> crate::policy::KnownSources {
        crate::policy::KnownSources {
            names: self.sources.keys().cloned().collect(),
            ..self.routes.clone()
        }
    }

    /// Sets the `[limits]` (and sizes the per-source read semaphores by them).
    pub fn with_limits(mut self, limits: crate::config::LimitsConfig) -> Self {
        self.set_limits(limits);
        self
    }

    pub(super) fn set_limits(&mut self, limits: crate::config::LimitsConfig) {
        for entry in self.sources.values_mut() {
            entry.in_flight = semaphore(&limits);
        }
        self.limits = limits;
    }

    /// Replaces the access policy.
    pub fn with_policy(self, policy: Policy) -> Self {
        self.policy.store(Arc::new(Snapshot::new(policy)));
        self
    }

    /// Writes an audit line per decision to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = Some(Arc::new(audit));
        self
    }

    /// The fresh-for of cached secrets without a TTL of their own (`[cache] ttl`).
    pub fn cache_ttl(&self) -> std::time::Duration {
        self.cache.ttl()
    }

    /// Changes whenever a cached secret's content changed or the policy was reloaded: what
    /// blocking queries wait on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cache.subscribe()
    }

    /// The policy snapshot in force now.
    /// `[store]`: where the management plane keeps what it creates (its definitions are
    /// part of every policy load).
    pub fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.store.clone()
    }

    pub fn policy(&self) -> Arc<Snapshot> {
        self.policy.load_full()
    }

    /// The policy a request of `caller` is decided under: the snapshot a consumer was
    /// authenticated under, the current one for the operator.
    /// `caller` under the policy in force now — for a held blocking query's re-asks, so a
    /// reload applies to it (a removed or changed consumer ends the wait unauthenticated).
    pub fn caller_now(&self, caller: &Caller) -> Result<Caller, crate::identity::AuthError> {
        caller
            .under(&self.policy.load_full())
            .ok_or(crate::identity::AuthError::Changed)
    }

    pub(super) fn snapshot(&self, caller: &Caller) -> Arc<Snapshot> {
        match caller {
            Caller::Consumer(c) => Arc::clone(c.snapshot()),
            Caller::Operator => self.policy.load_full(),
        }
    }

    /// Counters for `/metrics`.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The resource limits in force (`[limits]`).
    pub fn limits(&self) -> &crate::config::LimitsConfig {
        &self.limits
    }

    /// The counters, shared (for the service around every door).
    pub(crate) fn shared_metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Sets how PEM values of source `name` are treated (default: repair).
    pub fn with_pem_mode(mut self, name: &str, mode: pem::Mode) -> Self {
        if let Some(entry) = self.sources.get_mut(name) {
            entry.pem = mode;
        }
        self
    }

    /// The cache, for purging (admin) and inspection.
    pub fn cache(&self) -> &SecretCache {
        &self.cache
    }
}

/// A source's read permits: `source_concurrency`, shared fairly between teams.
fn semaphore(limits: &crate::config::LimitsConfig) -> Arc<super::fair::FairPermits> {
    super::fair::FairPermits::new(limits.source_concurrency, limits.team_share)
}

/// The configured sources, built.
struct Built {
    sources: Vec<Arc<dyn SecretSource>>,
    /// Each source's PEM mode.
    pem_modes: Vec<(String, crate::config::PemMode)>,
    /// The vault sources by name, for pki profiles and the store.
    vaults: Vec<(String, Arc<VaultSource>)>,
    /// The pki sources by name, for signing.
    signers: Vec<(String, Arc<crate::source::PkiSource>)>,
}

/// The configured sources, built (a pki source after the vault source it issues through).
fn build_sources(config: &Config, env: &VaultEnv) -> Result<Built, BuildError> {
    let mut sources: Vec<Arc<dyn SecretSource>> = Vec::new();
    let mut pem_modes = Vec::new();
    let mut vaults: Vec<(String, Arc<VaultSource>)> = Vec::new();
    let mut pkis = Vec::new();
    let mut signers = Vec::new();
    for s in &config.sources {
        let mode = match s {
            SourceConfig::File(f) => f.pem,
            SourceConfig::Vault(v) => v.pem,
            SourceConfig::Ccp(c) => c.pem,
            SourceConfig::Pki(_) => crate::config::PemMode::default(),
        };
        pem_modes.push((s.name().to_owned(), mode));
        match s {
            SourceConfig::File(f) => {
                let source =
                    FileSource::new(&f.name, &f.path).map_err(|source| BuildError::FileSource {
                        name: f.name.clone(),
                        path: f.path.display().to_string(),
                        source,
                    })?;
                sources.push(Arc::new(source));
            }
            SourceConfig::Vault(v) => {
                let v = &crate::config::VaultSourceConfig {
                    keep_alive: within_cache(v.keep_alive, config),
                    ..v.clone()
                };
                let source = VaultSource::new(v, env).map_err(|source| BuildError::Vault {
                    name: v.name.clone(),
                    source,
                })?;
                let source = Arc::new(source);
                vaults.push((v.name.clone(), Arc::clone(&source)));
                sources.push(source);
            }
            // Built once every vault source is: each issues through one.
            SourceConfig::Pki(p) => pkis.push(p),
            SourceConfig::Ccp(c) => {
                let c = &crate::config::CcpSourceConfig {
                    keep_alive: within_cache(c.keep_alive, config),
                    ..c.clone()
                };
                let source = CcpSource::new(c).map_err(|source| BuildError::Ccp {
                    name: c.name.clone(),
                    source,
                })?;
                sources.push(Arc::new(source));
            }
        }
    }
    for p in pkis {
        let vault = vaults
            .iter()
            .find(|(n, _)| *n == p.vault)
            .map(|(_, s)| Arc::clone(s))
            .ok_or_else(|| BuildError::PkiVault(p.name.clone()))?;
        let pki = Arc::new(crate::source::PkiSource::new(p, vault));
        signers.push((p.name.clone(), Arc::clone(&pki)));
        sources.push(pki);
    }
    Ok(Built {
        sources,
        pem_modes,
        vaults,
        signers,
    })
}

/// The management store, when configured: its material is one more file source (pushed to
/// `sources`), its definitions one more policy folder.
fn build_store(
    config: &Config,
    env: &VaultEnv,
    vaults: &[(String, Arc<VaultSource>)],
    sources: &mut Vec<Arc<dyn SecretSource>>,
) -> Result<Option<Arc<crate::store::Store>>, BuildError> {
    Ok(match &config.store {
        None => None,
        Some(st) => {
            let local = crate::store::FileStore::open(&st.path)?;
            let store = match (st.kind, st.source.as_deref()) {
                (crate::config::StoreKind::Vault, Some(name)) => {
                    let source = vaults
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| Arc::clone(s))
                        .ok_or_else(|| BuildError::StoreSource(name.to_owned()))?;
                    // Its own login: the same vault, the store's credentials.
                    let writer = match (&st.auth, config.vault_source(name)) {
                        (Some(auth), Some(cfg)) => {
                            let cfg = crate::config::VaultSourceConfig {
                                name: format!("{name} (store)"),
                                auth: auth.clone(),
                                keep_alive: within_cache(cfg.keep_alive, config),
                                ..cfg.clone()
                            };
                            let writer = VaultSource::new(&cfg, env).map_err(|source| {
                                BuildError::Vault {
                                    name: cfg.name.clone(),
                                    source,
                                }
                            })?;
                            Arc::new(writer)
                        }
                        _ => source,
                    };
                    crate::store::Store::vault(
                        local,
                        crate::store::VaultStore::new(writer, name, &st.prefix),
                    )
                }
                _ => crate::store::Store::file(local),
            }
            .with_quota(st.quota);
            if let Some(dir) = store.material_dir() {
                let source = FileSource::new(crate::store::SOURCE, &dir).map_err(|source| {
                    BuildError::FileSource {
                        name: crate::store::SOURCE.to_owned(),
                        path: dir.display().to_string(),
                        source,
                    }
                })?;
                sources.push(Arc::new(source));
            }
            Some(Arc::new(store))
        }
    })
}
