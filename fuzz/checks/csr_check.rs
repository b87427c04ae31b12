//! The CSR check on arbitrary input: never panics, and what it accepts is what a signer may
//! sign — its DER parses, its subject names exactly the profile's common name or nothing at all, and checking
//! the accepted text again accepts it with the same key.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/seeds/csr_check/` on stable.
use keybroker::testing::pem::csr::{CsrRules, check as csr_check};

const NAMES: [String; 0] = [];

/// The target's check of one input (inputs that are not UTF-8 are skipped).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = CsrRules {
        key_type: None,
        common_name: "gw.payments.example",
        names: &NAMES,
    };
    if let Ok(accepted) = csr_check(text, &rules) {
        assert!(!accepted.spki.is_empty());
        let again = csr_check(&accepted.pem, &rules).expect("an accepted CSR stays accepted");
        assert_eq!(again.spki, accepted.spki);
    }
}
