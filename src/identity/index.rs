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
    /// AppRole `role_id`s (unique, checked at load): the consumer and its `secret_id` digest.
    approles: HashMap<String, (usize, [u8; 32])>,
    /// JWT and Kubernetes login roles (unique per method, checked at load).
    jwt_roles: HashMap<String, usize>,
    kubernetes_roles: HashMap<String, usize>,
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
struct IssuerMemo(Mutex<HashMap<[u8; 32], Ranked>>);

/// Claims by rank: the operator's (policy files) first, then the management store's. The
/// operator's claim outranks an API-made one — a team admin's ACL cannot take, or lock out,
/// a certificate the operator's policy identifies — and two claims of one rank are refused.
type Ranked = [Claim; 2];

fn rank(policy: &Policy, i: usize) -> usize {
    match policy.consumers[i].origin {
        crate::policy::Origin::File => 0,
        crate::policy::Origin::Api => 1,
    }
}

/// Who claims a certificate: nobody, one consumer, or more than one — which is refused,
/// never settled by order (docs/THREATS.md, "a certificate identifies one consumer").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claim {
    Nobody,
    One(usize),
    Several,
}

impl Claim {
    /// This claim with consumer `i` claiming too.
    fn and(self, i: usize) -> Self {
        match self {
            Self::Nobody => Self::One(i),
            Self::One(j) if j == i => self,
            _ => Self::Several,
        }
    }
}

/// A certificate two consumers claim: refused at authentication (and never made by
/// management).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ambiguous;

/// Entries kept before the memo starts over (bounds memory against many distinct certificates).
const MEMO_MAX: usize = 10_000;

impl Identities {
    pub fn of(policy: &Policy) -> Self {
        let mut pins = HashMap::new();
        let mut tokens = HashMap::new();
        let mut approles = HashMap::new();
        let mut jwt_roles = HashMap::new();
        let mut kubernetes_roles = HashMap::new();
        let mut acls = Vec::new();
        for (i, c) in policy.consumers.iter().enumerate() {
            for pin in c.pins() {
                pins.insert(pin.sha256, (i, *pin));
            }
            if let Some(d) = &c.token_sha256 {
                tokens.insert(*d, i);
            }
            if let Some(a) = &c.approle {
                approles.insert(a.role_id.clone(), (i, a.secret_id_sha256));
            }
            if let Some(j) = &c.jwt {
                jwt_roles.insert(j.role.clone(), i);
            }
            if let Some(k) = &c.kubernetes {
                kubernetes_roles.insert(k.role.clone(), i);
            }
            if c.subject.is_some() {
                acls.push((i, crate::policy::issuer_keys(&c.issuer_certs)));
            }
        }
        Self {
            pins,
            tokens,
            approles,
            jwt_roles,
            kubernetes_roles,
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

    /// The consumer whose AppRole is `role_id` with `secret_id`. The same work whether or not
    /// the role exists (the digest is computed and compared either way), and one answer for
    /// a wrong role and a wrong secret: no oracle (docs/THREATS.md row 78).
    pub fn by_approle(&self, role_id: &str, secret_id: &str) -> Option<usize> {
        use subtle::ConstantTimeEq as _;
        let presented: [u8; 32] = Sha256::digest(secret_id.as_bytes()).into();
        let (i, stored) = self
            .approles
            .get(role_id)
            .map_or((None, [0u8; 32]), |(i, d)| (Some(*i), *d));
        let same: bool = presented.ct_eq(&stored).into();
        i.filter(|_| same)
    }

    /// The consumer whose JWT login role is `role` (its token is verified by the caller).
    pub fn by_jwt_role(&self, role: &str) -> Option<usize> {
        self.jwt_roles.get(role).copied()
    }

    /// The consumer whose Kubernetes login role is `role`.
    pub fn by_kubernetes_role(&self, role: &str) -> Option<usize> {
        self.kubernetes_roles.get(role).copied()
    }

    /// The consumer pinned to this fingerprint at `now`; a pin past its `not_after` no
    /// longer identifies anyone (rotation with overlap).
    pub fn by_fingerprint(&self, fingerprint: &[u8; 32], now: SystemTime) -> Option<usize> {
        let (i, pin) = self.pins.get(fingerprint)?;
        pin.identifies_at(now).then_some(*i)
    }

    /// The consumer this (already chain-verified) certificate identifies at `now`: the one
    /// pin or issuer ACL (signed by its CA's public key, subject matching, valid now) that
    /// claims it. Every claim is looked at — a pin does not win over an ACL, nor the first ACL
    /// over a later one: two consumers claiming it is [`Ambiguous`], refused. The one rank
    /// above the other: a claim of the operator's policy files outranks the store's.
    pub fn by_certificate(
        &self,
        policy: &Policy,
        cert: &ClientCert,
        now: SystemTime,
    ) -> Result<Option<usize>, Ambiguous> {
        let mut ranked = if self.acls.is_empty() || !cert.valid_at(now) {
            [Claim::Nobody; 2]
        } else {
            self.remembered_acl_claim(policy, cert)
        };
        // A pin identifies only inside the certificate's own validity too: a keep-alive
        // connection opened before its end does not outlive it.
        let pinned = self
            .by_fingerprint(cert.fingerprint(), now)
            .filter(|_| cert.valid_at(now));
        if let Some(i) = pinned {
            let r = rank(policy, i);
            ranked[r] = ranked[r].and(i);
        }
        let claim = match ranked {
            [Claim::Nobody, api] => api,
            [operator, _] => operator,
        };
        match claim {
            Claim::Nobody => Ok(None),
            Claim::One(i) => Ok(Some(i)),
            Claim::Several => Err(Ambiguous),
        }
    }

    /// Every consumer that claims `cert` at any time in its validity, whatever the dates of
    /// pins and the certificate: what management asks before it lets a claim be made.
    pub fn claimants(&self, policy: &Policy, cert: &ClientCert) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .pins
            .get(cert.fingerprint())
            .map(|(i, _)| *i)
            .into_iter()
            .collect();
        out.extend(self.acl_claims(policy, cert));
        out.sort_unstable();
        out.dedup();
        out
    }

    fn remembered_acl_claim(&self, policy: &Policy, cert: &ClientCert) -> Ranked {
        let known = (self.memo.0.lock())
            .unwrap_or_else(|p| p.into_inner())
            .get(cert.fingerprint())
            .copied();
        if let Some(found) = known {
            return found;
        }
        let mut found = [Claim::Nobody; 2];
        for i in self.acl_claims(policy, cert) {
            let r = rank(policy, i);
            found[r] = found[r].and(i);
        }
        let mut m = self.memo.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MEMO_MAX {
            m.clear();
        }
        m.insert(*cert.fingerprint(), found);
        found
    }

    /// The consumers whose issuer ACL matches `cert` (signature and subject; no dates).
    fn acl_claims<'a>(
        &'a self,
        policy: &'a Policy,
        cert: &'a ClientCert,
    ) -> impl Iterator<Item = usize> + 'a {
        self.acls.iter().filter_map(move |(i, keys)| {
            let pattern = policy.consumers[*i].subject.as_ref()?;
            acl_matches(keys, pattern, cert).then_some(*i)
        })
    }
}

/// Whether an issuer ACL — its CAs' public keys (SubjectPublicKeyInfo DER) and its subject
/// pattern — claims `cert`: signed by one of the keys, subject matching. The one matcher of
/// authentication and of management's claim checks.
pub(crate) fn acl_matches(
    keys: &[Vec<u8>],
    pattern: &crate::policy::SubjectPattern,
    cert: &ClientCert,
) -> bool {
    let Some(attributes) = cert.subject() else {
        return false;
    };
    if !pattern.matches(&attributes) {
        return false;
    }
    let Ok((_, parsed)) = X509Certificate::from_der(cert.der().as_ref()) else {
        return false;
    };
    keys.iter().any(|spki| {
        SubjectPublicKeyInfo::from_der(spki)
            .is_ok_and(|(_, key)| parsed.verify_signature(Some(&key)).is_ok())
    })
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
            approle: None,
            jwt: None,
            kubernetes: None,
            ccp_app_ids: Vec::new(),
            admin: false,
            admin_teams: Vec::new(),
            vault_api_host: None,
            origin: crate::policy::Origin::File,
            identity_profile: None,
            renewed: crate::policy::Renewed::default(),
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
        assert_eq!(who(&worker, at(2030)), Ok(Some(0)));
        assert_eq!(who(&worker, at(2032)), Ok(None), "expired");
        assert_eq!(who(&worker, at(2029)), Ok(None), "not yet valid");
        assert_eq!(who(&worker, at(2030)), Ok(Some(0)));
        let other = issue("gateway-1");
        assert_eq!(who(&other, at(2030)), Ok(None), "subject");
        assert_eq!(who(&other, at(2030)), Ok(None), "subject, remembered");
    }
}
