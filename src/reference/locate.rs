//! Finds the references in a JSON, YAML or text document and prepares it for rendering.
//!
//! A tree document (JSON, YAML) becomes a *skeleton* without secrets: every string that
//! holds a reference is replaced by a random placeholder. JSON text keeps every other byte as
//! it was sent (the string tokens are found by [`super::json`]'s one pass over the text);
//! YAML is still read into the JSON model and written again. Rendering then copies the
//! skeleton into a zeroizing buffer, writing secret values where the placeholders are — so no
//! serializer ever sees a secret, and no `serde_json::Value` ever holds one. Object keys are
//! never expanded.

use serde_json::Value;

use super::error::{DocumentError, ExpandError, Location, Reason};
use super::parse::{ParseError, Reference, Template, parse_template_lenient};

/// The document formats of `/v1/resolve` and `keybroker resolve`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Yaml,
    Text,
}

/// A string of the document that holds at least one reference.
#[derive(Debug)]
pub(crate) struct Site {
    pub location: Location,
    pub template: Template,
    /// Position in document order, shared with the errors found while preparing.
    pub(super) ordinal: usize,
}

/// A document whose references are found and checked for syntax; ready to render.
///
/// Malformed references do not stop preparation: they are kept in `errors` and reported by
/// [`Prepared::render`] together with the lookup failures of the well-formed ones.
#[derive(Debug)]
pub struct Prepared {
    pub(super) format: Format,
    pub(super) body: Body,
    /// Errors found while preparing, each with its place in document order.
    pub(super) errors: Vec<(usize, ExpandError)>,
}

#[derive(Debug)]
pub(super) enum Body {
    /// JSON or YAML: the serialized skeleton and the sites its placeholders stand for.
    Tree {
        skeleton: String,
        marker: String,
        sites: Vec<Site>,
    },
    /// Text: the whole document is one template; `text` is kept for line:column.
    Text { template: Template, text: String },
}

/// Where a reference sits, before it is turned into a [`Location`].
#[derive(Clone, Copy, Debug)]
pub(super) enum At<'a> {
    Site(&'a Location),
    Offset(usize),
}

/// How a tree document is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Compact,
    Pretty,
}

impl Prepared {
    /// A parsed JSON value, written out in `layout` and prepared as that text.
    pub fn json(value: Value, layout: Layout) -> Result<Self, DocumentError> {
        let text = match layout {
            Layout::Compact => serde_json::to_string(&value),
            Layout::Pretty => serde_json::to_string_pretty(&value),
        }
        // Serializing a `Value` with string keys cannot fail.
        .expect("a serde_json::Value always serializes");
        Self::json_text(&text)
    }

    /// JSON text, expanded in place: the answer is `text` with exactly the string tokens that
    /// hold references (or `$$` escapes) replaced, every other byte as sent.
    pub fn json_text(text: &str) -> Result<Self, DocumentError> {
        let mut splice = Splice::new(text);
        super::json::scan(text, |token, pointer| {
            splice.collect.ordinal += 1;
            let raw = &text[token.span.0..token.span.1];
            // A reference starts with `$`, which an escape may spell `\u0024`.
            if !raw.contains(['$', '\\']) {
                return;
            }
            if let Some(decoded) = super::json::decode(text, token.span) {
                splice.string(&decoded, token.span, pointer);
            }
        })?;
        Ok(splice.finish(Format::Json))
    }

    /// YAML text (a stream of one or more documents), expanded in place: the scalars that
    /// hold references (or `$$` escapes) become double-quoted scalars, every other byte —
    /// comments, anchors, tags, flow and block style — stays as it was.
    pub fn yaml(text: &str) -> Result<Self, DocumentError> {
        let mut splice = Splice::new(text);
        super::yaml::scan(text, |scalar, pointer| {
            splice.collect.ordinal += 1;
            splice.string(scalar.value, scalar.span, pointer);
        })?;
        Ok(splice.finish(Format::Yaml))
    }

    /// Plain text: references anywhere, written back byte for byte around them.
    pub fn text(text: &str) -> Result<Self, DocumentError> {
        let (template, syntax) = parse_template_lenient(text);
        let mut found: Vec<(usize, Option<String>, Reason)> = syntax
            .into_iter()
            .map(|e| (e.offset, None, Reason::Syntax(e.kind)))
            .collect();
        found.extend(
            template
                .references()
                .filter(|(r, _)| r.is_whole_secret())
                .map(|(r, offset)| (offset, Some(r.to_string()), Reason::WholeSecretInText)),
        );
        // All locations in one pass over the text (THREATS row 22: one pass per error was
        // quadratic in a document of many errors).
        let offsets: Vec<usize> = found.iter().map(|(o, _, _)| *o).collect();
        let locations = line_columns(text, &offsets);
        let errors: Vec<(usize, ExpandError)> = found
            .into_iter()
            .zip(locations)
            .map(|((offset, reference, reason), location)| {
                let error = ExpandError {
                    location,
                    reference,
                    reason,
                };
                (offset, error)
            })
            .collect();
        Ok(Self {
            format: Format::Text,
            body: Body::Text {
                template,
                text: text.to_owned(),
            },
            errors,
        })
    }

    fn tree(
        format: Format,
        skeleton: String,
        marker: String,
        sites: Vec<Site>,
        errors: Vec<(usize, ExpandError)>,
    ) -> Self {
        Self {
            format,
            body: Body::Tree {
                skeleton,
                marker,
                sites,
            },
            errors,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Every well-formed reference with its location, in document order (duplicates
    /// included).
    pub fn references(&self) -> Vec<(&Reference, Location)> {
        self.ordered_references()
            .into_iter()
            .map(|(_, r, at)| (r, self.location(at)))
            .collect()
    }

    /// Every well-formed reference, in document order, without computing locations.
    pub fn references_unlocated(&self) -> impl Iterator<Item = (&Reference, usize)> {
        self.ordered_references()
            .into_iter()
            .map(|(o, r, _)| (r, o))
    }

    /// The references with their place in document order; the location is computed only
    /// when asked for (see [`Prepared::location`]), so the hot path allocates nothing per
    /// reference.
    pub(super) fn ordered_references(&self) -> Vec<(usize, &Reference, At<'_>)> {
        match &self.body {
            Body::Tree { sites, .. } => sites
                .iter()
                .flat_map(|s| {
                    s.template
                        .references()
                        .map(|(r, _)| (s.ordinal, r, At::Site(&s.location)))
                })
                .collect(),
            Body::Text { template, .. } => template
                .references()
                .map(|(r, offset)| (offset, r, At::Offset(offset)))
                .collect(),
        }
    }

    pub(super) fn location(&self, at: At<'_>) -> Location {
        self.locations(&[at]).pop().expect("one location per place")
    }

    /// The locations of `places`, in their order; text offsets are resolved in one pass.
    pub(super) fn locations(&self, places: &[At<'_>]) -> Vec<Location> {
        let offsets: Vec<usize> = places
            .iter()
            .map(|a| match a {
                At::Offset(o) => *o,
                At::Site(_) => 0,
            })
            .collect();
        let mut text_locations = match &self.body {
            Body::Text { text, .. } => line_columns(text, &offsets),
            Body::Tree { .. } => Vec::new(),
        }
        .into_iter();
        places
            .iter()
            .map(|a| match (a, &self.body) {
                (At::Site(location), _) => {
                    text_locations.next();
                    (*location).clone()
                }
                (At::Offset(_), Body::Text { .. }) => {
                    text_locations.next().expect("one per offset")
                }
                (At::Offset(offset), Body::Tree { .. }) => Location::LineColumn {
                    line: 0,
                    column: *offset,
                },
            })
            .collect()
    }

    /// How many reference occurrences the document holds (duplicates included).
    pub fn occurrences(&self) -> usize {
        match &self.body {
            Body::Tree { sites, .. } => sites.iter().map(|s| s.template.references().count()).sum(),
            Body::Text { template, .. } => template.references().count(),
        }
    }

    /// The errors found while preparing (syntax, misplaced whole-secret references).
    pub fn errors(&self) -> impl Iterator<Item = &ExpandError> {
        self.errors.iter().map(|(_, e)| e)
    }
}

/// A skeleton built from a document's own text: the text, with the strings that hold
/// references replaced by quoted placeholders (and `$$`-escaped ones by their reduced text).
struct Splice<'t> {
    text: &'t str,
    collect: Collect,
    skeleton: String,
    /// How much of `text` is in `skeleton` already.
    copied: usize,
}

impl<'t> Splice<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            collect: Collect::new(),
            skeleton: String::with_capacity(text.len()),
            copied: 0,
        }
    }

    /// The string `decoded`, written as `text[span]`, at the place `pointer` names.
    fn string(&mut self, decoded: &str, span: (usize, usize), pointer: &dyn Fn() -> String) {
        let Some(replacement) = self
            .collect
            .string(decoded, || Location::Pointer { pointer: pointer() })
        else {
            return;
        };
        let (start, end) = span;
        // Spans come in document order and do not overlap; anything else is left as it is.
        let Some(before) = self.text.get(self.copied..start) else {
            return;
        };
        self.skeleton.push_str(before);
        match replacement {
            Replacement::Site(placeholder) => {
                self.skeleton.push('"');
                self.skeleton.push_str(&placeholder);
                self.skeleton.push('"');
            }
            // A JSON string is also a YAML double-quoted scalar; writing one cannot fail.
            Replacement::Literal(reduced) => self
                .skeleton
                .push_str(&serde_json::to_string(&reduced).unwrap_or_default()),
        }
        self.copied = end;
    }

    fn finish(mut self, format: Format) -> Prepared {
        self.skeleton.push_str(&self.text[self.copied..]);
        let (sites, errors, marker) = self.collect.finish();
        Prepared::tree(format, self.skeleton, marker, sites, errors)
    }
}

/// What a string of a tree document becomes in the skeleton.
enum Replacement {
    /// A placeholder for the site just recorded.
    Site(String),
    /// The text with its `$$` escapes reduced (no reference in it).
    Literal(String),
}

/// The sites and errors of a tree document, in document order.
struct Collect {
    marker: String,
    sites: Vec<Site>,
    errors: Vec<(usize, ExpandError)>,
    /// Counts the strings visited: document order.
    ordinal: usize,
}

impl Collect {
    fn new() -> Self {
        Self {
            marker: new_marker(),
            sites: Vec::new(),
            errors: Vec::new(),
            ordinal: 0,
        }
    }

    fn finish(self) -> (Vec<Site>, Vec<(usize, ExpandError)>, String) {
        (self.sites, self.errors, self.marker)
    }

    fn error(&mut self, location: &Location, reference: Option<String>, reason: Reason) {
        let error = ExpandError {
            location: location.clone(),
            reference,
            reason,
        };
        self.errors.push((self.ordinal, error));
    }

    /// The string `s` at `location` (built only when needed): a new site, a reduced literal,
    /// or nothing to change.
    fn string(&mut self, s: &str, location: impl FnOnce() -> Location) -> Option<Replacement> {
        if !s.contains('$') {
            return None;
        }
        let location = location();
        let (template, syntax) = parse_template_lenient(s);
        for ParseError { kind, .. } in syntax.iter().cloned() {
            self.error(&location, None, Reason::Syntax(kind));
        }
        if !template.has_references() {
            if syntax.is_empty() {
                // Only `$$` escapes (or lone `$`): the reduced text replaces the string —
                // where there was something to reduce.
                return template
                    .into_literal()
                    .filter(|reduced| reduced != s)
                    .map(Replacement::Literal);
            }
            return None;
        }
        if template.as_whole().is_none() || !syntax.is_empty() {
            let whole: Vec<String> = template
                .references()
                .filter(|(r, _)| r.is_whole_secret())
                .map(|(r, _)| r.to_string())
                .collect();
            for r in whole {
                self.error(&location, Some(r), Reason::WholeSecretInterpolated);
            }
        }
        let placeholder = placeholder(&self.marker, self.sites.len());
        self.sites.push(Site {
            location,
            template,
            ordinal: self.ordinal,
        });
        Some(Replacement::Site(placeholder))
    }
}

/// `kbref_<128 random bits>_`: an unguessable marker, so a document cannot forge a site.
/// The bits come from the OS, fetched 4 KiB at a time per thread (one `getrandom` call per
/// 256 documents instead of one per document); each byte is used once.
fn new_marker() -> String {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static RANDOM: RefCell<(Box<[u8; POOL]>, usize)> = RefCell::new((Box::new([0; POOL]), POOL));
    }
    let nonce: [u8; 16] = RANDOM.with(|r| {
        let (pool, used) = &mut *r.borrow_mut();
        if *used + 16 > POOL {
            // Without an OS random source the process cannot do anything safely.
            getrandom::fill(&mut pool[..]).expect("the OS random number generator is available");
            *used = 0;
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&pool[*used..*used + 16]);
        *used += 16;
        nonce
    });
    // One allocation, sized once: this runs for every document.
    let mut marker = String::with_capacity(6 + 32 + 1 + 8);
    marker.push_str("kbref_");
    let mut hex = [0u8; 32];
    hex::encode_to_slice(nonce, &mut hex).expect("32 hex digits for 16 bytes");
    marker.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
    marker.push('_');
    marker
}

fn placeholder(marker: &str, index: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(marker.len() + 21);
    out.push_str(marker);
    // Writing into a `String` cannot fail.
    let _ = write!(out, "{index}_");
    out
}

/// 1-based line and column (in characters) of each byte offset in `text`, in the order
/// given: one walk over the text however many offsets there are.
pub(super) fn line_columns(text: &str, offsets: &[usize]) -> Vec<Location> {
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_by_key(|&i| offsets[i]);
    let mut out = vec![Location::LineColumn { line: 0, column: 0 }; offsets.len()];
    let (mut pos, mut line, mut column) = (0usize, 1usize, 1usize);
    for i in order {
        let mut target = offsets[i].min(text.len());
        while !text.is_char_boundary(target) {
            target -= 1;
        }
        let target = target.max(pos);
        for c in text[pos..target].chars() {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        pos = target;
        out[i] = Location::LineColumn { line, column };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(r: Result<Prepared, DocumentError>) -> Vec<ExpandError> {
        r.unwrap().errors().cloned().collect()
    }

    #[test]
    fn finds_references_with_json_pointers() {
        let doc = json!({
            "db": {"user": "$SECRET_demo/db $KEY_username", "n": 3},
            "list": ["x", "dsn=$SECRET_demo/db $KEY_password;"],
            "a/b~c": "$SECRET_demo/partner"
        });
        let p = Prepared::json(doc, Layout::Compact).unwrap();
        let found: Vec<_> = p
            .references()
            .into_iter()
            .map(|(r, l)| (r.to_string(), l.to_string()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("$SECRET_demo/db $KEY_username".into(), "/db/user".into()),
                ("$SECRET_demo/db $KEY_password".into(), "/list/1".into()),
                ("$SECRET_demo/partner".into(), "/a~1b~0c".into()),
            ]
        );
    }

    #[test]
    fn whole_secret_inside_a_string_is_an_error() {
        let e = errors(Prepared::json(
            json!({"x": "prefix $SECRET_demo/db"}),
            Layout::Compact,
        ));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, Reason::WholeSecretInterpolated);
        assert_eq!(e[0].location.to_string(), "/x");
    }

    #[test]
    fn all_syntax_errors_are_listed() {
        let e = errors(Prepared::json(
            json!({"a": "$SECRET_x/../y $KEY_k", "b": ["$KEY_orphan"], "c": "$SAFE_s"}),
            Layout::Compact,
        ));
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.location.to_string(), e.reason.code()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/a".to_owned(), "dot_segment"),
                ("/b/0".to_owned(), "orphan_key"),
                ("/c".to_owned(), "safe_without_name"),
            ]
        );
    }

    #[test]
    fn text_errors_have_line_and_column() {
        let e = errors(Prepared::text(
            "ok\n  é $SECRET_a/../b $KEY_c\n$SECRET_whole\n",
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].location, Location::LineColumn { line: 2, column: 5 });
        assert_eq!(e[0].reason.code(), "dot_segment");
        assert_eq!(e[1].reason, Reason::WholeSecretInText);
        assert_eq!(e[1].location.to_string(), "3:1");
        let e = errors(Prepared::text("x\n$SECRET_whole\n"));
        assert_eq!(e[0].reason, Reason::WholeSecretInText);
        assert_eq!(e[0].location.to_string(), "2:1");
    }

    #[test]
    fn yaml_is_read_into_the_json_model() {
        let p = Prepared::yaml("a:\n  b: $SECRET_demo/db $KEY_password\n  c: [1, two]\n").unwrap();
        let refs = p.references();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].1.to_string(), "/a/b");
        assert!(matches!(
            Prepared::yaml("a: [unclosed"),
            Err(DocumentError::Yaml { .. })
        ));
    }

    #[test]
    fn invalid_json_reports_position_only() {
        let err = Prepared::json_text("{\"a\": \"s3cr3t\" x}").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("line 1"), "{shown}");
        assert!(!shown.contains("s3cr3t"));
    }
}
