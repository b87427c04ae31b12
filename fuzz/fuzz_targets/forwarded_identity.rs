//! A forwarded client-certificate header end to end, as a trusted proxy's caller controls it:
//! decoded (URL-encoded PEM, base64 PEM or DER), parsed once into a `ClientCert`, its subject
//! matched against a pattern. Never panics, never takes long, and agrees with itself.
//!
//! Input: `pattern|header value`.
#![no_main]

use keybroker::testing::identity::{ClientCert, decode_certificate};
use keybroker::testing::policy::SubjectPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bar) = data.iter().position(|&b| b == b'|') else {
        return;
    };
    let (pattern, header) = (&data[..bar], &data[bar + 1..]);
    let Some(der) = decode_certificate(header) else {
        return;
    };
    let cert = ClientCert::new(der);
    let _ = cert.valid_at(std::time::SystemTime::now());
    let Some(subject) = cert.subject() else {
        return;
    };
    let Ok(pattern) = std::str::from_utf8(pattern) else {
        return;
    };
    if let Ok(p) = SubjectPattern::parse(pattern) {
        let once = p.matches(&subject);
        assert_eq!(once, p.matches(&subject));
        // A pattern is a conjunction: one naming no attribute of this subject cannot match.
        if subject.is_empty() && !pattern.trim().is_empty() {
            assert!(!once, "matched an empty subject");
        }
    }
});
