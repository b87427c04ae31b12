//! Resilience towards a source: a circuit breaker per source and bounded retries. Only
//! outages ([`SourceError::is_outage`]) are retried and counted: a failure the caller's own
//! reference caused says nothing about the source (docs/DESIGN.md §3, THREATS row 20), and a
//! 429 asks for quiet, not for more requests (row 23).

use crate::source::Outage;
use std::future::Future;
use std::time::Duration;

use crate::source::SourceError;

/// Freshness is measured on tokio's clock (the same as std's outside paused tests).
type Clock = tokio::time::Instant;

/// A per-source circuit breaker: after `threshold` consecutive transient failures the source
/// is not called for `cool_down`; requests fail fast (and the cache serves what it may hold,
/// stale). One trial call is let through after the cool-down; its outcome closes or reopens.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    state: std::sync::Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Clock>,
    /// The source asked to be left alone (429 with `Retry-After`) until then.
    quiet_until: Option<Clock>,
}

/// The longest `Retry-After` honoured: a backend cannot switch a source off for longer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The pause after a 429 that names no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl CircuitBreaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            state: std::sync::Mutex::new(BreakerState::default()),
        }
    }

    /// Whether calls currently fail fast (for `/readyz`).
    pub(crate) fn is_open(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.open_until.is_some_and(|t| Clock::now() < t)
    }

    /// How long the source still asked to be left alone (a 429's `Retry-After`), if it did.
    pub(crate) fn quiet_left(&self) -> Option<Duration> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Clock::now();
        st.quiet_until.filter(|t| now < *t).map(|t| t - now)
    }

    /// Records a 429: the source is left alone for `retry_after` (bounded).
    pub(crate) fn quiet_for(&self, retry_after: Option<Duration>) {
        let pause = retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(MAX_RETRY_AFTER);
        let until = Clock::now() + pause;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.quiet_until = Some(st.quiet_until.map_or(until, |t| t.max(until)));
    }

    /// Runs `call` unless the circuit is open or the source asked for quiet; records its
    /// outcome. Only outages ([`SourceError::is_outage`]) count; a failure the caller's
    /// input caused neither counts nor proves the source healthy.
    pub(crate) async fn call<F, Fut, T>(&self, call: F) -> Result<T, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SourceError>>,
    {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Clock::now();
            if let Some(t) = st.quiet_until.filter(|t| now < *t) {
                return Err(SourceError::RateLimited {
                    retry_after: Some(t - now),
                });
            }
            match st.open_until {
                Some(t) if now < t => {
                    return Err(SourceError::Unavailable(Outage::CircuitOpen));
                }
                // Half-open: this call is the trial; others keep failing fast meanwhile.
                Some(_) => st.open_until = Some(now + self.cool_down),
                None => {}
            }
        }
        let result = call().await;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Err(e) if e.is_outage() => {
                st.failures = st.failures.saturating_add(1);
                if st.failures >= self.threshold {
                    st.open_until = Some(Clock::now() + self.cool_down);
                }
            }
            Err(SourceError::RateLimited { retry_after }) => {
                drop(st);
                self.quiet_for(*retry_after);
                return result;
            }
            // Not the source's failure, and not proof of its health either.
            Err(SourceError::Invalid(_)) => {}
            // Any answer from the source, even "not found" or "denied", shows it is up.
            _ => {
                st.failures = 0;
                st.open_until = None;
            }
        }
        result
    }
}

/// Retries a transient failure (source unavailable) up to `attempts` times with jittered
/// exponential backoff from `base`; never retries not-found, denied, malformed, a caller's
/// invalid reference or a rate limit (429: retrying is what the backend asked us not to do).
pub(crate) async fn with_retries<F, Fut, T>(
    attempts: u32,
    base: Duration,
    mut call: F,
) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SourceError>>,
{
    let backoff = crate::backoff::Backoff {
        base,
        max: base.saturating_mul(1 << 10),
        jitter: 0.5,
    };
    for attempt in 1.. {
        match call().await {
            // Refused credentials or a wrong service path are outages, but not ones a retry a
            // moment later fixes.
            Err(e) if e.is_outage() && !e.is_permanent_outage() && attempt < attempts => {
                tracing::debug!(attempt, reason = %e, "transient source failure; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns on the last attempt")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_fails_fast_and_closes_after_a_good_trial() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let calls = AtomicUsize::new(0);
        let down = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(SourceError::Unavailable(Outage::Unreachable))
        };
        for _ in 0..3 {
            assert!(b.call(down).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let open = b.call(down).await.unwrap_err();
        assert_eq!(open, SourceError::Unavailable(Outage::CircuitOpen));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "not called while open");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            b.call(|| async { Ok::<_, SourceError>(7) }).await.unwrap(),
            7
        );
        assert!(
            b.call(|| async { Ok::<_, SourceError>(8) }).await.is_ok(),
            "closed again"
        );
    }

    /// THREATS rows 20 and 23: caller-caused failures and rate limits never open the breaker;
    /// a 429 keeps the source quiet for its Retry-After instead of being retried.
    #[tokio::test(start_paused = true)]
    async fn caller_failures_do_not_count_and_rate_limits_are_honoured() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        for _ in 0..10 {
            let invalid = || async { Err::<(), _>(SourceError::Invalid("too long")) };
            assert!(b.call(invalid).await.is_err());
        }
        assert!(!b.is_open(), "a caller's bad input is not an outage");
        let calls = AtomicUsize::new(0);
        let limited = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(SourceError::RateLimited {
                retry_after: Some(Duration::from_secs(5)),
            })
        };
        let r = with_retries(3, Duration::from_millis(1), || b.call(limited)).await;
        assert!(matches!(r, Err(SourceError::RateLimited { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "429 is not retried");
        assert!(b.call(limited).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "quiet during Retry-After");
        assert!(!b.is_open());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.call(|| async { Ok::<_, SourceError>(()) }).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_transient_failures() {
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = with_retries(3, Duration::from_millis(100), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(SourceError::Unavailable(Outage::Unreachable))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = with_retries(3, Duration::from_millis(100), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(SourceError::Denied)
        })
        .await;
        assert_eq!(r.unwrap_err(), SourceError::Denied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
