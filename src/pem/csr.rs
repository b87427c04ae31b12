//! A certificate signing request checked before anything is asked to sign it (docs/PKI.md,
//! "Signing"): one PEM `CERTIFICATE REQUEST`, its signature made by the key it carries, a key
//! of a type and size the profile allows, no extension but the names it asks for, and those
//! names no other than the profile's — or no names at all. The signer then signs with the
//! profile's names and lifetime; a CSR cannot widen them.
//!
//! A CSR holds no secret: its errors may say what is wrong with it.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest CSR read (a 8192-bit RSA request with a few names is about 2.5 KB).
pub(crate) const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR is refused; each a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("not one PEM CERTIFICATE REQUEST")]
    NotACsr,
    #[error("larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("its signature is not made by the key it carries")]
    BadSignature,
    #[error(
        "its key type or size is not allowed (EC P-256 or P-384, Ed25519, RSA 2048 to 8192 bits, within the profile's key_type)"
    )]
    WeakOrUnknownKey,
    #[error(
        "it requests an extension other than one subjectAltName (a CA, key usages…), or carries an attribute other than one extension request"
    )]
    Extension,
    #[error("it asks for a name the profile does not give")]
    OtherName,
}

impl CsrError {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotACsr => "not_a_csr",
            Self::TooLarge => "csr_too_large",
            Self::BadSignature => "csr_bad_signature",
            Self::WeakOrUnknownKey => "csr_key_not_allowed",
            Self::Extension => "csr_extension_not_allowed",
            Self::OtherName => "csr_name_not_allowed",
        }
    }
}

/// What a profile lets a CSR be.
#[derive(Clone, Copy, Debug)]
pub struct CsrRules<'a> {
    /// `rsa`, `ec` or `ed25519`: only that family; any of them when `None`.
    pub key_type: Option<&'a str>,
    /// The names the profile gives: the common name and its alternative names. A CSR's
    /// subject CN must be the profile's; its alternative names, these or fewer.
    pub common_name: &'a str,
    pub names: &'a [String],
}

/// A CSR that passed: its DER (to send to the signer) and its public key (to verify what
/// comes back against).
#[derive(Debug)]
pub struct CheckedCsr {
    pub pem: String,
    /// The SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
}

/// Checks `text` (one PEM CSR) against `rules`.
pub fn check(text: &str, rules: &CsrRules<'_>) -> Result<CheckedCsr, CsrError> {
    if text.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge);
    }
    // One block and nothing around it but ASCII whitespace: a reader that skips text before
    // the block (this one) and one that does not (the signer's) must see the same CSR. And the
    // signer is sent the DER checked here, re-armoured — never the caller's text (attack
    // review: a leading space hid a second CSR that OpenBao signed).
    if !text
        .trim_start_matches(|c: char| c.is_ascii_whitespace())
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        || text.matches("-----BEGIN").count() != 1
    {
        return Err(CsrError::NotACsr);
    }
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|_| CsrError::NotACsr)?;
    if pem.label != "CERTIFICATE REQUEST" || !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(CsrError::NotACsr);
    }
    let (left, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|_| CsrError::NotACsr)?;
    if !left.is_empty() {
        return Err(CsrError::NotACsr);
    }
    let info = &csr.certification_request_info;
    // Version 1 (0) is the only one PKCS#10 defines; another is not a CSR (attack review:
    // `version 1` passed here and OpenBao signed it).
    if info.version.0 != 0 || !strict_name(info.subject.as_raw()) {
        return Err(CsrError::NotACsr);
    }
    // The key first: a signature by a key refused anyway is not worth checking (and one of a
    // curve the verifier lacks would read as "bad").
    key_allowed(&info.subject_pki, rules.key_type)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    // A CSR that names nothing — an empty subject and no attribute at all — is signed with
    // the profile's names (the signer falls back to those it is asked for), like SPIRE's
    // agent: a caller need not know them. Anything named must be the profile's, below.
    // Empty means the empty SEQUENCE itself: an RDN holding nothing (`SEQUENCE { SET {} }`)
    // or an empty AttributeTypeAndValue is a name this reader and the signer's may read
    // apart (attack review: both passed as nameless; OpenBao signed the first and refused
    // the second, at the caller's budget). Those go to the name check below, and fail it.
    if info.subject.as_raw() == [0x30, 0x00] && info.iter_attributes().next().is_none() {
        return Ok(CheckedCsr {
            pem: armoured(&pem.contents),
            spki: info.subject_pki.raw.to_vec(),
        });
    }
    // Exactly the profile's common name: a signer that takes the CSR's subject (OpenBao's
    // `use_csr_common_name`, on by default) then gives no other.
    let mut cns = info.subject.iter_common_name();
    match (cns.next(), cns.next()) {
        (Some(cn), None) if cn.as_str().ok() == Some(rules.common_name) => {}
        _ => return Err(CsrError::OtherName),
    }
    // Every attribute, not the first extension request only (x509-parser's
    // `requested_extensions`): a second one smuggled names that Go's parser, OpenBao's,
    // merges in (attack review). One extension request at most, holding one subjectAltName.
    let mut requests = info
        .iter_attributes()
        .map(|a| match a.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(r) => Ok(r),
            _ => Err(CsrError::Extension),
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let request = match (requests.next(), requests.next()) {
        (None, _) => None,
        (Some(r), None) => Some(r),
        (Some(_), Some(_)) => return Err(CsrError::Extension),
    };
    if let Some(request) = request {
        if request.extensions.len() > 1 {
            return Err(CsrError::Extension);
        }
        for ext in &request.extensions {
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CsrError::Extension);
            };
            for name in &san.general_names {
                let allowed = match name {
                    GeneralName::DNSName(d) => {
                        *d == rules.common_name || rules.names.iter().any(|n| n == d)
                    }
                    _ => false,
                };
                if !allowed {
                    return Err(CsrError::OtherName);
                }
            }
        }
    }
    Ok(CheckedCsr {
        pem: armoured(&pem.contents),
        spki: info.subject_pki.raw.to_vec(),
    })
}

/// Whether `raw` is a Name in DER as the signer reads it: a SEQUENCE of SETs, each of one or
/// more SEQUENCEs of an OID and one value, every length minimal and consumed. x509-parser
/// passes over an empty RDN or an empty AttributeTypeAndValue, which Go's parser (OpenBao's)
/// keeps or refuses (attack review: a CN beside an empty AttributeTypeAndValue passed here
/// and OpenBao refused it, at the caller's budget).
fn strict_name(raw: &[u8]) -> bool {
    fn tlv(i: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, i) = i.split_first()?;
        let (&first, i) = i.split_first()?;
        let (len, i) = match first {
            n if n < 0x80 => (usize::from(n), i),
            0x81 => {
                let (&n, i) = i.split_first()?;
                (n >= 0x80).then_some((usize::from(n), i))?
            }
            0x82 => {
                let n = usize::from(*i.first()?) << 8 | usize::from(*i.get(1)?);
                (n >= 0x100).then_some((n, i.get(2..)?))?
            }
            _ => return None,
        };
        (i.len() >= len).then(|| (tag, &i[..len], &i[len..]))
    }
    let Some((0x30, mut rdns, [])) = tlv(raw) else {
        return false;
    };
    while !rdns.is_empty() {
        let Some((0x31, mut atvs, rest)) = tlv(rdns) else {
            return false;
        };
        if atvs.is_empty() {
            return false;
        }
        while !atvs.is_empty() {
            let Some((0x30, atv, rest)) = tlv(atvs) else {
                return false;
            };
            let Some((0x06, oid, value)) = tlv(atv) else {
                return false;
            };
            if oid.is_empty() || !matches!(tlv(value), Some((_, _, []))) {
                return false;
            }
            atvs = rest;
        }
        rdns = rest;
    }
    true
}

/// `der` as one PEM `CERTIFICATE REQUEST` block (64-column base64).
fn armoured(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 80);
    out.push_str("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

fn key_allowed(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    family: Option<&str>,
) -> Result<(), CsrError> {
    let oid = spki.algorithm.algorithm.to_id_string();
    let (kind, ok) = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("rsa", (2048..=8192).contains(&rsa.key_size())),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            // P-256 and P-384: what rustls and every gateway verify.
            // Uncompressed points only (0x04 ‖ x ‖ y): a compressed one passes here and is
            // refused by OpenBao, at the caller's budget (attack review).
            let (len, named) = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => (65, true),
                Some("1.3.132.0.34") => (97, true),
                _ => (0, false),
            };
            let data = point.data();
            let uncompressed = data.len() == len && data.first() == Some(&4);
            ("ec", named && uncompressed)
        }
        _ if oid == "1.3.101.112" => ("ed25519", true),
        _ => return Err(CsrError::WeakOrUnknownKey),
    };
    if !ok || family.is_some_and(|f| f != kind) {
        return Err(CsrError::WeakOrUnknownKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: CsrRules<'static> = CsrRules {
        key_type: None,
        common_name: "gw.payments.example",
        names: &[],
    };

    fn csr(subject: &[(rcgen::DnType, &str)], sans: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// A CSR naming nothing is taken (the profile's names are signed); one naming anything
    /// but the profile's — a subject without its CN, a SAN with an empty subject — is not.
    #[test]
    fn a_nameless_csr_is_taken_and_a_half_named_one_is_not() {
        assert!(check(&csr(&[], &[]), &RULES).is_ok());
        assert!(
            check(
                &csr(&[(rcgen::DnType::CommonName, "gw.payments.example")], &[]),
                &RULES
            )
            .is_ok()
        );
        for (subject, sans) in [
            (vec![(rcgen::DnType::OrganizationName, "payments")], vec![]),
            (vec![], vec!["admin.payments.example"]),
            (vec![], vec!["gw.payments.example"]),
            (
                vec![(rcgen::DnType::CommonName, "admin.payments.example")],
                vec![],
            ),
        ] {
            assert_eq!(
                check(&csr(&subject, &sans), &RULES).unwrap_err(),
                CsrError::OtherName,
                "{subject:?} {sans:?}"
            );
        }
    }
}
