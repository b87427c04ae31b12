//! `[store] kind = "file"`: a folder — each credential's definition a policy file
//! (`credentials/<team>/<name>.toml`, loaded with the policy folder), its material a JSON file
//! per version (`material/<team>/<name>/v<N>.json`, served by the file source `store`), its
//! record `records/<team>/<name>.json`; a consumer's definition `consumers/<team>/<name>.toml`,
//! its record `consumer-records/<team>/<name>.json`. Also the local mirror of a vault store. Writes are
//! atomic (a temporary file renamed into place, 0600); material first, then the definition —
//! the definition's rename is the commit point, so a failure in between leaves an
//! unreferenced material file, never a definition without its material.

use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use super::{EntryName, Kind, Record, StoreError, TeamSlug};
use crate::secret::SecretBuf;

#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    /// The highest credential ID handed out (read from the records once, then counted).
    last_id: std::sync::Mutex<Option<u64>>,
}

impl FileStore {
    /// The store at `root`, its folders created (0700).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for kind in Kind::ALL {
            create_private_dir(&root.join(kind.dir()))?;
            create_private_dir(&root.join(kind.records_dir()))?;
        }
        create_private_dir(&root.join("material"))?;
        Ok(Self {
            root: root.to_owned(),
            last_id: std::sync::Mutex::new(None),
        })
    }

    /// The highest credential ID in the records (0: none).
    pub fn max_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .records(Kind::Credential)?
            .iter()
            .map(|(_, _, r)| r.id)
            .max()
            .unwrap_or(0))
    }

    /// A new credential ID: one past every ID in the records and every one handed out
    /// before (a refused create's is not handed out again). Writes are serialized by the
    /// manager; the lock only keeps the count whole.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let mut last = self
            .last_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match *last {
            Some(n) => n + 1,
            None => self.max_id()? + 1,
        };
        *last = Some(next);
        Ok(next)
    }

    /// Where the definitions of `kind` are (a policy folder).
    pub fn definitions_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.dir())
    }

    /// Where the material is (the `store` file source's folder).
    pub fn material(&self) -> PathBuf {
        self.root.join("material")
    }

    pub fn definition_path(&self, kind: Kind, team: &TeamSlug, name: &EntryName) -> PathBuf {
        self.root
            .join(kind.dir())
            .join(team.segment())
            .join(format!("{}.toml", name.segment()))
    }

    fn record_path(&self, kind: Kind, team: &TeamSlug, name: &EntryName) -> PathBuf {
        self.root
            .join(kind.records_dir())
            .join(team.segment())
            .join(format!("{}.json", name.segment()))
    }

    /// The path (`<team>/<name>/v<N>`) a reference to a version's material names.
    pub fn material_path(team: &TeamSlug, name: &EntryName, version: u64) -> String {
        format!("{}/{}/v{version}", team.segment(), name.segment())
    }

    pub fn record(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<Record>, StoreError> {
        let path = self.record_path(kind, team, name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| StoreError::Malformed(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Every record of `kind`, with its team and name (the Tines routes find a credential
    /// by `id`).
    /// Files whose names are not names (put there by hand) are not entries: skipped.
    pub fn records(&self, kind: Kind) -> Result<Vec<(TeamSlug, EntryName, Record)>, StoreError> {
        let mut out = Vec::new();
        for team in read_dir(&self.root.join(kind.records_dir()))? {
            let Ok(team) = TeamSlug::parse(&team.file_name().to_string_lossy()) else {
                continue;
            };
            out.extend(
                self.team_records(kind, &team)?
                    .into_iter()
                    .map(|(n, r)| (team.clone(), n, r)),
            );
        }
        Ok(out)
    }

    /// The records of `kind` in `team` alone (a write's quota looks at its own team's).
    pub fn team_records(
        &self,
        kind: Kind,
        team: &TeamSlug,
    ) -> Result<Vec<(EntryName, Record)>, StoreError> {
        let dir = self.root.join(kind.records_dir()).join(team.segment());
        let files = match read_dir(&dir) {
            Err(StoreError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Vec::new());
            }
            other => other?,
        };
        let mut out = Vec::new();
        for file in files {
            let file_name = file.file_name().to_string_lossy().into_owned();
            let Some(Ok(name)) = file_name.strip_suffix(".json").map(EntryName::parse) else {
                continue;
            };
            if let Some(r) = self.record(kind, team, &name)? {
                out.push((name, r));
            }
        }
        Ok(out)
    }

    /// Writes version `version` of the material (fields by name, JSON) — before the
    /// definition that references it.
    pub fn write_material(
        &self,
        team: &TeamSlug,
        name: &EntryName,
        version: u64,
        fields: &[(&str, &secrecy::SecretString)],
    ) -> Result<(), StoreError> {
        let mut body = SecretBuf::with_capacity(
            fields
                .iter()
                .map(|(k, v)| k.len() + v.expose_secret().len() + 8)
                .sum::<usize>()
                + 2,
        );
        body.push_object(fields.iter().map(|(k, v)| (*k, *v)));
        let path = self
            .root
            .join("material")
            .join(format!("{}.json", Self::material_path(team, name, version)));
        write_atomic(&path, body.as_bytes(), true)
    }

    /// Writes the definition (policy TOML) and the record: the commit point of a write.
    pub fn write_definition(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        toml: &str,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.write_definition_with(kind, team, name, (toml, record), true)
    }

    /// As [`FileStore::write_definition`]; `durable = false` for a vault store's mirror
    /// during a pull: nothing synced (a full pull syncs 4 times per entry otherwise — 30 s of
    /// a replica's start at 5,000 credentials), and a replica's start pulls whole again.
    pub fn write_definition_with(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        (toml, record): (&str, &Record),
        durable: bool,
    ) -> Result<(), StoreError> {
        let record_bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&self.record_path(kind, team, name), &record_bytes, durable)?;
        write_atomic(
            &self.definition_path(kind, team, name),
            toml.as_bytes(),
            durable,
        )
    }

    /// Puts back what `write_definition` replaced (`None`: there was nothing), after a write
    /// the policy refused to load.
    pub fn restore(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        previous: Option<(&str, &Record)>,
    ) -> Result<(), StoreError> {
        match previous {
            Some((toml, record)) => self.write_definition(kind, team, name, toml, record),
            None => self.delete(kind, team, name),
        }
    }

    /// The definition's text as stored, if any.
    pub fn definition(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<String>, StoreError> {
        let path = self.definition_path(kind, team, name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Removes the definition (the commit point: no door serves it after the reload), then
    /// the record and, for a credential, every version of the material.
    pub fn delete(&self, kind: Kind, team: &TeamSlug, name: &EntryName) -> Result<(), StoreError> {
        for path in [
            self.definition_path(kind, team, name),
            self.record_path(kind, team, name),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Write { path, source }),
            }
        }
        if kind != Kind::Credential {
            return Ok(());
        }
        let material = self
            .root
            .join("material")
            .join(team.segment())
            .join(name.segment());
        match std::fs::remove_dir_all(&material) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write {
                path: material,
                source,
            }),
        }
    }
}

impl FileStore {
    fn revoked_path(&self, team: &TeamSlug) -> PathBuf {
        self.root
            .join("revoked")
            .join(format!("{}.json", team.segment()))
    }

    /// The fingerprints revoked in `team` that outlived their consumer.
    pub fn revoked(
        &self,
        team: &TeamSlug,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let path = self.revoked_path(team);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| StoreError::Malformed(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    pub fn set_revoked(
        &self,
        team: &TeamSlug,
        fingerprints: &std::collections::BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let path = self.revoked_path(team);
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        write_atomic(
            &path,
            &serde_json::to_vec(fingerprints).unwrap_or_default(),
            true,
        )
    }
}

impl FileStore {
    /// The whole sweep of [`super::Store::remove_orphans`], local and quick.
    pub fn collect_orphans(&self, grace: std::time::Duration) -> Result<usize, StoreError> {
        let read = read_dir;
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for team in read(&self.material())? {
            let Ok(team_name) = TeamSlug::parse(&team.file_name().to_string_lossy()) else {
                continue;
            };
            for cred in read(&team.path())? {
                let Ok(name) = EntryName::parse(&cred.file_name().to_string_lossy()) else {
                    continue;
                };
                let record = self.record(Kind::Credential, &team_name, &name)?;
                for file in read(&cred.path())? {
                    let file_name = file.file_name().to_string_lossy().into_owned();
                    let Some(version) = file_name.strip_suffix(".json").and_then(super::version_of)
                    else {
                        continue;
                    };
                    let old = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= grace));
                    if !super::referenced(record.as_ref(), version) && old {
                        std::fs::remove_file(file.path()).map_err(|source| StoreError::Write {
                            path: file.path(),
                            source,
                        })?;
                        removed += 1;
                    }
                }
                // An emptied folder of a credential that does not exist goes too.
                if record.is_none() {
                    let _ = std::fs::remove_dir(cred.path());
                }
            }
        }
        Ok(removed)
    }
}

/// The entries of folder `p`.
fn read_dir(p: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    std::fs::read_dir(p)
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .map_err(|source| StoreError::Read {
            path: p.to_owned(),
            source,
        })
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path` atomically (0600) in a private folder. Writes are serialized by
/// the broker (one management write at a time).
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
    crate::atomic_file::write_with(path, bytes, 0o600, durable).map_err(|source| {
        StoreError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn record(version: u64) -> Record {
        Record {
            version,
            revision: version,
            ..Record::first(String::new(), "operator".to_owned(), 1)
        }
    }

    /// What a crashed or lost write left is removed once old; the current and earlier
    /// versions stay, and so does anything young enough to be a write in progress.
    #[test]
    fn orphans_are_collected_once_old_and_nothing_referenced_is() {
        let t = TeamSlug::parse("payments").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let value = secrecy::SecretString::from("v".to_owned());
        let fields = [("value", &value)];
        for v in 1..=3 {
            store
                .write_material(&t, &EntryName::parse("live").unwrap(), v, &fields)
                .unwrap();
        }
        store
            .write_definition(
                Kind::Credential,
                &t,
                &EntryName::parse("live").unwrap(),
                "x",
                &record(2),
            )
            .unwrap();
        store
            .write_material(&t, &EntryName::parse("ghost").unwrap(), 1, &fields)
            .unwrap();
        store
            .write_material(&t, &EntryName::parse("young").unwrap(), 1, &fields)
            .unwrap();
        let material = dir.path().join("material/payments");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for old in [
            "live/v1.json",
            "live/v2.json",
            "live/v3.json",
            "ghost/v1.json",
        ] {
            std::fs::File::options()
                .append(true)
                .open(material.join(old))
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let removed = store.collect_orphans(Duration::from_secs(600)).unwrap();
        assert_eq!(removed, 2);
        assert!(
            material.join("live/v1.json").exists(),
            "an earlier version is kept"
        );
        assert!(
            material.join("live/v2.json").exists(),
            "the current version is kept"
        );
        assert!(
            !material.join("live/v3.json").exists(),
            "a lost rotation's version"
        );
        assert!(!material.join("ghost").exists(), "a lost create's material");
        assert!(
            material.join("young/v1.json").exists(),
            "a write in progress"
        );
    }
}
