//! Keys the agent makes itself (`key = "generate"`, docs/AGENT.md): a new key per period and a
//! CSR that names nothing — the signing profile gives the names. Only the CSR leaves the host;
//! the key stays in zeroizing buffers until it is written into the output's next generation.

use zeroize::Zeroizing;

use super::config::{CERT_FILES, KeyType};

/// Why no key or CSR could be made (no key material in it: the library's error is dropped).
#[derive(Debug, thiserror::Error)]
pub(super) enum GenerateError {
    #[error("cannot make a {0:?} key")]
    Key(KeyType),
    #[error("cannot make the certificate signing request")]
    Csr,
}

/// A key just made and the CSR for it. `Debug` shows neither the key nor the CSR.
pub(super) struct Fresh {
    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub key_pem: Zeroizing<String>,
    /// The key's SubjectPublicKeyInfo, DER: what the certificate must carry.
    pub spki: Vec<u8>,
    pub csr_pem: String,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fresh { key: [redacted] }")
    }
}

/// Makes a key of `kind` and a CSR for it with an empty subject and no extension request:
/// the signer gives the profile's names (docs/PKI.md, "a CSR that names nothing").
pub(super) fn fresh(kind: KeyType) -> Result<Fresh, GenerateError> {
    use rcgen::{KeyPair, PublicKeyData as _, RsaKeySize};
    let key = match kind {
        KeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
    }
    .map_err(|_| GenerateError::Key(kind))?;
    let mut params = rcgen::CertificateParams::default();
    // rcgen's default subject is a placeholder CN; a nameless CSR has none.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|_| GenerateError::Csr)?;
    Ok(Fresh {
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki: key.subject_public_key_info(),
        csr_pem: csr,
    })
}

/// Whether the first certificate of `chain` (PEM) carries the key whose SubjectPublicKeyInfo
/// is `spki`: a certificate for another key is never swapped in beside this one.
pub(super) fn carries_key(chain: &str, spki: &[u8]) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(chain.as_bytes()).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(leaf.as_ref())
        .is_ok_and(|(_, cert)| cert.public_key().raw == spki)
}

/// An output with `key = "generate"`: its files as they are while its certificate is less
/// than a third through its life (waiting up to `wait` for that point when given), else a new
/// key and the certificate keybroker signed for its CSR, checked to carry that key.
pub(super) async fn fetch(
    client: &super::Client,
    o: &super::config::Output,
    wait: Option<std::time::Duration>,
) -> Result<super::Got, super::Cause> {
    use super::{Cause, Got};
    if let Some((at, validity)) = renew_at(&o.dir) {
        let now = super::now_unix();
        if now < at {
            let Some(wait) = wait else {
                return Ok(Got::Kept(Some(validity)));
            };
            let left = std::time::Duration::from_secs(u64::try_from(at - now).unwrap_or(0));
            tokio::time::sleep(left.min(wait)).await;
            if super::now_unix() < at {
                return Ok(Got::Kept(Some(validity)));
            }
        }
    }
    let kind = o.key_type;
    // RSA keys take a while to find: off the runtime's threads.
    let made = tokio::task::spawn_blocking(move || fresh(kind)).await;
    let fresh = match made {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::error!(credential = %o.credential, error = %e, "cannot make a key");
            return Err(Cause::Io);
        }
        Err(_) => return Err(Cause::Io),
    };
    let signed = client
        .sign(&o.credential, &o.host, &fresh.csr_pem)
        .await
        .map_err(|e| super::report_fetch(&o.credential, &e))?;
    if !carries_key(&signed.certificate, &fresh.spki) {
        tracing::error!(credential = %o.credential, serial = %signed.serial_number, "the signed certificate does not carry the key made for it; nothing written");
        return Err(Cause::InvalidMaterial);
    }
    tracing::info!(credential = %o.credential, serial = %signed.serial_number, key_sha256 = %signed.key_sha256, "key made here and its certificate signed");
    let value = |s: &str| Some(crate::source::FieldValue(crate::secret::secret_string(s)));
    Ok(Got::Material(
        None,
        super::Material {
            certificate: value(&signed.certificate),
            private_key: value(&fresh.key_pem),
            ca: value(&signed.issuing_ca),
            next: None,
        },
    ))
}

/// When the certificate in `dir` should be replaced (Unix seconds): a third of the way from
/// when it was written (its file's time; its `not_before` when that is later) to its
/// `not_after` — once per period of a profile whose `ttl` is three periods, whatever the
/// signer back-dates `not_before` by. `None` when there is no certificate to keep: now.
pub(super) fn renew_at(dir: &std::path::Path) -> Option<(i64, (i64, i64))> {
    let file = CERT_FILES
        .iter()
        .map(|f| dir.join("..data").join(f))
        .find(|p| p.is_file())?;
    // bundle.pem holds the key too: read into a zeroizing buffer.
    let chain = Zeroizing::new(std::fs::read_to_string(&file).ok()?);
    let (not_before, not_after) = super::files::leaf_validity(&chain)?;
    let written = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(not_before);
    Some((
        due(written, not_before, not_after, super::now_unix()),
        (not_before, not_after),
    ))
}

/// A third of the way from `written` (or `not_before` if later; never after `now`, a file
/// time in the future — a clock set back — must not put renewal past `not_after`) to
/// `not_after`.
fn due(written: i64, not_before: i64, not_after: i64, now: i64) -> i64 {
    let from = written.max(not_before).min(now);
    from + (not_after - from) / 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pem::csr::{CsrRules, check};

    /// Every key type makes a nameless CSR that keybroker's check takes, carrying the key.
    #[test]
    fn every_key_type_makes_a_nameless_csr_the_server_accepts() {
        let rules = CsrRules {
            key_type: None,
            common_name: "gw.payments.example",
            names: &[],
        };
        for kind in [
            KeyType::P256,
            KeyType::P384,
            KeyType::Ed25519,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
        ] {
            let fresh = fresh(kind).unwrap();
            assert!(fresh.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let checked = check(&fresh.csr_pem, &rules).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(checked.spki, fresh.spki);
            assert!(!format!("{fresh:?}").contains("PRIVATE"));
        }
    }

    /// Due a third into the life left when written; a back-dated `not_before` does not make
    /// it due at once, and a file time in the future does not put renewal past `not_after`.
    #[test]
    fn a_certificate_is_due_a_third_into_its_life() {
        // Written at 1000, valid 970..1030 (back-dated 30 s, ttl 30 s): due at 1010.
        assert_eq!(due(1000, 970, 1030, 1000), 1010);
        assert_eq!(due(900, 970, 1030, 1000), 990);
        // A file time far ahead of the clock: measured from now.
        assert_eq!(due(5000, 970, 1030, 1000), 1010);
    }

    /// A certificate for another key is told apart from one for ours.
    #[test]
    fn a_certificate_for_another_key_is_not_ours() {
        let ours = fresh(KeyType::P256).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.payments.example".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap()
            .pem();
        assert!(!carries_key(&cert, &ours.spki));
        use rcgen::PublicKeyData as _;
        assert!(carries_key(&cert, &other.subject_public_key_info()));
    }
}
