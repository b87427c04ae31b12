//! Writes announced but not yet seen landed (docs/DESIGN.md §20). A write bumps the
//! generation *before* its commit, naming the entry and what vault will hold once the commit
//! lands ([`Expect`]). A replica that reads the entry before that keeps it pending and reads
//! it again at each poll until vault holds what was announced or [`PATIENCE`] has passed (the
//! writer died before its commit, or lost the check-and-set to a write that made the entry
//! something else — which names it too). A writer that dies or fails between its two steps
//! therefore leaves no replica behind: the entry is named before anything in it changes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{EntryName, Kind, TeamSlug};

/// How long a replica keeps reading an announced entry that has not become what was
/// announced: far past any write's timeout, so a commit still on its way is not given up on.
pub(super) const PATIENCE: Duration = Duration::from_secs(300);

/// The versions of the generation a full pull looks back through for announced writes: a
/// full pull lists while other replicas write, and a commit announced just before can land
/// after its entry was read.
pub(super) const LOOKBACK: u64 = 32;

/// Pending entries past which a replica pulls everything instead: versions forged by
/// whoever can write the store's prefix cost it no more than a full pull (which such a writer
/// can force anyway, with a version that names nothing).
pub(super) const MAX_PENDING: usize = 256;

/// One entry of the store.
pub(super) type Entry = (Kind, TeamSlug, EntryName);

/// What vault holds of an entry once the announced write lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Expect {
    /// The definition at this KV version or a later one.
    Version(u64),
    /// No definition.
    Gone,
}

impl Expect {
    /// Whether vault holding the definition at KV version `stored` (`None`: none) is what was
    /// announced, or a later state of it.
    pub(super) fn met_by(self, stored: Option<u64>) -> bool {
        match self {
            Expect::Version(n) => stored.is_some_and(|v| v >= n),
            Expect::Gone => stored.is_none(),
        }
    }
}

/// The entries this replica reads again at each poll.
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<BTreeMap<Entry, (Expect, Instant)>>);

impl Pending {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Entry, (Expect, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `entry` was read as vault holding KV version `stored`: pending until `expect` is met.
    pub(super) fn note(&self, entry: Entry, expect: Expect, stored: Option<u64>) {
        let mut map = self.map();
        if expect.met_by(stored) {
            map.remove(&entry);
        } else {
            map.insert(entry, (expect, Instant::now()));
        }
    }

    /// `entry` read again as `stored`: no longer pending once met, or once [`PATIENCE`] has
    /// passed since it was announced.
    pub(super) fn settle(&self, entry: &Entry, stored: Option<u64>) {
        let mut map = self.map();
        let Some((expect, since)) = map.get(entry).copied() else {
            return;
        };
        if expect.met_by(stored) {
            map.remove(entry);
        } else if since.elapsed() >= PATIENCE {
            map.remove(entry);
            tracing::warn!(kind = entry.0.dir(), team = %entry.1, name = %entry.2, "store: an announced write never landed; the entry stays as vault holds it");
        }
    }

    /// This replica announced a write of `entry`: read it again until it lands (a commit that
    /// fails after landing — a lost answer — must not leave this replica's own mirror behind).
    pub(super) fn announce(&self, entry: Entry, expect: Expect) {
        self.map().insert(entry, (expect, Instant::now()));
    }

    /// This replica's own write landed: nothing to read again.
    pub(super) fn landed(&self, entry: &Entry) {
        self.map().remove(entry);
    }

    /// The entries to read again; `None` when there are more than [`MAX_PENDING`] (all
    /// forgotten: the caller pulls everything).
    pub(super) fn entries(&self) -> Option<Vec<Entry>> {
        let mut map = self.map();
        if map.len() > MAX_PENDING {
            map.clear();
            return None;
        }
        Some(map.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_version_is_met_by_it_or_a_later_one_and_gone_by_nothing() {
        assert!(!Expect::Version(3).met_by(None));
        assert!(!Expect::Version(3).met_by(Some(2)));
        assert!(Expect::Version(3).met_by(Some(3)));
        assert!(Expect::Version(3).met_by(Some(4)));
        assert!(Expect::Gone.met_by(None));
        assert!(!Expect::Gone.met_by(Some(1)));
        let json = serde_json::to_string(&[Expect::Version(7), Expect::Gone]).unwrap();
        assert_eq!(json, r#"[{"version":7},"gone"]"#);
    }

    #[test]
    fn past_the_cap_every_pending_entry_is_forgotten_for_a_full_pull() {
        let pending = Pending::default();
        let team = TeamSlug::parse("payments").unwrap();
        let entry = |i: usize| {
            (
                Kind::Consumer,
                team.clone(),
                EntryName::parse(&format!("e{i}")).unwrap(),
            )
        };
        for i in 0..MAX_PENDING {
            pending.note(entry(i), Expect::Version(2), Some(1));
        }
        assert_eq!(pending.entries().map(|e| e.len()), Some(MAX_PENDING));
        pending.note(entry(MAX_PENDING), Expect::Gone, Some(1));
        assert_eq!(pending.entries(), None);
        assert_eq!(pending.entries(), Some(vec![]));
    }
}
