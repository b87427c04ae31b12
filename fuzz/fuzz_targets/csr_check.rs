//! The CSR check on arbitrary input: never panics; what it accepts stays accepted.
#![no_main]

#[path = "../checks/csr_check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
