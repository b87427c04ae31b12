//! The identity index of one policy snapshot: built when the policy is loaded, swapped with
//! it, so finding the consumer of a certificate or a token is a hash lookup, not a scan.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::ClientCert;
use crate::policy::Policy;

/// Who each credential of a policy identifies, by consumer index into `policy.consumers`.
pub struct Identities {
    /// Certificate pins (unique across consumers, checked at load) and their `not_after`.
    pins: HashMap<[u8; 32], (usize, crate::policy::Pin)>,
    /// Token digests (unique across consumers, checked at load).
    tokens: HashMap<[u8; 32], usize>,
    /// Issuer ACLs in policy order: consumer index and the DER of each CA's public key.
    acls: Vec<(usize, Vec<Vec<u8>>)>,
    memo: IssuerMemo,
}

/// Which issuer ACL a certificate (by fingerprint) satisfies. A signature check costs ~50 µs,
/// far more than the rest of a request; a gateway presents the same certificate on every
/// request, and the answer — signed by that CA, subject matching — cannot change for a given
/// certificate under one policy. The dates are compared on every call, not remembered. The
/// memo lives and dies with its snapshot, so a reload starts afresh.
#[derive(Default)]
struct IssuerMemo(Mutex<HashMap<[u8; 32], Option<usize>>>);

/// Entries kept before the memo starts over (bounds memory against many distinct certificates).
const MEMO_MAX: usize = 10_000;

impl Identities {
    pub fn of(policy: &Policy) -> Self {
        let mut pins = HashMap::new();
        let mut tokens = HashMap::new();
        let mut acls = Vec::new();
        for (i, c) in policy.consumers.iter().enumerate() {
            for pin in &c.cert_sha256 {
                pins.insert(pin.sha256, (i, *pin));
            }
            if let Some(d) = &c.token_sha256 {
                tokens.insert(*d, i);
            }
            if c.subject.is_some() {
                let keys = c
                    .issuer_certs
                    .iter()
                    .filter_map(|der| {
                        X509Certificate::from_der(der)
                            .ok()
                            .map(|(_, ca)| ca.public_key().raw.to_vec())
                    })
                    .collect();
                acls.push((i, keys));
            }
        }
        Self {
            pins,
            tokens,
            acls,
            memo: IssuerMemo::default(),
        }
    }

    /// The consumer whose token digest is the SHA-256 of `token`. The lookup is by digest:
    /// its timing can reveal at most how a SHA-256 digest compares with the stored ones,
    /// which says nothing usable about the token (docs/THREATS.md row 12).
    pub fn by_token(&self, token: &str) -> Option<usize> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.get(&presented).copied()
    }

    /// The consumer pinned to this fingerprint at `now`; a pin past its `not_after` no
    /// longer identifies anyone (rotation with overlap).
    pub fn by_fingerprint(&self, fingerprint: &[u8; 32], now: SystemTime) -> Option<usize> {
        let (i, pin) = self.pins.get(fingerprint)?;
        pin.identifies_at(now).then_some(*i)
    }

    /// The consumer this (already chain-verified) certificate identifies at `now`: a pin,
    /// else the first issuer ACL (signed by its CA, subject matching, valid now).
    pub fn by_certificate(
        &self,
        policy: &Policy,
        cert: &ClientCert,
        now: SystemTime,
    ) -> Option<usize> {
        if let Some(i) = self.by_fingerprint(cert.fingerprint(), now) {
            return Some(i);
        }
        if self.acls.is_empty() || !cert.valid_at(now) {
            return None;
        }
        let known = (self.memo.0.lock())
            .unwrap_or_else(|p| p.into_inner())
            .get(cert.fingerprint())
            .copied();
        if let Some(found) = known {
            return found;
        }
        let found = self.issuer_acl(policy, cert);
        let mut m = self.memo.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MEMO_MAX {
            m.clear();
        }
        m.insert(*cert.fingerprint(), found);
        found
    }

    fn issuer_acl(&self, policy: &Policy, cert: &ClientCert) -> Option<usize> {
        let attributes = cert.subject()?;
        let (_, parsed) = X509Certificate::from_der(cert.der().as_ref()).ok()?;
        self.acls.iter().find_map(|(i, keys)| {
            let pattern = policy.consumers[*i].subject.as_ref()?;
            let signed = keys.iter().any(|spki| {
                SubjectPublicKeyInfo::from_der(spki)
                    .is_ok_and(|(_, key)| parsed.verify_signature(Some(&key)).is_ok())
            });
            (signed && pattern.matches(&attributes)).then_some(*i)
        })
    }
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memo = self.memo.0.lock().map_or(0, |m| m.len());
        f.debug_struct("Identities")
            .field("pins", &self.pins.len())
            .field("tokens", &self.tokens.len())
            .field("issuer_acls", &self.acls.len())
            .field("remembered", &memo)
            .finish()
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
        policy.consumers.push(crate::policy::Consumer {
            name: "workers".into(),
            team: "t".into(),
            cert_sha256: Vec::new(),
            issuer_ca: None,
            issuer_certs: vec![ca_der],
            subject: Some(crate::policy::SubjectPattern::parse("CN=worker-*").unwrap()),
            token_sha256: None,
            admin: false,
            admin_teams: Vec::new(),
            vault_api_host: None,
        });
        let snapshot = super::super::Snapshot::new(policy);
        let ids = snapshot.identities();
        let who = |der: &[u8], now| {
            let cert = ClientCert::new(rustls::pki_types::CertificateDer::from(der.to_vec()));
            ids.by_certificate(snapshot.policy(), &cert, now)
        };
        let at = |y: u64| {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs((y - 1970) * 365 * 86_400 + 200 * 86_400)
        };
        let worker = issue("worker-1");
        assert_eq!(who(&worker, at(2030)), Some(0));
        assert_eq!(who(&worker, at(2032)), None, "expired");
        assert_eq!(who(&worker, at(2029)), None, "not yet valid");
        assert_eq!(who(&worker, at(2030)), Some(0));
        let other = issue("gateway-1");
        assert_eq!(who(&other, at(2030)), None, "subject");
        assert_eq!(who(&other, at(2030)), None, "subject, remembered");
    }
}
