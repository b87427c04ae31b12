//! The management plane's store: what the management API creates, kept as the policy and
//! the sources already understand it — each credential's definition a policy file, its
//! material a secret a source serves — so every door, the cache, PEM repair and credential
//! verification apply to API-made credentials unchanged. Two kinds: a folder
//! ([`FileStore`], the `serve --dev` default) and a vault source's KV v2 mount
//! ([`VaultStore`], shared by replicas, mirrored into a local folder the policy loader reads).

mod file;
mod vault;

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub(crate) use crate::policy::{EntryName, TeamSlug};
pub(crate) use file::FileStore;
pub(crate) use vault::VaultStore;
pub(crate) use vault::{Orphans, Pulled};

/// The file source that serves a file store's material.
pub(crate) const SOURCE: &str = crate::config::STORE_SOURCE;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store's record {0} is malformed")]
    Malformed(PathBuf),
    /// Another writer (another replica) changed the credential first.
    #[error("the credential changed meanwhile")]
    Conflict,
    /// The vault store's source failed (what failed, never an answer's text).
    #[error("the store's vault: {0}")]
    Remote(crate::source::SourceError),
}

/// What a store entry is: a credential (definition and material) or a consumer (definition
/// only — its token is kept as a digest, its certificates as fingerprints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Credential,
    Consumer,
    /// The pins of an operator's consumer's renewed certificates (`identity_profile`), kept
    /// beside its policy file: written by keybroker only, never by a team admin.
    Identity,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Credential, Kind::Consumer, Kind::Identity];

    /// The folder of its definitions (a policy folder) in a file store, and under the vault
    /// store's prefix.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Credential => "credentials",
            Self::Consumer => "consumers",
            Self::Identity => "identities",
        }
    }

    /// The folder of its records in a file store.
    fn records_dir(self) -> &'static str {
        match self {
            Self::Credential => "records",
            Self::Consumer => "consumer-records",
            Self::Identity => "identity-records",
        }
    }
}

/// What the store knows of an entry besides its definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Increases with each write of material.
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// Who wrote the current version (`operator` or a consumer's name).
    pub updated_by: String,
    /// A numeric ID for the Tines-shaped routes.
    pub id: u64,
    /// The name as a Tines caller gave it (keybroker's name is its slug).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<u64>,
    /// Increases with every write (a `PATCH` changes the definition, not the material's
    /// `version`): what a check-and-set compares.
    #[serde(default)]
    pub revision: u64,
    /// A credential's material versions, newest last (at most [`MAX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<VersionRecord>,
    /// A staged rotation: the version in force until `activate_at` (the newest, `version`,
    /// takes over then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_at: Option<String>,
    /// Bytes of the in-force version's material (a team's quota counts them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    /// A consumer's certificates, every one ever added (revoked ones stay, revoked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateRecord>,
}

impl Record {
    /// The record of an entry's first write, at `at`, by `by`.
    pub fn first(at: String, by: String, id: u64) -> Self {
        Self {
            version: 1,
            revision: 1,
            created_at: at.clone(),
            updated_at: at,
            updated_by: by,
            id,
            display_name: None,
            folder_id: None,
            history: Vec::new(),
            certificates: Vec::new(),
            current_version: None,
            activate_at: None,
            bytes: 0,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Material versions a record remembers.
pub(crate) const MAX_HISTORY: usize = 100;

/// One version of a credential's material: who wrote it when, and the public facts of its
/// certificate — never a value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u64,
    pub at: String,
    pub by: String,
    /// Hex SHA-256 of the client certificate (mtls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// A consumer's certificate as the store remembers it: public facts and its lifecycle
/// (Gravitee's states are computed from these at each read).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Hex SHA-256 of the DER.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    /// The certificate's own validity (RFC 3339).
    pub not_before: String,
    pub not_after: String,
    /// When it starts and stops identifying the consumer (RFC 3339; none: from now, until
    /// it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    pub added_at: String,
    pub added_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// The certificate itself (base64 DER; public): a later issuer ACL is checked against
    /// it, so no ACL can claim a certificate a consumer is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// `v<N>` (a material version's name, its extension removed) as `N`.
fn version_of(name: &str) -> Option<u64> {
    name.strip_prefix('v')?.parse().ok()
}

/// Whether material version `version` is referenced: the credential's current one or an
/// earlier one (kept, like a KV version history).
fn referenced(record: Option<&Record>, version: u64) -> bool {
    record.is_some_and(|r| version <= r.version)
}

/// Now, as the store's records write times.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// One write of a credential: its material (version `record.version`), definition and record.
/// (`Debug` shows no value: `SecretString` redacts.)
#[derive(Debug)]
pub struct Write<'a> {
    pub team: &'a TeamSlug,
    pub name: &'a EntryName,
    pub fields: &'a [(&'a str, &'a SecretString)],
    pub toml: &'a str,
    pub record: &'a Record,
}

/// The store of a broker: a folder, or a vault mount mirrored into one.
#[derive(Debug)]
pub struct Store {
    /// The file store, or the vault store's local mirror (definitions and records).
    local: FileStore,
    remote: Option<VaultStore>,
    /// What one team may keep here.
    quota: crate::config::QuotaConfig,
}

impl Store {
    pub fn file(local: FileStore) -> Self {
        Self {
            local,
            remote: None,
            quota: crate::config::QuotaConfig::default(),
        }
    }

    pub fn vault(mirror: FileStore, remote: VaultStore) -> Self {
        Self {
            local: mirror,
            remote: Some(remote),
            quota: crate::config::QuotaConfig::default(),
        }
    }

    /// The store's background work (its own vault login's renewal), started by the server's
    /// operations.
    pub fn start(&self) {
        if let Some(remote) = &self.remote {
            remote.start();
        }
    }

    /// This store with `[store.quota]`.
    pub fn with_quota(self, quota: crate::config::QuotaConfig) -> Self {
        Self { quota, ..self }
    }

    pub fn quota(&self) -> crate::config::QuotaConfig {
        self.quota
    }

    /// The area of a source the store's material lives in: (source, folder; empty: all of
    /// the file source `store`).
    pub fn area(&self) -> (String, String) {
        match &self.remote {
            Some(v) => v.area(),
            None => (SOURCE.to_owned(), String::new()),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    /// The policy folders of the definitions (the mirror's, for a vault store).
    pub fn definitions_dirs(&self) -> Vec<PathBuf> {
        Kind::ALL
            .iter()
            .map(|k| self.local.definitions_dir(*k))
            .collect()
    }

    /// The file store's material folder (the `store` file source); none for a vault store.
    pub fn material_dir(&self) -> Option<PathBuf> {
        self.remote.is_none().then(|| self.local.material())
    }

    /// The source and path a reference to a version's material names.
    pub fn reference(&self, team: &TeamSlug, name: &EntryName, version: u64) -> (String, String) {
        match &self.remote {
            Some(v) => v.reference(team, name, version),
            None => (
                SOURCE.to_owned(),
                FileStore::material_path(team, name, version),
            ),
        }
    }

    /// The local file of an entry's definition (the file store's, or the vault store's
    /// mirror): what the policy loader names in its lines.
    pub fn definition_file(&self, kind: Kind, team: &TeamSlug, name: &EntryName) -> PathBuf {
        self.local.definition_path(kind, team, name)
    }

    pub fn record(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<Record>, StoreError> {
        self.local.record(kind, team, name)
    }

    pub fn records(&self, kind: Kind) -> Result<Vec<(TeamSlug, EntryName, Record)>, StoreError> {
        self.local.records(kind)
    }

    /// The records of `kind` in `team` alone.
    pub fn team_records(
        &self,
        kind: Kind,
        team: &TeamSlug,
    ) -> Result<Vec<(EntryName, Record)>, StoreError> {
        self.local.team_records(kind, team)
    }

    pub fn definition(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<String>, StoreError> {
        self.local.definition(kind, team, name)
    }

    /// Writes the material, then the definition and record — the commit point; for a vault
    /// store only if vault still holds `previous` ([`StoreError::Conflict`] otherwise).
    pub async fn write(&self, w: Write<'_>, previous: Option<&Record>) -> Result<(), StoreError> {
        let Write {
            team,
            name,
            fields,
            toml,
            record,
        } = w;
        match &self.remote {
            Some(v) => v.write_material(team, name, record.version, fields).await?,
            None => self
                .local
                .write_material(team, name, record.version, fields)?,
        }
        self.commit(Kind::Credential, team, name, toml, record, previous)
            .await
    }

    /// Writes a definition and its record — the commit point; for a vault store only if
    /// vault still holds `previous` ([`StoreError::Conflict`] otherwise). A consumer's whole
    /// write; a credential's after its material.
    pub async fn commit(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        toml: &str,
        record: &Record,
        previous: Option<&Record>,
    ) -> Result<(), StoreError> {
        if let Some(v) = &self.remote {
            v.commit(kind, team, name, toml, record, previous).await?;
        }
        self.local.write_definition(kind, team, name, toml, record)
    }

    /// Puts back what [`Store::write`] replaced (`None`: there was nothing), after a write
    /// the policy refused to load.
    pub async fn restore(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        written: &Record,
        previous: Option<(&str, &Record)>,
    ) -> Result<(), StoreError> {
        if let Some(v) = &self.remote {
            v.restore(kind, team, name, written, previous).await?;
        }
        self.local.restore(kind, team, name, previous)
    }

    /// Removes the definition (the commit point), the record and, for a credential, every
    /// version of the material.
    pub async fn delete(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        previous: &Record,
    ) -> Result<(), StoreError> {
        if let Some(v) = &self.remote {
            v.delete(kind, team, name, previous).await?;
        }
        self.local.delete(kind, team, name)
    }

    /// The fingerprints revoked in `team` whose consumer is gone: they stay revoked (a
    /// tombstone only the operator lifts), so deleting a consumer is no way around a
    /// revocation.
    pub async fn revoked(
        &self,
        team: &TeamSlug,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        match &self.remote {
            Some(v) => v.revoked(team).await.map(|(_, set)| set),
            None => self.local.revoked(team),
        }
    }

    /// Changes `team`'s tombstones with `change` (for a vault store with check-and-set:
    /// another replica's change in between is a [`StoreError::Conflict`]).
    pub async fn change_revoked(
        &self,
        team: &TeamSlug,
        change: impl FnOnce(&mut std::collections::BTreeSet<String>),
    ) -> Result<(), StoreError> {
        match &self.remote {
            Some(v) => {
                let (cas, mut set) = v.revoked(team).await?;
                change(&mut set);
                v.set_revoked(team, cas, &set).await
            }
            None => {
                let mut set = self.local.revoked(team)?;
                change(&mut set);
                self.local.set_revoked(team, &set)
            }
        }
    }

    /// A new credential's numeric ID (Tines' `id`): one past every ID in the store; for a
    /// vault store a counter every replica takes from with check-and-set, so two replicas
    /// creating at once never hand out the same ID. The store's records are read once (the
    /// first ID of a file store, or of a vault store without a counter yet), not per write.
    pub async fn allocate_id(&self) -> Result<u64, StoreError> {
        match &self.remote {
            Some(v) => v.allocate_id(|| self.local.max_id().map(|m| m + 1)).await,
            None => self.local.next_id(),
        }
    }

    /// The orphan sweep: removes material versions no definition references (newer than the credential's
    /// version, or of a credential that has none) once older than `grace`: what a write that
    /// crashed, or lost a race, between its two steps left. Younger ones may belong to a
    /// write in progress (on another replica) and stay. Returns how many were removed.
    ///
    /// In two halves, so that listing every credential's material does not hold the write
    /// lock: [`Store::find_orphans`] without it, [`Store::remove_orphans`] under it.
    pub(crate) async fn find_orphans(
        &self,
        grace: std::time::Duration,
    ) -> Result<Orphans, StoreError> {
        match &self.remote {
            Some(v) => v.find_orphans(grace, &self.local).await,
            // A file store's listing is local and quick: done whole in the second half.
            None => Ok(Orphans::default()),
        }
    }

    /// The second half of the sweep, under the write lock: each of `found` checked again
    /// against its definition as the store holds it now, and removed (a file store: the
    /// whole local sweep). Returns how many versions were removed.
    pub(crate) async fn remove_orphans(
        &self,
        found: Orphans,
        grace: std::time::Duration,
    ) -> Result<usize, StoreError> {
        match &self.remote {
            Some(_) if found.is_empty() => Ok(0),
            Some(v) => v.remove_orphans(found).await,
            None => self.local.collect_orphans(grace),
        }
    }

    /// A vault store: pulls what other replicas wrote into the mirror.
    pub(crate) async fn pull(&self) -> Result<Pulled, StoreError> {
        match &self.remote {
            Some(v) => v.pull(&self.local).await,
            None => Ok(Pulled::Unchanged),
        }
    }
}
