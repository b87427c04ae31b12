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
        let mut raw = Zeroizing::new([0u8; 32]);
        // Without an OS random source no token can be made safely.
        getrandom::fill(raw.as_mut()).expect("the OS random number generator is available");
        let token = Zeroizing::new(format!("kbdev_{}", hex::encode(raw.as_ref())));
        let digest = Self::of(&token);
        (token, digest)
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
