//! The PEM engine on arbitrary input: never panics; what it accepts is stable (repairing
//! the output again changes nothing and reports no repair); errors carry no input text.
#![no_main]

#[path = "../checks/pem_repair.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
