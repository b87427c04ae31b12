//! The `serve --dev` bearer token: kept only as a SHA-256 digest, compared in constant time
//! (docs/THREATS.md row 12); the type has no `PartialEq`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The digest of the one token `serve --dev` accepts.
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// A fresh random token (returned once, to be shown to the operator) and its digest.
    pub fn generate() -> (Zeroizing<String>, Self) {
        Self::generate_prefixed("kbdev_")
    }

    /// A fresh random token `<prefix><64 hex digits>` and its digest. The token is written
    /// straight into its zeroizing buffer (no temporary holds it).
    pub fn generate_prefixed(prefix: &str) -> (Zeroizing<String>, Self) {
        let mut raw = Zeroizing::new([0u8; 32]);
        // Without an OS random source no token can be made safely.
        getrandom::fill(raw.as_mut()).expect("the OS random number generator is available");
        let mut token = Zeroizing::new(String::with_capacity(prefix.len() + 64));
        token.push_str(prefix);
        for b in raw.iter() {
            for nibble in [b >> 4, b & 0xf] {
                token.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
            }
        }
        let digest = Self::of(&token);
        (token, digest)
    }

    /// The digest in hex, as policies store it (`token_sha256`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// True when `presented` hashes to this digest; timing does not depend on where the
    /// two differ.
    pub fn verify(&self, presented: &str) -> bool {
        let other = Self::of(presented);
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify_and_differ() {
        let (t1, d1) = TokenDigest::generate();
        let (t2, _) = TokenDigest::generate();
        assert_ne!(*t1, *t2);
        assert!(d1.verify(&t1));
        assert!(!d1.verify(&t2));
        assert!(!d1.verify(""));
        assert!(!format!("{d1:?}").contains(&hex::encode(d1.0)));
    }
}
