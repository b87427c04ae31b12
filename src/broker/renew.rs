//! A consumer's own next certificate ([`SelfRenew`], docs/PKI.md "The agent renews its own
//! identity"): only for a caller its TLS client certificate identified (no token, no other
//! door), valid now, whose consumer the operator gave an `identity_profile`; the CSR checked
//! like a sign's, at most once per period, signed by OpenBao with the profile's names and
//! ttl, and the certificate checked to carry the CSR's key. The management plane then pins
//! it to the same consumer (`manage::identity`).

use std::sync::Arc;
use std::time::SystemTime;

use super::{Broker, Caller, ReadFailure};
use crate::audit::{Action, Outcome};
use crate::identity::ClientCert;
use crate::pem::csr::CsrError;
use crate::policy::Destination;
use crate::source::{SecretSource as _, Signed};

/// Renewals per consumer per period of its profile: one — a consumer renews itself, it does
/// not mint certificates.
pub(super) const RENEWALS_PER_PERIOD: u32 = 1;

/// Sign `csr` (PEM) as the next certificate of the consumer `presented` identifies.
#[derive(Debug)]
pub(crate) struct SelfRenew {
    pub csr: String,
    /// The client certificate of the TLS handshake (`None`: the caller presented none).
    pub presented: Option<Arc<ClientCert>>,
}

/// A renewed certificate, signed and checked, not yet pinned.
#[derive(Debug)]
pub(crate) struct Renewal {
    pub consumer: String,
    pub team: String,
    pub signed: Signed,
    /// SHA-256 of the certificate's DER: its pin.
    pub fingerprint: [u8; 32],
    /// SHA-256 of its SubjectPublicKeyInfo (`aa:bb:…`).
    pub key_sha256: String,
}

/// Why a renewal was refused.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// A token, a login, the operator, or a forwarded certificate: only a client certificate
    /// of the handshake renews itself.
    #[error("only a caller identified by its TLS client certificate renews it")]
    NotByCertificate,
    #[error("the presented certificate is not valid now")]
    NotValid,
    #[error("this consumer has no identity_profile")]
    NoProfile,
    #[error("the CSR is refused: {0}")]
    Csr(CsrError),
    #[error("this consumer renewed its certificate in this period already")]
    Budget,
    /// OpenBao refused or failed, or what it signed was not the profile's.
    #[error("the certificate could not be signed")]
    Signing(super::Failure),
    #[error(transparent)]
    AuditUnavailable(#[from] super::AuditRefused),
}

impl RenewError {
    pub fn failure(&self) -> super::Failure {
        use super::Failure as F;
        match self {
            Self::NotByCertificate | Self::NotValid | Self::NoProfile => F::Denied,
            Self::Csr(_) => F::Invalid,
            Self::Budget => F::TooMany,
            Self::Signing(f) => *f,
            Self::AuditUnavailable(_) => F::AuditUnavailable,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotByCertificate => "certificate_required",
            Self::NotValid => "certificate_not_valid",
            Self::NoProfile => "no_identity_profile",
            Self::Csr(e) => e.code(),
            Self::Budget => "renew_budget_exhausted",
            Self::Signing(f) => f.code(),
            Self::AuditUnavailable(_) => super::Failure::AuditUnavailable.code(),
        }
    }
}

impl ReadFailure for RenewError {
    fn outcome(&self) -> (Outcome, &'static str) {
        match self {
            Self::NotByCertificate | Self::NotValid | Self::NoProfile => {
                (Outcome::Denied, self.code())
            }
            other => (Outcome::Failed, other.code()),
        }
    }
}

impl super::ask::Want for SelfRenew {
    type Answer = Renewal;
    type Error = RenewError;
    const ACTION: Action = Action::ConsumerRenew;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        _host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Renewal, RenewError> {
        let (Caller::Consumer(consumer), Some(presented)) = (caller, &self.presented) else {
            return Err(RenewError::NotByCertificate);
        };
        subjects.push(consumer.name().to_owned());
        // The handshake checked the dates too; an expired certificate never renews itself.
        if !presented.valid_at(SystemTime::now()) {
            return Err(RenewError::NotValid);
        }
        let c = consumer.consumer();
        let profile = c.identity_profile.as_ref().ok_or(RenewError::NoProfile)?;
        let pki = broker
            .signers
            .get(&profile.source)
            .ok_or(RenewError::NoProfile)?;
        let rules = pki
            .csr_rules(&profile.profile)
            .ok_or(RenewError::NoProfile)?;
        let csr = crate::pem::csr::check(&self.csr, &rules).map_err(RenewError::Csr)?;
        let period = pki.sign_period(&profile.profile).as_secs().max(1);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Its own budget: the profile is no credential's, so no sign shares it.
        let signer = (
            format!("\0renew:{}", c.name),
            pki.name().to_owned(),
            profile.profile.clone(),
        );
        if !broker
            .signed
            .take(signer.clone(), now / period, RENEWALS_PER_PERIOD)
        {
            return Err(RenewError::Budget);
        }
        let key_sha256 = crate::pem::fingerprint(&csr.spki);
        subjects.push(format!("spki-sha256:{key_sha256}"));
        let signed = match pki.sign(&profile.profile, &csr).await {
            Ok(s) => s,
            Err(e) => {
                if let crate::source::SourceError::Invalid(_) = &e {
                    // The PKI refused the request: nothing was signed.
                    broker.signed.give_back(&signer, now / period);
                }
                let reason = super::source_reason(&e);
                return Err(RenewError::Signing(super::Failure::of_reason(&reason)));
            }
        };
        let fingerprint =
            der_sha256(&signed.certificate).ok_or(RenewError::Signing(super::Failure::Broken))?;
        Ok(Renewal {
            consumer: c.name.clone(),
            team: c.team.clone(),
            signed,
            fingerprint,
            key_sha256,
        })
    }

    fn facts(answer: &Renewal) -> super::ask::Facts<'_> {
        super::ask::Facts {
            serial: Some(&answer.signed.serial_number),
            ..super::ask::Facts::default()
        }
    }

    fn answer_bytes(answer: &Renewal) -> Vec<&[u8]> {
        vec![answer.signed.certificate.as_bytes()]
    }
}

/// The SHA-256 of the DER of the (one) certificate in `pem`.
fn der_sha256(pem: &str) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(sha2::Sha256::digest(&p.contents).into())
}
