//! Ingest of a credential's material: each PEM field repaired, an mtls credential verified as
//! a whole (key is the leaf's, chain anchored, within its validity) — a refusal writes
//! nothing — and the public facts of its client certificate kept for the record.

use secrecy::{ExposeSecret, SecretString};

use super::{CredentialInput, ManageError, RoleRepairs};
use crate::pem;
use crate::policy::CredentialMode;

/// The material to store, by field, the repairs made, and the client certificate's
/// fingerprint (hex) and `notAfter` (RFC 3339).
pub(super) struct Ingested {
    pub fields: Vec<(&'static str, SecretString)>,
    pub repairs: Vec<RoleRepairs>,
    pub certificate: Option<(String, String)>,
    pub warnings: Vec<String>,
}

fn missing(field: &'static str) -> ManageError {
    ManageError::Invalid {
        field,
        message: "required for this mode".to_owned(),
    }
}

pub(super) fn ingest(input: &CredentialInput) -> Result<Ingested, ManageError> {
    match input.mode {
        CredentialMode::Mtls => ingest_mtls(input),
        CredentialMode::Text | CredentialMode::Fields => {
            let value = input.value.as_ref().ok_or_else(|| missing("value"))?;
            Ok(Ingested {
                fields: vec![("value", crate::secret::secret_string(value.expose_secret()))],
                repairs: Vec::new(),
                certificate: None,
                warnings: Vec::new(),
            })
        }
    }
}

fn ingest_mtls(input: &CredentialInput) -> Result<Ingested, ManageError> {
    if input.value.is_some() {
        return Err(ManageError::Invalid {
            field: "value",
            message: "an mtls credential has no value".to_owned(),
        });
    }
    let (fields, repairs) = repaired_fields(input)?;
    let text = |role: &str| {
        fields
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, v)| v.expose_secret())
    };
    let parts = pem::credential::Parts {
        certificate: text("client_certificate").unwrap_or_default(),
        private_key: text("client_private_key").unwrap_or_default(),
        root: text("root_certificate"),
        upstream: text("upstream_ca"),
    };
    let window = pem::credential::verify(&parts).map_err(ManageError::Rejected)?;
    let warnings = loose_roots(&parts);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    window.check(now).map_err(ManageError::Rejected)?;
    let certificate = certificate_facts(parts.certificate, window.not_after);
    Ok(Ingested {
        fields,
        repairs,
        certificate,
        warnings,
    })
}

/// Each PEM field repaired (a field that cannot be is the caller's failure), with the
/// repairs made.
type Fields = Vec<(&'static str, SecretString)>;

fn repaired_fields(input: &CredentialInput) -> Result<(Fields, Vec<RoleRepairs>), ManageError> {
    let cert = input
        .client_certificate
        .as_ref()
        .ok_or_else(|| missing("client_certificate"))?;
    let key = input
        .client_private_key
        .as_ref()
        .ok_or_else(|| missing("client_private_key"))?;
    let mut fields = Vec::new();
    let mut repairs = Vec::new();
    for (role, value) in [
        ("client_certificate", Some(cert)),
        ("client_private_key", Some(key)),
        ("root_certificate", input.root_certificate.as_ref()),
        ("upstream_ca", input.upstream_ca.as_ref()),
    ] {
        let Some(value) = value else { continue };
        let repaired =
            pem::repair(value.expose_secret(), &pem::Options::default()).map_err(|e| {
                ManageError::PemRejected {
                    role,
                    code: e.code(),
                }
            })?;
        if !repaired.repairs.is_empty() {
            repairs.push(RoleRepairs {
                role,
                repairs: repaired.repairs.clone(),
            });
        }
        fields.push((role, crate::secret::secret_string(&repaired.pem)));
    }
    Ok((fields, repairs))
}

/// One bundle for both trusts: the warning naming those of its CAs the client chain does not
/// rest on — trusted for the upstream for no reason the chain gives.
fn loose_roots(parts: &pem::credential::Parts<'_>) -> Vec<String> {
    let (Some(root), None) = (parts.root, parts.upstream) else {
        return Vec::new();
    };
    let loose = pem::credential::unanchoring_roots(parts.certificate, root);
    if loose.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "root_certificate is also the upstream's trust and holds CAs the client chain does not rest on (sha256 {}): give the upstream's CA as upstream_ca",
        loose.join(", ")
    )]
}

/// The client certificate's fingerprint and `notAfter` (verified: the first block is the
/// client certificate, public).
fn certificate_facts(certificate: &str, not_after: i64) -> Option<(String, String)> {
    let der = crate::policy::pem_certificates(certificate.as_bytes())
        .ok()?
        .into_iter()
        .next()?;
    use sha2::Digest as _;
    let not_after = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    Some((
        hex::encode(sha2::Sha256::digest(&der)),
        humantime::format_rfc3339_seconds(not_after).to_string(),
    ))
}
