//! The `file` source: a directory tree of secrets, the embedded default of `serve --dev`.
//!
//! `<root>/<path>.json` holds a JSON object of fields (strings, numbers or booleans);
//! a plain file `<root>/<path>` holds one raw value, exposed as the field `value`, byte for
//! byte (no newline is trimmed). Paths were validated by the reference parser (no `..`),
//! and symlinks that lead out of the root are refused.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let name = self.name.clone();
        let request = request.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_blocking(&root, &name, &request))
                .await
                .unwrap_or(Err(SourceError::Unavailable("file read task failed")))
        })
    }
}

fn read_blocking(root: &Path, name: &str, request: &ReadRequest) -> Result<Secret, SourceError> {
    if request.version.is_some() {
        return Err(SourceError::Unsupported("the file source has no versions"));
    }
    let relative: PathBuf = request.path.segments().iter().collect();
    let mut json_name = relative.clone().into_os_string();
    json_name.push(".json");
    let meta = SecretMeta {
        source: name.to_owned(),
        ..SecretMeta::default()
    };
    if let Some(bytes) = read_inside(root, &root.join(json_name))? {
        let fields: Fields = serde_json::from_slice(&bytes).map_err(|_| {
            SourceError::Malformed("not a JSON object of string, number or boolean fields")
        })?;
        return Ok(Secret::new(fields.0, meta));
    }
    if let Some(bytes) = read_inside(root, &root.join(relative))? {
        let text = std::str::from_utf8(&bytes).map_err(|_| SourceError::Malformed("not UTF-8"))?;
        let mut fields = BTreeMap::new();
        fields.insert(VALUE_FIELD.to_owned(), secret_string(text));
        return Ok(Secret::new(fields, meta));
    }
    Err(SourceError::NotFound)
}

/// Reads `path` if it is a regular file under `root` (after resolving symlinks).
fn read_inside(root: &Path, path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, SourceError> {
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(SourceError::Unavailable("cannot access the secret file")),
    };
    if !real.starts_with(root) {
        return Err(SourceError::Denied);
    }
    if !real.is_file() {
        return Ok(None);
    }
    let unavailable = |_| SourceError::Unavailable("cannot read the secret file");
    let mut file = std::fs::File::open(&real).map_err(unavailable)?;
    let len = file.metadata().map_err(unavailable)?.len();
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
        assert_eq!(db.meta().source, "files");
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
        assert_eq!(
            src.read(&request("escape")).await.unwrap_err(),
            SourceError::Denied
        );
    }
}
