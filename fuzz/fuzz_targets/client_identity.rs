//! What a caller controls about its identity: the forwarded client-certificate header and the
//! certificate's subject attributes. Decoding must never panic and must yield at most one DER
//! certificate; a subject pattern must agree with an independent oracle (each named attribute
//! exactly once, value matched by a dynamic-programming glob) and must never take long.
//!
//! Input: `pattern|attributes`, the attributes one per line as `NAME=value` (a value may hold
//! `,` and `=`: it is one value, as in a certificate).
#![no_main]

#[path = "../checks/client_identity.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
