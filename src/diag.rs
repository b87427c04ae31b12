//! Diagnostics for TOML files read through toml's spanned tree: every problem of a file,
//! each with `file:line:column`, for `keybroker.toml` and the policy files alike.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

/// One problem in a configuration or policy file, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A diagnostic at byte `span.start` of `text` (read from `file`).
pub(crate) fn diagnostic(
    file: &Path,
    text: &str,
    span: Range<usize>,
    message: String,
) -> Diagnostic {
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

pub(crate) struct Diags<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub list: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            list: Vec::new(),
        }
    }
}

impl Diags<'_> {
    pub(crate) fn at(&mut self, span: Range<usize>, message: String) {
        self.list
            .push(diagnostic(self.file, self.text, span, message));
    }

    /// Deserializes one value, reporting its unknown keys (except `allowed`) and its first
    /// type error.
    pub(crate) fn section<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        allowed: &[&str],
    ) -> Option<T> {
        let mut unknown = Vec::new();
        let result: Result<T, _> =
            serde_ignored::deserialize(ValueDeserializer::from(value.clone()), |path| {
                let mut segs = Vec::new();
                path_segments(&path, &mut segs);
                unknown.push(segs);
            });
        for segs in unknown {
            if let [Seg::Key(k)] = segs.as_slice()
                && allowed.contains(&k.as_str())
            {
                continue;
            }
            let span = span_of(value, &segs).unwrap_or_else(|| value.span());
            self.at(span, format!("unknown key `{}`", display_path(&segs)));
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.at(
                    e.span().unwrap_or_else(|| value.span()),
                    e.message().trim().to_owned(),
                );
                None
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent, out)
        }
    }
}

fn display_path(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The span of the key (or array element) that `segs` leads to.
pub(crate) fn span_of(value: &Spanned<DeValue<'_>>, segs: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = segs.split_first()?;
    let (span, next) = match first {
        Seg::Key(k) => {
            let table = value.get_ref().as_table()?;
            let (key, v) = table.iter().find(|(key, _)| key.get_ref() == k)?;
            (key.span(), v)
        }
        Seg::Index(i) => {
            let item = value.get_ref().as_array()?.get(*i)?;
            (item.span(), item)
        }
    };
    if rest.is_empty() {
        Some(span)
    } else {
        span_of(next, rest)
    }
}
