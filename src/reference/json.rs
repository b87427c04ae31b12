//! The string tokens of a JSON text, with their byte spans and JSON pointers, found in one pass
//! over the text — so an expansion can replace exactly the strings that hold references and
//! leave every other byte as it was sent (whitespace, key order, duplicate keys, number
//! spellings such as `12345678901234567890123`, `1.10` or `1E+400`, escapes).
//!
//! The text is validated first as strict RFC 8259 JSON by serde_json without building a tree
//! (`IgnoredAny`: numbers are checked for grammar, not converted); the scanner below then only
//! has to find token boundaries in text known to be valid. It still never indexes out of
//! bounds or panics on anything else: a confused scan is an `invalid_json` error.

use serde::de::IgnoredAny;

use super::error::DocumentError;
use super::pointer::push_pointer_segment;

/// A string token in value position (not an object key): `span` includes its quotes.
#[derive(Debug)]
pub(super) struct ValueString {
    pub span: (usize, usize),
}

/// One level of the path from the root to the token being scanned.
#[derive(Clone, Copy, Debug)]
enum Frame {
    /// In an object; the span of the current key (with quotes), once seen.
    Object { key: Option<(usize, usize)> },
    /// In an array; the index of the current element.
    Array { index: usize },
}

/// Validates `text` and calls `found` for every string in value position, in document order,
/// with a function that builds its JSON pointer (built only when asked: most strings hold no
/// reference).
pub(super) fn scan(
    text: &str,
    mut found: impl FnMut(ValueString, &dyn Fn() -> String),
) -> Result<(), DocumentError> {
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| DocumentError::Json {
        line: e.line(),
        column: e.column(),
    })?;
    let bytes = text.as_bytes();
    let confused = || DocumentError::Json { line: 0, column: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    // In an object: true between `{`/`,` and the key, false after the key.
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                stack.push(Frame::Object { key: None });
                expect_key = true;
                i += 1;
            }
            b'[' => {
                stack.push(Frame::Array { index: 0 });
                expect_key = false;
                i += 1;
            }
            b'}' | b']' => {
                stack.pop().ok_or_else(confused)?;
                expect_key = false;
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array { index }) => *index += 1,
                    Some(Frame::Object { .. }) => expect_key = true,
                    None => return Err(confused()),
                }
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let end = string_end(bytes, i).ok_or_else(confused)?;
                let is_key = expect_key && matches!(stack.last(), Some(Frame::Object { .. }));
                if is_key {
                    if let Some(Frame::Object { key }) = stack.last_mut() {
                        *key = Some((i, end));
                    }
                } else {
                    let pointer = || pointer(text, &stack);
                    found(ValueString { span: (i, end) }, &pointer);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(confused())
    }
}

/// The index just past the closing quote of the string starting at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        // A backslash escapes the next byte (`\"`, `\\`, `\u…`): skip both.
        i = at + 2;
    }
}

/// The decoded content of the string token `span` of `text`.
pub(super) fn decode(text: &str, span: (usize, usize)) -> Option<String> {
    let raw = text.get(span.0..span.1)?;
    // Without escapes the content is the raw text between the quotes.
    if !raw.contains('\\') {
        return raw.get(1..raw.len().saturating_sub(1)).map(str::to_owned);
    }
    serde_json::from_str(raw).ok()
}

/// RFC 6901 pointer of the current position.
/// Made for every string that holds a reference (its site's location), so it borrows what it
/// can: an index is written in place, a key without escapes is its raw text.
fn pointer(text: &str, stack: &[Frame]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Array { index } => {
                let _ = write!(out, "/{index}");
            }
            Frame::Object { key } => {
                let raw = key.and_then(|(start, end)| text.get(start..end));
                match raw.and_then(|r| r.get(1..r.len().saturating_sub(1))) {
                    Some(inner) if !inner.contains('\\') => push_pointer_segment(&mut out, inner),
                    _ => {
                        let key = key.and_then(|k| decode(text, k)).unwrap_or_default();
                        push_pointer_segment(&mut out, &key);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        scan(text, |s, pointer| {
            out.push((text[s.span.0..s.span.1].to_owned(), pointer()));
        })
        .unwrap();
        out
    }

    #[test]
    fn value_strings_with_their_pointers_and_never_keys() {
        let text =
            r#" {"a": "x", "b": [1, "y", {"c~/": "z", "k": true}], "a": "dup", "\"q": "e\"s"} "#;
        assert_eq!(
            strings(text),
            vec![
                (r#""x""#.to_owned(), "/a".to_owned()),
                (r#""y""#.to_owned(), "/b/1".to_owned()),
                (r#""z""#.to_owned(), "/b/2/c~0~1".to_owned()),
                (r#""dup""#.to_owned(), "/a".to_owned()),
                (r#""e\"s""#.to_owned(), "/\"q".to_owned()),
            ]
        );
        assert_eq!(
            strings(r#""top""#),
            vec![(r#""top""#.to_owned(), String::new())]
        );
        assert_eq!(
            strings("[[], {}, \"\\\\\"]"),
            vec![("\"\\\\\"".to_owned(), "/2".to_owned())]
        );
    }

    #[test]
    fn numbers_of_any_size_and_spelling_are_valid_and_left_alone() {
        for text in [
            "12345678901234567890123",
            "1E+400",
            "-0",
            "1.10",
            "[1e-400, -0.0]",
        ] {
            assert!(scan(text, |_, _| {}).is_ok(), "{text}");
        }
    }

    #[test]
    fn invalid_json_has_a_position() {
        for text in [
            "{\"a\": 1,}",
            "[1 2]",
            "{'a': 1}",
            "NaN",
            "\"\u{1}\"",
            "[\"\\x\"]",
            "",
        ] {
            assert!(
                matches!(scan(text, |_, _| {}), Err(DocumentError::Json { .. })),
                "{text:?}"
            );
        }
    }
}
