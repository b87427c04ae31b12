//! `[store] kind = "vault"`: the store kept in a vault source's KV v2 mount, shared by every
//! replica — under `<prefix>/`:
//! - `credentials/<team>/<name>`, `consumers/<team>/<name>`: `{definition, record}` (the
//!   policy TOML and the record);
//! - `material/<team>/<name>/v<N>`: the material's fields, one KV secret per version, read by
//!   the vault source itself like any secret;
//! - `generation`: bumped by every write, each version naming the entry it changed — the
//!   change list; each replica polls it and, when it moved, reads only the entries named since
//!   the version it saw into its local mirror (a [`FileStore`] folder the policy loader reads)
//!   and reloads them (`pull.rs`).
//!
//! Writes: material first (a new path per version), then the generation announcing the entry
//! and the KV version it will have (`pending.rs`), then the definition with check-and-set
//! (`cas` = the KV version this replica saw, 0 to create) — the commit point, so two replicas
//! racing on one credential cannot both win. Announced before the commit, a write whose
//! writer dies or fails half-way is still named to every replica.

use bytes::Bytes;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;

use super::{EntryName, FileStore, Kind, Record, StoreError, TeamSlug};
use crate::secret::SecretBuf;
use crate::source::{KvPart, SourceError, VaultSource};

mod orphans;
mod pending;
mod pull;
pub(crate) use orphans::Orphans;
pub(crate) use pull::Pulled;

#[derive(Debug)]
pub struct VaultStore {
    source: Arc<VaultSource>,
    source_name: String,
    prefix: String,
    /// The generation this replica's mirror reflects.
    seen: std::sync::Mutex<Option<u64>>,
    /// Whether this process asked OpenBao to keep the generation's history (once).
    history_asked: std::sync::atomic::AtomicBool,
    /// Entries announced but not yet seen as announced: read again at each poll.
    pending: pending::Pending,
}

/// What a KV v2 `data/` read answers, for the store's own records (no material).
#[derive(Deserialize)]
struct KvRead<T> {
    data: KvReadData<T>,
}
#[derive(Deserialize)]
struct KvReadData<T> {
    data: Option<T>,
    metadata: KvMeta,
}
#[derive(Deserialize)]
struct KvMeta {
    version: u64,
}
#[derive(Deserialize)]
struct StoredDefinition {
    definition: String,
    record: String,
}
#[derive(Deserialize)]
struct KvWritten {
    data: KvMeta,
}
#[derive(Deserialize)]
struct KvList {
    data: KvListData,
}
#[derive(Deserialize)]
struct KvListData {
    keys: Vec<String>,
}

/// A definition as vault holds it: its KV version, the policy TOML and the record.
type Stored = (u64, String, Record);

/// The definition at `path`, if any.
async fn read_stored(source: &VaultSource, path: &str) -> Result<Option<Stored>, StoreError> {
    let Some(body) = source
        .kv(Method::GET, KvPart::Data, path, None)
        .await
        .map_err(remote)?
    else {
        return Ok(None);
    };
    let read: KvRead<StoredDefinition> =
        serde_json::from_slice(&body).map_err(|_| malformed("a stored definition"))?;
    // A deleted version (soft delete) answers `data: null`.
    let Some(stored) = read.data.data else {
        return Ok(None);
    };
    let record: Record =
        serde_json::from_str(&stored.record).map_err(|_| malformed("a stored record"))?;
    Ok(Some((
        read.data.metadata.version,
        stored.definition,
        record,
    )))
}

fn remote(e: SourceError) -> StoreError {
    StoreError::Remote(e)
}

fn malformed(what: &str) -> StoreError {
    StoreError::Malformed(what.into())
}

impl VaultStore {
    pub fn new(source: Arc<VaultSource>, source_name: &str, prefix: &str) -> Self {
        Self {
            source,
            source_name: source_name.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            seen: std::sync::Mutex::new(None),
            history_asked: std::sync::atomic::AtomicBool::new(false),
            pending: pending::Pending::default(),
        }
    }

    /// Its login's background work, when the store logs in on its own (`[store] auth`: a
    /// source of its own, named `<source> (store)`); a source shared with the reads is
    /// started as a source.
    pub fn start(&self) {
        use crate::source::SecretSource as _;
        if self.source.name() != self.source_name {
            self.source.start();
        }
    }

    /// The vault source and the folder of it the store writes under.
    pub fn area(&self) -> (String, String) {
        (self.source_name.clone(), self.prefix.clone())
    }

    /// The vault source that serves the material, and the path of a version's material.
    pub fn reference(&self, team: &TeamSlug, name: &EntryName, version: u64) -> (String, String) {
        (
            self.source_name.clone(),
            format!(
                "{}/material/{}",
                self.prefix,
                FileStore::material_path(team, name, version)
            ),
        )
    }

    fn definition_path(&self, kind: Kind, team: &TeamSlug, name: &EntryName) -> String {
        format!(
            "{}/{}/{}/{}",
            self.prefix,
            kind.dir(),
            team.segment(),
            name.segment()
        )
    }

    async fn list(&self, path: &str) -> Result<Vec<String>, StoreError> {
        let list = Method::from_bytes(b"LIST").unwrap_or(Method::GET);
        match self
            .source
            .kv(list, KvPart::Metadata, path, None)
            .await
            .map_err(remote)?
        {
            None => Ok(Vec::new()),
            Some(body) => Ok(serde_json::from_slice::<KvList>(&body)
                .map_err(|_| malformed("a vault list answer"))?
                .data
                .keys),
        }
    }

    /// The definition in vault with its KV version, if any.
    async fn read_definition(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<Stored>, StoreError> {
        read_stored(&self.source, &self.definition_path(kind, team, name)).await
    }

    async fn put(&self, path: &str, body: Bytes) -> Result<u64, StoreError> {
        let answer = self
            .source
            .kv(Method::POST, KvPart::Data, path, Some(body))
            .await
            .map_err(|e| match e {
                // Vault's answer to a check-and-set that did not match: another writer won.
                SourceError::Invalid(_) => StoreError::Conflict,
                other => remote(other),
            })?
            .ok_or_else(|| malformed("a vault write answer"))?;
        Ok(serde_json::from_slice::<KvWritten>(&answer)
            .map_err(|_| malformed("a vault write answer"))?
            .data
            .version)
    }

    /// Writes version `version` of the material — before the definition that references it.
    pub async fn write_material(
        &self,
        team: &TeamSlug,
        name: &EntryName,
        version: u64,
        fields: &[(&str, &SecretString)],
    ) -> Result<(), StoreError> {
        let mut body = SecretBuf::with_capacity(
            fields
                .iter()
                .map(|(k, v)| k.len() + v.expose_secret().len() + 8)
                .sum::<usize>()
                + 32,
        );
        // cas = 0: a version's material is written once, never over another's.
        body.push_str("{\"options\":{\"cas\":0},\"data\":");
        body.push_object(fields.iter().map(|(k, v)| (*k, *v)));
        body.push_str("}");
        let (_, path) = self.reference(team, name, version);
        self.put(&path, Bytes::from_owner(body)).await.map(|_| ())
    }

    /// Announces the write in the generation, then writes the definition if vault still holds
    /// `previous` (`None`: nothing). [`StoreError::Conflict`] when another replica changed it
    /// first.
    pub async fn commit(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        toml: &str,
        record: &Record,
        previous: Option<&Record>,
    ) -> Result<(), StoreError> {
        let cas = self.expect(kind, team, name, previous).await?;
        self.bump(kind, team, name, pending::Expect::Version(cas + 1))
            .await?;
        let body = serde_json::json!({
            "options": { "cas": cas },
            "data": {
                "definition": toml,
                "record": serde_json::to_string(record).unwrap_or_default(),
            },
        });
        self.put(
            &self.definition_path(kind, team, name),
            Bytes::from(body.to_string()),
        )
        .await?;
        self.pending.landed(&(kind, team.clone(), name.clone()));
        Ok(())
    }

    /// The KV version to check-and-set against: vault must hold what this replica last saw.
    /// A create needs no read: `cas = 0` already fails when anything is there (a deleted
    /// entry's versions go with its metadata).
    async fn expect(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        previous: Option<&Record>,
    ) -> Result<u64, StoreError> {
        if previous.is_none() {
            return Ok(0);
        }
        match (self.read_definition(kind, team, name).await?, previous) {
            (None, None) => Ok(0),
            (Some((kv, _, now)), Some(prev))
                if now.version == prev.version && now.revision == prev.revision =>
            {
                Ok(kv)
            }
            _ => Err(StoreError::Conflict),
        }
    }

    /// The fingerprints revoked in `team` that outlived their consumer (`<prefix>/revoked/
    /// <team>`), with the KV version to check-and-set against (0: none yet).
    pub async fn revoked(
        &self,
        team: &TeamSlug,
    ) -> Result<(u64, std::collections::BTreeSet<String>), StoreError> {
        #[derive(Deserialize)]
        struct Revoked {
            fingerprints: std::collections::BTreeSet<String>,
        }
        let path = format!("{}/revoked/{}", self.prefix, team.segment());
        let Some(body) = self
            .source
            .kv(Method::GET, KvPart::Data, &path, None)
            .await
            .map_err(remote)?
        else {
            return Ok((0, Default::default()));
        };
        let read: KvRead<Revoked> =
            serde_json::from_slice(&body).map_err(|_| malformed("the revoked fingerprints"))?;
        Ok((
            read.data.metadata.version,
            read.data.data.map(|r| r.fingerprints).unwrap_or_default(),
        ))
    }

    /// Writes `team`'s revoked fingerprints if vault still holds version `cas`.
    pub async fn set_revoked(
        &self,
        team: &TeamSlug,
        cas: u64,
        fingerprints: &std::collections::BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let path = format!("{}/revoked/{}", self.prefix, team.segment());
        let body = serde_json::json!({
            "options": { "cas": cas },
            "data": { "fingerprints": fingerprints },
        });
        self.put(&path, Bytes::from(body.to_string()))
            .await
            .map(|_| ())
    }

    /// Announces the deletion in the generation, deletes the definition (every KV version —
    /// the commit point), then every version of a credential's material.
    pub async fn delete(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        previous: &Record,
    ) -> Result<(), StoreError> {
        self.expect(kind, team, name, Some(previous)).await?;
        self.bump(kind, team, name, pending::Expect::Gone).await?;
        self.source
            .kv(
                Method::DELETE,
                KvPart::Metadata,
                &self.definition_path(kind, team, name),
                None,
            )
            .await
            .map_err(remote)?;
        self.pending.landed(&(kind, team.clone(), name.clone()));
        if kind != Kind::Credential {
            return Ok(());
        }
        let base = format!(
            "{}/material/{}/{}",
            self.prefix,
            team.segment(),
            name.segment()
        );
        for version in self.list(&base).await? {
            self.source
                .kv(
                    Method::DELETE,
                    KvPart::Metadata,
                    &format!("{base}/{version}"),
                    None,
                )
                .await
                .map_err(remote)?;
        }
        Ok(())
    }

    /// Puts back a definition after the writing replica's policy refused the new one.
    pub async fn restore(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        written: &Record,
        previous: Option<(&str, &Record)>,
    ) -> Result<(), StoreError> {
        match previous {
            Some((toml, record)) => {
                self.commit(kind, team, name, toml, record, Some(written))
                    .await
            }
            None => self.delete(kind, team, name, written).await,
        }
    }

    /// Takes the next ID from the store's counter (`<prefix>/ids`; none yet: `floor()`):
    /// read, then write the next value with check-and-set; a replica that lost the race
    /// reads again.
    pub async fn allocate_id(
        &self,
        floor: impl Fn() -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Next {
            next: u64,
        }
        let path = format!("{}/ids", self.prefix);
        for _ in 0..16 {
            let (cas, next) = match self
                .source
                .kv(Method::GET, KvPart::Data, &path, None)
                .await
                .map_err(remote)?
            {
                None => (0, floor()?),
                Some(body) => {
                    let ids: KvRead<Next> =
                        serde_json::from_slice(&body).map_err(|_| malformed("the store's ids"))?;
                    let next = match ids.data.data {
                        Some(n) => n.next,
                        None => floor()?,
                    };
                    (ids.data.metadata.version, next)
                }
            };
            let body = serde_json::json!({
                "options": { "cas": cas },
                "data": { "next": next + 1 },
            });
            match self.put(&path, Bytes::from(body.to_string())).await {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// A new generation announcing a write: every replica's poll sees it and reads that entry
    /// until vault holds what `expect` says.
    async fn bump(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        expect: pending::Expect,
    ) -> Result<(), StoreError> {
        self.keep_history().await;
        let body = serde_json::json!({ "data": {
            "at": crate::store::now(),
            "kind": kind.dir(),
            "team": team.segment(),
            "name": name.segment(),
            "expect": expect,
        }});
        let path = format!("{}/generation", self.prefix);
        let version = self.put(&path, Bytes::from(body.to_string())).await?;
        // This replica's own write: its mirror is current only if no one wrote in between.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.is_some_and(|s| s + 1 == version) {
            *seen = Some(version);
        }
        drop(seen);
        self.pending
            .announce((kind, team.clone(), name.clone()), expect);
        Ok(())
    }
}
