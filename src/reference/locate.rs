//! Finds the references in a JSON, YAML or text document and prepares it for rendering.
//!
//! A tree document (JSON, YAML) is serialized once *without* secrets: every string that
//! holds a reference is replaced by a random placeholder, and the library serializer writes
//! the rest. Rendering then copies that skeleton into a zeroizing buffer, writing secret
//! values where the placeholders are — so no serializer ever sees a secret, and no
//! `serde_json::Value` ever holds one. Object keys are never expanded.

use serde_json::Value;

use super::error::{DocumentError, ExpandError, Location, Reason};
use super::parse::{Reference, Template, parse_template};

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
pub struct Site {
    pub location: Location,
    pub template: Template,
}

/// A document whose references are found and checked for syntax; ready to render.
#[derive(Debug)]
pub struct Prepared {
    pub(super) format: Format,
    pub(super) body: Body,
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

/// Why a document could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Every malformed reference, in document order.
    #[error("{} malformed reference(s)", .0.len())]
    References(Vec<ExpandError>),
}

/// How a tree document is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Compact,
    Pretty,
}

impl Prepared {
    /// A parsed JSON value (the `document` of a `/v1/resolve` request).
    pub fn json(mut value: Value, layout: Layout) -> Result<Self, PrepareError> {
        let (sites, marker) = collect_sites(&mut value)?;
        let skeleton = match layout {
            Layout::Compact => serde_json::to_string(&value),
            Layout::Pretty => serde_json::to_string_pretty(&value),
        }
        // Serializing a `Value` with string keys cannot fail.
        .expect("a serde_json::Value always serializes");
        Ok(Self::tree(Format::Json, skeleton, marker, sites))
    }

    /// JSON text (a file given to `keybroker resolve`).
    pub fn json_text(text: &str, layout: Layout) -> Result<Self, PrepareError> {
        let value: Value = serde_json::from_str(text).map_err(|e| DocumentError::Json {
            line: e.line(),
            column: e.column(),
        })?;
        Self::json(value, layout)
    }

    /// YAML text. Parsed into the JSON data model: anchors are expanded, comments dropped.
    pub fn yaml(text: &str) -> Result<Self, PrepareError> {
        let mut value: Value = serde_saphyr::from_str(text).map_err(|e| DocumentError::Yaml {
            at: e.location().map(|l| (l.line(), l.column())),
        })?;
        let (sites, marker) = collect_sites(&mut value)?;
        let skeleton = serde_saphyr::to_string(&value).map_err(|_| DocumentError::WrongShape)?;
        Ok(Self::tree(Format::Yaml, skeleton, marker, sites))
    }

    /// Plain text: references anywhere, written back byte for byte around them.
    pub fn text(text: &str) -> Result<Self, PrepareError> {
        let template = match parse_template(text) {
            Ok(t) => t,
            Err(errors) => {
                let errors = errors
                    .into_iter()
                    .map(|e| ExpandError {
                        location: line_column(text, e.offset),
                        reference: None,
                        reason: Reason::Syntax(e.kind),
                    })
                    .collect();
                return Err(PrepareError::References(errors));
            }
        };
        let whole: Vec<ExpandError> = template
            .references()
            .filter(|(r, _)| r.is_whole_secret())
            .map(|(r, offset)| ExpandError {
                location: line_column(text, offset),
                reference: Some(r.to_string()),
                reason: Reason::WholeSecretInText,
            })
            .collect();
        if !whole.is_empty() {
            return Err(PrepareError::References(whole));
        }
        Ok(Self {
            format: Format::Text,
            body: Body::Text {
                template,
                text: text.to_owned(),
            },
        })
    }

    fn tree(format: Format, skeleton: String, marker: String, sites: Vec<Site>) -> Self {
        Self {
            format,
            body: Body::Tree {
                skeleton,
                marker,
                sites,
            },
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Every reference with its location, in document order (duplicates included).
    pub fn references(&self) -> Vec<(&Reference, Location)> {
        match &self.body {
            Body::Tree { sites, .. } => sites
                .iter()
                .flat_map(|s| {
                    s.template
                        .references()
                        .map(|(r, _)| (r, s.location.clone()))
                })
                .collect(),
            Body::Text { template, text } => template
                .references()
                .map(|(r, offset)| (r, line_column(text, offset)))
                .collect(),
        }
    }
}

/// Replaces every string holding a reference by a placeholder and returns the sites.
fn collect_sites(root: &mut Value) -> Result<(Vec<Site>, String), PrepareError> {
    let marker = new_marker();
    let mut walk = Walk {
        marker: &marker,
        sites: Vec::new(),
        errors: Vec::new(),
        pointer: String::new(),
    };
    walk.value(root);
    if walk.errors.is_empty() {
        Ok((walk.sites, marker))
    } else {
        Err(PrepareError::References(walk.errors))
    }
}

struct Walk<'m> {
    marker: &'m str,
    sites: Vec<Site>,
    errors: Vec<ExpandError>,
    pointer: String,
}

impl Walk<'_> {
    fn value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = self.pointer.len();
                    self.pointer.push('/');
                    self.pointer.push_str(&i.to_string());
                    self.value(item);
                    self.pointer.truncate(len);
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let len = self.pointer.len();
                    self.pointer.push('/');
                    // RFC 6901: `~` is written `~0`, `/` is written `~1`.
                    self.pointer
                        .push_str(&key.replace('~', "~0").replace('/', "~1"));
                    self.value(item);
                    self.pointer.truncate(len);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn string(&mut self, s: &mut String) {
        if !s.contains('$') {
            return;
        }
        let location = Location::Pointer {
            pointer: self.pointer.clone(),
        };
        let template = match parse_template(s) {
            Ok(t) => t,
            Err(errors) => {
                self.errors.extend(errors.into_iter().map(|e| ExpandError {
                    location: location.clone(),
                    reference: None,
                    reason: Reason::Syntax(e.kind),
                }));
                return;
            }
        };
        if !template.has_references() {
            // Only `$$` escapes (or lone `$`): the reduced text replaces the string.
            if let Some(text) = template.into_literal() {
                *s = text;
            }
            return;
        }
        if template.as_whole().is_none() {
            for (r, _) in template.references().filter(|(r, _)| r.is_whole_secret()) {
                self.errors.push(ExpandError {
                    location: location.clone(),
                    reference: Some(r.to_string()),
                    reason: Reason::WholeSecretInterpolated,
                });
            }
        }
        *s = placeholder(self.marker, self.sites.len());
        self.sites.push(Site { location, template });
    }
}

/// `kbref_<128 random bits>_`: an unguessable marker, so a document cannot forge a site.
fn new_marker() -> String {
    let mut nonce = [0u8; 16];
    // Without an OS random source the process cannot do anything safely.
    getrandom::fill(&mut nonce).expect("the OS random number generator is available");
    format!("kbref_{}_", hex::encode(nonce))
}

fn placeholder(marker: &str, index: usize) -> String {
    format!("{marker}{index}_")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Location::LineColumn { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(r: Result<Prepared, PrepareError>) -> Vec<ExpandError> {
        match r {
            Err(PrepareError::References(e)) => e,
            other => panic!("expected reference errors, got {other:?}"),
        }
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
        assert_eq!(
            e.len(),
            1,
            "syntax errors are reported before whole-secret checks"
        );
        assert_eq!(e[0].location, Location::LineColumn { line: 2, column: 5 });
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
            Err(PrepareError::Document(DocumentError::Yaml { .. }))
        ));
    }

    #[test]
    fn invalid_json_reports_position_only() {
        let err = Prepared::json_text("{\"a\": \"s3cr3t\" x}", Layout::Compact).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("line 1"), "{shown}");
        assert!(!shown.contains("s3cr3t"));
    }
}
