//! JSON expanded in its own text: a document without `$` comes back byte for byte, and the
//! span finder agrees with a walk of the parsed tree on which strings hold which references.
#![no_main]

#[path = "../checks/json_spans.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
