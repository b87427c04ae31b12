//! Errors of the reference language. None of them can carry a secret value: they hold
//! reason codes, positions, and at most one offending character of the reference text.

use std::fmt;

use serde::Serialize;

/// What is wrong with the text of a reference. `code()` is the stable reason code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// `$SECRET_` with no path after it.
    #[error("the reference has no path")]
    EmptyPath,
    /// `a//b`, a leading or a trailing `/`.
    #[error("the path has an empty segment")]
    EmptySegment,
    /// `.` or `..` as a segment, also when written `%2e%2e`.
    #[error("`.` and `..` are not allowed as path segments")]
    DotSegment,
    /// A character outside `[A-Za-z0-9._-]` that is not a `%XX` escape.
    #[error("character {ch:?} is not allowed here; use a %XX escape")]
    InvalidCharacter { ch: char },
    /// `%` not followed by two hex digits, or escapes that do not decode to UTF-8.
    #[error("bad %XX escape")]
    BadEscape,
    /// A decoded `/`, `\`, `?`, `#` or control character inside a segment.
    #[error("decoded character {ch:?} is not allowed in a path segment")]
    ForbiddenDecoded { ch: char },
    /// The part before `:` is not a source name (`[A-Za-z0-9_-]+`).
    #[error("bad source name before `:`")]
    InvalidSourceName,
    /// `@` not followed by a version number ≥ 1.
    #[error("`@` must be followed by a version number >= 1")]
    BadVersion,
    /// ` $KEY_` with no field name.
    #[error("`$KEY_` has no field name")]
    EmptyField,
    /// `$KEY_` not directly after a `$SECRET_`/`$SAFE_` reference and one space.
    #[error(
        "`$KEY_` must follow a `$SECRET_` or `$SAFE_ $NAME_` reference after one space (write `$$KEY_` for the literal text)"
    )]
    OrphanKey,
    /// `$NAME_` not directly after `$SAFE_<safe>` and one space.
    #[error(
        "`$NAME_` must follow `$SAFE_<safe>` after one space (write `$$NAME_` for the literal text)"
    )]
    OrphanName,
    /// `$SAFE_<safe>` without ` $NAME_<object>`.
    #[error("`$SAFE_<safe>` must be followed by one space and `$NAME_<object>`")]
    SafeWithoutName,
    /// `$SAFE_` or `$NAME_` with nothing after it.
    #[error("the safe or object name is empty")]
    EmptyName,
    /// `;`, `&`, `+`, `%`, `=` or a control character in a CCP name (after decoding).
    #[error("character {ch:?} is not accepted by CyberArk CCP")]
    CcpForbiddenCharacter { ch: char },
    /// A string expected to be exactly one reference holds something else too.
    #[error("expected exactly one reference")]
    NotAReference,
}

impl ParseErrorKind {
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmptyPath => "empty_path",
            Self::EmptySegment => "empty_segment",
            Self::DotSegment => "dot_segment",
            Self::InvalidCharacter { .. } => "invalid_character",
            Self::BadEscape => "bad_escape",
            Self::ForbiddenDecoded { .. } => "forbidden_character",
            Self::InvalidSourceName => "invalid_source_name",
            Self::BadVersion => "bad_version",
            Self::EmptyField => "empty_field",
            Self::OrphanKey => "orphan_key",
            Self::OrphanName => "orphan_name",
            Self::SafeWithoutName => "safe_without_name",
            Self::EmptyName => "empty_name",
            Self::CcpForbiddenCharacter { .. } => "ccp_forbidden_character",
            Self::NotAReference => "not_a_reference",
        }
    }
}

/// Where in a document a reference sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Location {
    /// A JSON pointer (RFC 6901) to the string, for JSON and YAML documents.
    Pointer { pointer: String },
    /// 1-based line and column (in characters), for text documents.
    LineColumn { line: usize, column: usize },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer { pointer } if pointer.is_empty() => f.write_str("(document root)"),
            Self::Pointer { pointer } => f.write_str(pointer),
            Self::LineColumn { line, column } => write!(f, "{line}:{column}"),
        }
    }
}

/// Why one reference could not be expanded. Reason codes are stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    #[error(transparent)]
    Syntax(ParseErrorKind),
    /// A whole-secret reference (`$SECRET_x` without `$KEY_`) inside a longer string.
    #[error(
        "a whole-secret reference can only replace a whole JSON/YAML value; add `$KEY_<field>`"
    )]
    WholeSecretInterpolated,
    /// A whole-secret reference in a text document, where there is no object to put.
    #[error("a whole-secret reference cannot be used in a text document; add `$KEY_<field>`")]
    WholeSecretInText,
    /// The named source is not configured (or, for `$SAFE_`, no CCP source is).
    #[error("no such source is configured")]
    UnknownSource,
    /// No default source for `$SECRET_` without `<source>:`.
    #[error("no default source is configured; write `$SECRET_<source>:<path>`")]
    NoDefaultSource,
    #[error("the secret does not exist")]
    NotFound,
    #[error("the secret has no such field")]
    FieldNotFound,
    /// The access policy does not allow this reference for this caller and host. Given
    /// before any read, so it says nothing about whether the secret exists.
    #[error("not permitted by the access policy for this caller and host")]
    Denied,
    /// The source does not let keybroker read this path (its policy for keybroker's token).
    #[error("the source does not allow keybroker to read this")]
    SourceDenied,
    #[error("the source is unavailable")]
    SourceUnavailable,
    /// The source refused keybroker's *own* credentials (an invalid or revoked token, a
    /// refused login): unavailable for everyone until an operator fixes them.
    #[error("the source refused keybroker's own credentials")]
    SourceCredentialsRefused,
    /// The source's answers show keybroker's configuration of it to be wrong (CCP's bare 404:
    /// `service_path`): unavailable for everyone until an operator fixes it.
    #[error("the source's configuration is wrong")]
    SourceMisconfigured,
    /// The source cannot serve this kind of reference (e.g. a version on the file source).
    #[error("the source does not support this reference: {0}")]
    Unsupported(&'static str),
    /// The source holds something that is not a valid secret (e.g. a malformed file).
    #[error("the stored secret is malformed: {0}")]
    Malformed(&'static str),
    /// Several objects match (CCP).
    #[error("several objects match the reference")]
    Ambiguous,
    /// A PEM value that could not be repaired or did not verify; holds the PEM reason code.
    #[error("the stored PEM value was rejected ({0})")]
    PemRejected(&'static str),
    /// The reference is well-formed but no source can serve it as written (a name too long,
    /// a path through a file, a backend's 4xx): the caller's failure, not the source's.
    #[error("the source cannot serve this reference as written: {0}")]
    InvalidReference(&'static str),
}

impl Reason {
    /// Whether the source, not the caller or its reference, is at fault (503, not 4xx).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::SourceUnavailable | Self::SourceCredentialsRefused | Self::SourceMisconfigured
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Syntax(kind) => kind.code(),
            Self::WholeSecretInterpolated => "whole_secret_interpolated",
            Self::WholeSecretInText => "whole_secret_in_text",
            Self::UnknownSource => "unknown_source",
            Self::NoDefaultSource => "no_default_source",
            Self::NotFound => "not_found",
            Self::FieldNotFound => "field_not_found",
            Self::Denied => "denied",
            Self::SourceDenied => "source_denied",
            Self::SourceUnavailable => "source_unavailable",
            Self::SourceCredentialsRefused => "source_credentials_refused",
            Self::SourceMisconfigured => "source_misconfigured",
            Self::Unsupported(_) => "unsupported",
            Self::Malformed(_) => "malformed_secret",
            Self::PemRejected(_) => "pem_rejected",
            Self::Ambiguous => "ambiguous",
            Self::InvalidReference(_) => "invalid_reference",
        }
    }
}

/// One failing reference in a document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct ExpandError {
    pub location: Location,
    /// The reference in canonical form, when it parsed.
    pub reference: Option<String>,
    pub reason: Reason,
}

impl Serialize for ExpandError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match &self.location {
            Location::Pointer { pointer } => map.serialize_entry("pointer", pointer)?,
            Location::LineColumn { line, column } => {
                map.serialize_entry("line", line)?;
                map.serialize_entry("column", column)?;
            }
        }
        if let Some(r) = &self.reference {
            map.serialize_entry("reference", r)?;
        }
        map.serialize_entry("code", self.reason.code())?;
        map.serialize_entry("message", &self.reason.to_string())?;
        map.end()
    }
}

/// The document itself could not be read in the format it claims.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Position only: parser messages can quote the input.
    #[error("the document is not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("the document is not valid YAML{}", .at.map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default())]
    Yaml { at: Option<(u64, u64)> },
    #[error("for format `json` the document is a JSON value; for `yaml` and `text` it is a string")]
    WrongShape,
}

impl DocumentError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json { .. } => "invalid_json",
            Self::Yaml { .. } => "invalid_yaml",
            Self::WrongShape => "wrong_document_shape",
        }
    }
}
