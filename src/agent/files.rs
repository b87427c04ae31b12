//! Writing one output's files so that a reader sees the old set or the new set, never a mix:
//! a new generation directory, written and synced, then the `..data` symlink swapped by a
//! rename (the Kubernetes atomic-writer layout Envoy's `watched_directory` understands).
//! `cert.pem` etc. are links to `..data/cert.pem`. Material is verified before anything is
//! written.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::client::Material;

const DATA: &str = "..data";

#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// The material is not a usable certificate and key (the PEM module's code, never text).
    #[error("the material is refused: {0}")]
    Refused(String),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |error| WriteError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The files of one generation, by name, as zeroizing bytes.
pub(super) type Contents = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Checks `m` (key matches the leaf, chain in order, nothing expired, the leaf not a CA) and
/// lays out the requested files; `keystore.p12` is encrypted with `p12_password`.
pub(super) fn prepare(
    m: &Material,
    files: &[String],
    alias: &str,
    p12_password: Option<&str>,
) -> Result<Contents, WriteError> {
    let chain = m
        .certificate
        .as_ref()
        .ok_or_else(|| WriteError::Refused("no certificate in the material".into()))?;
    let key = m
        .private_key
        .as_ref()
        .ok_or_else(|| WriteError::Refused("no private key in the material".into()))?;
    let chain = chain.0.expose_secret();
    let key = key.0.expose_secret();
    let mut bundle = Zeroizing::new(String::with_capacity(key.len() + chain.len() + 1));
    bundle.push_str(key);
    if !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(chain);
    let opts = crate::pem::Options {
        checks: crate::pem::Checks {
            reject_expired: true,
            expect_leaf: true,
            known_labels_only: false,
        },
        ..crate::pem::Options::default()
    };
    crate::pem::repair(&bundle, &opts).map_err(|e| WriteError::Refused(e.to_string()))?;
    let leaf = chain
        .find("-----END CERTIFICATE-----")
        .map(|i| {
            let end = i + "-----END CERTIFICATE-----".len();
            format!("{}\n", &chain[..end])
        })
        .unwrap_or_else(|| chain.to_owned());
    let text = |s: &str| Zeroizing::new(s.as_bytes().to_vec());
    let mut out = Contents::new();
    for f in files {
        let bytes = match f.as_str() {
            "cert.pem" => text(&leaf),
            "key.pem" => text(key),
            "chain.pem" => text(chain),
            "bundle.pem" => text(&bundle),
            "ca.pem" => match &m.ca {
                Some(ca) => text(ca.0.expose_secret()),
                None => return Err(WriteError::Refused("no ca in the material".into())),
            },
            "keystore.p12" => {
                let password = p12_password.ok_or_else(|| {
                    WriteError::Refused("keystore.p12 needs pkcs12_password_file".into())
                })?;
                keystore(key, chain, alias, password)?
            }
            other => return Err(WriteError::Refused(format!("unknown file {other:?}"))),
        };
        out.push((f.clone(), bytes));
    }
    Ok(out)
}

/// A PKCS#12 keystore (PBES2/AES-256, HMAC-SHA256 MAC: what current Java and OpenSSL read)
/// holding the key and the chain under `alias`. The key must be PKCS#8.
fn keystore(
    key: &str,
    chain: &str,
    alias: &str,
    password: &str,
) -> Result<Zeroizing<Vec<u8>>, WriteError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let refused = |why: &str| WriteError::Refused(why.to_owned());
    let der =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| refused("the key is not PEM"))?;
    let PrivateKeyDer::Pkcs8(pkcs8) = der else {
        return Err(refused(
            "keystore.p12 needs a PKCS#8 key (BEGIN PRIVATE KEY)",
        ));
    };
    let key = p12_keystore::PrivateKey::from_der(pkcs8.secret_pkcs8_der())
        .map_err(|_| refused("the key does not fit a keystore"))?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(chain.as_bytes()) {
        let c = c.map_err(|_| refused("a certificate is not PEM"))?;
        certs.push(
            p12_keystore::Certificate::from_der(c.as_ref())
                .map_err(|_| refused("a certificate does not fit a keystore"))?,
        );
    }
    let id = certs
        .first()
        .map(|c| {
            use sha2::Digest as _;
            sha2::Sha256::digest(c.as_der()).to_vec()
        })
        .unwrap_or_default();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        alias,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            id, key, certs,
        )),
    );
    store
        .writer(password)
        .write()
        .map(Zeroizing::new)
        .map_err(|_| refused("the keystore could not be written"))
}

/// Whether a file holds key material (and gets `key_mode`).
fn holds_key(name: &str) -> bool {
    matches!(name, "key.pem" | "bundle.pem" | "keystore.p12")
}

/// Writes `contents` as a new generation of `dir` and swaps `..data` to it. Returns the
/// generation that was current before (for a rollback), if any.
pub(super) fn swap_in(
    dir: &Path,
    contents: &Contents,
    key_mode: u32,
) -> Result<Option<String>, WriteError> {
    // Directories are the owner's (and, when the files are for the group, the group's to
    // enter), whatever the umask: anyone who may write here could re-point `..data`.
    let dir_mode = if key_mode & 0o040 != 0 { 0o750 } else { 0o700 };
    private_dir(dir, dir_mode)?;
    let stamp = humantime::format_rfc3339_nanos(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-', '.'], "_");
    let generation = format!("..{stamp}");
    let gen_dir = dir.join(&generation);
    std::fs::create_dir(&gen_dir).map_err(io(&gen_dir))?;
    std::fs::set_permissions(&gen_dir, std::fs::Permissions::from_mode(dir_mode))
        .map_err(io(&gen_dir))?;
    for (name, text) in contents {
        let path = gen_dir.join(name);
        let mode = if holds_key(name) { key_mode } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        // The umask may have narrowed the mode; set it as asked.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io(&path))?;
    }
    sync_dir(&gen_dir)?;
    let previous = current(dir);
    point_data_at(dir, &generation)?;
    for (name, _) in contents {
        let link = dir.join(name);
        let ours = format!("{DATA}/{name}");
        match std::fs::symlink_metadata(&link) {
            Err(_) => {}
            // Our own link: nothing to do.
            Ok(m)
                if m.file_type().is_symlink()
                    && std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&ours)) =>
            {
                continue;
            }
            // A stale file or a symlink someone else put here: replaced, never followed
            // (the agent must not report success while a foreign key.pem is served).
            Ok(m) if !m.is_dir() => {
                tracing::warn!(path = %link.display(), "replacing an entry the agent did not write");
                std::fs::remove_file(&link).map_err(io(&link))?;
            }
            Ok(_) => {
                return Err(io(&link)(std::io::Error::other(
                    "a directory is in the way of the file",
                )));
            }
        }
        std::os::unix::fs::symlink(&ours, &link).map_err(io(&link))?;
    }
    sync_dir(dir)?;
    Ok(previous)
}

/// Whether `dir`'s current generation holds exactly `contents` (each file, byte for byte;
/// read into zeroizing buffers).
pub(super) fn is_current(dir: &Path, contents: &Contents) -> bool {
    let Some(generation) = current(dir) else {
        return false;
    };
    contents.iter().all(|(name, text)| {
        std::fs::read(dir.join(&generation).join(name))
            .map(Zeroizing::new)
            .is_ok_and(|on_disk| on_disk.as_slice() == text.as_slice())
    })
}

/// Creates `dir` (and missing parents) and gives `dir` exactly `mode`. A `dir` that is a
/// symlink (or no directory) is refused, never followed: whoever planted it would choose
/// where the keys go and whose folder's mode is changed.
fn private_dir(dir: &Path, mode: u32) -> Result<(), WriteError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io(dir)(std::io::Error::other(
                "a symlink where the agent keeps its files: refused, not followed",
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(io(dir)(std::io::Error::other(
                "not a directory where the agent keeps its files",
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io(dir))?;
        }
        Err(e) => return Err(io(dir)(e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))
}

/// The generation `..data` points at.
pub(super) fn current(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join(DATA))
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
}

/// Points `..data` at `generation` atomically (a new link renamed over the old).
pub(super) fn point_data_at(dir: &Path, generation: &str) -> Result<(), WriteError> {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(generation, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA)).map_err(io(dir))?;
    sync_dir(dir)
}

/// Removes every generation but those in `keep`.
pub(super) fn prune(dir: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") && name != DATA && !keep.contains(&name) && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// When the first certificate of `chain` (PEM) is valid: (`not_before`, `not_after`), Unix
/// seconds. `None` when there is none or it does not parse (verification refused it already).
pub(super) fn leaf_validity(chain: &str) -> Option<(i64, i64)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// What a template's destination holds now (to put back if the reload fails); `None` when
/// there is no such file.
pub(super) fn read_previous(path: &Path) -> Option<Zeroizing<Vec<u8>>> {
    std::fs::read(path).ok().map(Zeroizing::new)
}

/// Writes one file atomically (a template's destination): temporary file, sync, rename.
pub(super) fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A folder the agent creates is private whatever the umask; an existing one (a
    // gateway's configuration folder) is left as its owner set it.
    if !dir.is_dir() {
        private_dir(dir, if mode & 0o040 != 0 { 0o750 } else { 0o700 })?;
    }
    crate::atomic_file::write(path, text, mode).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// THREATS row 42: under umask 000 the agent's folders are still private, and entries of
    /// A `next/` (or an output folder) that is a symlink is refused, never followed: nothing
    /// is written through it and the folder it points at keeps its mode.
    #[test]
    fn a_symlinked_output_folder_is_refused_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = root.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("next")).unwrap();
        let contents: Contents = vec![("cert.pem".to_owned(), Zeroizing::new(b"x".to_vec()))];
        assert!(swap_in(&out.join("next"), &contents, 0o600).is_err());
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "written through"
        );
        assert_eq!(mode_of(&elsewhere), 0o755, "its mode was changed");
    }

    /// its output folder that it did not write — a stale key.pem, a symlink someone planted —
    /// are replaced, never kept or followed.
    #[test]
    fn threat_42_the_output_folder_is_private_and_foreign_entries_are_replaced() {
        let old = rustix::process::umask(rustix::fs::Mode::empty());
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("certs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.join("key.pem"), "stale foreign key").unwrap();
        std::fs::write(root.path().join("elsewhere.pem"), "planted").unwrap();
        std::os::unix::fs::symlink(root.path().join("elsewhere.pem"), dir.join("cert.pem"))
            .unwrap();
        let contents: Contents = vec![
            ("cert.pem".into(), Zeroizing::new(b"CERT".to_vec())),
            ("key.pem".into(), Zeroizing::new(b"KEY".to_vec())),
        ];
        swap_in(&dir, &contents, 0o600).unwrap();
        let template = root.path().join("new/sub/app.conf");
        write_file(&template, b"secret", 0o600).unwrap();
        rustix::process::umask(old);
        assert_eq!(mode_of(&dir), 0o700);
        let generation = current(&dir).unwrap();
        assert_eq!(mode_of(&dir.join(&generation)), 0o700);
        assert_eq!(mode_of(&dir.join(&generation).join("key.pem")), 0o600);
        assert_eq!(mode_of(template.parent().unwrap()), 0o700);
        for name in ["cert.pem", "key.pem"] {
            let link = dir.join(name);
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new(&format!("{DATA}/{name}"))
            );
        }
        assert_eq!(std::fs::read(dir.join("key.pem")).unwrap(), b"KEY");
        assert_eq!(std::fs::read(dir.join("cert.pem")).unwrap(), b"CERT");
        // The planted target was not written through.
        assert_eq!(
            std::fs::read(root.path().join("elsewhere.pem")).unwrap(),
            b"planted"
        );
        // With group read for the gateway's group, folders are 0750.
        swap_in(&dir, &contents, 0o640).unwrap();
        assert_eq!(mode_of(&dir), 0o750);
    }
}
