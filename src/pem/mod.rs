//! PEM repair and verification (docs/DESIGN.md §4).
//!
//! CyberArk CCP returns multi-line values with each newline replaced by a space; other tools
//! lose newlines in other ways. [`repair`] restores every recoverable variant to the exact
//! original text ([`scan`]), then proves the result is what it claims to be ([`verify`]):
//! strict base64, one complete DER element per block, certificates and keys that parse, a key
//! that matches its certificate, a chain ordered leaf → CA with signatures checked. Anything
//! else is rejected with a reason code — keybroker never hands out a mangled key.
//!
//! **Boundary:** pure functions over text; no I/O, no knowledge of sources or callers.
//! **Invariant:** every buffer holding key text or DER is zeroizing, and no parser message
//! about key input leaves the module (see [`PemError`]).

pub(crate) mod credential;
pub(crate) mod csr;
mod error;
mod scan;
mod verify;

use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

pub use error::PemError;
pub use scan::RepairKind;
pub use verify::Checks;
pub(crate) use verify::{BlockFacts, fingerprint};

/// How a source's or credential's PEM values are treated (named by the configuration).
pub use crate::config::PemMode as Mode;

/// What to do with one value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub mode: Mode,
    pub checks: Checks,
    /// Opt-in: a bare base64 body is wrapped in BEGIN/END lines of this label.
    pub armour_for: Option<&'static str>,
    /// Opt-in: a value that is the base64 of a whole PEM text is decoded first.
    pub base64_wrapped: bool,
}

/// A repaired, verified value.
pub struct Repaired {
    /// The PEM text, exactly as it was before it was flattened.
    pub pem: Zeroizing<String>,
    /// What was repaired (empty when the value was intact).
    pub repairs: Vec<RepairKind>,
    /// Facts per block, in order.
    pub blocks: Vec<BlockFacts>,
}

impl fmt::Debug for Repaired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repaired")
            .field("pem", &"[redacted]")
            .field("repairs", &self.repairs)
            .field("blocks", &self.blocks)
            .finish()
    }
}

/// The label keybroker knows by that name (`"PRIVATE KEY"`, `"CERTIFICATE"`, …).
pub(crate) fn known_label(name: &str) -> Option<&'static str> {
    scan::KNOWN_LABELS.iter().copied().find(|l| *l == name)
}

/// True when `value` holds a PEM armour line (possibly flattened).
pub(crate) fn looks_like_pem(value: &str) -> bool {
    value.contains("-----BEGIN")
}

/// Repairs and verifies one value.
pub fn repair(input: &str, opts: &Options) -> Result<Repaired, PemError> {
    if opts.mode == Mode::Off {
        return Ok(Repaired {
            pem: Zeroizing::new(input.to_owned()),
            repairs: Vec::new(),
            blocks: Vec::new(),
        });
    }
    let mut checks = opts.checks;
    if opts.mode == Mode::Strict {
        checks.known_labels_only = true;
    }
    let decoded = if opts.base64_wrapped && !looks_like_pem(input) {
        unwrap_base64(input)
    } else {
        None
    };
    let source: &str = decoded.as_deref().map_or(input, String::as_str);
    let armour_for = if opts.mode == Mode::Strict {
        None
    } else {
        opts.armour_for
    };
    let scanned = scan::scan(source, armour_for)?;
    let mut repairs = scanned.repairs;
    if decoded.is_some() {
        repairs.remove(&RepairKind::FinalNewline);
        repairs.insert(RepairKind::Base64Decoded);
    }
    if opts.mode == Mode::Strict {
        let needed: Vec<&str> = repairs
            .iter()
            .filter(|k| **k != RepairKind::FinalNewline)
            .map(|k| k.code())
            .collect();
        if !needed.is_empty() {
            return Err(PemError::NotIntact(needed.join(", ")));
        }
    }
    let blocks = verify::verify(&scanned.blocks, checks)?;
    Ok(Repaired {
        pem: scanned.text,
        repairs: repairs.into_iter().collect(),
        blocks,
    })
}

/// The structural restoration alone, **without verification**: the text may be a wrong or
/// mangled key. For measuring the repair stage and for tooling; anything handed out must go
/// through [`repair`].
pub fn danger_restore_unverified(
    input: &str,
) -> Result<(Zeroizing<String>, Vec<RepairKind>), PemError> {
    let scanned = scan::scan(input, None)?;
    Ok((scanned.text, scanned.repairs.into_iter().collect()))
}

impl serde::Serialize for RepairKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl RepairKind {
    /// The stable code of this repair (audit lines, metadata, metric labels).
    pub fn code(self) -> &'static str {
        match self {
            RepairKind::Crlf => "crlf",
            RepairKind::EscapedNewlines => "escaped_newlines",
            RepairKind::Trimmed => "trimmed",
            RepairKind::SpacesToNewlines => "spaces_to_newlines",
            RepairKind::WhitespaceRuns => "whitespace_runs",
            RepairKind::NewlinesRemoved => "newlines_removed",
            RepairKind::Rewrapped => "rewrapped",
            RepairKind::LabelSpaces => "label_spaces",
            RepairKind::LegacyHeaders => "legacy_headers",
            RepairKind::FinalNewline => "final_newline",
            RepairKind::ArmourAdded => "armour_added",
            RepairKind::Base64Decoded => "base64_decoded",
            RepairKind::Reformatted => "reformatted",
        }
    }
}

/// The text inside a base64-wrapped PEM, if that is what `input` is.
fn unwrap_base64(input: &str) -> Option<Zeroizing<String>> {
    let mut compact = Zeroizing::new(String::with_capacity(input.len()));
    compact.extend(input.chars().filter(|c| !c.is_ascii_whitespace()));
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .ok()?,
    );
    let text = std::str::from_utf8(&bytes).ok()?;
    looks_like_pem(text).then(|| Zeroizing::new(text.to_owned()))
}

/// A secret whose PEM-looking fields went through [`repair`].
#[derive(Debug)]
pub struct CheckedSecret {
    /// The secret with repaired values; rejected fields are absent.
    pub secret: crate::secret::Secret,
    /// Fields whose value was rejected, with the reason.
    pub rejected: std::collections::BTreeMap<String, PemError>,
    /// Fields that were repaired, with what was done.
    pub repaired: Vec<(String, Vec<RepairKind>)>,
    /// Facts (never key bytes) of each verified PEM field, for metadata and expiry metrics.
    pub facts: std::collections::BTreeMap<String, Vec<BlockFacts>>,
}

/// Applies [`repair`] to every field of `secret` that looks like PEM.
pub(crate) fn check_secret(secret: &crate::secret::Secret, opts: &Options) -> CheckedSecret {
    use secrecy::ExposeSecret;

    use crate::secret::{Secret, secret_string};

    let mut fields = std::collections::BTreeMap::new();
    let mut rejected = std::collections::BTreeMap::new();
    let mut repaired = Vec::new();
    let mut facts = std::collections::BTreeMap::new();
    for (name, value) in secret.fields() {
        let text = value.expose_secret();
        if opts.mode == Mode::Off || !looks_like_pem(text) {
            fields.insert(name.to_owned(), secret_string(text));
            continue;
        }
        match repair(text, opts) {
            Ok(r) => {
                if !r.repairs.is_empty() {
                    repaired.push((name.to_owned(), r.repairs));
                }
                facts.insert(name.to_owned(), r.blocks);
                fields.insert(name.to_owned(), secret_string(&r.pem));
            }
            Err(e) => {
                rejected.insert(name.to_owned(), e);
            }
        }
    }
    CheckedSecret {
        secret: Secret::new(fields, secret.meta().clone()),
        rejected,
        repaired,
        facts,
    }
}
