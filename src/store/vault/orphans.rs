//! The vault store's orphan sweep in two halves: what looks unreferenced is found without
//! the write lock (lists of every credential's material: O(store) requests, seconds at
//! 10,000), and only those candidates are checked again — their definitions read from vault
//! — and removed under it. Listing under the lock stalled this replica's writes and pulls
//! for the whole sweep (6.3 s at 5,000 credentials, docs/PERFORMANCE.md).

use reqwest::Method;
use serde::Deserialize;

use super::{EntryName, FileStore, Kind, StoreError, TeamSlug, VaultStore, remote};
use crate::source::KvPart;

/// Material versions that looked unreferenced and older than the grace when listed.
#[derive(Debug, Default)]
pub(crate) struct Orphans(Vec<(TeamSlug, EntryName, u64, String)>);

impl Orphans {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl VaultStore {
    /// Every material version older than `grace` that the mirror's definition (vault's, when
    /// the mirror has none) does not reference. The mirror may lag: a version it references
    /// is referenced (a credential's version only grows), one it does not is checked against
    /// vault again by [`VaultStore::remove_orphans`].
    pub(crate) async fn find_orphans(
        &self,
        grace: std::time::Duration,
        mirror: &FileStore,
    ) -> Result<Orphans, StoreError> {
        let base = format!("{}/material", self.prefix);
        let now = std::time::SystemTime::now();
        let mut found = Vec::new();
        for team in self.list(&base).await? {
            // What vault lists that is not a name was not written by a store: skipped.
            let Ok(team) = TeamSlug::parse(team.trim_end_matches('/')) else {
                continue;
            };
            for name in self.list(&format!("{base}/{team}")).await? {
                let Ok(name) = EntryName::parse(name.trim_end_matches('/')) else {
                    continue;
                };
                let dir = format!("{base}/{team}/{name}");
                // The mirror's definition when it has one (no request); else vault's (a
                // replica's first sweep runs beside its first pull, on an empty mirror).
                let record = match mirror.record(Kind::Credential, &team, &name)? {
                    Some(r) => Some(r),
                    None => self
                        .read_definition(Kind::Credential, &team, &name)
                        .await?
                        .map(|(_, _, r)| r),
                };
                for version in self.list(&dir).await? {
                    let Some(n) = crate::store::version_of(&version) else {
                        continue;
                    };
                    if crate::store::referenced(record.as_ref(), n) {
                        continue;
                    }
                    let path = format!("{dir}/{version}");
                    if self.older_than(&path, grace, now).await? {
                        found.push((team.clone(), name.clone(), n, path));
                    }
                }
            }
        }
        Ok(Orphans(found))
    }

    /// Whether the KV secret at `path` was created `grace` or longer before `now`.
    async fn older_than(
        &self,
        path: &str,
        grace: std::time::Duration,
        now: std::time::SystemTime,
    ) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct Meta {
            data: MetaData,
        }
        #[derive(Deserialize)]
        struct MetaData {
            created_time: String,
        }
        let Some(meta) = self
            .source
            .kv(Method::GET, KvPart::Metadata, path, None)
            .await
            .map_err(remote)?
        else {
            return Ok(false);
        };
        let created = serde_json::from_slice::<Meta>(&meta)
            .ok()
            .and_then(|m| humantime::parse_rfc3339_weak(&m.data.created_time).ok());
        Ok(created.is_some_and(|t| now.duration_since(t).is_ok_and(|age| age >= grace)))
    }

    /// Under the write lock: each of `found` whose definition, read from vault now, still
    /// does not reference it, removed. Returns how many were.
    pub(crate) async fn remove_orphans(&self, found: Orphans) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut last: Option<(TeamSlug, EntryName, Option<crate::store::Record>)> = None;
        for (team, name, version, path) in found.0 {
            let same = last
                .as_ref()
                .is_some_and(|(t, n, _)| *t == team && *n == name);
            if !same {
                let record = self
                    .read_definition(Kind::Credential, &team, &name)
                    .await?
                    .map(|(_, _, r)| r);
                last = Some((team, name, record));
            }
            let record = last.as_ref().and_then(|(_, _, r)| r.as_ref());
            if crate::store::referenced(record, version) {
                continue;
            }
            self.source
                .kv(Method::DELETE, KvPart::Metadata, &path, None)
                .await
                .map_err(remote)?;
            removed += 1;
        }
        Ok(removed)
    }
}
