//! Structural repair: finds the blocks of a (possibly flattened) PEM value and rebuilds the
//! text the value had before newlines were lost.
//!
//! Exactness comes from the line structure that survives flattening: when each newline was
//! replaced by one separator, the body tokens *are* the original lines (all but the last of
//! one width), so joining them with `\n` restores the original bytes whatever the width was.
//! Only when the separators are gone (or irregular) is the body re-wrapped at 64 columns,
//! the RFC 7468 width every common tool writes.

use std::collections::BTreeSet;

use zeroize::Zeroizing;

use super::error::PemError;

/// One kind of repair applied to a value. Reported in metadata and the audit trail, always
/// as its [`RepairKind::code`] (serialization included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairKind {
    /// CRLF line ends became LF.
    Crlf,
    /// Literal `\n` escape sequences became newlines.
    EscapedNewlines,
    /// Whitespace around the value was removed.
    Trimmed,
    /// Each newline had become one space (CyberArk CCP's flattening).
    SpacesToNewlines,
    /// Newlines had become runs of spaces or tabs.
    WhitespaceRuns,
    /// Newlines had been removed (armour lines glued to the body).
    NewlinesRemoved,
    /// The body's line breaks were lost or irregular; re-wrapped at 64 columns.
    Rewrapped,
    /// Spaces inside a label had been removed (`RSAPRIVATEKEY`).
    LabelSpaces,
    /// `Proc-Type`/`DEK-Info` headers rebuilt with their blank line.
    LegacyHeaders,
    /// The final newline was added.
    FinalNewline,
    /// BEGIN/END lines were missing and were added (opt-in, expected type known).
    ArmourAdded,
    /// The whole PEM text was base64-encoded (opt-in).
    Base64Decoded,
    /// Other whitespace differences.
    Reformatted,
}

pub(crate) const KNOWN_LABELS: [&str; 7] = [
    "CERTIFICATE",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "PUBLIC KEY",
    "X509 CRL",
];

/// One block as rebuilt.
pub(crate) struct Block {
    pub label: String,
    /// `(DEK-Info algorithm, IV hex)` of a legacy OpenSSL-encrypted key.
    pub legacy: Option<(String, String)>,
    /// The body lines joined by `\n` (no final newline).
    pub body: Zeroizing<String>,
}

impl Block {
    /// The base64 text without line breaks.
    pub(super) fn base64(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(self.body.len()));
        for line in self.body.split('\n') {
            s.push_str(line);
        }
        s
    }

    fn write(&self, out: &mut String) {
        out.push_str("-----BEGIN ");
        out.push_str(&self.label);
        out.push_str("-----\n");
        if let Some((alg, iv)) = &self.legacy {
            out.push_str("Proc-Type: 4,ENCRYPTED\nDEK-Info: ");
            out.push_str(alg);
            out.push(',');
            out.push_str(iv);
            out.push_str("\n\n");
        }
        out.push_str(&self.body);
        out.push_str("\n-----END ");
        out.push_str(&self.label);
        out.push_str("-----\n");
    }

    fn text_len(&self) -> usize {
        2 * self.label.len()
            + self.body.len()
            + 64
            + self
                .legacy
                .as_ref()
                .map_or(0, |(a, i)| a.len() + i.len() + 40)
    }
}

/// The rebuilt value.
pub(crate) struct Scanned {
    pub blocks: Vec<Block>,
    pub text: Zeroizing<String>,
    pub repairs: BTreeSet<RepairKind>,
}

/// Repairs the structure of `input`. `armour_for` (opt-in) names the label to add when the
/// value is a bare base64 body.
pub(crate) fn scan(input: &str, armour_for: Option<&str>) -> Result<Scanned, PemError> {
    let mut repairs = BTreeSet::new();
    let normalized = normalize(input, &mut repairs);
    let trimmed = normalized.trim();
    let mut blocks = Vec::new();
    if !trimmed.contains("-----BEGIN") {
        match armour_for {
            Some(label) if !trimmed.is_empty() => {
                let mut seps = Separators::default();
                blocks.push(Block {
                    label: label.to_owned(),
                    legacy: None,
                    body: body_lines(trimmed, 0, &mut seps, &mut repairs)?,
                });
                repairs.insert(RepairKind::ArmourAdded);
            }
            _ => return Err(PemError::NoBlock),
        }
    } else {
        parse_blocks(trimmed, &mut blocks, &mut repairs)?;
    }
    let mut text = Zeroizing::new(String::with_capacity(
        blocks.iter().map(Block::text_len).sum(),
    ));
    for b in &blocks {
        b.write(&mut text);
    }
    if text.as_str() == input {
        repairs.clear();
    } else if text.len() == input.len() + 1 && text.starts_with(input) {
        repairs.clear();
        repairs.insert(RepairKind::FinalNewline);
    } else {
        let lead = normalized.len() - normalized.trim_start().len();
        let tail = &normalized[normalized.trim_end().len()..];
        if lead > 0 || !(tail.is_empty() || tail == "\n") {
            repairs.insert(RepairKind::Trimmed);
        }
        for b in &blocks {
            if let Some((alg, iv)) = &b.legacy {
                let canonical = format!("Proc-Type: 4,ENCRYPTED\nDEK-Info: {alg},{iv}\n\n");
                if !normalized.contains(&canonical) {
                    repairs.insert(RepairKind::LegacyHeaders);
                }
            }
        }
        if repairs.is_empty() {
            repairs.insert(if tail.is_empty() {
                RepairKind::FinalNewline
            } else {
                RepairKind::Reformatted
            });
        }
    }
    Ok(Scanned {
        blocks,
        text,
        repairs,
    })
}

/// CRLF → LF and literal `\n` → LF, into a zeroizing buffer that never reallocates.
fn normalize(input: &str, repairs: &mut BTreeSet<RepairKind>) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(input.len()));
    let crlf = input.contains("\r\n");
    let escaped = input.contains("\\n");
    if crlf {
        repairs.insert(RepairKind::Crlf);
    }
    if escaped {
        repairs.insert(RepairKind::EscapedNewlines);
    }
    if !crlf && !escaped {
        out.push_str(input);
        return out;
    }
    // Copy runs between the sequences to replace, never byte by byte.
    let mut rest = input;
    while let Some(at) = rest.find(['\r', '\\']) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let skip = if rest.starts_with("\r\n") || (escaped && rest.starts_with("\\n")) {
            2
        } else if escaped && rest.starts_with("\\r\\n") {
            4
        } else {
            0
        };
        if skip == 0 {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
        } else {
            out.push('\n');
            rest = &rest[skip..];
        }
    }
    out.push_str(rest);
    out
}

fn parse_blocks(
    text: &str,
    blocks: &mut Vec<Block>,
    repairs: &mut BTreeSet<RepairKind>,
) -> Result<(), PemError> {
    let mut pos = 0;
    loop {
        pos += text[pos..].len() - text[pos..].trim_start().len();
        if pos == text.len() {
            return Ok(());
        }
        let n = blocks.len() + 1;
        let rest = &text[pos..];
        let Some(after_begin) = rest.strip_prefix("-----BEGIN") else {
            return Err(PemError::TextOutsideBlocks);
        };
        let (label, label_len) = armour_label(after_begin, n, repairs)?;
        let inner_start = pos + "-----BEGIN".len() + label_len;
        let Some(end_rel) = text[inner_start..].find("-----END") else {
            return Err(PemError::MissingEnd { block: n });
        };
        let inner = &text[inner_start..inner_start + end_rel];
        if inner.contains("-----BEGIN") {
            return Err(PemError::MissingEnd { block: n });
        }
        let after_end = &text[inner_start + end_rel + "-----END".len()..];
        let (end_label, end_len) = armour_label(after_end, n, repairs)?;
        if end_label != label {
            return Err(PemError::LabelMismatch { block: n });
        }
        blocks.push(parse_inner(label, inner, n, repairs)?);
        pos = inner_start + end_rel + "-----END".len() + end_len;
    }
}

/// Reads ` <LABEL>-----` after `-----BEGIN`/`-----END`; returns the canonical label and the
/// length consumed.
fn armour_label(
    s: &str,
    block: usize,
    repairs: &mut BTreeSet<RepairKind>,
) -> Result<(String, usize), PemError> {
    let bad = PemError::BadArmour { block };
    let close = s.find("-----").ok_or(bad.clone())?;
    let raw = &s[..close];
    let label = match raw.strip_prefix(' ') {
        Some(l) => l,
        None => {
            repairs.insert(RepairKind::LabelSpaces);
            raw
        }
    };
    let valid = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
        && !label.starts_with(' ')
        && !label.ends_with(' ')
        && !label.contains("  ");
    if !valid {
        return Err(bad);
    }
    let canonical = if label.contains(' ') {
        label.to_owned()
    } else {
        match KNOWN_LABELS.iter().find(|k| k.replace(' ', "") == label) {
            Some(k) if *k != label => {
                repairs.insert(RepairKind::LabelSpaces);
                (*k).to_owned()
            }
            _ => label.to_owned(),
        }
    };
    Ok((canonical, close + 5))
}

/// What stood where the newlines of a block had been (a single `\n` is the intact case).
#[derive(Default)]
struct Separators {
    space: bool,
    other: bool,
    none: bool,
}

fn parse_inner(
    label: String,
    inner: &str,
    block: usize,
    repairs: &mut BTreeSet<RepairKind>,
) -> Result<Block, PemError> {
    let mut seps = Separators::default();
    let mut rest = inner;
    let mut legacy = None;
    let lead = rest.len() - rest.trim_start().len();
    note_separator(&rest[..lead], &mut seps);
    rest = &rest[lead..];
    if let Some(h) = rest.strip_prefix("Proc-Type:") {
        let (alg, iv, after) = legacy_headers(h).ok_or(PemError::BadHeader { block })?;
        legacy = Some((alg, iv));
        rest = after;
    } else if rest.contains(':') {
        return Err(PemError::BadHeader { block });
    }
    let body = body_lines(rest, block, &mut seps, repairs)?;
    if seps.space && !seps.other {
        repairs.insert(RepairKind::SpacesToNewlines);
    } else if seps.other {
        repairs.insert(RepairKind::WhitespaceRuns);
    }
    if seps.none {
        repairs.insert(RepairKind::NewlinesRemoved);
    }
    Ok(Block {
        label,
        legacy,
        body,
    })
}

/// `Proc-Type: 4,ENCRYPTED` `DEK-Info: ALG,IV`, whatever became of the newlines between.
fn legacy_headers(h: &str) -> Option<(String, String, &str)> {
    let h = h
        .trim_start_matches([' ', '\t'])
        .strip_prefix("4,ENCRYPTED")?;
    let h = h.trim_start().strip_prefix("DEK-Info:")?;
    let h = h.trim_start_matches([' ', '\t']);
    let alg_len = h
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'-')
        .count();
    let alg = &h[..alg_len];
    let h = h[alg_len..].strip_prefix(',')?;
    let hex_run = h.bytes().take_while(u8::is_ascii_hexdigit).count();
    // With the blank line gone the IV runs into the body: its length comes from the cipher.
    let expected = if alg.starts_with("AES-") {
        32
    } else if alg.starts_with("DES-") {
        16
    } else {
        hex_run
    };
    if alg.is_empty() || expected == 0 || hex_run < expected {
        return None;
    }
    if hex_run > expected
        && h.as_bytes()
            .get(hex_run)
            .is_some_and(|b| b.is_ascii_whitespace())
    {
        return None;
    }
    Some((alg.to_owned(), h[..expected].to_owned(), &h[expected..]))
}

fn note_separator(sep: &str, seps: &mut Separators) {
    match sep {
        "" => seps.none = true,
        "\n" => {}
        " " => seps.space = true,
        _ => seps.other = true,
    }
}

/// The body lines, restored or re-wrapped.
fn body_lines(
    rest: &str,
    block: usize,
    seps: &mut Separators,
    repairs: &mut BTreeSet<RepairKind>,
) -> Result<Zeroizing<String>, PemError> {
    // Between the header's blank line and the body, the separator is "\n\n" or two spaces.
    let rest = rest.trim_start_matches(['\n', ' ', '\t']);
    let mut tokens: Vec<&str> = Vec::new();
    let mut cursor = 0;
    for tok in rest.split(|c: char| c.is_ascii_whitespace()) {
        let start = tok.as_ptr() as usize - rest.as_ptr() as usize;
        if tok.is_empty() {
            continue;
        }
        if !tokens.is_empty() {
            note_separator(&rest[cursor..start], seps);
        }
        cursor = start + tok.len();
        tokens.push(tok);
    }
    note_separator(&rest[cursor..], seps);
    if tokens.is_empty() {
        return Err(PemError::BadBase64 { block });
    }
    let is_b64 = |t: &&str| {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    if !tokens.iter().all(is_b64) {
        return Err(PemError::BadBase64 { block });
    }
    let total: usize = tokens.iter().map(|t| t.len()).sum();
    let mut body = Zeroizing::new(String::with_capacity(total + total / 64 + 2));
    let width = tokens[0].len();
    let regular = tokens.len() >= 2
        && (4..=76).contains(&width)
        && tokens[..tokens.len() - 1].iter().all(|t| t.len() == width)
        && tokens[tokens.len() - 1].len() <= width;
    if regular || (tokens.len() == 1 && width <= 64) {
        for (i, t) in tokens.iter().enumerate() {
            if i > 0 {
                body.push('\n');
            }
            body.push_str(t);
        }
    } else {
        repairs.insert(RepairKind::Rewrapped);
        // Tokens are base64 (ASCII, checked above): slicing by bytes is slicing by chars.
        let mut col = 0;
        for t in &tokens {
            let mut t: &str = t;
            while !t.is_empty() {
                if col == 64 {
                    body.push('\n');
                    col = 0;
                }
                let take = (64 - col).min(t.len());
                body.push_str(&t[..take]);
                col += take;
                t = &t[take..];
            }
        }
    }
    Ok(body)
}
