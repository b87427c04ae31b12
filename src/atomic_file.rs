//! One file written whole or not at all: a temporary file beside it (created new, with its
//! final mode whatever the umask), synced, renamed onto it, the folder synced. The agent's
//! templates and the management store's files are written this way. The temporary name is
//! fixed per file: callers serialize writes of one file. Imports nothing of the crate.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Writes `bytes` to `path` (mode `mode`) atomically; the folder must exist.
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_with(path, bytes, mode, true)
}

/// As [`write`]; `durable = false` skips both syncs: still whole or not at all for readers,
/// but a power loss may lose it — for copies of what another system holds (a vault store's
/// mirror, which a replica's start pulls whole again).
pub(crate) fn write_with(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    if !durable {
        return Ok(());
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
