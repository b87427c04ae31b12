//! The secret cache (docs/DESIGN.md §8): moka, keyed by (source, path, version), holding
//! secrets *after* PEM verification so a hit costs neither a backend call nor a key check.
//!
//! - Concurrent misses for one key make exactly one source call (`try_get_with`).
//! - An entry is fresh for its TTL (the source's `ttl`, else `[cache] ttl`); moka keeps it
//!   `max_stale` longer, and during that time it is served — flagged stale — only when the
//!   source is unavailable (stale-if-error).
//! - A refresh past the TTL is single-flight too: concurrent callers of a stale key share one
//!   source call (THREATS row 28: the moment a hot key expires is when every gateway asks).
//! - "Not found" and "denied by the source" are remembered for `negative_ttl`, so repeated
//!   reads the backend refuses cost it nothing; other failures are never cached.
//! - Capacity is by weight (bytes of names and values); a maintenance task runs moka's pending
//!   work every second, so expired secrets are dropped — and zeroized — on time.
//! - Refresh ahead: the first *hit* of an entry (it is in use: read again after the read that
//!   fetched it) hands the caller a [`RefreshAhead`] ticket, one per entry and at most
//!   [`MAX_PENDING_REFRESHES`] waiting at once; the broker runs it, which re-reads the secret at
//!   a jittered 75–90 % of the TTL, so a secret in use never misses (docs/DESIGN.md §15). A
//!   secret read once (a bulk load) costs no task.
//! - Change: every entry carries a digest of its content; a store whose digest differs from
//!   the entry it replaces bumps [`SecretCache::subscribe`]'s generation, which wakes blocking
//!   queries.
//! - Authorization is not here: the broker decides every request before it asks the cache.
//!
//! - Pinned entries (a PKI period's certificate) are also kept beside moka until their
//!   freshness ends and put back on a miss: a full cache never evicts one (another team's
//!   fills cannot cause a re-issue).
//!
//! **Invariant:** values are `Arc<CheckedSecret>`; the last reference dropping wipes them.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Freshness is measured on tokio's clock (the same as std's outside paused tests).
type Clock = tokio::time::Instant;

use moka::Expiry;
use secrecy::ExposeSecret;

use crate::config::CacheConfig;
use crate::pem::CheckedSecret;
use crate::source::{ReadRequest, SourceError};

/// (source name, read).
pub(crate) type CacheKey = (std::sync::Arc<str>, ReadRequest);

/// What a lookup returns.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub secret: Arc<CheckedSecret>,
    /// Served past its TTL because the source is unavailable.
    pub stale: bool,
    /// Set for the first read of a fresh entry: the caller should run it (in the background).
    pub refresh: Option<RefreshAhead>,
}

/// A refresh of one entry, due at a jittered point before its TTL ends. Running it after the
/// entry was replaced, purged or evicted does nothing.
#[derive(Clone, Debug)]
pub struct RefreshAhead {
    key: CacheKey,
    entry: Weak<Entry>,
    at: Clock,
    /// The cache's count of waiting tickets, given back when this one has run.
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl RefreshAhead {
    /// The entry's key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
}

#[derive(Debug)]
struct Entry {
    /// `Err`: the source said "not found" or "denied" (a negative entry).
    secret: Result<Arc<CheckedSecret>, SourceError>,
    fetched: Clock,
    fresh_for: Duration,
    /// SHA-256 of what a reader would see (fields and values, rejected fields, version).
    digest: [u8; 32],
    /// When (after `fetched`) the refresh ahead is due.
    refresh_after: Duration,
    /// Whether a [`RefreshAhead`] was handed out for this entry (set from the start for a
    /// pinned value: it is never refreshed ahead).
    claimed: std::sync::atomic::AtomicBool,
    /// A pinned value (a PKI period's certificate): kept apart from the weighted cache until
    /// its freshness ends, so no fill — another team's included — can evict it.
    pinned: bool,
}

impl Entry {
    fn fresh(&self) -> bool {
        self.fetched.elapsed() < self.fresh_for
    }

    fn answer(&self, stale: bool) -> Result<Fetched, SourceError> {
        match &self.secret {
            Ok(s) => Ok(Fetched {
                secret: Arc::clone(s),
                stale,
                refresh: None,
            }),
            Err(e) => Err(e.clone()),
        }
    }

    /// A fresh hit; the first one of a found entry carries its refresh ticket (while fewer
    /// than [`MAX_PENDING_REFRESHES`] wait).
    fn answer_hit(
        self: &Arc<Self>,
        key: &CacheKey,
        pending: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<Fetched, SourceError> {
        use std::sync::atomic::Ordering;
        let mut fetched = self.answer(false)?;
        if self.claimed.load(Ordering::Relaxed) {
            return Ok(fetched);
        }
        let room = pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_PENDING_REFRESHES).then_some(n + 1)
            })
            .is_ok();
        if !room {
            return Ok(fetched);
        }
        if self.claimed.swap(true, Ordering::Relaxed) {
            // Another hit claimed it in between.
            pending.fetch_sub(1, Ordering::Relaxed);
            return Ok(fetched);
        }
        fetched.refresh = Some(RefreshAhead {
            key: key.clone(),
            entry: Arc::downgrade(self),
            at: self.fetched + self.refresh_after,
            pending: Arc::clone(pending),
        });
        Ok(fetched)
    }
}

/// What a reader of `secret` would see, hashed. The hasher lives on the heap and is
/// finalized in place: `finalize(self)` would move it, and the moved-from copy of its last
/// partial block (value bytes) would stay on the stack unwiped (issue 49). Dropped, the state
/// is wiped (`zeroize`) and so is its heap block.
fn digest(secret: &Result<CheckedSecret, SourceError>) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = Box::new(sha2::Sha256::new());
    match secret {
        Ok(s) => {
            h.update(b"found");
            h.update(s.secret.meta().version.unwrap_or(0).to_be_bytes());
            let mut fields: Vec<(&str, &secrecy::SecretString)> = s.secret.fields().collect();
            fields.sort_unstable_by_key(|(k, _)| *k);
            for (k, v) in fields {
                let v = v.expose_secret().as_bytes();
                h.update((k.len() as u64).to_be_bytes());
                h.update(k.as_bytes());
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
            for k in s.rejected.keys() {
                h.update(b"rejected");
                h.update((k.len() as u64).to_be_bytes());
                h.update(k.as_bytes());
            }
        }
        Err(e) => h.update(format!("error {e:?}").as_bytes()),
    }
    h.finalize_reset().into()
}

/// Refresh-ahead tickets waiting at once, at most: each is a sleeping task (a few hundred
/// bytes); past this, entries in use are refreshed on expiry instead (single-flight).
pub(crate) const MAX_PENDING_REFRESHES: usize = 10_000;

/// A point between 75 % and 90 % of `fresh_for`, at random, so that entries read at the same
/// moment are not refreshed at the same moment.
fn refresh_point(fresh_for: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
    } else {
        0.5
    };
    fresh_for.mul_f64(0.75 + 0.15 * r)
}

struct Lifetime {
    max_stale: Duration,
}

impl Expiry<CacheKey, Arc<Entry>> for Lifetime {
    fn expire_after_create(&self, _: &CacheKey, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(self.lifetime(e))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        e: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(e))
    }
}

impl Lifetime {
    /// Found entries live `max_stale` past freshness, for stale-if-error; negatives do not.
    fn lifetime(&self, e: &Entry) -> Duration {
        if e.secret.is_ok() {
            e.fresh_for + self.max_stale
        } else {
            e.fresh_for
        }
    }
}

/// The outcome of one refresh, shared by everyone who waited for it.
type Refresh = Arc<tokio::sync::OnceCell<Result<Fetched, SourceError>>>;

#[derive(Clone)]
pub struct SecretCache {
    inner: moka::future::Cache<CacheKey, Arc<Entry>>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Refreshes of stale entries in flight, one per key.
    refreshing: Arc<std::sync::Mutex<std::collections::HashMap<CacheKey, Refresh>>>,
    /// Bumped whenever an entry is replaced by different content.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Refresh-ahead tickets handed out and not yet run.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Pinned entries, beside the weighted cache: a PKI period's certificate (and the staged
    /// next) is the one served until its period ends, however full the cache gets (THREATS
    /// rows 54 and 58). Few: one or two per PKI profile.
    pinned: Arc<std::sync::Mutex<std::collections::HashMap<CacheKey, Arc<Entry>>>>,
    /// The purges, numbered: a read that was in flight when a purge of its key came is not
    /// stored afterwards (it would bring the purged values back for a TTL — issue 49's
    /// review). A read notes the number when it starts and asks [`Purges::since`] before
    /// storing.
    purges: Arc<std::sync::Mutex<Purges>>,
}

/// The last purges, by number: enough for the reads in flight at any moment; a read older
/// than every purge remembered counts as purged (it is answered, not stored).
#[derive(Debug, Default)]
struct Purges {
    count: u64,
    recent: std::collections::VecDeque<(u64, Arc<str>, Vec<String>)>,
}

/// Purges remembered for reads in flight.
const PURGES_KEPT: usize = 256;

impl Purges {
    /// Whether a purge after number `since` matched `key`.
    fn since(&self, since: u64, (source, request): &CacheKey) -> bool {
        if self.count == since {
            return false;
        }
        // The purges right after `since` were forgotten: assume they matched.
        if self.recent.front().is_none_or(|(n, _, _)| *n > since + 1) {
            return true;
        }
        self.recent
            .iter()
            .filter(|(n, _, _)| *n > since)
            .any(|(_, s, prefix)| **s == **source && request.path.starts_with(prefix))
    }
}

/// Pinned entries kept at most (a bound against a misconfiguration, not a working limit).
const PINNED_MAX: usize = 10_000;

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("entries", &self.inner.entry_count())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn weight(e: &Entry) -> u32 {
    let bytes: usize = e.secret.as_ref().map_or(0, |s| {
        s.secret
            .fields()
            .map(|(k, v)| k.len() + v.expose_secret().len())
            .sum()
    });
    u32::try_from(bytes + 64).unwrap_or(u32::MAX)
}

impl SecretCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        let inner = moka::future::Cache::builder()
            .max_capacity(cfg.max_bytes.0)
            .weigher(|_: &CacheKey, e: &Arc<Entry>| weight(e))
            .expire_after(Lifetime {
                max_stale: cfg.max_stale.0,
            })
            .support_invalidation_closures()
            .build();
        Self {
            inner,
            ttl: cfg.ttl.0,
            negative_ttl: cfg.negative_ttl.0,
            refreshing: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            pending: Arc::default(),
            pinned: Arc::default(),
            purges: Arc::default(),
        }
    }

    fn purges(&self) -> std::sync::MutexGuard<'_, Purges> {
        self.purges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of the last purge: what a read notes when it starts.
    fn purge_count(&self) -> u64 {
        self.purges().count
    }

    /// Whether a purge since `since` covered `key`: then what a read that started at `since`
    /// brought back is answered, never stored.
    fn purged_since(&self, since: u64, key: &CacheKey) -> bool {
        self.purges().since(since, key)
    }

    fn pinned_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<CacheKey, Arc<Entry>>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a pinned entry apart from the weighted cache.
    fn keep_pinned(&self, key: &CacheKey, entry: &Arc<Entry>) {
        if !entry.pinned {
            return;
        }
        let mut m = self.pinned_map();
        if m.len() < PINNED_MAX || m.contains_key(key) {
            m.insert(key.clone(), Arc::clone(entry));
        }
    }

    /// A fresh pinned entry the weighted cache lost (evicted under pressure): put back.
    async fn pinned_hit(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self
            .pinned_map()
            .get(key)
            .filter(|e| e.fresh())
            .map(Arc::clone)?;
        self.inner.insert(key.clone(), Arc::clone(&entry)).await;
        Some(entry)
    }

    /// A receiver whose value changes whenever some entry's content changed (or
    /// [`SecretCache::announce_change`] was called).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Wakes every subscriber (e.g. after a policy reload, which can change answers).
    pub fn announce_change(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Runs a refresh ticket: waits until it is due, then — if its entry is still the one
    /// in the cache — reads the secret again with `fetch` and stores it. A failed read leaves
    /// the entry as it is (the TTL path will try again, with stale-if-error).
    pub async fn refresh_ahead<F, Fut>(&self, ticket: RefreshAhead, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CheckedSecret, SourceError>>,
    {
        struct GiveBack(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for GiveBack {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _give_back = GiveBack(Arc::clone(&ticket.pending));
        tokio::time::sleep_until(ticket.at).await;
        let Some(entry) = ticket.entry.upgrade() else {
            return;
        };
        let current = self.inner.get(&ticket.key).await;
        if !current.is_some_and(|c| Arc::ptr_eq(&c, &entry)) {
            return;
        }
        drop(entry);
        let since = self.purge_count();
        // Boxed: while the ticket sleeps, its task holds only the small state above.
        let read = Box::pin(fetch()).await;
        if self.purged_since(since, &ticket.key) {
            return;
        }
        match read {
            Ok(secret) => {
                self.store(ticket.key, Ok(secret)).await;
            }
            Err(e @ (SourceError::NotFound | SourceError::Denied)) => {
                self.store(ticket.key, Err(e)).await;
            }
            Err(e) => tracing::debug!(reason = %e, "refresh ahead failed; the entry stands"),
        }
    }

    /// The answer for `key` if a fresh entry holds it (exactly what [`Self::get_or_fetch`]
    /// answers then), else `None`: for callers that want a hit without preparing a miss.
    pub async fn hit(&self, key: &CacheKey) -> Option<Result<Fetched, SourceError>> {
        let entry = match self.inner.get(key).await {
            Some(e) => e,
            None => self.pinned_hit(key).await?,
        };
        entry.fresh().then(|| entry.answer_hit(key, &self.pending))
    }

    /// The secret for `key`: from the cache when fresh; else from `fetch` (one call for all
    /// concurrent misses); else, if the source is unavailable, the stale entry.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        fetch: F,
    ) -> Result<Fetched, SourceError>
    where
        F: FnOnce(&CacheKey) -> Fut,
        Fut: Future<Output = Result<CheckedSecret, SourceError>>,
    {
        if let Some(entry) = self.inner.get(&key).await {
            if entry.fresh() {
                return entry.answer_hit(&key, &self.pending);
            }
            return self.refresh(key, entry, fetch).await;
        }
        if let Some(entry) = self.pinned_hit(&key).await {
            return entry.answer_hit(&key, &self.pending);
        }
        let since = self.purge_count();
        let init = async {
            match fetch(&key).await {
                Ok(secret) => Ok(self.entry(Ok(secret))),
                Err(e @ (SourceError::NotFound | SourceError::Denied)) => Ok(self.entry(Err(e))),
                Err(e) => Err(e),
            }
        };
        let entry = self
            .inner
            .try_get_with(key.clone(), init)
            .await
            .map_err(|e: Arc<SourceError>| (*e).clone())?;
        // moka stores what `init` made when it ends: a purge during the read is undone here.
        if self.purged_since(since, &key) {
            self.unstore(&key, &entry).await;
            return entry.answer(false);
        }
        self.keep_pinned(&key, &entry);
        // A miss, or a caller that waited on one: the next hit shows the entry is in use.
        entry.answer(false)
    }

    /// A stale entry's refresh: one `fetch` for all concurrent callers of `key`.
    async fn refresh<F, Fut>(
        &self,
        key: CacheKey,
        stale: Arc<Entry>,
        fetch: F,
    ) -> Result<Fetched, SourceError>
    where
        F: FnOnce(&CacheKey) -> Fut,
        Fut: Future<Output = Result<CheckedSecret, SourceError>>,
    {
        let cell: Refresh = {
            let mut all = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(all.entry(key.clone()).or_default())
        };
        let result = cell
            .get_or_init(|| async {
                // A refresh that ended while this caller was on its way: take its result.
                if let Some(now) = self.inner.get(&key).await
                    && now.fresh()
                {
                    return now.answer(false);
                }
                let since = self.purge_count();
                let read = fetch(&key).await;
                // Purged meanwhile: answered, not stored.
                if self.purged_since(since, &key) {
                    return match read {
                        Ok(secret) => self.entry(Ok(secret)).answer(false),
                        Err(e) => Err(e),
                    };
                }
                match read {
                    Ok(secret) => self.store(key.clone(), Ok(secret)).await.answer(false),
                    Err(e @ (SourceError::NotFound | SourceError::Denied)) => {
                        self.store(key.clone(), Err(e)).await.answer(false)
                    }
                    Err(e) if stale.secret.is_ok() && is_transient(&e) => {
                        tracing::debug!(reason = %e, "serving a stale secret: source unavailable");
                        stale.answer(true)
                    }
                    Err(e) => Err(e),
                }
            })
            .await
            .clone();
        let mut all = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        if all.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            all.remove(&key);
        }
        result
    }

    fn entry(&self, secret: Result<CheckedSecret, SourceError>) -> Arc<Entry> {
        let fresh_for = match &secret {
            Ok(s) => s.secret.meta().ttl.unwrap_or(self.ttl),
            Err(_) => self.negative_ttl,
        };
        let pinned = secret.as_ref().is_ok_and(|s| s.secret.meta().pinned);
        Arc::new(Entry {
            digest: digest(&secret),
            secret: secret.map(Arc::new),
            fetched: Clock::now(),
            fresh_for,
            refresh_after: refresh_point(fresh_for),
            claimed: std::sync::atomic::AtomicBool::new(pinned),
            pinned,
        })
    }

    /// Replaces `key`'s entry; announces a change when the content differs from the entry
    /// replaced.
    async fn store(&self, key: CacheKey, secret: Result<CheckedSecret, SourceError>) -> Arc<Entry> {
        let entry = self.entry(secret);
        let previous = self.inner.get(&key).await;
        self.keep_pinned(&key, &entry);
        self.inner.insert(key, Arc::clone(&entry)).await;
        if previous.is_some_and(|p| p.digest != entry.digest) {
            self.announce_change();
        }
        entry
    }

    /// Removes `entry` from `key` if it is still the one stored there.
    async fn unstore(&self, key: &CacheKey, entry: &Arc<Entry>) {
        if self
            .inner
            .get(key)
            .await
            .is_some_and(|now| Arc::ptr_eq(&now, entry))
        {
            self.inner.invalidate(key).await;
        }
        let mut pinned = self.pinned_map();
        if pinned.get(key).is_some_and(|now| Arc::ptr_eq(now, entry)) {
            pinned.remove(key);
        }
    }

    /// Drops every entry of `source` whose path starts with the segments of `prefix`
    /// (all of the source when `prefix` is empty).
    ///
    /// Every matching entry is removed now, by key: moka's `invalidate_entries_if` applies
    /// only to entries inserted strictly before the call (an entry stored in the same clock
    /// tick survived a purge with its values — issue 49), and only when its housekeeping
    /// gets to it. A read in flight stores nothing after it ([`Purges`]).
    pub async fn purge(&self, source: &str, prefix: &[String]) {
        {
            let mut purges = self.purges();
            purges.count += 1;
            let n = purges.count;
            purges
                .recent
                .push_back((n, Arc::from(source), prefix.to_vec()));
            if purges.recent.len() > PURGES_KEPT {
                purges.recent.pop_front();
            }
        }
        let matches = {
            let (source, prefix) = (source.to_owned(), prefix.to_vec());
            move |(s, req): &CacheKey| **s == *source && req.path.starts_with(&prefix)
        };
        self.pinned_map().retain(|k, _| !matches(k));
        let keys: Vec<CacheKey> = self
            .inner
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| (*k).clone())
            .collect();
        for k in keys {
            self.inner.invalidate(&k).await;
        }
        // Only fails when closures are not enabled, which `new` does.
        let _ = self.inner.invalidate_entries_if(move |k, _| matches(k));
        self.inner.run_pending_tasks().await;
    }

    /// The fresh-for of entries whose source gave no TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Applies moka's pending inserts and evictions to its counts.
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// What the weigher counts of all entries (approximate bytes; `max_bytes` bounds it).
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Runs moka's pending work (expiry, eviction) now.
    pub async fn maintain(&self) {
        self.inner.run_pending_tasks().await;
        // A pinned entry goes when its period (its freshness) ends.
        self.pinned_map().retain(|_, e| e.fresh());
    }

    /// Runs [`SecretCache::maintain`] every second until the cache is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(cache) = weak.upgrade() else { return };
                cache.maintain().await;
            }
        });
    }
}

/// Whether a stale value may stand in for a failed refresh (stale-if-error): the source is
/// down or asked for quiet — not when it answered, and not when the caller's input failed.
/// Not when it refused keybroker's own credentials either: a revoked token may be an
/// operator cutting keybroker off, and serving what it read before would defeat that.
fn is_transient(e: &SourceError) -> bool {
    let refused = *e == SourceError::Unavailable(crate::source::Outage::CredentialsRefused);
    (e.is_outage() && !refused) || matches!(e, SourceError::RateLimited { .. })
}

#[cfg(test)]
mod tests {
    use crate::source::Outage;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::{ByteSize, Dur};
    use crate::reference::SecretPath;
    use crate::secret::{Secret, SecretMeta, secret_string};

    fn cfg(ttl_ms: u64, stale_ms: u64) -> CacheConfig {
        CacheConfig {
            ttl: Dur(Duration::from_millis(ttl_ms)),
            max_stale: Dur(Duration::from_millis(stale_ms)),
            negative_ttl: Dur(Duration::from_millis(ttl_ms)),
            max_bytes: ByteSize(1 << 20),
        }
    }

    fn key(p: &str) -> CacheKey {
        let path = SecretPath::from_segments(p.split('/')).unwrap();
        (
            "s".into(),
            ReadRequest {
                path,
                version: None,
            },
        )
    }

    fn checked(v: &str) -> CheckedSecret {
        let mut f = BTreeMap::new();
        f.insert("v".to_owned(), secret_string(v));
        CheckedSecret {
            secret: Secret::new(f, SecretMeta::default()),
            rejected: BTreeMap::new(),
            repaired: Vec::new(),
            facts: BTreeMap::new(),
        }
    }

    fn value(f: &Fetched) -> String {
        f.secret
            .secret
            .field("v")
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_call() {
        let cache = SecretCache::new(&cfg(60_000, 0));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(key("a"), |_| async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(checked("x"))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(value(&t.await.unwrap().unwrap()), "x");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A pinned value (a PKI period's certificate) stays until its period ends however full
    /// the cache gets: another team's fills evict it from the weighted cache, and it is served
    /// from where pinned entries are kept — never fetched (issued) again (issue 43).
    #[tokio::test]
    async fn a_full_cache_never_evicts_a_pinned_value() {
        let mut config = cfg(3_600_000, 0);
        config.max_bytes = ByteSize(4 << 10);
        let cache = SecretCache::new(&config);
        let mut period = checked("the-period-certificate");
        let fields = period
            .secret
            .fields()
            .map(|(k, s)| (k.to_owned(), secret_string(s.expose_secret())))
            .collect();
        period.secret = Secret::new(
            fields,
            SecretMeta {
                pinned: true,
                ..SecretMeta::default()
            },
        );
        let period = std::sync::Mutex::new(Some(period));
        let got = cache
            .get_or_fetch(key("pki/p"), |_| async {
                Ok(period.lock().unwrap().take().unwrap())
            })
            .await
            .unwrap();
        assert_eq!(value(&got), "the-period-certificate");
        // Another team fills the cache many times over.
        for i in 0..200 {
            let big = "x".repeat(1000);
            cache
                .get_or_fetch(key(&format!("fill/{i}")), move |_| async move {
                    Ok(checked(&big))
                })
                .await
                .unwrap();
        }
        cache.maintain().await;
        let again = cache
            .get_or_fetch(key("pki/p"), |_| async {
                panic!("the pinned period was issued again")
            })
            .await
            .unwrap();
        assert_eq!(value(&again), "the-period-certificate");
    }

    /// A pinned value (a PKI period's certificate, staged as next before it is current) is
    /// never refreshed ahead: no hit carries a ticket, so what was served stays until it
    /// expires.
    #[tokio::test(start_paused = true)]
    async fn a_pinned_value_is_never_refreshed_ahead() {
        let cache = SecretCache::new(&cfg(1000, 0));
        let pinned = |v: &str| {
            let mut c = checked(v);
            let fields = c
                .secret
                .fields()
                .map(|(k, s)| (k.to_owned(), secret_string(s.expose_secret())))
                .collect();
            c.secret = Secret::new(
                fields,
                SecretMeta {
                    pinned: true,
                    ..SecretMeta::default()
                },
            );
            c
        };
        let read =
            |v: &'static str| cache.get_or_fetch(key("p"), move |_| async move { Ok(pinned(v)) });
        assert_eq!(value(&read("v1").await.unwrap()), "v1");
        for _ in 0..3 {
            let hit = read("no").await.unwrap();
            assert!(hit.refresh.is_none(), "a pinned entry hands out no ticket");
            assert_eq!(value(&hit), "v1");
        }
    }

    /// The first hit hands out one ticket; run, it re-reads before the TTL ends, so the next
    /// read after the TTL would have ended is still a fresh hit with the new content, and the
    /// change is announced. Without content change, nothing is announced.
    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_keeps_a_used_entry_fresh_and_announces_changes() {
        let cache = SecretCache::new(&cfg(1000, 0));
        let mut changes = cache.subscribe();
        let read =
            |v: &'static str| cache.get_or_fetch(key("a"), move |_| async move { Ok(checked(v)) });
        let first = read("v1").await.unwrap();
        assert!(first.refresh.is_none(), "read once (a miss): no ticket");
        let second = read("no").await.unwrap();
        let ticket = second.refresh.expect("the first hit carries the ticket");
        assert!(
            read("no").await.unwrap().refresh.is_none(),
            "one ticket per entry"
        );
        let started = Clock::now();
        cache
            .refresh_ahead(ticket, || async { Ok(checked("v2")) })
            .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(750) && waited <= Duration::from_millis(900),
            "due at 75–90 % of the TTL, was {waited:?}"
        );
        assert!(changes.has_changed().unwrap(), "new content announced");
        changes.mark_unchanged();
        tokio::time::advance(Duration::from_millis(400)).await;
        let down = || {
            cache.get_or_fetch(key("a"), |_| async {
                Err(SourceError::Unavailable(Outage::Unreachable))
            })
        };
        // The refreshed entry's first read is a hit (the refresh was no caller's read).
        let after = down().await.unwrap();
        assert_eq!(value(&after), "v2");
        assert!(!after.stale);
        // The same content again: no announcement.
        let ticket = after
            .refresh
            .expect("the new entry's first hit carries its ticket");
        cache
            .refresh_ahead(ticket, || async { Ok(checked("v2")) })
            .await;
        assert!(!changes.has_changed().unwrap());
    }

    /// A ticket whose entry was purged in the meantime does not bring it back.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_ahead_of_a_purged_entry_does_nothing() {
        let cache = SecretCache::new(&cfg(1000, 0));
        let read = || cache.get_or_fetch(key("a"), |_| async { Ok(checked("v1")) });
        read().await.unwrap();
        let first = read().await.unwrap();
        cache.purge("s", &[]).await;
        cache.maintain().await;
        let calls = AtomicUsize::new(0);
        cache
            .refresh_ahead(first.refresh.unwrap(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(checked("v2"))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(
            cache.pending.load(Ordering::SeqCst),
            0,
            "the ticket was given back"
        );
    }

    /// A read whose source call is in flight when a purge of its key comes answers its caller
    /// and stores nothing: the purged values do not come back for a TTL (issue 49's review
    /// found a miss, a refresh ahead and a stale refresh all storing after the purge).
    /// Each path: `purge_between(path)` runs the read, purges while its fetch waits, then
    /// lets the fetch end.
    async fn purge_between(cache: &SecretCache, purged: &str, path: &'static str) -> Fetched {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let fetch = move || async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            Ok(checked("v2"))
        };
        let c = cache.clone();
        let read = tokio::spawn(async move {
            match path {
                "ahead" => {
                    let first = c
                        .get_or_fetch(key("a"), |_| async { Ok(checked("v1")) })
                        .await;
                    let ticket = first.unwrap().refresh.expect("a refresh ticket");
                    c.refresh_ahead(ticket, fetch).await;
                    None
                }
                _ => Some(c.get_or_fetch(key("a"), |_| fetch()).await.unwrap()),
            }
        });
        started_rx.await.unwrap();
        cache.purge(purged, &[]).await;
        go_tx.send(()).unwrap();
        let answered = read.await.unwrap();
        cache.run_pending_tasks().await;
        answered.unwrap_or_else(|| Fetched {
            secret: Arc::new(checked("v2")),
            stale: false,
            refresh: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_in_flight_at_a_purge_of_its_key_is_answered_and_not_stored() {
        // A miss.
        let cache = SecretCache::new(&cfg(60_000, 0));
        let f = purge_between(&cache, "s", "miss").await;
        assert_eq!(value(&f), "v2", "the caller gets its answer");
        assert_eq!(cache.entry_count(), 0, "a miss stored after the purge");
        // A stale entry's refresh.
        let cache = SecretCache::new(&cfg(1000, 60_000));
        cache
            .get_or_fetch(key("a"), |_| async { Ok(checked("v1")) })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(1500)).await;
        let f = purge_between(&cache, "s", "stale").await;
        assert_eq!(value(&f), "v2");
        assert_eq!(cache.entry_count(), 0, "a refresh stored after the purge");
        // A refresh ahead (the ticket comes with the second read of a fresh entry).
        let cache = SecretCache::new(&cfg(1000, 0));
        cache
            .get_or_fetch(key("a"), |_| async { Ok(checked("v1")) })
            .await
            .unwrap();
        purge_between(&cache, "s", "ahead").await;
        assert_eq!(
            cache.entry_count(),
            0,
            "a refresh ahead stored after the purge"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_purge_of_another_source_leaves_a_read_in_flight_stored() {
        let cache = SecretCache::new(&cfg(60_000, 0));
        purge_between(&cache, "other", "miss").await;
        assert_eq!(cache.entry_count(), 1);
        assert!(cache.hit(&key("a")).await.is_some());
    }

    #[test]
    fn forgotten_purges_count_as_matching() {
        let mut p = Purges::default();
        let k = key("a");
        assert!(!p.since(0, &k));
        for n in 1..=(PURGES_KEPT as u64 + 5) {
            p.count = n;
            p.recent.push_back((n, Arc::from("other"), Vec::new()));
            if p.recent.len() > PURGES_KEPT {
                p.recent.pop_front();
            }
        }
        assert!(!p.since(p.count - 3, &k), "remembered, another source");
        assert!(p.since(1, &k), "older than every purge remembered");
    }

    #[tokio::test(start_paused = true)]
    async fn stale_only_when_the_source_is_unavailable_and_only_within_max_stale() {
        let cache = SecretCache::new(&cfg(1000, 5000));
        let ok = || async { Ok(checked("v1")) };
        assert!(!cache.get_or_fetch(key("a"), |_| ok()).await.unwrap().stale);
        // Past the TTL: a working source refreshes.
        tokio::time::advance(Duration::from_millis(1500)).await;
        let f = cache
            .get_or_fetch(key("a"), |_| async { Ok(checked("v2")) })
            .await
            .unwrap();
        assert_eq!((value(&f), f.stale), ("v2".to_owned(), false));
        // Past the TTL again, source down: the old value, flagged stale.
        tokio::time::advance(Duration::from_millis(1500)).await;
        let down = || async { Err(SourceError::Unavailable(Outage::Unreachable)) };
        let f = cache.get_or_fetch(key("a"), |_| down()).await.unwrap();
        assert_eq!((value(&f), f.stale), ("v2".to_owned(), true));
        // Denied is not "unavailable": no stale answer for it.
        let denied = || async { Err(SourceError::Denied) };
        assert_eq!(
            cache
                .get_or_fetch(key("a"), |_| denied())
                .await
                .unwrap_err(),
            SourceError::Denied
        );
    }

    /// THREATS row 28: a hot key just past its TTL, 1,000 concurrent callers: one source call,
    /// and every caller gets the new value.
    #[tokio::test(start_paused = true)]
    async fn threat_28_a_refresh_past_the_ttl_is_single_flight() {
        let cache = SecretCache::new(&cfg(1000, 60_000));
        let first = |_: &CacheKey| async { Ok(checked("v1")) };
        cache.get_or_fetch(key("hot"), first).await.unwrap();
        tokio::time::advance(Duration::from_millis(1001)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(key("hot"), |_| async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(checked("v2"))
                    })
                    .await
            }));
        }
        for t in tasks {
            let f = t.await.unwrap().unwrap();
            assert_eq!((value(&f), f.stale), ("v2".to_owned(), false));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Reads the backend refuses are remembered like "not found" (THREATS row 24: repeated
    /// denied reads cost the backend nothing).
    #[tokio::test]
    async fn denied_is_remembered_briefly() {
        let cache = SecretCache::new(&cfg(60_000, 0));
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let r = cache
                .get_or_fetch(key("no"), |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(SourceError::Denied)
                })
                .await;
            assert_eq!(r.unwrap_err(), SourceError::Denied);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn not_found_is_remembered_briefly_and_errors_not_at_all() {
        let cache = SecretCache::new(&cfg(60_000, 0));
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let r = cache
                .get_or_fetch(key("nf"), |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(SourceError::NotFound)
                })
                .await;
            assert_eq!(r.unwrap_err(), SourceError::NotFound);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for _ in 0..2 {
            let _ = cache
                .get_or_fetch(key("err"), |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(SourceError::Unavailable(Outage::Unreachable))
                })
                .await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn purge_by_source_and_prefix() {
        let cache = SecretCache::new(&cfg(60_000, 0));
        for p in ["pay/a", "pay/b", "web/a"] {
            cache
                .get_or_fetch(key(p), |_| async { Ok(checked(p)) })
                .await
                .unwrap();
        }
        cache.purge("s", &["pay".to_owned()]).await;
        cache.maintain().await;
        let calls = AtomicUsize::new(0);
        for p in ["pay/a", "web/a"] {
            cache
                .get_or_fetch(key(p), |_| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(checked(p))
                })
                .await
                .unwrap();
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "only the purged entry is fetched again"
        );
    }
}
