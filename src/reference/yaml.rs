//! The scalars of a YAML stream in value position, with their byte spans and JSON pointers,
//! from the parser's events (granit-parser, the parser under serde-saphyr) — so an expansion
//! replaces exactly the scalars that hold references and leaves every other byte as it was:
//! comments, anchors and aliases, merge keys, tags, `yes` and dates, flow collections,
//! several documents in one stream.
//!
//! Mapping keys are never expanded. A pointer is relative to its document in the stream.

use granit_parser::{Event, Parser, ScalarStyle};

use super::error::DocumentError;
use super::pointer::push_pointer_segment;

/// A scalar in value position: its decoded value, and the span of source text that a
/// replacement must cover (for a block scalar, from its `|`/`>` indicator to the end of its
/// content, without the final line break).
#[derive(Debug)]
pub(super) struct ValueScalar<'a> {
    pub value: &'a str,
    pub span: (usize, usize),
}

#[derive(Debug)]
enum Frame {
    Mapping {
        /// Whether the next node is a key.
        expect_key: bool,
        /// The current key, when it is a scalar.
        key: Option<String>,
    },
    Sequence {
        index: usize,
    },
}

impl Frame {
    /// A child node of this collection is complete.
    fn advance(&mut self) {
        match self {
            Frame::Mapping { expect_key, .. } => *expect_key = !*expect_key,
            Frame::Sequence { index } => *index += 1,
        }
    }
}

/// Parses `text` (every document of the stream) and calls `found` for every scalar in value
/// position, in document order, with a function that builds its JSON pointer.
pub(super) fn scan(
    text: &str,
    mut found: impl FnMut(ValueScalar<'_>, &dyn Fn() -> String),
) -> Result<(), DocumentError> {
    let mut stack: Vec<Frame> = Vec::new();
    // Where the previous event's source ended: a block scalar's indicator lies after it.
    let mut previous_end = 0usize;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| DocumentError::Yaml {
            at: Some((e.marker().line() as u64, e.marker().col() as u64 + 1)),
        })?;
        let range = span.byte_range();
        match event {
            Event::DocumentStart(..) => stack.clear(),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let frame = if matches!(event, Event::MappingStart(..)) {
                    Frame::Mapping {
                        expect_key: true,
                        key: None,
                    }
                } else {
                    Frame::Sequence { index: 0 }
                };
                stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                if let Some(parent) = stack.last_mut() {
                    parent.advance();
                }
            }
            Event::Alias(_) => {
                if let Some(parent) = stack.last_mut() {
                    parent.advance();
                }
            }
            Event::Scalar(value, style, ..) => {
                let is_key = matches!(
                    stack.last(),
                    Some(Frame::Mapping {
                        expect_key: true,
                        ..
                    })
                );
                if is_key {
                    if let Some(Frame::Mapping { key, .. }) = stack.last_mut() {
                        *key = Some(value.to_string());
                    }
                } else if let Some(span) = range
                    .clone()
                    .and_then(|r| replaceable(text, previous_end, r, style))
                {
                    let pointer = || pointer(&stack);
                    found(
                        ValueScalar {
                            value: &value,
                            span,
                        },
                        &pointer,
                    );
                }
                if let Some(parent) = stack.last_mut() {
                    parent.advance();
                }
            }
            _ => {}
        }
        if let Some(r) = range {
            previous_end = previous_end.max(r.end);
        }
    }
    Ok(())
}

/// The span a replacement of this scalar covers. Plain and quoted scalars: their own span.
/// Block scalars: from the indicator (the first `|` or `>` after the previous token) to the
/// end of the content, keeping the final line break so the next line stays a line.
fn replaceable(
    text: &str,
    previous_end: usize,
    range: std::ops::Range<usize>,
    style: ScalarStyle,
) -> Option<(usize, usize)> {
    match style {
        ScalarStyle::Literal | ScalarStyle::Folded => {
            let before = text.get(previous_end..range.start)?;
            let indicator = previous_end + before.find(['|', '>'])?;
            let content = text.get(range.clone())?;
            let end = range.start + content.trim_end_matches(['\n', '\r']).len();
            Some((indicator, end.max(indicator + 1)))
        }
        _ => Some((range.start, range.end)),
    }
}

/// RFC 6901 pointer of the current position within its document.
fn pointer(stack: &[Frame]) -> String {
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Sequence { index } => push_pointer_segment(&mut out, &index.to_string()),
            Frame::Mapping { key, .. } => {
                push_pointer_segment(&mut out, key.as_deref().unwrap_or_default());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars(text: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        scan(text, |s, pointer| {
            out.push((
                s.value.to_owned(),
                text[s.span.0..s.span.1].to_owned(),
                pointer(),
            ));
        })
        .unwrap();
        out
    }

    #[test]
    fn value_scalars_with_spans_and_pointers() {
        let text = "a: &x one # c\nb: *x\nc: !!str \"two\"\nd: |\n  three\n  3\ne: [x, {k: v}]\n? complex\n: yes\n---\n- 2020-01-01\n";
        let got = scalars(text);
        let want = [
            ("one", "one", "/a"),
            ("two", "\"two\"", "/c"),
            ("three\n3\n", "|\n  three\n  3", "/d"),
            ("x", "x", "/e/0"),
            ("v", "v", "/e/1/k"),
            ("yes", "yes", "/complex"),
            ("2020-01-01", "2020-01-01", "/0"),
        ];
        let got: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn invalid_yaml_has_a_position() {
        let e = scan("a: [unclosed\n", |_, _| {}).unwrap_err();
        assert!(matches!(e, DocumentError::Yaml { at: Some(_) }), "{e:?}");
        let e = scan("a: *nowhere\n", |_, _| {}).unwrap_err();
        assert!(matches!(e, DocumentError::Yaml { .. }), "{e:?}");
    }
}
