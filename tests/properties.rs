//! Property tests of the reference language (issue 2's "done when").

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use keybroker::testing::reference::{
    Layout, Prepared, Reason, Reference, RenderError, RenderLimits, Resolved, SecretPath, Target,
    parse_reference,
};
use keybroker::testing::secret::{Secret, SecretMeta, secret_string};

const KEYWORDS: [&str; 4] = ["$SECRET_", "$SAFE_", "$KEY_", "$NAME_"];

fn has_keyword(s: &str) -> bool {
    KEYWORDS.iter().any(|k| s.contains(k))
}

/// Text rich in `$`, `_` and keyword fragments, but holding no reference keyword.
fn plain_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("$".to_owned()),
            Just("$$".to_owned()),
            Just("$SECRET".to_owned()),
            Just("SECRET_".to_owned()),
            Just("$SAF".to_owned()),
            Just("KEY_".to_owned()),
            Just("\r\n".to_owned()),
            Just("\t".to_owned()),
            any::<char>().prop_map(String::from),
            "[a-zA-Z0-9 ._/-]{1,8}",
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
    .prop_filter("no reference keyword", |s| !has_keyword(s))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        plain_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z$_]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text as people write it: any whitespace between tokens, numbers in spellings a
/// tree would change (big integers, `1.10`, `1E+400`, `-0`), escapes, duplicate keys.
fn json_text() -> impl Strategy<Value = String> {
    let ws = prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\t"), Just("\r\n")];
    let number = prop_oneof![
        Just("12345678901234567890123".to_owned()),
        Just("1.10".to_owned()),
        Just("1E+400".to_owned()),
        Just("-0".to_owned()),
        Just("0.5e-7".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let string = prop_oneof![
        plain_text().prop_map(|t| serde_json::to_string(&t).unwrap()),
        Just(r#""caf\u00e9 \/ \"q\"""#.to_owned()),
    ];
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        number,
        string.clone()
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        let ws = ws.clone();
        let string = string.clone();
        prop_oneof![
            prop::collection::vec((inner.clone(), ws.clone()), 0..6).prop_map(|items| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{}]", body.join(","))
            }),
            prop::collection::vec((string, inner, ws), 0..6).prop_map(|items| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// Every string of `v` that starts with `$SECRET_`, with its JSON pointer, in document order:
/// the tree walk the span finder must agree with.
fn tree_references(v: &Value, pointer: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) if s.starts_with("$SECRET_") => out.push((s.clone(), pointer.to_owned())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                tree_references(item, &format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                tree_references(item, &format!("{pointer}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// `v` with every `$SECRET_` string replaced by `value`.
fn substituted(v: &Value, value: &str) -> Value {
    match v {
        Value::String(s) if s.starts_with("$SECRET_") => Value::String(value.to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(|i| substituted(i, value)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| (k.clone(), substituted(i, value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A JSON value some of whose strings are references to `demo/<n> $KEY_k`.
fn json_with_references() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        plain_text().prop_map(Value::String),
        (0u8..5).prop_map(|n| Value::String(format!("$SECRET_demo/s{n} $KEY_k"))),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z~/_]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn no_lookup(_: &Reference) -> Result<Resolved<'static>, Reason> {
    panic!("a document without references looks nothing up")
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{1,12}",
        prop::collection::vec(any::<char>(), 1..8).prop_map(|c| c.into_iter().collect()),
    ]
    .prop_filter("valid decoded segment", |s: &String| {
        s != "."
            && s != ".."
            && !s.is_empty()
            && !s
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control())
    })
}

fn ccp_name() -> impl Strategy<Value = String> {
    segment().prop_filter("CCP-safe", |s| {
        !s.chars()
            .any(keybroker::testing::reference::is_ccp_forbidden)
    })
}

fn field() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{0,10}[A-Za-z0-9_-]"
}

fn reference() -> impl Strategy<Value = Reference> {
    let secret = (
        prop::option::of("[A-Za-z0-9_-]{1,8}"),
        prop::collection::vec(segment(), 1..4),
        prop::option::of(1u64..),
        prop::option::of(field()),
    )
        .prop_map(|(source, segs, version, field)| Reference {
            target: Target::Secret {
                source,
                path: SecretPath::from_segments(segs).unwrap(),
                version,
            },
            field,
        });
    let ccp =
        (ccp_name(), ccp_name(), prop::option::of(field())).prop_map(|(safe, object, field)| {
            Reference {
                target: Target::Ccp { safe, object },
                field,
            }
        });
    prop_oneof![secret, ccp]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn text_without_references_is_byte_identical(text in plain_text()) {
        let p = Prepared::text(&text).unwrap();
        prop_assert_eq!(p.errors().count(), 0);
        // `$$` before a keyword is an escape; without keywords there is none.
        let out = p.render(&no_lookup, RenderLimits::default()).unwrap();
        prop_assert_eq!(out.as_bytes(), text.as_bytes());
    }

    #[test]
    fn json_without_references_is_value_identical(v in json_value()) {
        for layout in [Layout::Compact, Layout::Pretty] {
            let p = Prepared::json(v.clone(), layout).unwrap();
            let out = p.render(&no_lookup, RenderLimits::default()).unwrap();
            let back: Value = serde_json::from_slice(out.as_bytes()).unwrap();
            prop_assert_eq!(&back, &v);
        }
    }

    /// Faithful expansion: a JSON text without references comes back byte for byte, however
    /// it is spaced and whatever its number spellings or duplicate keys.
    #[test]
    fn json_text_without_references_is_byte_identical(text in json_text()) {
        let p = Prepared::json_text(&text).unwrap();
        prop_assert_eq!(p.errors().count(), 0);
        let out = p.render(&no_lookup, RenderLimits::default()).unwrap();
        prop_assert_eq!(out.as_bytes(), text.as_bytes());
    }

    /// The span finder finds the same reference strings at the same pointers as a walk of the
    /// parsed tree, and the answer parses as the input with the values substituted.
    #[test]
    fn json_spans_agree_with_a_tree_walk(v in json_with_references(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        };
        let p = Prepared::json_text(&text).unwrap();
        let found: Vec<(String, String)> = p
            .references()
            .into_iter()
            .map(|(r, l)| (r.to_string(), l.to_string()))
            .collect();
        let mut want = Vec::new();
        tree_references(&v, "", &mut want);
        for (_, pointer) in &mut want {
            if pointer.is_empty() {
                "(document root)".clone_into(pointer);
            }
        }
        prop_assert_eq!(&found, &want);
        let value = secret_string("v\"al\n\u{2028}");
        let out = p
            .render(&|_| Ok(Resolved::Value(&value)), RenderLimits::default())
            .unwrap();
        let back: Value = serde_json::from_slice(out.as_bytes()).unwrap();
        prop_assert_eq!(back, substituted(&v, "v\"al\n\u{2028}"));
    }

    /// Faithful expansion of YAML: without references, a stream comes back byte for byte —
    /// comments, anchors, aliases and several documents included.
    #[test]
    fn yaml_without_references_is_byte_identical(v in json_value(), w in json_value()) {
        let yaml = format!(
            "# head\n---\n{}--- # second\nbase: &b {{x: 1}}\nuse: *b\nwhen: 2020-01-01\nok: yes\n---\n{}",
            serde_saphyr::to_string(&v).unwrap(),
            serde_saphyr::to_string(&w).unwrap()
        );
        let p = Prepared::yaml(&yaml).unwrap();
        prop_assert_eq!(p.errors().count(), 0);
        let out = p.render(&no_lookup, RenderLimits::default()).unwrap();
        prop_assert_eq!(out.as_bytes(), yaml.as_bytes());
    }

    #[test]
    fn yaml_without_references_is_value_identical(v in json_value()) {
        let yaml = serde_saphyr::to_string(&v).unwrap();
        let p = Prepared::yaml(&yaml).unwrap();
        let out = p.render(&no_lookup, RenderLimits::default()).unwrap();
        let back: Value = serde_saphyr::from_str(std::str::from_utf8(out.as_bytes()).unwrap()).unwrap();
        prop_assert_eq!(back, v);
    }

    #[test]
    fn print_parse_is_stable(r in reference()) {
        let printed = r.to_string();
        let parsed = parse_reference(&printed).unwrap();
        prop_assert_eq!(&parsed, &r);
        prop_assert_eq!(parsed.to_string(), printed);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}", prefix in prop_oneof![Just("$SECRET_"), Just("$SAFE_"), Just("")]) {
        let text = format!("{prefix}{s}");
        let _ = keybroker::testing::reference::parse_template(&text);
        let _ = Prepared::text(&text).unwrap();
    }

    /// Random documents mixing resolvable, missing and malformed references: the answer is
    /// the full document when all resolve, else exactly the failing ones and no output.
    #[test]
    fn failures_never_produce_partial_output(
        kinds in prop::collection::vec(0u8..4, 1..12),
        interpolate in prop::collection::vec(any::<bool>(), 12),
    ) {
        let mut fields = BTreeMap::new();
        fields.insert("present".to_owned(), secret_string("VALUE"));
        let secret = Secret::new(fields, SecretMeta::default());
        let lookup = |r: &Reference| -> Result<Resolved<'_>, Reason> {
            match &r.target {
                Target::Secret { path, .. } if path.to_string() == "ok" => match r.field.as_deref() {
                    None => Ok(Resolved::Whole(&secret)),
                    Some(f) => secret.field(f).map(Resolved::Value).ok_or(Reason::FieldNotFound),
                },
                _ => Err(Reason::NotFound),
            }
        };
        let mut doc = serde_json::Map::new();
        let mut failing = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let reference = match kind {
                0 => "$SECRET_ok $KEY_present",
                1 => "$SECRET_ok $KEY_absent",
                2 => "$SECRET_missing $KEY_present",
                _ => "$SECRET_ok/../x $KEY_present",
            };
            if *kind != 0 {
                failing.push(format!("/k{i}"));
            }
            let value = if interpolate[i] { format!("a {reference} b") } else { reference.to_owned() };
            doc.insert(format!("k{i}"), Value::String(value));
        }
        let p = Prepared::json(Value::Object(doc), Layout::Compact).unwrap();
        match p.render(&lookup, RenderLimits::default()) {
            Ok(out) => {
                prop_assert!(failing.is_empty());
                let v: Value = serde_json::from_slice(out.as_bytes()).unwrap();
                for (i, _) in kinds.iter().enumerate() {
                    let want = if interpolate[i] { "a VALUE b" } else { "VALUE" };
                    prop_assert_eq!(&v[format!("k{i}")], want);
                }
            }
            Err(RenderError::Unresolved { errors, .. }) => {
                let got: Vec<String> = errors.iter().map(|e| e.location.to_string()).collect();
                prop_assert_eq!(got, failing);
            }
            Err(e) => prop_assert!(false, "no limit was set: {e}"),
        }
    }
}
