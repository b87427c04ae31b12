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

/// Which consumer's issuer ACL a certificate (by SHA-256) satisfies, and the certificate's
/// validity window. A signature check costs ~50 µs, far more than the rest of a request; a
/// gateway presents the same certificate on every request, and what the memo records — signed
/// by that CA, subject matching, the dates — cannot change for a given certificate. So a hit
/// parses nothing; the dates are still compared with `now` on every call.
#[derive(Default)]
pub(crate) struct IssuerMemo(Mutex<HashMap<[u8; 32], Remembered>>);

#[derive(Clone, Copy)]
struct Remembered {
    consumer: Option<usize>,
    not_before: i64,
    not_after: i64,
}

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
        let unix: i64 = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs()
            .try_into()
            .ok()?;
        let known = (self.issuer_memo.0.lock())
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint)
            .copied();
        let r = match known {
            Some(r) => r,
            None => {
                let r = self.issuer_acl(der)?;
                let mut m = self.issuer_memo.0.lock().unwrap_or_else(|p| p.into_inner());
                if m.len() >= MEMO_MAX {
                    m.clear();
                }
                m.insert(fingerprint, r);
                r
            }
        };
        if unix < r.not_before || unix > r.not_after {
            return None;
        }
        r.consumer.map(|i| self.consumers[i].name.as_str())
    }

    /// The first consumer whose `issuer_ca` signed `der` and whose `subject` pattern its
    /// subject satisfies, with the certificate's dates. `None` if it does not parse.
    fn issuer_acl(&self, der: &[u8]) -> Option<Remembered> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        // Parsed attributes, never a rendering of them (THREATS row 19).
        let owned: Vec<(String, Option<&str>)> = cert
            .subject()
            .iter_attributes()
            .map(|a| (a.attr_type().to_id_string(), a.as_str().ok()))
            .collect();
        let attributes: Vec<(&str, Option<&str>)> =
            owned.iter().map(|(oid, v)| (oid.as_str(), *v)).collect();
        let consumer = self.consumers.iter().position(|c| {
            let Some(pattern) = &c.subject else {
                return false;
            };
            let signed = c.issuer_certs.iter().any(|ca| {
                X509Certificate::from_der(ca)
                    .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
            });
            signed && pattern.matches(&attributes)
        });
        let validity = cert.validity();
        Some(Remembered {
            consumer,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issuer ACL: signature and subject decide who, the dates decide when — also on a
    /// memo hit (the second and third calls).
    #[test]
    fn issuer_acl_checks_dates_on_every_call_and_remembers_the_rest() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "acl CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let issue = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.not_before = rcgen::date_time_ymd(2030, 1, 1);
            p.not_after = rcgen::date_time_ymd(2031, 1, 1);
            p.signed_by(&KeyPair::generate().unwrap(), &issuer)
                .unwrap()
                .der()
                .to_vec()
        };
        let mut policy = Policy::default();
        policy.consumers.push(super::super::model::Consumer {
            name: "workers".into(),
            team: "t".into(),
            cert_sha256: Vec::new(),
            issuer_ca: None,
            issuer_certs: vec![ca_der],
            subject: Some(super::super::SubjectPattern::parse("CN=worker-*").unwrap()),
            token_sha256: None,
            admin: false,
        });
        let at = |y: u64| {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs((y - 1970) * 365 * 86_400 + 200 * 86_400)
        };
        let worker = issue("worker-1");
        assert_eq!(
            policy.consumer_by_certificate(&worker, at(2030)),
            Some("workers")
        );
        assert_eq!(
            policy.consumer_by_certificate(&worker, at(2032)),
            None,
            "expired"
        );
        assert_eq!(
            policy.consumer_by_certificate(&worker, at(2029)),
            None,
            "not yet valid"
        );
        assert_eq!(
            policy.consumer_by_certificate(&worker, at(2030)),
            Some("workers")
        );
        let other = issue("gateway-1");
        assert_eq!(
            policy.consumer_by_certificate(&other, at(2030)),
            None,
            "subject"
        );
        assert_eq!(
            policy.consumer_by_certificate(&other, at(2030)),
            None,
            "subject, remembered"
        );
    }
}
