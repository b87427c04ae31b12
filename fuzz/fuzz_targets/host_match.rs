//! The allowed_hosts matcher against a deliberately simple reference matcher, on patterns
//! and hosts over a tiny alphabet (so collisions, dots and wildcards are frequent).
#![no_main]

use keybroker::testing::policy::{Destination, HostPattern};
use libfuzzer_sys::fuzz_target;

const ALPHABET: &[u8] = b"ab.*-";

fn text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Label-wise matching written as plainly as possible.
fn reference(pattern: &str, host: &str) -> bool {
    let host: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let (wild, base) = if let Some(b) = pattern.strip_prefix("**.") {
        (2, b)
    } else if let Some(b) = pattern.strip_prefix("*.") {
        (1, b)
    } else {
        (0, pattern)
    };
    let base: Vec<&str> = base.trim_end_matches('.').split('.').collect();
    if host.len() < base.len() || host[host.len() - base.len()..] != base[..] {
        return false;
    }
    let extra = host.len() - base.len();
    match wild {
        0 => extra == 0,
        1 => extra == 1,
        _ => extra >= 1,
    }
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (p, h) = (text(input.0), text(input.1));
    let (Ok(pattern), Ok(dest)) = (HostPattern::parse(&p), Destination::parse(&h)) else {
        return;
    };
    // Only DNS names: the alphabet cannot spell an IP address.
    assert_eq!(pattern.matches(&dest), reference(&p, &h), "pattern {p:?} host {h:?}");
});
