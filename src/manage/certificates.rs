//! A consumer's client certificates through the management API: what is checked before one is
//! added — it chains to `[server] client_ca` and passes `client_crl` (the same verifier the
//! handshakes use), is no CA, has not expired, identifies no one else — and the lifecycle state
//! Gravitee's users know, computed from the record at each read, never stored.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ManageError;
use crate::store::CertificateRecord;

/// Certificates a consumer may hold that still identify it or will (scheduled, active).
pub(super) const MAX_LIVE: usize = 16;
/// Certificates in one upload (the leaf and its intermediates).
const MAX_CHAIN: usize = 8;
const MAX_PEM_BYTES: usize = 64 << 10;

/// Gravitee's states of a client certificate.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not yet identifying the consumer (`starts_at` or the certificate's own start ahead).
    Scheduled,
    Active,
    /// Active, with an `ends_at`.
    ActiveUntil,
    Expired,
    Revoked,
}

/// A certificate as management answers show it: public facts and its state now.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateView {
    #[serde(flatten)]
    pub record: CertificateRecord,
    pub state: State,
}

impl CertificateView {
    pub fn of(record: &CertificateRecord, now: SystemTime) -> Self {
        Self {
            record: record.clone(),
            state: state(record, now),
        }
    }
}

fn time(s: Option<&str>) -> Option<SystemTime> {
    s.and_then(crate::policy::rfc3339)
}

pub(super) fn state(r: &CertificateRecord, now: SystemTime) -> State {
    if r.revoked_at.is_some() {
        return State::Revoked;
    }
    let ends_at = time(r.ends_at.as_deref());
    let end = [time(Some(&r.not_after)), ends_at]
        .into_iter()
        .flatten()
        .min();
    if end.is_some_and(|e| now > e) {
        return State::Expired;
    }
    let start = [time(Some(&r.not_before)), time(r.starts_at.as_deref())]
        .into_iter()
        .flatten()
        .max();
    if start.is_some_and(|s| now < s) {
        return State::Scheduled;
    }
    if ends_at.is_some() {
        State::ActiveUntil
    } else {
        State::Active
    }
}

/// Whether the certificate still counts towards [`MAX_LIVE`].
pub(super) fn is_live(r: &CertificateRecord, now: SystemTime) -> bool {
    !matches!(state(r, now), State::Expired | State::Revoked)
}

/// A certificate that passed every check, ready to be recorded and pinned.
pub(super) struct Checked {
    pub sha256: [u8; 32],
    /// The leaf: what the identity matcher is asked who else claims it.
    pub der: Vec<u8>,
    /// Its subject's CN (the one, when there is exactly one): whose identity domain it is in.
    pub cn: Option<String>,
    pub record: CertificateRecord,
}

fn rejected(code: &'static str, message: &str) -> ManageError {
    ManageError::CertificateRejected {
        code,
        message: message.to_owned(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The pin's own window (`starts_at`, `ends_at`): RFC 3339, `ends_at` after `starts_at` and
/// not past, and the certificate itself not expired.
fn window(
    starts_at: Option<&str>,
    ends_at: Option<&str>,
    not_after: SystemTime,
    now: SystemTime,
) -> Result<(Option<SystemTime>, Option<SystemTime>), ManageError> {
    let when = |field: &'static str, t: Option<&str>| match t {
        None => Ok(None),
        Some(t) => crate::policy::rfc3339(t)
            .map(Some)
            .ok_or_else(|| ManageError::Invalid {
                field,
                message: "an RFC 3339 time".to_owned(),
            }),
    };
    let starts = when("starts_at", starts_at)?;
    let ends = when("ends_at", ends_at)?;
    if now > not_after || ends.is_some_and(|e| e <= now) {
        return Err(rejected(
            "certificate_expired",
            "expired (or ends_at is past)",
        ));
    }
    if let (Some(s), Some(e)) = (starts, ends)
        && e <= s
    {
        return Err(ManageError::Invalid {
            field: "ends_at",
            message: "must be after starts_at".to_owned(),
        });
    }
    Ok((starts, ends))
}

/// The leaf (`ders[0]`, its intermediates after it) chains to `[server] client_ca` at `at`
/// and is not revoked.
fn trusted(
    verifier: &dyn ClientCertVerifier,
    ders: &[Vec<u8>],
    at: SystemTime,
) -> Result<(), ManageError> {
    let at = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let intermediates: Vec<CertificateDer<'_>> = ders[1..]
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(ders[0].as_slice()),
            &intermediates,
            at,
        )
        .map(|_| ())
        .map_err(|_| {
            rejected(
                "certificate_untrusted",
                "does not chain to [server] client_ca, or is revoked by client_crl",
            )
        })
}

/// Checks an uploaded certificate (PEM; CCP-flattened accepted; the leaf first, then its
/// intermediates) for use from `starts_at` to `ends_at` (RFC 3339, both optional).
pub(super) fn check(
    pem_text: &str,
    starts_at: Option<&str>,
    ends_at: Option<&str>,
    verifier: Option<&dyn ClientCertVerifier>,
    now: SystemTime,
    by: &str,
) -> Result<Checked, ManageError> {
    let verifier = verifier.ok_or_else(|| {
        rejected(
            "no_client_ca",
            "this server verifies no client certificates ([server] client_ca is not set)",
        )
    })?;
    if pem_text.len() > MAX_PEM_BYTES {
        return Err(rejected("certificate_invalid", "at most 64 KiB"));
    }
    let repaired = crate::pem::repair(pem_text, &crate::pem::Options::default())
        .map_err(|e| rejected("certificate_invalid", e.code()))?;
    let ders = crate::policy::pem_certificates(repaired.pem.as_bytes())
        .map_err(|_| rejected("certificate_invalid", "no CERTIFICATE block"))?;
    if ders.len() > MAX_CHAIN {
        return Err(rejected(
            "certificate_invalid",
            "at most 8 certificates (the leaf and its intermediates)",
        ));
    }
    let leaf = &ders[0];
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|_| rejected("certificate_invalid", "the certificate does not parse"))?;
    if cert.is_ca() {
        return Err(rejected(
            "certificate_is_ca",
            "a CA certificate cannot identify a consumer",
        ));
    }
    let not_before = unix(cert.validity().not_before.timestamp());
    let not_after = unix(cert.validity().not_after.timestamp());
    let (starts, ends) = window(starts_at, ends_at, not_after, now)?;
    // The chain is checked when the certificate first can be used: a certificate uploaded
    // ahead of its own start (a staged rotation) is checked as of that start.
    trusted(verifier, &ders, now.max(not_before))?;
    use sha2::Digest as _;
    let sha256: [u8; 32] = sha2::Sha256::digest(leaf).into();
    let mut cns = cert.subject().iter_common_name();
    let cn = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn.as_str().ok().map(str::to_owned),
        _ => None,
    };
    Ok(Checked {
        sha256,
        cn,
        der: leaf.clone(),
        record: CertificateRecord {
            fingerprint: hex::encode(sha256),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: rfc3339(not_before),
            not_after: rfc3339(not_after),
            starts_at: starts.map(rfc3339),
            ends_at: ends.map(rfc3339),
            added_at: crate::store::now(),
            added_by: by.to_owned(),
            revoked_at: None,
            certificate: Some(base64::engine::general_purpose::STANDARD.encode(leaf)),
        },
    })
}
