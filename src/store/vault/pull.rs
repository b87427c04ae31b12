//! A replica's pull of the vault store (docs/DESIGN.md §20). The generation's KV versions
//! are the change list: each write's bump names the entry it changed, so a replica that saw
//! version `s` and finds `g` reads versions `s+1..g` and then only the entries they name — a
//! write costs every replica two reads, whatever the store holds. A replica with nothing seen
//! (its start), further behind than OpenBao's history of the generation, or meeting a version
//! that names nothing (written by an older keybroker), lists and reads everything, at most
//! [`FULL_PULL_CONCURRENCY`] reads at a time. Each version also says what its entry will be
//! once the write it announces lands (`pending.rs`): an entry read before that is read again
//! at each poll until it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use reqwest::Method;
use serde::Deserialize;

use super::pending::{Entry, Expect, LOOKBACK, PATIENCE};
use super::{
    EntryName, FileStore, Kind, KvRead, StoreError, Stored, TeamSlug, VaultStore, malformed,
    read_stored, remote,
};
use crate::source::{KvPart, VaultSource};

/// The versions of the generation this store asks OpenBao to keep (its key's `max_versions`;
/// without the right to set it, OpenBao keeps 10): how far behind a replica may fall and
/// still read only what changed.
pub(super) const GENERATION_HISTORY: u64 = 256;

/// Definitions a full pull reads at once.
pub(crate) const FULL_PULL_CONCURRENCY: usize = 8;

/// What a pull found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pulled {
    Unchanged,
    /// These entries were read again (each now in the mirror as vault holds it, or gone).
    Entries(Vec<(Kind, TeamSlug, EntryName)>),
    /// Everything was read (a full pull).
    Everything,
}

/// One version of the generation: what it names, and what that entry will be.
#[derive(Deserialize)]
struct Change {
    at: Option<String>,
    kind: Option<String>,
    team: Option<String>,
    name: Option<String>,
    /// Absent in versions an older keybroker wrote (after its commit): nothing to wait for.
    expect: Option<Expect>,
}

/// What one version of the generation names.
type Named = (Entry, Option<Expect>);

impl Change {
    fn entry(&self) -> Option<Named> {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| Some(k.dir()) == self.kind.as_deref())?;
        let team = TeamSlug::parse(self.team.as_deref()?).ok()?;
        let name = EntryName::parse(self.name.as_deref()?).ok()?;
        Some(((kind, team, name), self.expect))
    }

    /// Written within [`PATIENCE`]: a write it announces may still be on its way.
    fn recent(&self) -> bool {
        self.at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < PATIENCE)
    }
}

impl VaultStore {
    fn generation_path(&self) -> String {
        format!("{}/generation", self.prefix)
    }

    /// Version `at` of the generation (`None`: the newest) and what it names; `None` when
    /// there is no such version (none yet, or no longer kept).
    async fn generation_at(
        &self,
        at: Option<u64>,
    ) -> Result<Option<(u64, Option<Named>, bool)>, StoreError> {
        let part = at.map_or(KvPart::Data, KvPart::DataAt);
        let Some(body) = self
            .source
            .kv(Method::GET, part, &self.generation_path(), None)
            .await
            .map_err(remote)?
        else {
            return Ok(None);
        };
        let read: KvRead<Change> =
            serde_json::from_slice(&body).map_err(|_| malformed("the store's generation"))?;
        let change = read.data.data.as_ref();
        let entry = change.and_then(Change::entry);
        let recent = change.is_some_and(Change::recent);
        Ok(Some((read.data.metadata.version, entry, recent)))
    }

    /// Once per process, before its first bump: asks OpenBao to keep
    /// [`GENERATION_HISTORY`] versions of the generation. Best effort — without the right
    /// (`update` on its metadata) replicas more than 9 writes behind pull everything.
    pub(super) async fn keep_history(&self) {
        use std::sync::atomic::Ordering;
        if self.history_asked.swap(true, Ordering::Relaxed) {
            return;
        }
        let body = serde_json::json!({ "max_versions": GENERATION_HISTORY });
        let asked = self
            .source
            .kv(
                Method::POST,
                KvPart::Metadata,
                &self.generation_path(),
                Some(bytes::Bytes::from(body.to_string())),
            )
            .await;
        if let Err(e) = asked {
            tracing::info!(error = %e, "store: OpenBao keeps its default history of the generation; replicas far behind pull everything");
        }
    }

    /// When the generation moved since the last pull: what changed into `mirror` (or
    /// everything, see the module's notes).
    pub(crate) async fn pull(&self, mirror: &FileStore) -> Result<Pulled, StoreError> {
        let (generation, newest, _) = self.generation_at(None).await?.unwrap_or((0, None, false));
        let seen = *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = match seen {
            Some(s) if s == generation => Some(BTreeMap::new()),
            Some(s) if s < generation && generation - s <= GENERATION_HISTORY => {
                self.changes(s, generation, newest).await?
            }
            _ => None,
        };
        let pulled = match changes {
            Some(named) => {
                let mut entries = Vec::with_capacity(named.len());
                for (entry, expect) in named {
                    let stored = self.read_entry(mirror, &entry).await?;
                    if let Some(expect) = expect {
                        self.pending.note(entry.clone(), expect, stored);
                    }
                    entries.push(entry);
                }
                Pulled::Entries(entries)
            }
            None => {
                for kind in Kind::ALL {
                    self.pull_kind(kind, mirror).await?;
                }
                self.look_back(generation).await?;
                Pulled::Everything
            }
        };
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(generation);
        self.read_pending(mirror, pulled).await
    }

    /// What versions `seen+1..=generation` name (the newest already read; of an entry named
    /// twice, the later); `None` when one of them is gone or names nothing.
    async fn changes(
        &self,
        seen: u64,
        generation: u64,
        newest: Option<Named>,
    ) -> Result<Option<BTreeMap<Entry, Option<Expect>>>, StoreError> {
        let Some((entry, expect)) = newest else {
            return Ok(None);
        };
        let mut named = BTreeMap::new();
        for v in seen + 1..generation {
            match self.generation_at(Some(v)).await? {
                Some((_, Some((entry, expect)), _)) => {
                    named.insert(entry, expect);
                }
                _ => return Ok(None),
            }
        }
        named.insert(entry, expect);
        Ok(Some(named))
    }

    /// After a full pull: the writes announced in the last [`LOOKBACK`] versions within
    /// [`PATIENCE`] become pending (their entries may have been listed before they landed).
    async fn look_back(&self, generation: u64) -> Result<(), StoreError> {
        // Newest first: of an entry named twice, the later announcement counts.
        let mut named = BTreeSet::new();
        for v in (generation.saturating_sub(LOOKBACK) + 1..=generation).rev() {
            match self.generation_at(Some(v)).await? {
                Some((_, Some((entry, Some(expect))), true)) => {
                    if named.insert(entry.clone()) {
                        self.pending.announce(entry, expect);
                    }
                }
                Some((_, _, true)) => {}
                // Older than the patience, or no longer kept: nothing before it is either.
                _ => break,
            }
        }
        Ok(())
    }

    /// Reads each pending entry that `pulled` did not just read into the mirror again; they
    /// join what was pulled.
    async fn read_pending(&self, mirror: &FileStore, pulled: Pulled) -> Result<Pulled, StoreError> {
        let mut pulled = pulled;
        let Some(pending) = self.pending.entries() else {
            tracing::warn!("store: too many announced writes not landed; reading everything");
            for kind in Kind::ALL {
                self.pull_kind(kind, mirror).await?;
            }
            return Ok(Pulled::Everything);
        };
        for entry in pending {
            if let Pulled::Entries(e) = &pulled
                && e.contains(&entry)
            {
                continue;
            }
            let stored = self.read_entry(mirror, &entry).await?;
            self.pending.settle(&entry, stored);
            if let Pulled::Entries(e) = &mut pulled {
                e.push(entry);
            }
        }
        Ok(match pulled {
            Pulled::Entries(e) if e.is_empty() => Pulled::Unchanged,
            other => other,
        })
    }

    /// `entry` read from vault into the mirror; its KV version (`None`: gone).
    async fn read_entry(
        &self,
        mirror: &FileStore,
        entry: &Entry,
    ) -> Result<Option<u64>, StoreError> {
        let (kind, team, name) = entry;
        let stored = self.read_definition(*kind, team, name).await?;
        let version = stored.as_ref().map(|s| s.0);
        mirror_one(mirror, *kind, team, name, stored)?;
        Ok(version)
    }

    /// Every definition of `kind` into `mirror`, those gone removed.
    async fn pull_kind(&self, kind: Kind, mirror: &FileStore) -> Result<(), StoreError> {
        let base = format!("{}/{}", self.prefix, kind.dir());
        let mut wanted = Vec::new();
        for team in self.list(&base).await? {
            let Ok(team) = TeamSlug::parse(team.trim_end_matches('/')) else {
                continue;
            };
            for name in self.list(&format!("{base}/{team}")).await? {
                if let Ok(name) = EntryName::parse(&name) {
                    wanted.push((team.clone(), name));
                }
            }
        }
        let mut present = BTreeSet::new();
        for (team, name, stored) in read_all(&self.source, &base, wanted).await? {
            if stored.is_some() {
                present.insert((team.clone(), name.clone()));
            }
            mirror_one(mirror, kind, &team, &name, stored)?;
        }
        for (team, name, _) in mirror.records(kind)? {
            if !present.contains(&(team.clone(), name.clone())) {
                mirror.delete(kind, &team, &name)?;
            }
        }
        Ok(())
    }
}

/// The definitions `<base>/<team>/<name>` of `wanted`, [`FULL_PULL_CONCURRENCY`] at a time.
async fn read_all(
    source: &Arc<VaultSource>,
    base: &str,
    wanted: Vec<(TeamSlug, EntryName)>,
) -> Result<Vec<(TeamSlug, EntryName, Option<Stored>)>, StoreError> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut reads = tokio::task::JoinSet::new();
    for (team, name) in wanted {
        if reads.len() >= FULL_PULL_CONCURRENCY
            && let Some(done) = reads.join_next().await
        {
            out.push(done.map_err(|_| malformed("a pull's read"))??);
        }
        let source = Arc::clone(source);
        let path = format!("{base}/{}/{}", team.segment(), name.segment());
        reads.spawn(async move {
            let stored = read_stored(&source, &path).await?;
            Ok::<_, StoreError>((team, name, stored))
        });
    }
    while let Some(done) = reads.join_next().await {
        out.push(done.map_err(|_| malformed("a pull's read"))??);
    }
    Ok(out)
}

/// The mirror's copy of one entry made what vault holds (`None`: removed); unchanged files
/// are not rewritten.
fn mirror_one(
    mirror: &FileStore,
    kind: Kind,
    team: &TeamSlug,
    name: &EntryName,
    stored: Option<Stored>,
) -> Result<(), StoreError> {
    let Some((_, toml, record)) = stored else {
        return mirror.delete(kind, team, name);
    };
    let same_definition = mirror.definition(kind, team, name)?.as_deref() == Some(toml.as_str());
    let same_record = mirror
        .record(kind, team, name)?
        .is_some_and(|r| r.version == record.version && r.revision == record.revision);
    if same_definition && same_record {
        return Ok(());
    }
    mirror.write_definition_with(kind, team, name, (&toml, &record), false)
}

#[cfg(test)]
mod tests;
