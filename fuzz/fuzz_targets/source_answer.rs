//! What a source answers, into fields: a Vault KV v1/v2 body or a CCP answer (JSON, or the
//! HTML of IIS in front of it). Never panics, and an error never quotes the answer (it holds
//! secrets).
//!
//! Input: byte 0 picks the parser (even: Vault, bit 1 = KV v2; odd: CCP, bit 1 = JSON
//! content type), bytes 1–2 the HTTP status for CCP, the rest is the body.
#![no_main]

#[path = "../checks/source_answer.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
