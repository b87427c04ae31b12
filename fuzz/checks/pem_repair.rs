//! The PEM engine on arbitrary input: never panics; what it accepts is stable (repairing
//! the output again changes nothing and reports no repair); errors carry no input text.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/pem_repair/` on stable.
use keybroker::testing::pem::{Options, repair};

/// The target's check of one input (inputs that are not UTF-8 are skipped, as libFuzzer
/// skips them for a `&str` target).
pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let opts = Options {
        armour_for: Some("CERTIFICATE"),
        base64_wrapped: true,
        ..Options::default()
    };
    match repair(input, &opts) {
        Ok(first) => {
            let again =
                repair(&first.pem, &Options::default()).expect("repaired output verifies again");
            assert_eq!(again.pem.as_str(), first.pem.as_str());
            assert!(again.repairs.is_empty(), "{:?}", again.repairs);
        }
        Err(e) => {
            let shown = e.to_string();
            for token in input.split_whitespace().filter(|t| t.len() >= 16) {
                assert!(!shown.contains(token), "error quotes the input");
            }
        }
    }
}
