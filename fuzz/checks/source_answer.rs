//! What a source answers, into fields: a Vault KV v1/v2 body or a CCP answer (JSON, or the
//! HTML of IIS in front of it). Never panics, and an error never quotes the answer (it holds
//! secrets).
//!
//! Input: byte 0 picks the parser (even: Vault, bit 1 = KV v2; odd: CCP, bit 1 = JSON
//! content type), bytes 1–2 the HTTP status for CCP, the rest is the body.
//!
//! Shared by the fuzz target and `tests/fuzz_regressions.rs`, which replays
//! `fuzz/regressions/source_answer/` on stable.
use keybroker::testing::secret::SecretMeta;
use keybroker::testing::source::{parse_ccp_answer, parse_kv_answer};
use secrecy::ExposeSecret;

/// The target's check of one input.
pub fn check(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((status, body)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_be_bytes(*status) % 500;
    let meta = SecretMeta::default();
    let answer = if pick % 2 == 0 {
        parse_kv_answer(body, if pick & 2 == 0 { 1 } else { 2 }, meta)
    } else {
        parse_ccp_answer(status, pick & 2 != 0, None, body, meta)
    };
    match answer {
        Ok(secret) => {
            for (name, value) in secret.fields() {
                // Every field is a string the body held (JSON may escape it, so compare only
                // plain ASCII without escapes).
                let v = value.expose_secret();
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    assert!(
                        body.windows(v.len()).any(|w| w == v.as_bytes()),
                        "field {name} not from the body"
                    );
                }
            }
        }
        Err(e) => {
            let message = format!("{e} {e:?}");
            if let Ok(text) = std::str::from_utf8(body) {
                for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
                    if word.len() >= 12 {
                        assert!(
                            !message.contains(word),
                            "the error quotes the answer: {message}"
                        );
                    }
                }
            }
        }
    }
}
