//! Keep-alive connections to one backend, bounded in age so that no connection's buffers
//! outlive the answers they carried by long (THREATS row 29).
//!
//! A live connection keeps its last answer — a secret — in its TLS and HTTP read buffers until
//! they are overwritten, and those buffers are not freed while it lives, so the zeroizing
//! allocator cannot wipe them. So every connection belongs to a *generation*: one reqwest
//! client and its pool. A generation `max_age` old is replaced at the next request, and the old
//! one — pool and connections — is dropped as its last request ends; an idle connection is
//! closed after `max_age` by the pool's own reaper; a purge of the source's cache drops the
//! generation at once. `max_age` zero keeps no idle connection at all (one per request).
//!
//! Why not reqwest's pool alone: it has no maximum lifetime and no way to be emptied.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::{ClientSettings, HttpSetupError};

pub(super) struct Connections {
    settings: ClientSettings,
    max_age: Duration,
    current: Mutex<Generation>,
}

struct Generation {
    client: reqwest::Client,
    born: Instant,
    /// Counts generations (for the tests).
    number: u64,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub(super) fn new(settings: ClientSettings, max_age: Duration) -> Result<Self, HttpSetupError> {
        let client = settings.build(max_age)?;
        Ok(Self {
            settings,
            max_age,
            current: Mutex::new(Generation {
                client,
                born: Instant::now(),
                number: 0,
            }),
        })
    }

    /// The client of the current generation (a cheap handle; drop it when the request ends).
    pub(super) fn client(&self) -> reqwest::Client {
        let old = |g: &Generation| !self.max_age.is_zero() && g.born.elapsed() >= self.max_age;
        {
            let current = self.lock();
            if !old(&current) {
                return current.client.clone();
            }
        }
        self.renew(old);
        self.lock().client.clone()
    }

    /// After an answer that may stay cached only `ttl` (a lease shorter than the source's
    /// own TTL, a certificate near the end of its period): when that is less than twice
    /// `max_age`, the generation that carried it is closed now, so that no buffer outlives
    /// the cache entry.
    pub(super) fn carried(&self, ttl: Option<Duration>) {
        if ttl.is_some_and(|ttl| ttl < self.max_age.saturating_mul(2)) {
            self.close_idle();
        }
    }

    /// Drops every idle connection now (a cache purge): the next request opens a new one.
    pub(super) fn close_idle(&self) {
        if !self.max_age.is_zero() {
            self.renew(|_| true);
        }
    }

    /// A new generation in place of the current one, if `still` says so once it is built.
    /// Built outside the lock (it takes a TLS configuration): requests meanwhile take the
    /// current client; two requests finding it old may both build, and the second keeps the
    /// first's.
    fn renew(&self, still: impl Fn(&Generation) -> bool) {
        // The settings were built once at start; should a build fail now, the old generation
        // serves on and is retried at the next request.
        let Ok(client) = self.settings.build(self.max_age) else {
            tracing::warn!("cannot build a new HTTP client; the current one serves on");
            return;
        };
        let mut current = self.lock();
        if still(&current) {
            let number = current.number + 1;
            *current = Generation {
                client,
                born: Instant::now(),
                number,
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generation> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a connection to a source may live: `keep_alive` as configured (default 5 s),
/// never more than half of the shortest time a cache entry of the source may live — so that a
/// connection has closed before an answer it carried has expired from the cache.
pub(crate) fn max_age(keep_alive: Option<Duration>, ttls: &[Option<Duration>]) -> Duration {
    let configured = keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE);
    ttls.iter()
        .flatten()
        .map(|ttl| *ttl / 2)
        .fold(configured, Duration::min)
}

pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_bounded_by_half_of_every_ttl() {
        let s = Duration::from_secs;
        assert_eq!(max_age(None, &[None]), DEFAULT_KEEP_ALIVE);
        assert_eq!(max_age(Some(s(2)), &[Some(s(300))]), s(2));
        assert_eq!(
            max_age(None, &[Some(s(300)), Some(s(1))]),
            Duration::from_millis(500)
        );
        assert_eq!(
            max_age(Some(Duration::ZERO), &[Some(s(300))]),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn a_generation_is_renewed_when_old_and_on_close() {
        let settings = ClientSettings::load(Duration::from_secs(1), None, None, None).unwrap();
        let number = |c: &Connections| c.current.lock().unwrap().number;
        let young = Connections::new(settings.clone(), Duration::from_secs(3600)).unwrap();
        young.client();
        assert_eq!(number(&young), 0, "a young generation serves on");
        young.close_idle();
        assert_eq!(number(&young), 1, "a purge starts a new generation");
        // A generation as old as `max_age` is replaced at the next request.
        let old = Connections::new(settings.clone(), Duration::from_nanos(1)).unwrap();
        old.client();
        assert_eq!(number(&old), 1);
        // An answer cached for less than two ages closes its generation; a longer one not.
        let s = Duration::from_secs;
        let short = Connections::new(settings.clone(), s(5)).unwrap();
        short.carried(Some(s(10)));
        short.carried(None);
        assert_eq!(number(&short), 0);
        short.carried(Some(s(9)));
        assert_eq!(number(&short), 1);
        // No pool, nothing to renew.
        let none = Connections::new(settings, Duration::ZERO).unwrap();
        none.client();
        none.close_idle();
        assert_eq!(number(&none), 0);
    }
}
