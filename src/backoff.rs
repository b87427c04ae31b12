//! The one backoff policy: exponential from a base, capped, with jitter — for source retries
//! (`resilience`), Vault re-logins (`source::vault`) and the agent's passes. Three loops with
//! different shapes need only "how long after the n-th failure", so this is a function rather
//! than a retry crate's combinators. Imports nothing of the crate.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    /// The delay after the first failure …
    pub base: Duration,
    /// … doubled per failure up to this.
    pub max: Duration,
    /// The delay is spread uniformly over `[1 - jitter, 1 + jitter]` times itself, so that
    /// replicas and waiters do not retry in step.
    pub jitter: f64,
}

impl Backoff {
    /// How long to wait after `failures` consecutive failures (1 = the first).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let delay = self.base.saturating_mul(1u32 << doublings).min(self.max);
        let mut r = [0u8; 1];
        // Without randomness the backoff still holds; only the spread is lost.
        let unit = if getrandom::fill(&mut r).is_ok() {
            f64::from(r[0]) / 255.0
        } else {
            0.5
        };
        delay.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_within_the_jitter() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.25,
        };
        for (n, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = b.delay(n).as_secs_f64();
            assert!((nominal * 0.75..=nominal * 1.25).contains(&d), "{n}: {d} s");
        }
    }
}
