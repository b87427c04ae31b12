//! The signed tokens of the Vault API's logins (`vault_api::TokenKey`): an arbitrary string
//! never verifies (nor panics), and an issued token verifies to whom it was issued — consumer,
//! team, origin and login alike.
//!
//! Input: byte 0 picks forging (even) or issuing (odd); the rest is the token, or the text the
//! issued-to fields are made of.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use keybroker::testing::identity::IssuedTo;
use keybroker::testing::vault_api::TokenKey;
use keybroker::testing::vault_api::token::is_issued;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(TokenKey::random)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let now = SystemTime::now();
    if mode % 2 == 0 {
        let _ = is_issued(text);
        assert!(key().verify(text, now).is_err(), "a forged token verified");
        let _ = key().ttl_left(text, now);
    } else {
        let to = IssuedTo {
            consumer: text.to_owned(),
            team: text.chars().rev().collect(),
            origin: keybroker::testing::policy::Origin::File,
            login: format!("approle:{text}"),
        };
        let token = key().issue(&to, Duration::from_secs(60), now);
        assert!(is_issued(&token));
        assert_eq!(key().verify(&token, now), Ok(to));
        // One byte changed anywhere: refused.
        let mut bytes = token.as_bytes().to_vec();
        let at = mode as usize % bytes.len();
        bytes[at] ^= 1;
        if let Ok(tampered) = String::from_utf8(bytes) {
            assert!(key().verify(&tampered, now).is_err(), "a tampered token verified");
        }
    }
});
