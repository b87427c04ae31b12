//! One read through the cache: on a miss, the source (within its concurrency permit, its
//! circuit breaker and retries), then the PEM stage.

use crate::source::Outage;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::{Broker, ReadKey};
use crate::cache::Fetched;
use crate::pem;
use crate::reference::Reason;
use crate::resilience::with_retries;
use crate::source::SourceError;

impl Broker {
    /// Reads each key once; the answers are in the order of `keys`. Cached secrets are
    /// answered inline, and only misses go to the sources, concurrently: a document of cached
    /// secrets spawns no task (five hits cost 34 µs through a task each, docs/PERFORMANCE.md).
    pub(super) async fn read_all(
        &self,
        keys: &[ReadKey],
        team: &str,
    ) -> Vec<Result<Fetched, SourceError>> {
        let mut out: Vec<Option<Result<Fetched, SourceError>>> = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.cache.hit(key).await;
            if hit.is_none() {
                misses.push(i);
            }
            out.push(hit.map(|fetched| self.answered(key, fetched, true)));
        }
        match misses[..] {
            [] => {}
            [i] => out[i] = Some(self.read_one(keys[i].clone(), team, true).await),
            _ => {
                let mut tasks = JoinSet::new();
                for i in misses {
                    let read = self.read_one(keys[i].clone(), team, false);
                    tasks.spawn(async move { (i, read.await) });
                }
                while let Some(joined) = tasks.join_next().await {
                    if let Ok((i, result)) = joined {
                        out[i] = Some(result);
                    }
                }
            }
        }
        // A read task only panics on a bug; its key then stays "unavailable".
        out.into_iter()
            .map(|r| r.unwrap_or(Err(SourceError::Unavailable(Outage::ReadTaskFailed))))
            .collect()
    }

    /// One read through the cache: on a miss, the source (with retries), then the PEM stage,
    /// within `team`'s share of the source's permits. `solo`: the request needs no other read
    /// from a source (see the 429 handling in [`Fetch::run`]).
    pub(crate) fn read_one(
        &self,
        key: ReadKey,
        team: &str,
        solo: bool,
    ) -> impl std::future::Future<Output = Result<Fetched, SourceError>> + Send + 'static {
        // Only Arcs here: the key's strings are copied only when a read is really made.
        let mut fetch = self.fetcher(&key.0);
        fetch.team = Arc::from(team);
        fetch.solo = solo;
        let cache = Arc::clone(&self.cache);
        let metrics = Arc::clone(&self.metrics);
        async move {
            let missed = std::sync::atomic::AtomicBool::new(false);
            let miss = fetch.clone();
            let fetched = cache
                .get_or_fetch(key, |key| {
                    missed.store(true, std::sync::atomic::Ordering::Relaxed);
                    miss.run(key.clone())
                })
                .await;
            let hit = !missed.load(std::sync::atomic::Ordering::Relaxed);
            after_read(&cache, &metrics, || fetch, fetched, hit)
        }
    }

    /// [`after_read`] for a hit answered inline.
    fn answered(
        &self,
        key: &ReadKey,
        fetched: Result<Fetched, SourceError>,
        hit: bool,
    ) -> Result<Fetched, SourceError> {
        let fetch = || self.fetcher(&key.0);
        after_read(&self.cache, &self.metrics, fetch, fetched, hit)
    }

    /// What reads from source `name`: owned, so a refresh ahead can run it later.
    fn fetcher(&self, name: &str) -> Fetch {
        // `plan` only hands out keys of configured sources.
        let entry = &self.sources[name];
        Fetch {
            team: Arc::from(BACKGROUND),
            solo: false,
            source: Arc::clone(&entry.source),
            breaker: Arc::clone(&entry.breaker),
            in_flight: Arc::clone(&entry.in_flight),
            answered: Arc::clone(&entry.answered),
            refused: Arc::clone(&entry.refused),
            metrics: Arc::clone(&self.metrics),
            options: pem::Options {
                mode: entry.pem,
                ..pem::Options::default()
            },
        }
    }
}

/// Counts a read's answer and, for the first hit of a fresh entry, starts its refresh ahead in
/// the background (with the source's fetcher, made only then).
fn after_read(
    cache: &Arc<crate::cache::SecretCache>,
    metrics: &crate::metrics::Metrics,
    fetch: impl FnOnce() -> Fetch,
    fetched: Result<Fetched, SourceError>,
    hit: bool,
) -> Result<Fetched, SourceError> {
    metrics.cache(hit);
    if fetched.as_ref().is_ok_and(|f| f.stale) {
        metrics.stale_answer();
    }
    if let Some(ticket) = fetched.as_ref().ok().and_then(|f| f.refresh.clone()) {
        let again = ticket.key().clone();
        let fetch = fetch();
        let cache = Arc::clone(cache);
        tokio::spawn(async move { cache.refresh_ahead(ticket, || fetch.run(again)).await });
    }
    fetched
}

/// Records what an answer of a source says about keybroker's own credentials there — the one
/// rule for its reads, its start-up probe and its self-check, so `/readyz`, the
/// `keybroker_source_available` gauge and the consumers' 503 `source_credentials_refused`
/// agree: a refusal sets the flag; an answer clears it; an outage says nothing about
/// credentials and leaves it. Returns the flag's value before.
pub(super) fn note_credentials(
    refused: &std::sync::atomic::AtomicBool,
    error: Option<&SourceError>,
) -> bool {
    use std::sync::atomic::Ordering;
    match error {
        Some(SourceError::Unavailable(Outage::CredentialsRefused)) => {
            refused.swap(true, Ordering::Relaxed)
        }
        Some(e) if e.is_outage() => refused.load(Ordering::Relaxed),
        _ => refused.swap(false, Ordering::Relaxed),
    }
}

/// A source read and its PEM stage, with what it needs.
#[derive(Clone)]
struct Fetch {
    /// Whose read this is, for the source's fair share (refresh ahead: [`BACKGROUND`]).
    team: Arc<str>,
    /// The only read its request makes.
    solo: bool,
    source: Arc<dyn crate::source::SecretSource>,
    breaker: Arc<crate::resilience::CircuitBreaker>,
    in_flight: Arc<super::fair::FairPermits>,
    answered: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::metrics::Metrics>,
    options: pem::Options,
}

impl Fetch {
    async fn run(self, (name, request): ReadKey) -> Result<pem::CheckedSecret, SourceError> {
        let started = Instant::now();
        // Each attempt holds a permit only while it talks to the source. A read that has not
        // gone out yet while the source asked for quiet (a 429) waits the quiet out when that
        // fits in QUIET_BUDGET, and then goes in the order the fair permits give, instead of
        // being refused: one team's burst that drains a source's rate limit does not fail
        // every other team's reads (THREATS row 45). Past the budget the 429 is the answer.
        let budget = tokio::time::Instant::now() + QUIET_BUDGET;
        let wait_quiet = || async {
            match self.breaker.quiet_left() {
                Some(left) if tokio::time::Instant::now() + left <= budget => {
                    tokio::time::sleep(left).await;
                }
                _ => {}
            }
        };
        // The breaker fails fast while the source is quiet: wait that out first (bounded).
        wait_quiet().await;
        let attempt = || async {
            let mut retried = false;
            loop {
                if let Some(left) = self.breaker.quiet_left() {
                    if tokio::time::Instant::now() + left > budget {
                        return Err(SourceError::RateLimited {
                            retry_after: Some(left),
                        });
                    }
                    tokio::time::sleep(left).await;
                    continue;
                }
                let permit = self.in_flight.acquire(&self.team).await;
                // Quiet may have begun while this read waited for its permit.
                if self.breaker.quiet_left().is_some() {
                    drop(permit);
                    continue;
                }
                let read = self.source.read(&request).await;
                // A read that got a 429 is not made again (THREATS row 23) — unless it is the
                // only read of its request: a caller reading one secret is not the burst that
                // drained the limit, and gets one more try after the quiet (row 45). The
                // breaker records the quiet either way.
                if let Err(SourceError::RateLimited { retry_after }) = &read
                    && !retried
                    && self.solo
                {
                    self.breaker.quiet_for(*retry_after);
                    drop(permit);
                    retried = true;
                    continue;
                }
                return read;
            }
        };
        let read = self
            .breaker
            .call(|| with_retries(RETRY_ATTEMPTS, RETRY_BASE, attempt))
            .await;
        let outcome = match &read {
            Ok(_) => "ok",
            Err(e) => source_reason(e).code(),
        };
        if read.as_ref().err().is_none_or(|e| !e.is_outage()) {
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        note_credentials(&self.refused, read.as_ref().err());
        self.metrics.source_read(&name, outcome, started.elapsed());
        let checked = pem::check_secret(&read?, &self.options);
        for (_, kinds) in &checked.repaired {
            for k in kinds {
                self.metrics.repaired(k.code());
            }
        }
        Ok(checked)
    }
}

/// The team of reads no caller waits for (refresh ahead, expiry sweeps, start-up probes); the
/// operator's reads are the team `operator`.
pub(super) const BACKGROUND: &str = "(background)";

/// The team a caller's reads count against at a source.
pub(super) fn team_of(caller: &super::Caller) -> &str {
    match caller {
        super::Caller::Consumer(c) => c.team(),
        super::Caller::Operator => "operator",
    }
}

/// After this many consecutive failed (retried) reads a source's circuit opens …
pub(super) const BREAKER_THRESHOLD: u32 = 5;
/// … for this long.
pub(super) const BREAKER_COOL_DOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long one read may wait out a source's 429 quiet before the 429 is its answer.
const QUIET_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Transient source failures are retried this many times in all …
const RETRY_ATTEMPTS: u32 = 3;
/// … starting from this delay, doubled each time, with jitter.
const RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) fn source_reason(e: &SourceError) -> Reason {
    match e {
        SourceError::NotFound => Reason::NotFound,
        SourceError::Denied => Reason::SourceDenied,
        SourceError::Unavailable(crate::source::Outage::CredentialsRefused) => {
            Reason::SourceCredentialsRefused
        }
        SourceError::Unavailable(crate::source::Outage::CcpBare404) => Reason::SourceMisconfigured,
        SourceError::Unavailable(_) | SourceError::RateLimited { .. } => Reason::SourceUnavailable,
        SourceError::Invalid(why) => Reason::InvalidReference(why),
        SourceError::Unsupported(why) => Reason::Unsupported(why),
        SourceError::Malformed(why) => Reason::Malformed(why),
        SourceError::Ambiguous => Reason::Ambiguous,
    }
}
