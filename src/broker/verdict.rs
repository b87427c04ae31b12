//! Verdicts of whole-credential verification (`pem::credential`), kept while the values they
//! judged are the ones the cache holds: a credential is verified once per cache fill, not per
//! request. A verdict remembers the cache entries it judged by weak pointer (a weak pointer
//! keeps the allocation, so an address cannot be reused by a later entry while it is held)
//! and the credential's references (a reload may point a role at another field of the same
//! secret).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::pem::CheckedSecret;
use crate::pem::credential::{Rejection, Window};
use crate::policy::CredentialValues;

/// More verdicts than this (credentials renamed or removed over a long life) and the store
/// starts again: every verdict is cheap to make anew.
const MAX_VERDICTS: usize = 10_000;

/// Which values of a credential: those in force, or the staged next ones (`include_next`).
/// Each has its own verdict and its own last outcome — a current set that serves and a next
/// set that is refused are two steady outcomes, not a change on every read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Current,
    Next,
}

impl Phase {
    fn at(self) -> usize {
        match self {
            Self::Current => 0,
            Self::Next => 1,
        }
    }
}

#[derive(Default)]
pub(super) struct Verdicts {
    by_credential: [Mutex<ByCredential<Verdict>>; 2],
    /// The last outcome noted per credential and phase (`None`: served).
    reported: [Mutex<ByCredential<Option<Rejection>>>; 2],
}

/// Values by team, then credential name: looked up with borrowed names, so a request that
/// finds what it needs allocates nothing (this is on every material request's path).
struct ByCredential<T> {
    teams: HashMap<String, HashMap<String, T>>,
    len: usize,
}

impl<T> Default for ByCredential<T> {
    fn default() -> Self {
        Self {
            teams: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> ByCredential<T> {
    fn get(&self, (team, name): (&str, &str)) -> Option<&T> {
        self.teams.get(team)?.get(name)
    }

    /// Keeps `value` for (`team`, `name`), returning the one it replaces.
    fn insert(&mut self, (team, name): (&str, &str), value: T) -> Option<T> {
        if self.len >= MAX_VERDICTS {
            self.teams.clear();
            self.len = 0;
        }
        if let Some(slot) = self.teams.get_mut(team).and_then(|m| m.get_mut(name)) {
            return Some(std::mem::replace(slot, value));
        }
        self.len += 1;
        self.teams
            .entry(team.to_owned())
            .or_default()
            .insert(name.to_owned(), value)
    }
}

impl fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: usize = self
            .by_credential
            .iter()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).len)
            .sum();
        f.debug_struct("Verdicts").field("held", &n).finish()
    }
}

struct Verdict {
    inputs: Vec<Weak<CheckedSecret>>,
    values: CredentialValues,
    result: Result<Window, Rejection>,
}

impl Verdicts {
    /// The verdict on `inputs` for credential (`team`, `name`): the kept one while it judged
    /// these very entries, else `verify`'s (run outside the lock), kept.
    pub(super) fn get_or_verify(
        &self,
        phase: Phase,
        key: (&str, &str),
        values: &CredentialValues,
        inputs: &[&Arc<CheckedSecret>],
        verify: impl FnOnce() -> Result<Window, Rejection>,
    ) -> Result<Window, Rejection> {
        let same = |v: &Verdict| {
            v.values == *values
                && v.inputs.len() == inputs.len()
                && v.inputs
                    .iter()
                    .zip(inputs)
                    .all(|(w, a)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)))
        };
        {
            let map = self.by_credential[phase.at()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = map.get(key)
                && same(v)
            {
                return v.result;
            }
        }
        let result = verify();
        let mut map = self.by_credential[phase.at()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(
            key,
            Verdict {
                inputs: inputs.iter().map(|a| Arc::downgrade(a)).collect(),
                values: values.clone(),
                result,
            },
        );
        result
    }

    /// Notes how a use of credential (`team`, `name`) ended (served, or refused by
    /// verification or the PEM stage); true when it is a refusal that differs from the last
    /// one noted: the moment to report it (once per change, not per request).
    pub(super) fn note(&self, phase: Phase, key: (&str, &str), outcome: Option<Rejection>) -> bool {
        let mut map = self.reported[phase.at()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The usual case, the same outcome as last time: nothing to write.
        if let Some(before) = map.get(key)
            && *before == outcome
        {
            return false;
        }
        let before = map.insert(key, outcome);
        outcome.is_some() && before.flatten() != outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn secret() -> Arc<CheckedSecret> {
        let s = crate::secret::Secret::new(Default::default(), Default::default());
        Arc::new(crate::pem::check_secret(
            &s,
            &crate::pem::Options::default(),
        ))
    }

    #[test]
    fn a_verdict_is_made_once_per_set_of_entries() {
        let verdicts = Verdicts::default();
        let values = CredentialValues {
            by_role: Default::default(),
        };
        let runs = AtomicUsize::new(0);
        let ok = || {
            runs.fetch_add(1, Ordering::Relaxed);
            Ok(Window {
                not_before: 0,
                not_after: 1,
            })
        };
        let (a, b) = (secret(), secret());
        for _ in 0..3 {
            verdicts
                .get_or_verify(Phase::Current, ("t", "c"), &values, &[&a, &b], ok)
                .unwrap();
        }
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        // A refill of one entry is a new verdict.
        let b2 = secret();
        verdicts
            .get_or_verify(Phase::Current, ("t", "c"), &values, &[&a, &b2], ok)
            .unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        // Another credential over the same entries is its own verdict.
        verdicts
            .get_or_verify(Phase::Current, ("t", "d"), &values, &[&a, &b2], ok)
            .unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_refusal_is_reported_once_per_change() {
        let verdicts = Verdicts::default();
        let expired = Some(Rejection {
            role: "client_certificate",
            code: "expired",
        });
        let key = ("t", "c");
        let note = |key, outcome| verdicts.note(Phase::Current, key, outcome);
        assert!(note(key, expired));
        assert!(!note(key, expired));
        assert!(!note(key, None));
        assert!(note(key, expired));
        let weak = Some(Rejection {
            role: "client_private_key",
            code: "weak_key",
        });
        assert!(note(key, weak));
        assert!(note(("t", "d"), weak));
    }

    /// Issue 43: a staged next set that is refused (an expired certificate) beside a current
    /// set that serves, read in a loop, is reported once — the two are noted apart, so a read
    /// never re-raises an unchanged outcome.
    #[test]
    fn a_refused_next_beside_a_served_current_is_reported_once() {
        let verdicts = Verdicts::default();
        let expired = Some(Rejection {
            role: "client_certificate",
            code: "expired",
        });
        let key = ("t", "c");
        let mut reports = 0;
        for _ in 0..100 {
            reports += usize::from(verdicts.note(Phase::Current, key, None));
            reports += usize::from(verdicts.note(Phase::Next, key, expired));
        }
        assert_eq!(reports, 1);
    }
}
