//! What a caller controls about its identity: the forwarded client-certificate header and the
//! certificate's subject attributes. Decoding must never panic and must yield at most one DER
//! certificate; a subject pattern must agree with an independent oracle (each named attribute
//! exactly once, value matched by a dynamic-programming glob) and must never take long.
//!
//! Input: `pattern|attributes`, the attributes one per line as `NAME=value` (a value may hold
//! `,` and `=`: it is one value, as in a certificate).
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/client_identity/` on stable.
use keybroker::testing::identity::decode_certificate;
use keybroker::testing::policy::SubjectPattern;

/// The oracle's own attribute table (not the library's).
const OIDS: &[(&str, &str)] = &[
    ("CN", "2.5.4.3"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("C", "2.5.4.6"),
];

fn oid(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_uppercase();
    OIDS.iter().find(|(n, _)| *n == name).map(|(_, o)| *o)
}

/// Plain DP glob: `*` any run, everything else literal.
fn dp_glob(p: &[u8], t: &[u8]) -> bool {
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &c in p {
        let mut next = vec![false; t.len() + 1];
        if c == b'*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && t[j - 1] == c;
            }
        }
        row = next;
    }
    row[t.len()]
}

/// The target's check of one input.
pub fn check(data: &[u8]) {
    if let Some(der) = decode_certificate(data) {
        assert_eq!(der.first(), Some(&0x30), "a certificate is a DER SEQUENCE");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, subject) = text.split_once('|').unwrap_or((text, ""));
    let attributes: Vec<(&str, Option<&str>)> = subject
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(n, v)| oid(n).map(|o| (o, Some(v))))
        .collect();
    let Ok(p) = SubjectPattern::parse(pattern) else {
        return;
    };
    // Patterns using names outside the oracle's table are left to the unit tests.
    let mut expected = true;
    for part in pattern.split(',') {
        let (name, value) = part.split_once('=').expect("parsed patterns are pairs");
        let Some(o) = oid(name) else { return };
        let values: Vec<&str> = attributes
            .iter()
            .filter(|(a, _)| *a == o)
            .filter_map(|(_, v)| *v)
            .collect();
        let value = value.trim().to_ascii_lowercase();
        expected &= values.len() == 1
            && dp_glob(value.as_bytes(), values[0].to_ascii_lowercase().as_bytes());
    }
    assert_eq!(
        p.matches(&attributes),
        expected,
        "{pattern:?} against {attributes:?}"
    );
}
