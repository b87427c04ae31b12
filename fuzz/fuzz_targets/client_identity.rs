//! What a caller controls about its identity: the forwarded client-certificate header and the
//! certificate's subject. Decoding must never panic, must yield at most one DER certificate,
//! and a subject pattern must never match a subject lacking one of its attributes.
#![no_main]

use keybroker::api::decode_certificate;
use keybroker::policy::SubjectPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(der) = decode_certificate(data) {
        assert_eq!(der.first(), Some(&0x30), "a certificate is a DER SEQUENCE");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, subject) = text.split_once('|').unwrap_or((text, ""));
    if let Ok(p) = SubjectPattern::parse(pattern) {
        if p.matches(subject) {
            // Every attribute the pattern names is present in the subject.
            for part in pattern.split(',') {
                let attr = part.split_once('=').unwrap().0.trim().to_ascii_uppercase();
                assert!(
                    subject
                        .split(", ")
                        .any(|kv| kv.split_once('=').is_some_and(|(a, _)| a.trim().to_ascii_uppercase() == attr)),
                    "{pattern:?} matched {subject:?} without {attr}"
                );
            }
        }
    }
});
