//! Who a client certificate is: a pinned SHA-256 fingerprint, else an issuer ACL
//! (Apinizer-style: signed by the consumer's `issuer_ca`, valid now, subject matching the
//! consumer's pattern). The certificate has already been verified against the server's
//! `client_ca` by the TLS layer (or, for a forwarded header, by the same verifier).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::model::Policy;

/// A subject pattern: `ATTR=value` pairs separated by commas, each of which must be present in
/// the certificate's subject (in any order). In a value, `*` matches any run of characters;
/// comparison ignores ASCII case. `CN=gw-*.payments.example, O=Example`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectPattern {
    pairs: Vec<(String, String)>,
}

impl SubjectPattern {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut pairs = Vec::new();
        for part in text.split(',') {
            let (attr, value) = part
                .split_once('=')
                .ok_or("write attribute=value pairs, e.g. CN=gw-*.example")?;
            let attr = attr.trim().to_ascii_uppercase();
            let value = value.trim().to_ascii_lowercase();
            if attr.is_empty() || value.is_empty() {
                return Err("an attribute or a value is empty");
            }
            if value.chars().all(|c| c == '*') {
                return Err("a value of only `*` would match any certificate of the CA");
            }
            pairs.push((attr, value));
        }
        Ok(Self { pairs })
    }

    /// Whether `subject` (x509-parser's `CN=…, O=…` rendering) satisfies every pair.
    pub fn matches(&self, subject: &str) -> bool {
        let have: Vec<(String, String)> = subject
            .split(", ")
            .filter_map(|p| p.split_once('='))
            .map(|(a, v)| (a.trim().to_ascii_uppercase(), v.trim().to_ascii_lowercase()))
            .collect();
        self.pairs
            .iter()
            .all(|(attr, pat)| have.iter().any(|(a, v)| a == attr && glob(pat, v)))
    }
}

/// `*` matches any run of characters (also none).
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// Which consumer's issuer ACL a certificate (by SHA-256) satisfies. A signature check costs
/// ~50 µs, far more than the rest of a request; a gateway presents the same certificate on
/// every request, and what the memo records — signed by that CA, subject matching — cannot
/// change for a given certificate. Validity dates are checked on every call.
#[derive(Default)]
pub(crate) struct IssuerMemo(Mutex<HashMap<[u8; 32], Option<usize>>>);

/// Entries kept before the memo starts over (bounds memory against many distinct certificates).
const MEMO_MAX: usize = 10_000;

impl std::fmt::Debug for IssuerMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "IssuerMemo({n} certificates)")
    }
}

impl Policy {
    /// The consumer this (already chain-verified) client certificate identifies at `now`.
    pub fn consumer_by_certificate(&self, der: &[u8], now: SystemTime) -> Option<&str> {
        let fingerprint: [u8; 32] = Sha256::digest(der).into();
        if let Some(name) = self.consumer_by_fingerprint(&fingerprint, now) {
            return Some(name);
        }
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject().to_string();
        let unix: i64 = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs()
            .try_into()
            .ok()?;
        let validity = cert.validity();
        if unix < validity.not_before.timestamp() || unix > validity.not_after.timestamp() {
            return None;
        }
        let known = (self.issuer_memo.0.lock())
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint)
            .copied();
        let index = known.unwrap_or_else(|| {
            let found = self.consumers.iter().position(|c| {
                let Some(pattern) = c.subject.as_deref() else {
                    return false;
                };
                let signed = c.issuer_certs.iter().any(|ca| {
                    X509Certificate::from_der(ca)
                        .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
                });
                signed && SubjectPattern::parse(pattern).is_ok_and(|p| p.matches(&subject))
            });
            let mut m = self.issuer_memo.0.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(fingerprint, found);
            found
        });
        index.map(|i| self.consumers[i].name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        let p = SubjectPattern::parse("CN=gw-*.payments.example").unwrap();
        assert!(p.matches("CN=gw-1.payments.example"));
        assert!(p.matches("C=DE, O=Example, CN=GW-eu.payments.example"));
        assert!(!p.matches("CN=gw-1.payments.example.evil"));
        assert!(!p.matches("CN=api.payments.example"));
        assert!(!p.matches("O=gw-1.payments.example"));
        let two = SubjectPattern::parse("CN=gw-*, O=Example").unwrap();
        assert!(two.matches("O=Example, CN=gw-a"));
        assert!(!two.matches("O=Other, CN=gw-a"));
        assert!(SubjectPattern::parse("CN=*").is_err());
        assert!(SubjectPattern::parse("gw").is_err());
        assert!(SubjectPattern::parse("CN=").is_err());
    }
}
