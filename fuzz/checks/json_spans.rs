//! JSON expanded in its own text: a document without `$` comes back byte for byte, and the
//! span finder agrees with a walk of the parsed tree on which strings hold which references.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/json_spans/` on stable.
use keybroker::testing::reference::{
    Prepared, Reason, Reference, RenderLimits, Resolved, parse_template_lenient,
};
use serde_json::Value;

fn missing(_: &Reference) -> Result<Resolved<'static>, Reason> {
    Err(Reason::NotFound)
}

/// (reference, pointer) of every string of `v` in document order, parsed on its own.
fn walk(v: &Value, pointer: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => {
            let (template, _) = parse_template_lenient(s);
            for (r, _) in template.references() {
                out.push((r.to_string(), pointer.to_owned()));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                walk(item, &format!("{pointer}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// The target's check of one input (inputs that are not UTF-8 are skipped, as libFuzzer
/// skips them for a `&str` target).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(prepared) = Prepared::json_text(text) else {
        return;
    };
    if !text.contains('$') && !text.contains("\\u") {
        let out = prepared
            .render(&missing, RenderLimits::default())
            .expect("nothing to look up");
        assert_eq!(out.as_bytes(), text.as_bytes());
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let compact = serde_json::to_string(&value).expect("a Value serializes");
    let found: Vec<(String, String)> = Prepared::json_text(&compact)
        .expect("serde_json's own output is valid JSON")
        .references()
        .into_iter()
        .map(|(r, l)| {
            let pointer = match l {
                keybroker::testing::reference::Location::Pointer { pointer } => pointer,
                other => other.to_string(),
            };
            (r.to_string(), pointer)
        })
        .collect();
    let mut want = Vec::new();
    walk(&value, "", &mut want);
    assert_eq!(found, want);
}
