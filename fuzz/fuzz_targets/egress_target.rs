//! The egress proxy's request-target (`egress::target`): never panics, and a target it accepts
//! becomes an `https://` URL that parses, to the same host and port the policy decided on.
#![no_main]

#[path = "../checks/egress_target.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
