//! Documents in every format: preparing never panics, and rendering with every lookup
//! failing never yields output.
#![no_main]

use keybroker::testing::reference::{Prepared, Reason, Reference, RenderError, RenderLimits, Resolved};
use libfuzzer_sys::fuzz_target;

fn missing(_: &Reference) -> Result<Resolved<'static>, Reason> {
    Err(Reason::NotFound)
}

fuzz_target!(|input: (u8, &str)| {
    let (format, text) = input;
    let prepared = match format % 3 {
        0 => Prepared::json_text(text),
        1 => Prepared::yaml(text),
        _ => Prepared::text(text),
    };
    let Ok(prepared) = prepared else {
        return;
    };
    let has_refs = !prepared.references().is_empty();
    let has_errors = prepared.errors().next().is_some();
    match prepared.render(&missing, RenderLimits::default()) {
        Ok(_) => assert!(!has_refs && !has_errors),
        Err(RenderError::Unresolved { errors, omitted }) => {
            assert!(!errors.is_empty());
            assert_eq!(omitted, 0, "no limit was set");
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
});
