//! Verification of repaired PEM: every block decodes and parses as what its label claims,
//! and a bundle is coherent (one key, matching the leaf; chain leaf → CA, signatures checked).
//! Also collects the facts `pem inspect` and response metadata report.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use rustls::sign::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};
use zeroize::Zeroizing;

use super::error::PemError;
use super::scan::Block;

/// What to require of a value beyond being well-formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// Reject certificates outside their validity window.
    pub reject_expired: bool,
    /// The first certificate must be a leaf (not a CA).
    pub expect_leaf: bool,
    /// Reject labels keybroker does not know (strict mode).
    pub known_labels_only: bool,
}

/// Facts about one block. Never key bytes: fingerprints of keys are of their public key.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct BlockFacts {
    pub label: String,
    pub kind: &'static str,
    pub der_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// `not_after` in Unix seconds (for the expiry gauge; not serialized).
    #[serde(skip)]
    pub not_after_unix: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_bits: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// Decodes and checks every block, then the bundle as a whole.
pub(crate) fn verify(blocks: &[Block], checks: Checks) -> Result<Vec<BlockFacts>, PemError> {
    let mut facts = Vec::with_capacity(blocks.len());
    let mut ders: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(blocks.len());
    let mut key: Option<Arc<dyn SigningKey>> = None;
    let mut private_keys = 0;
    for (i, block) in blocks.iter().enumerate() {
        let n = i + 1;
        let der = decode(block, n)?;
        let mut f = BlockFacts {
            label: block.label.clone(),
            der_bytes: der.len(),
            ..BlockFacts::default()
        };
        if block.legacy.is_some() {
            // Legacy OpenSSL encryption: the body is ciphertext, not DER.
            if der.is_empty() || der.len() % 8 != 0 {
                return Err(PemError::BadDer { block: n });
            }
            private_keys += 1;
            f.kind = "private_key";
            f.encrypted = true;
            facts.push(f);
            ders.push(der);
            continue;
        }
        one_der_element(&der, n)?;
        match block.label.as_str() {
            "CERTIFICATE" => certificate_facts(&der, n, &mut f)?,
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                private_keys += 1;
                let k = private_key(&block.label, &der).ok_or_else(|| {
                    match rsa_modulus_bits(&der) {
                        Some(bits) if bits < MIN_RSA_BITS => PemError::WeakKey { block: n },
                        _ => PemError::BadKey { block: n },
                    }
                })?;
                f.kind = "private_key";
                if let Some(spki) = k.public_key() {
                    spki_facts(spki.as_ref(), &mut f);
                }
                key = Some(k);
            }
            "ENCRYPTED PRIVATE KEY" => {
                private_keys += 1;
                encrypted_pkcs8(&der).ok_or(PemError::BadKey { block: n })?;
                f.kind = "private_key";
                f.encrypted = true;
            }
            "PUBLIC KEY" => {
                let (rest, _) = SubjectPublicKeyInfo::from_der(&der)
                    .map_err(|_| PemError::BadPublicKey { block: n })?;
                if !rest.is_empty() {
                    return Err(PemError::TrailingData { block: n });
                }
                f.kind = "public_key";
                spki_facts(&der, &mut f);
            }
            "X509 CRL" => {
                x509_parser::parse_x509_crl(&der).map_err(|_| PemError::BadCrl { block: n })?;
                f.kind = "crl";
            }
            _ if checks.known_labels_only => return Err(PemError::UnsupportedLabel { block: n }),
            _ => f.kind = "unknown",
        }
        facts.push(f);
        ders.push(der);
    }
    if private_keys > 1 {
        return Err(PemError::TwoPrivateKeys);
    }
    check_bundle(blocks, &ders, key, checks)?;
    Ok(facts)
}

/// Strict base64 (standard alphabet, canonical padding and trailing bits) into a zeroizing
/// buffer.
pub(super) fn decode(block: &Block, n: usize) -> Result<Zeroizing<Vec<u8>>, PemError> {
    let b64 = block.base64();
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let len = engine
        .decode_slice(b64.as_bytes(), &mut der)
        .map_err(|_| PemError::BadBase64 { block: n })?;
    der.truncate(len);
    Ok(der)
}

fn one_der_element(der: &[u8], n: usize) -> Result<(), PemError> {
    match Any::from_der(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err(PemError::TrailingData { block: n }),
        Err(_) => Err(PemError::BadDer { block: n }),
    }
}

pub(super) fn private_key(label: &str, der: &[u8]) -> Option<Arc<dyn SigningKey>> {
    let key = match label {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        _ => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
    };
    // The error is dropped unread: nothing about key input leaves this function.
    rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).ok()
}

/// EncryptedPrivateKeyInfo ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING } (RFC 5958).
/// Only the structure is checked: keybroker never holds the passphrase.
fn encrypted_pkcs8(der: &[u8]) -> Option<()> {
    use x509_parser::asn1_rs::{OctetString, Sequence};
    let (rest, seq) = Sequence::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let (inner, _alg) = AlgorithmIdentifier::from_der(&seq.content).ok()?;
    let (rest, data) = OctetString::from_der(inner).ok()?;
    (rest.is_empty() && !data.as_ref().is_empty()).then_some(())
}

fn certificate_facts(der: &[u8], n: usize, f: &mut BlockFacts) -> Result<(), PemError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| PemError::BadCertificate { block: n })?;
    if !rest.is_empty() {
        return Err(PemError::TrailingData { block: n });
    }
    f.kind = "certificate";
    f.sha256 = Some(fingerprint(der));
    f.subject = Some(cert.subject().to_string());
    f.issuer = Some(cert.issuer().to_string());
    f.serial = Some(cert.raw_serial_as_string());
    let validity = cert.validity();
    f.not_before = Some(rfc3339(validity.not_before.timestamp()));
    f.not_after = Some(rfc3339(validity.not_after.timestamp()));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    f.days_left = Some((validity.not_after.timestamp() - now).div_euclid(86_400));
    f.not_after_unix = Some(validity.not_after.timestamp());
    f.is_ca = Some(cert.is_ca());
    spki_facts(cert.public_key().raw, f);
    Ok(())
}

/// Algorithm, size and SHA-256 of a SubjectPublicKeyInfo.
fn spki_facts(spki_der: &[u8], f: &mut BlockFacts) {
    if f.sha256.is_none() {
        f.sha256 = Some(fingerprint(spki_der));
    }
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return;
    };
    let oid = spki.algorithm.algorithm.to_id_string();
    let (alg, bits) = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA".to_owned(), Some(rsa.key_size())),
        Ok(PublicKey::EC(ec)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| match o.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_default();
            (format!("EC {curve}").trim().to_owned(), Some(ec.key_size()))
        }
        _ if oid == "1.3.101.112" => ("Ed25519".to_owned(), Some(256)),
        _ if oid == "1.3.101.113" => ("Ed448".to_owned(), Some(456)),
        _ => (oid, None),
    };
    f.key_algorithm = Some(alg);
    f.key_bits = bits;
}

fn check_bundle(
    blocks: &[Block],
    ders: &[Zeroizing<Vec<u8>>],
    key: Option<Arc<dyn SigningKey>>,
    checks: Checks,
) -> Result<(), PemError> {
    let certs: Vec<(usize, &[u8])> = blocks
        .iter()
        .zip(ders)
        .enumerate()
        .filter(|(_, (b, _))| b.label == "CERTIFICATE")
        .map(|(i, (_, d))| (i + 1, d.as_slice()))
        .collect();
    let parsed: Vec<(usize, X509Certificate<'_>)> = certs
        .iter()
        .map(|(n, d)| {
            x509_parser::parse_x509_certificate(d)
                .map(|(_, c)| (*n, c))
                .map_err(|_| PemError::BadCertificate { block: *n })
        })
        .collect::<Result<_, _>>()?;
    // What `CertifiedKey::keys_match` does, without its webpki parse, which refuses the
    // v1 certificates some private CAs still issue: the key's public half, as SPKI DER,
    // must equal the leaf certificate's.
    if let (Some(key), Some((_, leaf))) = (key, parsed.first()) {
        let key_spki = key.public_key().ok_or(PemError::KeyMismatch)?;
        if key_spki.as_ref() != leaf.public_key().raw {
            return Err(PemError::KeyMismatch);
        }
    }
    if let Some((n, leaf)) = parsed.first()
        && checks.expect_leaf
        && leaf.is_ca()
    {
        return Err(PemError::CaNotLeaf { block: *n });
    }
    // Only CA certificates and no key: a trust bundle (a set of roots), not a chain, so its
    // order means nothing. A value with a leaf or a key must go leaf → CA.
    let bundle = private_keys_absent(blocks) && parsed.iter().all(|(_, c)| c.is_ca());
    for pair in parsed.windows(2).filter(|_| !bundle) {
        let ((n, child), (_, parent)) = (&pair[0], &pair[1]);
        let linked = child.issuer().as_raw() == parent.subject().as_raw()
            && child.verify_signature(Some(parent.public_key())).is_ok();
        if !linked {
            return Err(PemError::ChainOrder { block: *n });
        }
    }
    if checks.reject_expired {
        for (n, cert) in &parsed {
            let v = cert.validity();
            let now = x509_parser::time::ASN1Time::now();
            if now < v.not_before {
                return Err(PemError::NotYetValid { block: *n });
            }
            if now > v.not_after {
                return Err(PemError::Expired { block: *n });
            }
        }
    }
    Ok(())
}

fn private_keys_absent(blocks: &[Block]) -> bool {
    !blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY"))
}

pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex = hex::encode(digest);
    let mut out = String::with_capacity(hex.len() + hex.len() / 2);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(std::str::from_utf8(pair).unwrap_or_default());
    }
    out
}

/// Unix seconds as RFC 3339 UTC. Certificates carry any year from 0000 to 9999; humantime
/// formats only 1970–9999 and panics before (a certificate valid from 1966 aborted a
/// read — found by the `pem_repair` fuzz target), so the civil date is computed here
/// (H. Hinnant's days-to-civil algorithm).
fn rfc3339(ts: i64) -> String {
    let (days, secs) = (ts.div_euclid(86_400), ts.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The smallest RSA modulus keybroker serves (NIST SP 800-131A; rustls' own floor).
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// The modulus size of an RSA private key (PKCS#1, or PKCS#1 inside PKCS#8); `None` for
/// other keys.
pub(super) fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use x509_parser::asn1_rs::{Any, FromDer, Integer, OctetString, Sequence, Tag};
    let (_, seq) = Sequence::from_der(der).ok()?;
    let (rest, version) = Integer::from_der(&seq.content).ok()?;
    // PKCS#8: version, AlgorithmIdentifier, OCTET STRING holding PKCS#1.
    if let Ok((rest, _alg)) = Sequence::from_der(rest)
        && let Ok((_, inner)) = OctetString::from_der(rest)
    {
        return rsa_modulus_bits(inner.as_ref());
    }
    // PKCS#1 RSAPrivateKey: version, modulus, …
    version.as_u32().ok()?;
    let (_, modulus) = Any::from_der(rest).ok()?;
    // An EC key's second element is an OCTET STRING: not a modulus.
    if modulus.header.tag() != Tag::Integer {
        return None;
    }
    let bytes = modulus.data;
    let significant = bytes.iter().skip_while(|b| **b == 0).count();
    let first = bytes.iter().find(|b| **b != 0)?;
    Some(significant * 8 - first.leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_agrees_with_humantime_after_1970_and_works_before() {
        let day = 86_400i64;
        for ts in (0..=253_402_300_799i64).step_by(7_777_777).chain([
            951_782_400,     // 2000-02-29
            4_107_542_399,   // 2100-02-28T23:59:59 (not a leap year)
            253_402_300_799, // 9999-12-31T23:59:59
        ]) {
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(ts as u64);
            assert_eq!(
                rfc3339(ts),
                humantime::format_rfc3339_seconds(t).to_string(),
                "{ts}"
            );
        }
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        // The notBefore of the certificate that made humantime panic (pem_repair fuzz target).
        assert_eq!(rfc3339(-98_087_102), "1966-11-22T17:34:58Z");
        assert_eq!(rfc3339(-62_167_219_200), "0000-01-01T00:00:00Z");
        assert_eq!(rfc3339(-719_528 * day + 59 * day), "0000-02-29T00:00:00Z");
    }
}
