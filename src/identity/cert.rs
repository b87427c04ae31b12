//! A client certificate as keybroker knows it: parsed once, when the connection is accepted
//! (or the forwarded header is verified), never again per request.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// A verified client certificate (end entity): its DER, SHA-256 fingerprint, validity window
/// and subject attributes. The chain was verified against `client_ca` before this exists.
#[derive(Clone)]
pub struct ClientCert {
    der: CertificateDer<'static>,
    fingerprint: [u8; 32],
    /// `None` when x509-parser cannot read it (webpki could): then no issuer ACL matches.
    parsed: Option<Parsed>,
}

#[derive(Clone)]
struct Parsed {
    not_before: i64,
    not_after: i64,
    /// (attribute OID in dotted form, decoded value): parsed attributes, never a rendering
    /// (docs/THREATS.md row 19).
    subject: Vec<(String, Option<String>)>,
}

impl ClientCert {
    pub fn new(der: CertificateDer<'static>) -> Self {
        let fingerprint = Sha256::digest(der.as_ref()).into();
        let parsed = X509Certificate::from_der(der.as_ref())
            .ok()
            .map(|(_, cert)| Parsed {
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                subject: cert
                    .subject()
                    .iter_attributes()
                    .map(|a| {
                        (
                            a.attr_type().to_id_string(),
                            a.as_str().ok().map(str::to_owned),
                        )
                    })
                    .collect(),
            });
        Self {
            der,
            fingerprint,
            parsed,
        }
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The end of the certificate's validity (`None` if unparsed).
    pub fn not_after(&self) -> Option<SystemTime> {
        let p = self.parsed.as_ref()?;
        let secs = u64::try_from(p.not_after).ok()?;
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    /// True when `now` is inside the certificate's validity window (false if unparsed).
    pub fn valid_at(&self, now: SystemTime) -> bool {
        let Some(p) = &self.parsed else {
            return false;
        };
        let Some(unix) = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
        else {
            return false;
        };
        p.not_before <= unix && unix <= p.not_after
    }

    /// The subject's attributes as [`crate::policy::SubjectPattern::matches`] takes them.
    pub fn subject(&self) -> Option<Vec<(&str, Option<&str>)>> {
        let p = self.parsed.as_ref()?;
        Some(
            p.subject
                .iter()
                .map(|(oid, v)| (oid.as_str(), v.as_deref()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert(sha256:{})", hex::encode(self.fingerprint))
    }
}
