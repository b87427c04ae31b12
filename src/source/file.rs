//! The `file` source: a directory tree of secrets, the embedded default of `serve --dev`.
//!
//! `<root>/<path>.json` holds a JSON object of fields (strings, numbers or booleans);
//! a plain file `<root>/<path>` holds one raw value, exposed as the field `value`, byte for
//! byte (no newline is trimmed). Paths were validated by the reference parser (no `..`).
//!
//! **No symlink is followed inside the tree** (THREATS row 25): a grant decides on the path
//! the caller named, so `payments/in.json -> ../fraud/model.json` would hand the payments grant
//! the fraud team's secret while the audit shows only the alias. Each component is opened
//! relative to its parent with `O_NOFOLLOW`, so a link swapped in between two checks is
//! refused as well. The root itself may be a symlink (it is resolved once, at start).

use super::Outage;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use zeroize::Zeroizing;

use super::fields::Fields;
use super::{ReadFuture, ReadRequest, SecretSource, SourceError, SourceKind};
use crate::secret::{Secret, SecretMeta, VALUE_FIELD, secret_string};

/// Largest secret file read, so a stray huge file cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug)]
pub struct FileSource {
    name: String,
    root: Arc<PathBuf>,
}

impl FileSource {
    /// `root` must be an existing directory; it is canonicalized once here.
    pub fn new(name: impl Into<String>, root: &Path) -> io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the file source path is not a directory",
            ));
        }
        Ok(Self {
            name: name.into(),
            root: Arc::new(root),
        })
    }
}

impl SecretSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::File
    }

    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a> {
        let root = Arc::clone(&self.root);
        let request = request.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_blocking(&root, &request))
                .await
                .unwrap_or(Err(SourceError::Unavailable(Outage::ReadTaskFailed)))
        })
    }

    fn list<'a>(&'a self, folder: &'a [String]) -> super::ListFuture<'a> {
        let root = Arc::clone(&self.root);
        let folder = folder.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || list_blocking(&root, &folder))
                .await
                .unwrap_or(Err(SourceError::Unavailable(Outage::ReadTaskFailed)))
        })
    }

    fn probe(&self) -> super::ProbeFuture<'_> {
        let root = Arc::clone(&self.root);
        Box::pin(async move {
            let readable = tokio::task::spawn_blocking(move || std::fs::read_dir(&*root).is_ok())
                .await
                .unwrap_or(false);
            if readable {
                Ok(())
            } else {
                Err(SourceError::Unavailable(Outage::FileRoot))
            }
        })
    }
}

/// The names under `root/folder…`: directories as `name/`, `name.json` and plain files as
/// `name` — never through or to a symlink, sorted, at most [`super::MAX_LIST_ENTRIES`].
fn list_blocking(root: &Path, folder: &[String]) -> Result<Vec<String>, SourceError> {
    let dirs: Vec<&str> = folder.iter().map(String::as_str).collect();
    let Some(dir) = open_dirs(root, &dirs)? else {
        return Ok(Vec::new());
    };
    let unavailable = |_| SourceError::Unavailable(Outage::FileAccess);
    let mut names = std::collections::BTreeSet::new();
    let mut entries = rustix::fs::Dir::read_from(&dir).map_err(unavailable)?;
    // Entries looked at, listed or not: a folder of millions costs a bounded walk.
    let mut seen = 0usize;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(unavailable)?;
        seen += 1;
        if seen > 4 * super::MAX_LIST_ENTRIES || names.len() >= super::MAX_LIST_ENTRIES {
            break;
        }
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let listed = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => format!("{name}/"),
            FileType::RegularFile => name.strip_suffix(".json").unwrap_or(name).to_owned(),
            // Symlinks, FIFOs, sockets: nothing a read would give.
            _ => continue,
        };
        // Only names a reference can hold (what a read could name).
        let segment = listed.trim_end_matches('/');
        if !segment.is_empty() && crate::reference::SecretPath::from_segments([segment]).is_ok() {
            names.insert(listed);
        }
    }
    Ok(names.into_iter().collect())
}

fn read_blocking(root: &Path, request: &ReadRequest) -> Result<Secret, SourceError> {
    if request.version.is_some() {
        return Err(SourceError::Unsupported("the file source has no versions"));
    }
    let segments = request.path.segments();
    let (leaf, dirs) = segments
        .split_last()
        .ok_or(SourceError::Invalid("empty path"))?;
    let meta = SecretMeta {
        ..SecretMeta::default()
    };
    let Some(dir) = open_dirs(root, dirs)? else {
        return Err(SourceError::NotFound);
    };
    if let Some(bytes) = read_leaf(&dir, &format!("{leaf}.json"))? {
        let fields: Fields = serde_json::from_slice(&bytes).map_err(|_| {
            SourceError::Malformed("not a JSON object of string, number or boolean fields")
        })?;
        return Ok(Secret::new(fields.0, meta));
    }
    if let Some(bytes) = read_leaf(&dir, leaf)? {
        let text = std::str::from_utf8(&bytes).map_err(|_| SourceError::Malformed("not UTF-8"))?;
        let mut fields = BTreeMap::new();
        fields.insert(VALUE_FIELD.to_owned(), secret_string(text));
        return Ok(Secret::new(fields, meta));
    }
    Err(SourceError::NotFound)
}

const SYMLINK: SourceError =
    SourceError::Malformed("a symlink: the file source does not follow symlinks");

/// Who caused an `openat` failure: a missing entry is "not found", a name too long or a path
/// through a file is the caller's reference, a symlink is refused; the rest is the disk's.
fn classify(dir: &OwnedFd, name: &str, e: rustix::io::Errno) -> Result<(), SourceError> {
    use rustix::io::Errno;
    match e {
        Errno::NOENT => Ok(()),
        Errno::NAMETOOLONG => Err(SourceError::Invalid("a path segment is too long")),
        Errno::LOOP => Err(SYMLINK),
        Errno::NOTDIR => {
            let link = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            Err(if link {
                SYMLINK
            } else {
                SourceError::Invalid("the path goes through a file")
            })
        }
        _ => Err(SourceError::Unavailable(Outage::FileAccess)),
    }
}

/// The directory `root/dirs…`, each step opened without following symlinks; `None` when a
/// step does not exist.
fn open_dirs(root: &Path, dirs: &[&str]) -> Result<Option<OwnedFd>, SourceError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(root, flags, Mode::empty())
        .map_err(|_| SourceError::Unavailable(Outage::FileRoot))?;
    for segment in dirs {
        match rustix::fs::openat(&dir, *segment, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => dir = next,
            Err(e) => {
                classify(&dir, segment, e)?;
                return Ok(None);
            }
        }
    }
    Ok(Some(dir))
}

/// The bytes of `dir/name` if it is a regular file (never through a symlink).
fn read_leaf(dir: &OwnedFd, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, SourceError> {
    // NONBLOCK: opening a FIFO planted in the tree must not hang the read.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            classify(dir, name, e)?;
            return Ok(None);
        }
    };
    let mut file = std::fs::File::from(fd);
    let unavailable = |_| SourceError::Unavailable(Outage::FileRead);
    let stat = file.metadata().map_err(unavailable)?;
    if !stat.is_file() {
        return Ok(None);
    }
    let len = stat.len();
    if len > MAX_FILE_BYTES {
        return Err(SourceError::Malformed(
            "the secret file is larger than 1 MiB",
        ));
    }
    // Exact capacity (+1 to detect growth) so the buffer is never reallocated unzeroized.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    Read::by_ref(&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unavailable)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::SecretPath;
    use secrecy::ExposeSecret;

    fn request(path: &str) -> ReadRequest {
        ReadRequest {
            path: SecretPath::from_segments(path.split('/')).unwrap(),
            version: None,
        }
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("demo")).unwrap();
        std::fs::write(
            dir.path().join("demo/db.json"),
            r#"{"username": "app", "password": "s3\ncr3t", "port": 5432, "tls": true}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("demo/token"), "raw-token\n").unwrap();
        std::fs::write(dir.path().join("demo/bad.json"), r#"{"nested": {"a": 1}}"#).unwrap();
        dir
    }

    #[tokio::test]
    async fn reads_json_objects_and_raw_files() {
        let dir = tree();
        let src = FileSource::new("files", dir.path()).unwrap();
        let db = src.read(&request("demo/db")).await.unwrap();
        assert_eq!(db.field("password").unwrap().expose_secret(), "s3\ncr3t");
        assert_eq!(db.field("port").unwrap().expose_secret(), "5432");
        assert_eq!(db.field("tls").unwrap().expose_secret(), "true");
        let token = src.read(&request("demo/token")).await.unwrap();
        assert_eq!(token.field("value").unwrap().expose_secret(), "raw-token\n");
    }

    #[tokio::test]
    async fn classifies_failures() {
        let dir = tree();
        let src = FileSource::new("files", dir.path()).unwrap();
        assert_eq!(
            src.read(&request("demo/none")).await.unwrap_err(),
            SourceError::NotFound
        );
        assert_eq!(
            src.read(&request("demo")).await.unwrap_err(),
            SourceError::NotFound
        );
        assert!(matches!(
            src.read(&request("demo/bad")).await.unwrap_err(),
            SourceError::Malformed(_)
        ));
        let mut versioned = request("demo/db");
        versioned.version = Some(2);
        assert!(matches!(
            src.read(&versioned).await.unwrap_err(),
            SourceError::Unsupported(_)
        ));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.json"), r#"{"a":"b"}"#).unwrap();
        let dir = tree();
        std::os::unix::fs::symlink(
            outside.path().join("x.json"),
            dir.path().join("escape.json"),
        )
        .unwrap();
        let src = FileSource::new("files", dir.path()).unwrap();
        assert_eq!(src.read(&request("escape")).await.unwrap_err(), SYMLINK);
    }

    /// THREATS row 25: a link inside the tree to another team's secret — as the file, or as
    /// a directory on the way — is refused, not followed.
    #[cfg(unix)]
    #[tokio::test]
    async fn threat_25_symlinks_inside_the_tree_are_refused() {
        let dir = tree();
        let root = dir.path();
        std::fs::create_dir_all(root.join("fraud/models")).unwrap();
        std::fs::create_dir_all(root.join("payments")).unwrap();
        std::fs::write(root.join("fraud/model.json"), r#"{"k":"fraud-only"}"#).unwrap();
        std::fs::write(root.join("fraud/models/m.json"), r#"{"k":"fraud-only"}"#).unwrap();
        std::os::unix::fs::symlink("../fraud/model.json", root.join("payments/in.json")).unwrap();
        std::os::unix::fs::symlink("../fraud/models", root.join("payments/models")).unwrap();
        std::os::unix::fs::symlink("../fraud/model.json", root.join("payments/raw")).unwrap();
        let src = FileSource::new("files", root).unwrap();
        for path in ["payments/in", "payments/models/m", "payments/raw"] {
            assert_eq!(
                src.read(&request(path)).await.unwrap_err(),
                SYMLINK,
                "{path}"
            );
        }
        assert!(src.read(&request("fraud/model")).await.is_ok());
    }

    /// THREATS row 20: what the caller's path causes is the caller's failure.
    #[tokio::test]
    async fn caller_caused_failures_are_invalid_not_unavailable() {
        let dir = tree();
        let src = FileSource::new("files", dir.path()).unwrap();
        let through_a_file = src.read(&request("demo/token/x")).await.unwrap_err();
        assert!(
            matches!(through_a_file, SourceError::Invalid(_)),
            "{through_a_file:?}"
        );
        let long = format!("demo/{}", "a".repeat(300));
        let too_long = src.read(&request(&long)).await.unwrap_err();
        assert!(matches!(too_long, SourceError::Invalid(_)), "{too_long:?}");
    }
}
