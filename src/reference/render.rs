//! Writes a prepared document with its secrets into a zeroizing buffer — all or nothing.

use secrecy::{ExposeSecret, SecretString};

use super::error::{ExpandError, Reason};
use super::locate::{Body, Prepared, Site};
use super::parse::{Part, Reference, Template};
use crate::secret::{Secret, SecretBuf};

/// What a reference resolves to.
#[derive(Clone, Copy, Debug)]
pub enum Resolved<'a> {
    /// One field (`$KEY_…`, or a CCP `Content`).
    Value(&'a SecretString),
    /// A whole secret, written as an object of its fields.
    Whole(&'a Secret),
}

/// What one rendering may cost (`[limits]`); unbounded by default.
#[derive(Clone, Copy, Debug)]
pub struct RenderLimits {
    /// Largest expanded answer, in bytes: checked before anything is reserved, and enforced
    /// while writing (escaping can only grow the answer).
    pub max_answer_bytes: usize,
    /// Failures listed in an error answer; the rest are only counted.
    pub max_errors: usize,
}

impl Default for RenderLimits {
    fn default() -> Self {
        Self {
            max_answer_bytes: usize::MAX,
            max_errors: usize::MAX,
        }
    }
}

/// Why a document was not rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// References failed: the first `max_errors` in document order, and how many more.
    #[error("{} reference(s) could not be resolved", .errors.len() + .omitted)]
    Unresolved {
        errors: Vec<ExpandError>,
        omitted: usize,
    },
    /// The expanded answer would exceed `max_answer_bytes` (or could not be allocated).
    #[error("the expanded answer would be larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl Prepared {
    /// Renders the document, asking `lookup` for every reference. Every reference is looked
    /// up before a byte is written: if any fails, the answer lists each failure and no
    /// buffer exists. Never reserves more than `limits.max_answer_bytes` — the size of the
    /// answer is the caller's choice (one secret referenced 30,000 times), so it is checked
    /// before the reservation, not found out by the allocator (THREATS row 21).
    pub fn render<'s>(
        &self,
        lookup: &dyn Fn(&Reference) -> Result<Resolved<'s>, Reason>,
        limits: RenderLimits,
    ) -> Result<SecretBuf, RenderError> {
        let mut failed: Vec<(usize, &Reference, super::locate::At<'_>, Reason)> = Vec::new();
        // Each occurrence is looked up once, here, in document order; writing uses these
        // answers, so a lookup cannot answer differently the second time.
        let mut values: Vec<Resolved<'s>> = Vec::new();
        let mut secret_bytes = 0usize;
        for (ordinal, reference, at) in self.ordered_references() {
            match lookup(reference) {
                Ok(v) => {
                    let size = match v {
                        Resolved::Value(v) => v.expose_secret().len(),
                        Resolved::Whole(s) => s
                            .fields()
                            .map(|(k, v)| k.len() + v.expose_secret().len() + 8)
                            .fold(0usize, usize::saturating_add),
                    };
                    secret_bytes = secret_bytes.saturating_add(size);
                    values.push(v);
                }
                Err(reason) => failed.push((ordinal, reference, at, reason)),
            }
        }
        if !self.errors.is_empty() || !failed.is_empty() {
            return Err(self.unresolved(failed, limits.max_errors));
        }
        let skeleton_len = match &self.body {
            Body::Tree { skeleton, .. } => skeleton.len(),
            Body::Text { text, .. } => text.len(),
        };
        // The answer is at least this long: refuse before reserving anything.
        let least = skeleton_len.saturating_add(secret_bytes);
        let limit = limits.max_answer_bytes;
        if least > limit {
            return Err(RenderError::TooLarge { limit });
        }
        // Room for some escaping up front; growth beyond it is zeroized too, up to `limit`.
        let room = least.saturating_add(secret_bytes / 8).saturating_add(16);
        let Some(mut out) = SecretBuf::bounded(room.min(limit), limit) else {
            return Err(RenderError::TooLarge { limit });
        };
        match &self.body {
            Body::Text { template, .. } => {
                let mut next = values.iter();
                for part in &template.parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        // Whole-secret references in text were refused when preparing (the
                        // errors above), so every value here is one field.
                        Part::Ref { .. } => {
                            if let Some(Resolved::Value(v)) = next.next() {
                                out.push_secret(v);
                            }
                        }
                    }
                }
            }
            Body::Tree {
                skeleton,
                marker,
                sites,
            } => render_tree(&mut out, skeleton, marker, sites, &values),
        }
        if out.overflowed() {
            return Err(RenderError::TooLarge { limit });
        }
        Ok(out)
    }

    /// The failures in document order: the first `max` located (text offsets in one pass),
    /// the rest counted.
    fn unresolved(
        &self,
        failed: Vec<(usize, &Reference, super::locate::At<'_>, Reason)>,
        max: usize,
    ) -> RenderError {
        enum Failure<'a> {
            Prepared(&'a ExpandError),
            Lookup(&'a Reference, super::locate::At<'a>, Reason),
        }
        let mut all: Vec<(usize, Failure<'_>)> = self
            .errors
            .iter()
            .map(|(o, e)| (*o, Failure::Prepared(e)))
            .chain(
                failed
                    .into_iter()
                    .map(|(o, r, at, reason)| (o, Failure::Lookup(r, at, reason))),
            )
            .collect();
        // Document order; stable, so several errors of one string keep their order.
        all.sort_by_key(|(ordinal, _)| *ordinal);
        let omitted = all.len().saturating_sub(max);
        all.truncate(max);
        let places: Vec<super::locate::At<'_>> = all
            .iter()
            .filter_map(|(_, f)| match f {
                Failure::Lookup(_, at, _) => Some(*at),
                Failure::Prepared(_) => None,
            })
            .collect();
        let mut locations = self.locations(&places).into_iter();
        let errors = all
            .into_iter()
            .map(|(_, f)| match f {
                Failure::Prepared(e) => e.clone(),
                Failure::Lookup(r, _, reason) => ExpandError {
                    location: locations.next().expect("one location per lookup failure"),
                    reference: Some(r.to_string()),
                    reason,
                },
            })
            .collect();
        RenderError::Unresolved { errors, omitted }
    }
}

fn render_tree(
    out: &mut SecretBuf,
    skeleton: &str,
    marker: &str,
    sites: &[Site],
    values: &[Resolved<'_>],
) {
    // Where each site's values start in `values` (document order, site by site).
    let mut starts = Vec::with_capacity(sites.len());
    let mut at = 0;
    for site in sites {
        starts.push(at);
        at += site.template.references().count();
    }
    let bytes = skeleton.as_bytes();
    let finder = Search::new(marker.as_bytes(), bytes.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = finder.find(&bytes[search..]) {
        let start = search + found;
        let digits_start = start + marker.len();
        let digits_len = skeleton[digits_start..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        // The marker is 128 random bits chosen for this document: only a placeholder this
        // module wrote carries it, always with a decimal index and a closing `_`.
        let Ok(index) = skeleton[digits_start..digits_start + digits_len].parse::<usize>() else {
            search = digits_start;
            continue;
        };
        let (Some(site), Some(&first)) = (sites.get(index), starts.get(index)) else {
            search = digits_start;
            continue;
        };
        let mut end = digits_start + digits_len + 1; // the closing `_`
        let mut begin = start;
        // The serializer may have quoted the placeholder: replace the quotes too.
        if begin > 0
            && end < bytes.len()
            && matches!(bytes[begin - 1], b'"' | b'\'')
            && bytes[end] == bytes[begin - 1]
        {
            begin -= 1;
            end += 1;
        }
        out.extend_from_slice(&bytes[copied..begin]);
        let count = site.template.references().count();
        write_site(
            out,
            &site.template,
            values.get(first..first + count).unwrap_or(&[]),
        );
        copied = end;
        search = end;
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// A search for the document's marker. Building a `memmem` searcher costs more than scanning
/// a short skeleton for the marker's first byte, and most documents are short (the cache-hit
/// profile in docs/PERFORMANCE.md).
#[expect(
    clippy::large_enum_variant,
    reason = "one on the stack per render; boxing the searcher would add an allocation per document"
)]
enum Search<'n> {
    Short(&'n [u8]),
    Long(memchr::memmem::Finder<'n>),
}

impl<'n> Search<'n> {
    /// Skeletons up to this long are scanned byte-wise.
    const SHORT: usize = 4096;

    fn new(needle: &'n [u8], haystack: usize) -> Self {
        if haystack <= Self::SHORT {
            Self::Short(needle)
        } else {
            Self::Long(memchr::memmem::Finder::new(needle))
        }
    }

    fn find(&self, hay: &[u8]) -> Option<usize> {
        match self {
            Self::Long(finder) => finder.find(hay),
            Self::Short(needle) => {
                let (&first, _) = needle.split_first()?;
                let mut from = 0;
                while let Some(i) = memchr::memchr(first, &hay[from..]) {
                    let at = from + i;
                    if hay[at..].starts_with(needle) {
                        return Some(at);
                    }
                    from = at + 1;
                }
                None
            }
        }
    }
}

/// Writes one site as a JSON/YAML value: a quoted string, or an object for a whole secret.
/// `values` are the site's references, resolved, in order.
fn write_site(out: &mut SecretBuf, template: &Template, values: &[Resolved<'_>]) {
    if template.as_whole().is_some()
        && let [Resolved::Whole(secret)] = values
    {
        out.push_object(secret.fields());
        return;
    }
    out.push_str("\"");
    let mut next = values.iter();
    for part in &template.parts {
        match part {
            Part::Literal(text) => out.push_escaped(text),
            // Whole secrets inside strings were refused when preparing.
            Part::Ref { .. } => {
                if let Some(Resolved::Value(v)) = next.next() {
                    out.push_escaped(v.expose_secret());
                }
            }
        }
    }
    out.push_str("\"");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::reference::locate::Layout;
    use crate::secret::{SecretMeta, secret_string};
    use serde_json::{Value, json};

    fn demo_db() -> Secret {
        let mut f = BTreeMap::new();
        f.insert("username".to_owned(), secret_string("app"));
        f.insert(
            "password".to_owned(),
            secret_string("p\"w\n\u{7f}\u{2028}é"),
        );
        Secret::new(f, SecretMeta::default())
    }

    /// The byte-wise scan of short skeletons finds what the memmem searcher finds, also after
    /// a false start on the needle's first byte.
    #[test]
    fn both_searches_agree() {
        let needle = b"kbref_0123_";
        let hays: [&[u8]; 6] = [
            b"",
            b"kbref_012",
            b"kkbref_0123_",
            b"x kbref_0124_ kbref_0123_ y",
            b"kbref_0123_",
            b"no marker here at all",
        ];
        for hay in hays {
            let short = Search::Short(needle).find(hay);
            let long = Search::Long(memchr::memmem::Finder::new(needle)).find(hay);
            assert_eq!(short, long, "{:?}", String::from_utf8_lossy(hay));
        }
        assert_eq!(Search::Short(needle).find(hays[3]), Some(14));
    }

    fn lookup_in<'s>(db: &'s Secret) -> impl Fn(&Reference) -> Result<Resolved<'s>, Reason> {
        move |r: &Reference| match r.field.as_deref() {
            None => Ok(Resolved::Whole(db)),
            Some(f) => db
                .field(f)
                .map(Resolved::Value)
                .ok_or(Reason::FieldNotFound),
        }
    }

    fn text(buf: &SecretBuf) -> &str {
        std::str::from_utf8(buf.as_bytes()).unwrap()
    }

    #[test]
    fn json_whole_value_interpolated_and_whole_secret() {
        let db = demo_db();
        let doc = json!({
            "user": "$SECRET_demo/db $KEY_username",
            "dsn": "postgres://$SECRET_demo/db $KEY_username:$SECRET_demo/db $KEY_password@db",
            "all": "$SECRET_demo/db",
            "lit": "$$SECRET_not/a $KEY_ref",
            "n": [1, true, null]
        });
        let p = Prepared::json(doc, Layout::Compact).unwrap();
        let out = p.render(&lookup_in(&db), RenderLimits::default()).unwrap();
        let v: Value = serde_json::from_slice(out.as_bytes()).unwrap();
        assert_eq!(
            v,
            json!({
                "user": "app",
                "dsn": "postgres://app:p\"w\n\u{7f}\u{2028}é@db",
                "all": {"password": "p\"w\n\u{7f}\u{2028}é", "username": "app"},
                "lit": "$SECRET_not/a $KEY_ref",
                "n": [1, true, null]
            })
        );
    }

    #[test]
    fn yaml_values_are_quoted_and_reparse() {
        let db = demo_db();
        let p = Prepared::yaml(
            "top:\n  user: $SECRET_demo/db $KEY_username\n  pw: \"x-$SECRET_demo/db $KEY_password\"\n  all: $SECRET_demo/db\n  list:\n    - $SECRET_demo/db $KEY_password\n",
        )
        .unwrap();
        let out = p.render(&lookup_in(&db), RenderLimits::default()).unwrap();
        let v: Value = serde_saphyr::from_str(text(&out)).unwrap();
        let pw = "p\"w\n\u{7f}\u{2028}é";
        assert_eq!(
            v,
            json!({"top": {
                "user": "app",
                "pw": format!("x-{pw}"),
                "all": {"password": pw, "username": "app"},
                "list": [pw]
            }})
        );
    }

    #[test]
    fn text_is_copied_byte_for_byte_around_values() {
        let db = demo_db();
        let p = Prepared::text(
            "a=$SECRET_demo/db $KEY_username\r\n\tb = \"$SECRET_demo/db $KEY_username\" $$KEY_x\n",
        )
        .unwrap();
        let out = p.render(&lookup_in(&db), RenderLimits::default()).unwrap();
        assert_eq!(text(&out), "a=app\r\n\tb = \"app\" $KEY_x\n");
    }

    /// One lookup per occurrence: a lookup that would answer differently a second time
    /// (the source changed mid-request) cannot make rendering panic or mix answers.
    #[test]
    fn each_occurrence_is_looked_up_once() {
        let db = demo_db();
        let calls = std::cell::Cell::new(0);
        let counting = |r: &Reference| {
            calls.set(calls.get() + 1);
            lookup_in(&db)(r)
        };
        let p = Prepared::json(
            json!({"a": "$SECRET_demo/db $KEY_username", "b": "x $SECRET_demo/db $KEY_username y", "c": "$SECRET_demo/db"}),
            Layout::Compact,
        )
        .unwrap();
        p.render(&counting, RenderLimits::default()).unwrap();
        assert_eq!(calls.get(), 3);
        let t = Prepared::text("$SECRET_demo/db $KEY_username and $SECRET_demo/db $KEY_username")
            .unwrap();
        calls.set(0);
        let out = t.render(&counting, RenderLimits::default()).unwrap();
        assert_eq!(calls.get(), 2);
        assert_eq!(text(&out), "app and app");
    }

    #[test]
    fn any_failure_means_no_output_and_every_failure_listed() {
        let db = demo_db();
        let p = Prepared::json(
            json!({"a": "$SECRET_demo/db $KEY_nope", "b": "$SECRET_demo/db $KEY_username", "c": ["$SECRET_demo/db $KEY_other"]}),
            Layout::Compact,
        )
        .unwrap();
        let Err(RenderError::Unresolved { errors, omitted: 0 }) =
            p.render(&lookup_in(&db), RenderLimits::default())
        else {
            panic!("two failures, all listed")
        };
        let got: Vec<_> = errors
            .iter()
            .map(|e| {
                (
                    e.location.to_string(),
                    e.reason.code(),
                    e.reference.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "/a".to_owned(),
                    "field_not_found",
                    "$SECRET_demo/db $KEY_nope".to_owned()
                ),
                (
                    "/c/0".to_owned(),
                    "field_not_found",
                    "$SECRET_demo/db $KEY_other".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_document_cannot_forge_a_placeholder() {
        let db = demo_db();
        // Looks like a placeholder but the marker is random per document.
        let doc = json!({"x": "kbref_00000000000000000000000000000000_0_", "y": "$SECRET_demo/db $KEY_username"});
        let p = Prepared::json(doc, Layout::Compact).unwrap();
        let v: Value = serde_json::from_slice(
            p.render(&lookup_in(&db), RenderLimits::default())
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(v["x"], "kbref_00000000000000000000000000000000_0_");
        assert_eq!(v["y"], "app");
    }

    #[test]
    fn escaper_output_is_valid_json_for_every_char_class() {
        let sample = "\u{0}\u{1f}\u{7f}\u{85}\u{9f}\u{a0}\u{2028}\u{2029}\u{feff}\u{1F600}\"\\/";
        let mut out = SecretBuf::default();
        out.push_quoted(sample);
        let back: String = serde_json::from_slice(out.as_bytes()).unwrap();
        assert_eq!(back, sample);
        let back: String = serde_saphyr::from_str(text(&out)).unwrap();
        assert_eq!(back, sample);
    }
}
