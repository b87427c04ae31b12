//! A certificate signed for a caller's own key ([`SignRead`], docs/PKI.md "Signing"): decided
//! like a material read (the credential's `read_access` and `allowed_hosts`, the caller's
//! team), then the CSR checked against the profile, counted against the caller's signing
//! budget, signed by OpenBao (`<mount>/sign/<role>`) and checked again as it comes back. The
//! answer carries no key: keybroker never has one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Broker, Caller, CredentialError, ReadFailure};
use crate::audit::{Action, Outcome};
use crate::pem::csr::CsrError;
use crate::policy::Destination;
use crate::reference::Target;
use crate::source::SecretSource;
use crate::source::{PkiSource, Signed};

/// Signatures one consumer may have made per signing profile per period: a period's
/// certificate and one retry (a failed reload throws its key away) — a caller cannot turn
/// keybroker into a certificate mint (THREATS: signing as an amplifier).
pub const SIGNS_PER_PERIOD: u32 = 2;

/// Sign `csr` (PEM) for credential `name`.
#[derive(Debug)]
pub(crate) struct SignRead {
    pub name: String,
    pub csr: String,
}

/// A signed certificate and what it is for.
#[derive(Debug)]
pub(crate) struct SignedCredential {
    pub credential: String,
    pub signed: Signed,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (`aa:bb:…`), as the audit line has it.
    pub key_sha256: String,
}

/// Why a signing was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Denied, not there, or its certificate could not be read: a material read's errors.
    #[error(transparent)]
    Credential(CredentialError),
    /// The credential's certificate is not made by a signing profile.
    #[error("this credential's certificate is not signed from a CSR (its profile issues keys)")]
    NotSigning,
    #[error("the CSR is refused: {0}")]
    Csr(CsrError),
    /// The caller's signatures for this profile in this period are used up.
    #[error("the signing budget for this period is used up ({SIGNS_PER_PERIOD} per period)")]
    Budget,
    #[error(transparent)]
    AuditUnavailable(#[from] super::AuditRefused),
}

impl SignError {
    pub fn failure(&self) -> super::Failure {
        match self {
            Self::Credential(e) => e.failure(),
            Self::NotSigning | Self::Csr(_) => super::Failure::Invalid,
            Self::Budget => super::Failure::TooMany,
            Self::AuditUnavailable(_) => super::Failure::AuditUnavailable,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Credential(e) => e.code(),
            Self::NotSigning => "not_a_signing_credential",
            Self::Csr(e) => e.code(),
            Self::Budget => "sign_budget_exhausted",
            Self::AuditUnavailable(_) => super::Failure::AuditUnavailable.code(),
        }
    }
}

impl ReadFailure for SignError {
    fn outcome(&self) -> (Outcome, &'static str) {
        match self {
            Self::Credential(e) => e.outcome(),
            other => (Outcome::Failed, other.code()),
        }
    }
}

/// Signatures made, per (consumer, source, profile) and period. Per replica: behind a load
/// balancer a caller's budget is this times the replicas (docs/PKI.md).
#[derive(Debug, Default)]
pub(super) struct Budget(Mutex<HashMap<Signer, (u64, u32)>>);

/// Who signs with what: (consumer, pki source, profile).
pub(super) type Signer = (String, String, String);

impl Budget {
    /// Takes one of `limit` signatures of `key`'s budget in `period`, if one is left.
    pub(super) fn take(&self, key: Signer, period: u64, limit: u32) -> bool {
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Past periods are forgotten: the map holds one entry per caller and profile.
        let entry = used.entry(key).or_insert((period, 0));
        if entry.0 != period {
            *entry = (period, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }

    /// Gives back a signature taken for a CSR the PKI refused (nothing was signed).
    pub(super) fn give_back(&self, key: &Signer, period: u64) {
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = used.get_mut(key).filter(|e| e.0 == period) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

impl super::ask::Want for SignRead {
    type Answer = SignedCredential;
    type Error = SignError;
    const ACTION: Action = Action::CredentialSign;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<SignedCredential, SignError> {
        subjects.push(self.name.clone());
        let (pki, profile) = broker
            .signing_profile(caller, &self.name, host)
            .map_err(SignError::Credential)?
            .ok_or(SignError::NotSigning)?;
        let rules = pki.csr_rules(&profile).ok_or(SignError::NotSigning)?;
        let csr = crate::pem::csr::check(&self.csr, &rules).map_err(SignError::Csr)?;
        let period = pki.sign_period(&profile).as_secs().max(1);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let who = match caller {
            Caller::Operator => "\0operator".to_owned(),
            Caller::Consumer(c) => c.name().to_owned(),
        };
        let signer = (who, pki.name().to_owned(), profile.clone());
        if !broker
            .signed
            .take(signer.clone(), now / period, SIGNS_PER_PERIOD)
        {
            return Err(SignError::Budget);
        }
        let key_sha256 = crate::pem::fingerprint(&csr.spki);
        subjects.push(format!("spki-sha256:{key_sha256}"));
        let signed = pki.sign(&profile, &csr).await;
        if let Err(crate::source::SourceError::Invalid(_)) = &signed {
            // The PKI refused the request: nothing was signed, so nothing is counted.
            broker.signed.give_back(&signer, now / period);
        }
        let signed = signed.map_err(|e| {
            SignError::Credential(CredentialError::Unresolved(vec![super::RoleError {
                role: "client_certificate",
                reason: super::source_reason(&e),
            }]))
        })?;
        Ok(SignedCredential {
            credential: self.name,
            signed,
            key_sha256,
        })
    }

    fn facts(answer: &SignedCredential) -> super::ask::Facts<'_> {
        super::ask::Facts {
            serial: Some(&answer.signed.serial_number),
            ..super::ask::Facts::default()
        }
    }

    fn answer_bytes(answer: &SignedCredential) -> Vec<&[u8]> {
        vec![answer.signed.certificate.as_bytes()]
    }
}

impl Broker {
    /// The pki source and signing profile credential `name`'s certificate comes from, after
    /// the decision a material read of it gets; `None` when its certificate is not signed
    /// from a CSR.
    fn signing_profile(
        &self,
        caller: &Caller,
        name: &str,
        host: Option<&Destination>,
    ) -> Result<Option<(std::sync::Arc<PkiSource>, String)>, CredentialError> {
        let snapshot = self.snapshot(caller);
        let cred = super::credentials::decided(snapshot.policy(), caller, name, host)?;
        let Some(reference) = cred.values.by_role.get("client_certificate") else {
            return Ok(None);
        };
        let Target::Secret {
            source: Some(source),
            path,
            ..
        } = &reference.target
        else {
            return Ok(None);
        };
        let Some(pki) = self.signers.get(source) else {
            return Ok(None);
        };
        let profile = path.to_string();
        Ok(pki
            .csr_rules(&profile)
            .is_some()
            .then(|| (std::sync::Arc::clone(pki), profile)))
    }
}
