//! The types that hold secret bytes. Everything secret in keybroker lives in one of these.
//!
//! **Invariant:** none of these types implements `Display`, `Serialize` or a `Debug` that
//! shows bytes, and every allocation they own is zeroized before it is freed — including
//! the intermediate allocations a growing buffer leaves behind (see [`SecretBuf`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroize;

/// A key read from a file (`etag_key_file`, `token_key_file`, the audit's and the
/// notifications' `hmac_key_file`): its bytes without surrounding ASCII whitespace, at least
/// the minimum its use needs; wiped when dropped. The one rule for every key file.
pub(crate) struct KeyFile(zeroize::Zeroizing<Vec<u8>>);

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFile([redacted])")
    }
}

/// A key file that cannot be used, named by its setting (`[server] etag_key_file`).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        setting: &'static str,
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{setting}: {path} must hold at least {min} bytes")]
    Short {
        setting: &'static str,
        path: std::path::PathBuf,
        min: usize,
    },
}

impl KeyFileError {
    /// The setting that names the file (`[server] etag_key_file`).
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Read { setting, .. } | Self::Short { setting, .. } => setting,
        }
    }
}

impl KeyFile {
    /// The key in `path`, which `setting` names; at least `min_len` bytes.
    pub(crate) fn load(
        setting: &'static str,
        path: &std::path::Path,
        min_len: usize,
    ) -> Result<Self, KeyFileError> {
        let bytes =
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Read {
                setting,
                path: path.to_owned(),
                source,
            })?);
        let key = bytes.trim_ascii();
        if key.len() < min_len {
            return Err(KeyFileError::Short {
                setting,
                path: path.to_owned(),
                min: min_len,
            });
        }
        Ok(Self(zeroize::Zeroizing::new(key.to_vec())))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key itself, for a holder that keeps it (no second copy).
    pub(crate) fn into_bytes(self) -> zeroize::Zeroizing<Vec<u8>> {
        self.0
    }
}

/// A zeroizing string made with an allocation of exactly `s.len()` bytes.
///
/// `SecretString::from(String)` goes through `into_boxed_str`, which reallocates (and leaves
/// the old bytes behind) whenever the `String` has spare capacity; this never does.
pub fn secret_string(s: &str) -> SecretString {
    SecretBox::new(Box::<str>::from(s))
}

/// A digest (SHA-256) of `parts` that may hold values, length-prefixed, the hasher kept on the
/// heap and finalized in place (see [`keyed_digest`]): nothing of the values stays behind.
pub(crate) fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = Box::new(sha2::Sha256::new());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize_reset().into()
}

/// A keyed digest of `parts` that may hold values: HMAC-SHA256 over each part, length-prefixed
/// (different splits of the same bytes differ). The MAC state stays on the heap and is
/// finalized in place: `finalize(self)` moves it, and the moved-from copy of its last partial
/// block — value bytes — would stay on a stack unwiped (issue 49). Dropped, the state is wiped
/// (`zeroize`), and so is its heap block.
pub(crate) fn keyed_digest<'a>(
    key: &hmac::HmacReset<sha2::Sha256>,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = Box::new(key.clone());
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize_reset().into_bytes().into()
}

/// One secret as a source returns it: named fields of zeroizing strings plus metadata that
/// is not secret. A plain (non-object) value is a secret with the single field `value`.
pub struct Secret {
    /// Sorted by name. A boxed slice, not a map: most secrets have one to three fields, and a
    /// `BTreeMap` node costs ~450 bytes per secret in a cache of 100 k.
    fields: Box<[(Box<str>, SecretString)]>,
    meta: SecretMeta,
}

/// What is known about a secret besides its value. Never secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMeta {
    /// KV v2 version, when the source has versions.
    pub version: Option<u64>,
    /// Creation time as the source reports it (RFC 3339).
    pub created_time: Option<String>,
    /// How long the source says the value may be cached.
    pub ttl: Option<Duration>,
    /// The value must not change while it is fresh: no refresh ahead (a PKI period's
    /// certificate, staged as next before it is current).
    pub pinned: bool,
}

/// The field name a plain, single-valued secret is stored under.
pub(crate) const VALUE_FIELD: &str = "value";

impl Secret {
    pub fn new(fields: BTreeMap<String, SecretString>, meta: SecretMeta) -> Self {
        // The map's order is the sorted order `field` searches in.
        let fields = fields
            .into_iter()
            .map(|(k, v)| (Box::<str>::from(k), v))
            .collect();
        Self { fields, meta }
    }

    pub fn field(&self, name: &str) -> Option<&SecretString> {
        self.fields
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &self.fields[i].1)
    }

    /// Field names in sorted order, with their values.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.fields.iter().map(|(k, v)| (&**k, v))
    }

    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| &**k)
    }

    pub fn meta(&self) -> &SecretMeta {
        &self.meta
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("fields", &self.field_names().collect::<Vec<_>>())
            .field("values", &"[redacted]")
            .field("meta", &self.meta)
            .finish()
    }
}

/// A growable byte buffer for output that carries secrets (an expanded document, a
/// response body). Zeroized on drop, and — unlike `Zeroizing<Vec<u8>>` — also when it
/// grows: the old allocation is wiped before it is released.
pub struct SecretBuf {
    buf: Vec<u8>,
    /// Never grows past this many bytes; a write that would is dropped and remembered.
    limit: usize,
    overflow: bool,
}

impl Default for SecretBuf {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl SecretBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            limit: usize::MAX,
            overflow: false,
        }
    }

    /// A buffer that never holds more than `limit` bytes, with `capacity` reserved up front;
    /// `None` if even that cannot be allocated. Writes past the limit are dropped and
    /// [`SecretBuf::overflowed`] says so: the caller answers "too large" instead of the
    /// allocator aborting the process.
    pub fn bounded(capacity: usize, limit: usize) -> Option<Self> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity.min(limit)).ok()?;
        Some(Self {
            buf,
            limit,
            overflow: false,
        })
    }

    /// Whether a write was dropped because it would have passed the limit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.reserve(bytes.len()) {
            self.buf.extend_from_slice(bytes);
        }
    }

    pub fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }

    /// Appends a secret's bytes.
    pub fn push_secret(&mut self, s: &SecretString) {
        self.push_str(s.expose_secret());
    }

    /// Appends the fields as one flow mapping in JSON syntax (valid in JSON and YAML alike),
    /// each name and value double-quoted: a whole secret, or a credential's values.
    pub fn push_object<'a>(
        &mut self,
        fields: impl IntoIterator<Item = (&'a str, &'a SecretString)>,
    ) {
        self.push_str("{");
        for (i, (name, value)) in fields.into_iter().enumerate() {
            if i > 0 {
                self.push_str(", ");
            }
            self.push_quoted(name);
            self.push_str(": ");
            self.push_quoted(value.expose_secret());
        }
        self.push_str("}");
    }

    /// Appends `s` as a double-quoted string, valid in JSON and YAML alike.
    pub fn push_quoted(&mut self, s: &str) {
        self.push_str("\"");
        self.push_escaped(s);
        self.push_str("\"");
    }

    /// Escapes the contents of a double-quoted string so that it is valid both as JSON and as
    /// a YAML double-quoted scalar. Written by hand so that secret bytes go straight into the
    /// zeroizing buffer: serde_json's own escaper is not public, and YAML additionally needs
    /// DEL, C1 controls, U+2028/2029 and U+FEFF escaped.
    pub fn push_escaped(&mut self, s: &str) {
        // Most values are printable ASCII with nothing to escape: one copy.
        if s.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.push_str(s);
            return;
        }
        let mut run_start = 0;
        for (i, c) in s.char_indices() {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let needs_u = short.is_none()
                && (c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}'));
            if short.is_none() && !needs_u {
                continue;
            }
            self.push_str(&s[run_start..i]);
            match short {
                Some(esc) => self.push_str(esc),
                None => {
                    // Built on the stack: even one escaped character of a secret stays
                    // out of unzeroized heap memory.
                    // Both arrays are wiped when done (they hold a character of the value).
                    let mut units = zeroize::Zeroizing::new([0u16; 2]);
                    for unit in c.encode_utf16(&mut *units) {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        let u = *unit as usize;
                        let esc = zeroize::Zeroizing::new([
                            b'\\',
                            b'u',
                            HEX[u >> 12],
                            HEX[(u >> 8) & 0xf],
                            HEX[(u >> 4) & 0xf],
                            HEX[u & 0xf],
                        ]);
                        self.extend_from_slice(&*esc);
                    }
                }
            }
            run_start = i + c.len_utf8();
        }
        self.push_str(&s[run_start..]);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room for `extra` more bytes; false (and the overflow noted) past the limit or
    /// when the allocation fails.
    fn reserve(&mut self, extra: usize) -> bool {
        if self.overflow {
            return false;
        }
        if self.buf.capacity() - self.buf.len() >= extra {
            return true;
        }
        let wanted = match self.buf.len().checked_add(extra) {
            Some(w) if w <= self.limit => w,
            _ => {
                self.overflow = true;
                return false;
            }
        };
        let new_cap = wanted
            .max(self.buf.capacity().saturating_mul(2))
            .max(64)
            .min(self.limit);
        let mut grown = Vec::new();
        if grown.try_reserve_exact(new_cap).is_err() {
            self.overflow = true;
            return false;
        }
        grown.extend_from_slice(&self.buf);
        // `Vec::zeroize` wipes the whole capacity, not only `len` bytes.
        self.buf.zeroize();
        self.buf = grown;
        true
    }
}

impl io::Write for SecretBuf {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if !self.reserve(bytes.len()) {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the buffer's size limit was reached",
            ));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// One reservation and one copy: `write` takes everything or fails (serde_json writes
    /// through here piece by piece, and the default `write_all` loops around `write`).
    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRef<[u8]> for SecretBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf([redacted; {} bytes])", self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_its_bytes_without_surrounding_whitespace_and_at_least_its_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "  sixteen bytes!!!\n").unwrap();
        let key = KeyFile::load("[x] key_file", &path, 16).unwrap();
        assert_eq!(key.bytes(), b"sixteen bytes!!!");
        assert_eq!(format!("{key:?}"), "KeyFile([redacted])");
        let short = KeyFile::load("[x] key_file", &path, 17).unwrap_err();
        assert!(matches!(short, KeyFileError::Short { min: 17, .. }));
        assert!(short.to_string().starts_with("[x] key_file: "), "{short}");
        let missing = KeyFile::load("[x] key_file", &dir.path().join("none"), 1).unwrap_err();
        assert_eq!(missing.setting(), "[x] key_file");
    }
    use std::io::Write;

    #[test]
    fn debug_never_shows_values() {
        let mut fields = BTreeMap::new();
        fields.insert("password".to_owned(), secret_string("canary-7f3a"));
        let secret = Secret::new(fields, SecretMeta::default());
        let shown = format!("{secret:?}");
        assert!(shown.contains("password"));
        assert!(!shown.contains("canary-7f3a"));

        let mut buf = SecretBuf::default();
        buf.push_str("canary-7f3a");
        assert!(!format!("{buf:?}").contains("canary"));
    }

    #[test]
    fn secret_buf_grows_and_keeps_content() {
        let mut buf = SecretBuf::with_capacity(1);
        for i in 0..1000 {
            write!(buf, "{i},").unwrap();
        }
        let text = std::str::from_utf8(buf.as_bytes()).unwrap();
        assert!(text.starts_with("0,1,2,"));
        assert!(text.ends_with("998,999,"));
        assert!(buf.capacity() >= buf.len());
    }

    #[test]
    fn secret_string_has_exact_allocation() {
        let s = secret_string("abc");
        assert_eq!(s.expose_secret(), "abc");
    }
}
