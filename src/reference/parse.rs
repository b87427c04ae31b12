//! The reference grammar (docs/DESIGN.md §2): one string in, a [`Template`] of literal
//! text and parsed [`Reference`]s out, or every syntax error in it.
//!
//! Hand-written rather than a regex: the errors must say precisely what is wrong and where,
//! and the grammar is small enough that a scanner over bytes is the clearest statement of it.

use std::fmt;

use super::error::ParseErrorKind;

/// A parsed reference. Paths and names hold decoded text; [`fmt::Display`] prints the
/// canonical form, which parses back to an equal value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub target: Target,
    /// `$KEY_<field>`; `None` means the whole secret (`$SECRET_`) or `Content` (`$SAFE_`).
    pub field: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `$SECRET_[<source>:]<path>[@<version>]`
    Secret {
        source: Option<String>,
        path: SecretPath,
        version: Option<u64>,
    },
    /// `$SAFE_<safe> $NAME_<object>` — CyberArk CCP, Itential's form.
    Ccp { safe: String, object: String },
}

/// A validated path: non-empty segments, none `.`/`..`, none holding `/`, `\`, `?`, `#` or
/// control characters after `%XX` decoding.
///
/// Held as one string with `/` between the segments (a decoded segment never holds `/`): one
/// allocation per path, which is what a cache of 100,000 keys pays per entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath(Box<str>);

impl SecretPath {
    /// The decoded segments, in order.
    pub fn segments(&self) -> Vec<&str> {
        self.0.split('/').collect()
    }

    /// The segments without collecting them.
    pub fn iter(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// How many segments.
    pub fn len(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// Never true: a path has at least one segment.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the path starts with the segments `prefix` (all of it when `prefix` is empty).
    pub fn starts_with<S: AsRef<str>>(&self, prefix: &[S]) -> bool {
        let mut own = self.iter();
        prefix.iter().all(|p| own.next() == Some(p.as_ref()))
    }

    /// Builds a path from decoded segments, applying the same rules as the parser.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, ParseErrorKind>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut joined = String::new();
        for (i, s) in segments.into_iter().enumerate() {
            let s: String = s.into();
            check_decoded_segment(&s)?;
            if i > 0 {
                joined.push('/');
            }
            joined.push_str(&s);
        }
        if joined.is_empty() {
            return Err(ParseErrorKind::EmptyPath);
        }
        Ok(Self(joined.into_boxed_str()))
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write_encoded(f, seg)?;
        }
        Ok(())
    }
}

impl Reference {
    /// A reference that stands for a whole secret object (`$SECRET_x` without `$KEY_`).
    pub fn is_whole_secret(&self) -> bool {
        matches!(self.target, Target::Secret { .. }) && self.field.is_none()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Secret {
                source,
                path,
                version,
            } => {
                f.write_str("$SECRET_")?;
                if let Some(source) = source {
                    f.write_str(source)?;
                    f.write_str(":")?;
                }
                fmt::Display::fmt(path, f)?;
                if let Some(v) = version {
                    write!(f, "@{v}")?;
                }
            }
            Target::Ccp { safe, object } => {
                f.write_str("$SAFE_")?;
                write_encoded(f, safe)?;
                f.write_str(" $NAME_")?;
                write_encoded(f, object)?;
            }
        }
        if let Some(field) = &self.field {
            f.write_str(" $KEY_")?;
            f.write_str(field)?;
        }
        Ok(())
    }
}

/// A string split into literal text and references, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is (`$$` escapes already reduced to `$`).
    Literal(String),
    /// A reference starting at byte `offset` of the input string.
    Ref { reference: Reference, offset: usize },
}

impl Template {
    pub fn has_references(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Ref { .. }))
    }

    /// The single reference if the template is exactly one reference and nothing else.
    pub fn as_whole(&self) -> Option<&Reference> {
        match self.parts.as_slice() {
            [Part::Ref { reference, .. }] => Some(reference),
            _ => None,
        }
    }

    pub fn references(&self) -> impl Iterator<Item = (&Reference, usize)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref { reference, offset } => Some((reference, *offset)),
            Part::Literal(_) => None,
        })
    }

    /// The literal text, when the template holds no reference.
    pub fn into_literal(self) -> Option<String> {
        let mut out = String::new();
        for part in self.parts {
            match part {
                Part::Literal(s) => out.push_str(&s),
                Part::Ref { .. } => return None,
            }
        }
        Some(out)
    }
}

/// A syntax error at byte `offset` of the input string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub kind: ParseErrorKind,
}

const SECRET: &str = "$SECRET_";
const SAFE: &str = "$SAFE_";
const KEY: &str = "$KEY_";
const NAME: &str = "$NAME_";
const KEY_SEP: &str = " $KEY_";
const NAME_SEP: &str = " $NAME_";

/// Parses one reference, e.g. `$SECRET_demo/db $KEY_password`; nothing may follow it.
pub fn parse_reference(s: &str) -> Result<Reference, ParseError> {
    let template = parse_template(s).map_err(|mut errors| errors.swap_remove(0))?;
    match template.parts.as_slice() {
        [Part::Ref { reference, .. }] => Ok(reference.clone()),
        _ => Err(ParseError {
            offset: 0,
            kind: ParseErrorKind::NotAReference,
        }),
    }
}

/// Splits `s` into literals and references. On failure returns every error in `s`.
pub fn parse_template(s: &str) -> Result<Template, Vec<ParseError>> {
    let (template, errors) = parse_template_lenient(s);
    if errors.is_empty() {
        Ok(template)
    } else {
        Err(errors)
    }
}

/// Like [`parse_template`], but also returns the template of everything that did parse
/// (a malformed reference is dropped from it), so that a caller can report the failures of
/// the good references together with the syntax errors of the bad ones.
pub fn parse_template_lenient(s: &str) -> (Template, Vec<ParseError>) {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    let mut literal = String::new();
    let mut start = 0; // start of the pending literal run
    let mut i = 0;
    while let Some(pos) = s[i..].find('$') {
        let at = i + pos;
        let rest = &s[at..];
        if rest.starts_with("$$") && starts_with_keyword(&rest[1..]) {
            // `$$SECRET_a $KEY_b` is the literal text `$SECRET_a $KEY_b`, continuation
            // included, so the escaped `$KEY_` is not taken for an orphan.
            literal.push_str(&s[start..at]);
            literal.push('$');
            let end = escaped_extent(s, at + 1);
            literal.push_str(&s[at + 2..end]);
            i = end;
            start = end;
            continue;
        }
        let parsed = if rest.starts_with(SECRET) {
            Some(parse_secret(s, at))
        } else if rest.starts_with(SAFE) {
            Some(parse_ccp(s, at))
        } else if rest.starts_with(KEY) || rest.starts_with(NAME) {
            let kind = if rest.starts_with(KEY) {
                ParseErrorKind::OrphanKey
            } else {
                ParseErrorKind::OrphanName
            };
            Some(Err((kind, token_end(bytes, at + 1))))
        } else {
            None
        };
        match parsed {
            None => i = at + 1,
            Some(Ok((reference, end))) => {
                literal.push_str(&s[start..at]);
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Ref {
                    reference,
                    offset: at,
                });
                i = end;
                start = end;
            }
            Some(Err((kind, end))) => {
                // One mistake, one error: a bad reference's own ` $KEY_…` goes with it.
                let end = match kind {
                    ParseErrorKind::OrphanKey | ParseErrorKind::OrphanName => end,
                    _ => skip_key(s, end),
                };
                errors.push(ParseError { offset: at, kind });
                i = end.max(at + 1);
                start = i;
            }
        }
    }
    literal.push_str(&s[start..]);
    if !literal.is_empty() || parts.is_empty() {
        parts.push(Part::Literal(literal));
    }
    (Template { parts }, errors)
}

/// The end of the (escaped) reference-like text starting with the keyword at `at`.
fn escaped_extent(s: &str, at: usize) -> usize {
    let bytes = s.as_bytes();
    let rest = &s[at..];
    if rest.starts_with(KEY) || rest.starts_with(NAME) {
        return token_end(bytes, at + 1);
    }
    let mut end = token_end(bytes, at + 1);
    if rest.starts_with(SAFE) && s[end..].starts_with(NAME_SEP) {
        end = token_end(bytes, end + NAME_SEP.len());
    }
    skip_key(s, end)
}

/// Past a ` $KEY_<field>` at `pos`, if there is one.
fn skip_key(s: &str, pos: usize) -> usize {
    match parse_key(s, pos) {
        Ok((_, end)) => end,
        Err((_, end)) => end,
    }
}

fn starts_with_keyword(s: &str) -> bool {
    [SECRET, SAFE, KEY, NAME].iter().any(|k| s.starts_with(k))
}

type Parsed = Result<(Reference, usize), (ParseErrorKind, usize)>;

/// `$SECRET_[<source>:]<path>[@<n>][ $KEY_<field>]` starting at `at`.
fn parse_secret(s: &str, at: usize) -> Parsed {
    let bytes = s.as_bytes();
    let body_start = at + SECRET.len();
    let end = token_end(bytes, body_start);
    let token = &s[body_start..end];
    let fail = |kind| Err((kind, end));
    if token.is_empty() {
        return fail(ParseErrorKind::EmptyPath);
    }
    let (source, rest) = match token.split_once(':') {
        Some((src, rest)) => {
            if src.is_empty() || !src.bytes().all(is_source_byte) {
                return fail(ParseErrorKind::InvalidSourceName);
            }
            (Some(src.to_owned()), rest)
        }
        None => (None, token),
    };
    let (path_text, version) = match rest.split_once('@') {
        Some((p, v)) => match parse_version(v) {
            Ok(v) => (p, Some(v)),
            Err(kind) => return fail(kind),
        },
        None => (rest, None),
    };
    if path_text.is_empty() {
        return fail(ParseErrorKind::EmptyPath);
    }
    let mut segments = String::with_capacity(path_text.len());
    for (i, raw) in path_text.split('/').enumerate() {
        match decode_segment(raw).and_then(|seg| check_decoded_segment(&seg).map(|()| seg)) {
            Ok(seg) => {
                if i > 0 {
                    segments.push('/');
                }
                segments.push_str(&seg);
            }
            Err(kind) => return fail(kind),
        }
    }
    let (field, end) = parse_key(s, end)?;
    let target = Target::Secret {
        source,
        path: SecretPath(segments.into_boxed_str()),
        version,
    };
    Ok((Reference { target, field }, end))
}

/// `$SAFE_<safe> $NAME_<object>[ $KEY_<prop>]` starting at `at`.
fn parse_ccp(s: &str, at: usize) -> Parsed {
    let bytes = s.as_bytes();
    let safe_start = at + SAFE.len();
    let safe_end = token_end(bytes, safe_start);
    let safe = match decode_ccp_name(&s[safe_start..safe_end]) {
        Ok(v) => v,
        Err(kind) => return Err((kind, skip_ccp_rest(s, safe_end))),
    };
    if !s[safe_end..].starts_with(NAME_SEP) {
        return Err((ParseErrorKind::SafeWithoutName, safe_end));
    }
    let obj_start = safe_end + NAME_SEP.len();
    let obj_end = token_end(bytes, obj_start);
    let object = match decode_ccp_name(&s[obj_start..obj_end]) {
        Ok(v) => v,
        Err(kind) => return Err((kind, obj_end)),
    };
    let (field, end) = parse_key(s, obj_end)?;
    let target = Target::Ccp { safe, object };
    Ok((Reference { target, field }, end))
}

/// After a bad safe name, also skip its ` $NAME_…` so one mistake gives one error.
fn skip_ccp_rest(s: &str, safe_end: usize) -> usize {
    if s[safe_end..].starts_with(NAME_SEP) {
        token_end(s.as_bytes(), safe_end + NAME_SEP.len())
    } else {
        safe_end
    }
}

/// An optional ` $KEY_<field>` at `pos`. A field is `[A-Za-z0-9_.-]+` without trailing dots.
fn parse_key(s: &str, pos: usize) -> Result<(Option<String>, usize), (ParseErrorKind, usize)> {
    if !s[pos..].starts_with(KEY_SEP) {
        return Ok((None, pos));
    }
    let start = pos + KEY_SEP.len();
    let bytes = s.as_bytes();
    let mut end = start;
    while end < bytes.len() && is_field_byte(bytes[end]) {
        end += 1;
    }
    while end > start && bytes[end - 1] == b'.' {
        end -= 1;
    }
    if end == start {
        return Err((ParseErrorKind::EmptyField, start));
    }
    Ok((Some(s[start..end].to_owned()), end))
}

fn parse_version(v: &str) -> Result<u64, ParseErrorKind> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseErrorKind::BadVersion);
    }
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ParseErrorKind::BadVersion),
    }
}

/// A CCP safe or object name: one segment, then CCP's own forbidden characters.
fn decode_ccp_name(raw: &str) -> Result<String, ParseErrorKind> {
    if raw.is_empty() {
        return Err(ParseErrorKind::EmptyName);
    }
    let name = decode_segment(raw)?;
    if let Some(c) = name.chars().find(|c| is_ccp_forbidden(*c)) {
        return Err(ParseErrorKind::CcpForbiddenCharacter { ch: c });
    }
    Ok(name.into_owned())
}

/// Characters CyberArk CCP does not accept inside a query value (docs/CCP-API.md).
/// They are rejected, never escaped.
pub fn is_ccp_forbidden(c: char) -> bool {
    matches!(c, ';' | '&' | '+' | '%' | '=') || c.is_control()
}

/// Where a `$SECRET_`/`$SAFE_` token ends: at whitespace, the end, or a closing delimiter
/// that commonly surrounds a reference in text (quotes, brackets, `,`). Anything else up to
/// there belongs to the token and must be valid — so `x?list=true` is an error, not `x`.
fn token_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() && !is_terminator(bytes[i]) {
        i += 1;
    }
    i
}

fn is_terminator(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'"' | b'\'' | b'`' | b'<' | b'>' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b','
        )
}

fn is_source_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn is_field_byte(b: u8) -> bool {
    is_segment_byte(b)
}

/// Decodes one segment: `[A-Za-z0-9._-]` as is, `%XX` as a byte; the result must be UTF-8.
fn decode_segment(raw: &str) -> Result<std::borrow::Cow<'_, str>, ParseErrorKind> {
    if raw.is_empty() {
        return Err(ParseErrorKind::EmptySegment);
    }
    let bytes = raw.as_bytes();
    // Most segments have no escape: they are their own decoding, and cost no allocation.
    if bytes.iter().all(|&b| is_segment_byte(b)) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_segment_byte(b) {
            out.push(b);
            i += 1;
        } else if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(ParseErrorKind::BadEscape)?;
            let hi = (hex[0] as char).to_digit(16);
            let lo = (hex[1] as char).to_digit(16);
            match (hi, lo) {
                // Both digits are < 16, so the byte fits.
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(ParseErrorKind::BadEscape),
            }
            i += 3;
        } else {
            // Report the whole character, not a UTF-8 fragment of it.
            let ch = raw[i..].chars().next().unwrap_or('\u{FFFD}');
            return Err(ParseErrorKind::InvalidCharacter { ch });
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| ParseErrorKind::BadEscape)
}

fn check_decoded_segment(seg: &str) -> Result<(), ParseErrorKind> {
    if seg.is_empty() {
        return Err(ParseErrorKind::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(ParseErrorKind::DotSegment);
    }
    if let Some(ch) = seg
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control())
    {
        return Err(ParseErrorKind::ForbiddenDecoded { ch });
    }
    Ok(())
}

fn write_encoded(f: &mut fmt::Formatter<'_>, seg: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of segment bytes (ASCII) are written whole: most segments are one run. A run
    // starts and ends next to ASCII bytes or the ends, so it is sliced on char boundaries.
    let bytes = seg.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !is_segment_byte(b) {
            if run < i {
                f.write_str(&seg[run..i])?;
            }
            let escaped = [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
            f.write_str(std::str::from_utf8(&escaped).map_err(|_| fmt::Error)?)?;
            run = i + 1;
        }
    }
    if run < bytes.len() {
        f.write_str(&seg[run..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParseErrorKind as K;

    proptest::proptest! {
        /// Any segment a path may hold prints as a reference that parses back to it
        /// (percent-encoding runs are sliced on char boundaries whatever the characters).
        #[test]
        fn any_segment_prints_and_parses_back(seg in "\\PC{1,12}", tail in "[ -~]{1,6}") {
            if let Ok(path) = SecretPath::from_segments([seg.as_str(), tail.as_str()]) {
                let r = Reference {
                    target: Target::Secret { source: None, path, version: None },
                    field: Some("k".to_owned()),
                };
                let text = r.to_string();
                proptest::prop_assert_eq!(parse_reference(&text).unwrap(), r, "{}", text);
            }
        }
    }

    fn secret(path: &str, field: Option<&str>) -> Reference {
        Reference {
            target: Target::Secret {
                source: None,
                path: SecretPath::from_segments(path.split('/')).unwrap(),
                version: None,
            },
            field: field.map(str::to_owned),
        }
    }

    fn err_kind(s: &str) -> ParseErrorKind {
        parse_template(s).unwrap_err().remove(0).kind
    }

    #[test]
    fn parses_the_itential_forms() {
        assert_eq!(
            parse_reference("$SECRET_demo/db $KEY_password").unwrap(),
            secret("demo/db", Some("password"))
        );
        assert_eq!(
            parse_reference("$SECRET_demo/db").unwrap(),
            secret("demo/db", None)
        );
        let r = parse_reference("$SAFE_Payments $NAME_partner-key").unwrap();
        assert_eq!(
            r.target,
            Target::Ccp {
                safe: "Payments".into(),
                object: "partner-key".into()
            }
        );
        assert_eq!(r.field, None);
        let r = parse_reference("$SAFE_S1 $NAME_obj $KEY_UserName").unwrap();
        assert_eq!(r.field.as_deref(), Some("UserName"));
    }

    #[test]
    fn parses_source_and_version() {
        let r = parse_reference("$SECRET_vault-eu:payments/partner@3 $KEY_cert").unwrap();
        assert_eq!(
            r.target,
            Target::Secret {
                source: Some("vault-eu".into()),
                path: SecretPath::from_segments(["payments", "partner"]).unwrap(),
                version: Some(3),
            }
        );
        assert_eq!(
            r.to_string(),
            "$SECRET_vault-eu:payments/partner@3 $KEY_cert"
        );
    }

    #[test]
    fn interpolation_and_trailing_dot() {
        let t = parse_template("user $SECRET_a/b $KEY_u. then $SECRET_c $KEY_d!").unwrap();
        let refs: Vec<_> = t.references().map(|(r, o)| (r.to_string(), o)).collect();
        assert_eq!(
            refs,
            vec![
                ("$SECRET_a/b $KEY_u".to_owned(), 5),
                ("$SECRET_c $KEY_d".to_owned(), 30)
            ]
        );
        assert_eq!(t.parts[2], Part::Literal(". then ".into()));
        assert_eq!(t.parts[4], Part::Literal("!".into()));
    }

    #[test]
    fn dollar_escape_and_plain_dollars() {
        let t = parse_template("$$SECRET_x $$KEY_y costs $5 and $$ stays").unwrap();
        assert_eq!(
            t.into_literal().unwrap(),
            "$SECRET_x $KEY_y costs $5 and $$ stays"
        );
    }

    #[test]
    fn percent_escapes_decode_and_reencode() {
        let r = parse_reference("$SECRET_team%20a/x%C3%A9 $KEY_k").unwrap();
        let Target::Secret { path, .. } = &r.target else {
            panic!("secret target expected")
        };
        assert_eq!(path.segments(), ["team a", "xé"]);
        assert_eq!(r.to_string(), "$SECRET_team%20a/x%C3%A9 $KEY_k");
    }

    #[test]
    fn traversal_and_injection_are_rejected() {
        // docs/THREATS.md row 9.
        assert_eq!(err_kind("$SECRET_a/../b $KEY_x"), K::DotSegment);
        assert_eq!(err_kind("$SECRET_a/%2e%2e/b $KEY_x"), K::DotSegment);
        assert_eq!(err_kind("$SECRET_./b"), K::DotSegment);
        assert_eq!(
            err_kind("$SECRET_x?list=true"),
            K::InvalidCharacter { ch: '?' }
        );
        assert_eq!(err_kind("$SECRET_x#y"), K::InvalidCharacter { ch: '#' });
        assert_eq!(err_kind("$SECRET_a//b"), K::EmptySegment);
        assert_eq!(err_kind("$SECRET_/a"), K::EmptySegment);
        assert_eq!(err_kind("$SECRET_a%2Fb"), K::ForbiddenDecoded { ch: '/' });
        assert_eq!(err_kind("$SECRET_a%00b"), K::ForbiddenDecoded { ch: '\0' });
        assert_eq!(err_kind("$SECRET_a%zz"), K::BadEscape);
        assert_eq!(err_kind("$SECRET_a%ff"), K::BadEscape);
        assert_eq!(
            err_kind("$SAFE_S;Safe=Other $NAME_x"),
            K::InvalidCharacter { ch: ';' }
        );
        assert_eq!(
            err_kind("$SAFE_S%26AppID%3Dx $NAME_x"),
            K::CcpForbiddenCharacter { ch: '&' }
        );
        assert_eq!(
            err_kind("$SAFE_S $NAME_a%2Bb"),
            K::CcpForbiddenCharacter { ch: '+' }
        );
        assert_eq!(
            err_kind("$SAFE_S $NAME_a%25b"),
            K::CcpForbiddenCharacter { ch: '%' }
        );
    }

    #[test]
    fn malformed_forms_have_precise_errors() {
        assert_eq!(err_kind("$SECRET_"), K::EmptyPath);
        assert_eq!(err_kind("$SECRET_ $KEY_x"), K::EmptyPath);
        assert_eq!(err_kind("$SECRET_:a"), K::InvalidSourceName);
        assert_eq!(err_kind("$SECRET_a.b:c"), K::InvalidSourceName);
        assert_eq!(err_kind("$SECRET_a@0"), K::BadVersion);
        assert_eq!(err_kind("$SECRET_a@"), K::BadVersion);
        assert_eq!(err_kind("$SECRET_a@1x"), K::BadVersion);
        assert_eq!(err_kind("$SECRET_a $KEY_"), K::EmptyField);
        assert_eq!(err_kind("$SECRET_a $KEY_..."), K::EmptyField);
        assert_eq!(err_kind("just $KEY_x"), K::OrphanKey);
        assert_eq!(err_kind("$NAME_x"), K::OrphanName);
        assert_eq!(err_kind("$SAFE_S"), K::SafeWithoutName);
        assert_eq!(err_kind("$SAFE_S  $NAME_x"), K::SafeWithoutName);
        assert_eq!(err_kind("$SAFE_ $NAME_x"), K::EmptyName);
    }

    #[test]
    fn two_spaces_before_key_is_not_a_field() {
        // One space separates `$SECRET_` from `$KEY_`: with two, the key is an orphan.
        let errs = parse_template("$SECRET_a  $KEY_b").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].kind, K::OrphanKey);
        assert_eq!(errs[0].offset, 11);
    }

    #[test]
    fn every_error_is_reported_with_its_offset() {
        let errs = parse_template("a $SECRET_x/../y b $SECRET_ok $KEY_k c $KEY_z").unwrap_err();
        let got: Vec<_> = errs.iter().map(|e| (e.offset, e.kind.clone())).collect();
        assert_eq!(got, vec![(2, K::DotSegment), (39, K::OrphanKey)]);
    }

    #[test]
    fn no_dollar_means_one_literal() {
        let t = parse_template("plain text").unwrap();
        assert!(!t.has_references());
        assert_eq!(t.into_literal().unwrap(), "plain text");
        assert_eq!(
            parse_template("").unwrap().parts,
            vec![Part::Literal(String::new())]
        );
    }

    #[test]
    fn references_end_at_delimiters() {
        let t = parse_template("(\"$SECRET_a $KEY_b\")").unwrap();
        assert_eq!(t.references().count(), 1);
        assert_eq!(
            parse_reference("$SECRET_a $KEY_b extra"),
            Err(ParseError {
                offset: 0,
                kind: K::NotAReference
            })
        );
    }
}
