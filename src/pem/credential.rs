//! Verification of an mTLS credential as a whole: its certificate, private key and root are
//! separate values (often separate fields of a secret), each already repaired and verified on
//! its own. Here they must also work *together*: a key that is the leaf's, a leaf a TLS client
//! may present, a chain that reaches the root. A gateway handed a pair that cannot work fails
//! at its first handshake, far from the cause (docs/PEM.md "Credentials").
//!
//! Pure: text in, a verdict out. Like the rest of the module, no message about key input
//! leaves it — only a role and a code.

use std::fmt;

use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;
use zeroize::Zeroizing;

pub(crate) use super::verify::MIN_RSA_BITS;
use super::verify::{decode, private_key, rsa_modulus_bits};

/// The values of one mTLS credential, as PEM text.
pub(crate) struct Parts<'a> {
    pub certificate: &'a str,
    pub private_key: &'a str,
    pub root: Option<&'a str>,
    /// The upstream's trust, when it differs from `root` (CA certificates only).
    pub upstream: Option<&'a str>,
}

impl fmt::Debug for Parts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Parts([redacted])")
    }
}

/// Why a credential is refused: the role whose value is at fault and a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub role: &'static str,
    pub code: &'static str,
}

const CERT: &str = "client_certificate";
const KEY: &str = "client_private_key";
const ROOT: &str = "root_certificate";
const UPSTREAM: &str = "upstream_ca";

fn reject(role: &'static str, code: &'static str) -> Rejection {
    Rejection { role, code }
}

/// When the chain is usable: the latest `notBefore` and the earliest `notAfter` of its
/// certificates, in Unix seconds. A verdict is cached with the material; the clock is checked
/// against this window on every use ([`Window::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub not_before: i64,
    pub not_after: i64,
}

impl Window {
    pub(crate) fn check(self, now: i64) -> Result<(), Rejection> {
        if now < self.not_before {
            return Err(reject(CERT, "not_yet_valid"));
        }
        if now > self.not_after {
            return Err(reject(CERT, "expired"));
        }
        Ok(())
    }
}

/// Everything about the credential that does not depend on the clock; the caller applies
/// [`Window::check`]. Order: what keybroker must be able to use at all (the key), then the
/// pair, then the leaf's purpose, then the chain.
pub(crate) fn verify(parts: &Parts<'_>) -> Result<Window, Rejection> {
    let key_spki = key_public(parts.private_key)?;
    let chain = certificates(parts.certificate, CERT)?;
    let certs = parse_all(&chain, CERT)?;
    let Some(leaf) = certs.first() else {
        return Err(reject(CERT, "no_certificate"));
    };
    weak(leaf, CERT)?;
    if key_spki.as_slice() != leaf.public_key().raw {
        return Err(reject(KEY, "key_certificate_mismatch"));
    }
    if leaf.is_ca() {
        return Err(reject(CERT, "ca_not_leaf"));
    }
    usage(leaf)?;
    for pair in certs.windows(2) {
        if !issued_by(&pair[0], &pair[1]) {
            return Err(reject(CERT, "chain_order"));
        }
    }
    if let Some(root) = parts.root {
        let roots_der = certificates(root, ROOT)?;
        let roots = parse_all(&roots_der, ROOT)?;
        if roots.is_empty() {
            return Err(reject(ROOT, "no_certificate"));
        }
        let top = certs.last().unwrap_or(leaf);
        let anchored = roots
            .iter()
            .any(|r| top.as_raw() == r.as_raw() || issued_by(top, r));
        if !anchored {
            return Err(reject(CERT, "untrusted_chain"));
        }
    }
    if let Some(upstream) = parts.upstream {
        let ders = certificates(upstream, UPSTREAM)?;
        let cas = parse_all(&ders, UPSTREAM)?;
        if cas.is_empty() {
            return Err(reject(UPSTREAM, "no_certificate"));
        }
        if cas.iter().any(|c| !c.is_ca()) {
            return Err(reject(UPSTREAM, "not_a_ca"));
        }
    }
    let mut window = Window {
        not_before: i64::MIN,
        not_after: i64::MAX,
    };
    for c in &certs {
        let v = c.validity();
        window.not_before = window.not_before.max(v.not_before.timestamp());
        window.not_after = window.not_after.min(v.not_after.timestamp());
    }
    Ok(window)
}

/// The SHA-256 fingerprints (hex) of `root`'s certificates that anchor no certificate of the
/// client chain (neither issue it nor issue a CA that does, nor are its top): when one bundle
/// is both the chain's anchor and the upstream's trust, these are trusted for the upstream
/// for no reason the client chain gives — what an operator is told about, never silently.
pub(crate) fn unanchoring_roots(certificate: &str, root: &str) -> Vec<String> {
    use sha2::Digest as _;
    let (Ok(chain_der), Ok(roots_der)) =
        (certificates(certificate, CERT), certificates(root, ROOT))
    else {
        return Vec::new();
    };
    let (Ok(chain), Ok(roots)) = (parse_all(&chain_der, CERT), parse_all(&roots_der, ROOT)) else {
        return Vec::new();
    };
    // The roots the chain itself rests on, then every root that issued one of those.
    let mut used: Vec<bool> = roots
        .iter()
        .map(|r| {
            chain
                .iter()
                .any(|c| c.as_raw() == r.as_raw() || issued_by(c, r))
        })
        .collect();
    let mut frontier: Vec<usize> = (0..roots.len()).filter(|i| used[*i]).collect();
    while let Some(i) = frontier.pop() {
        for (j, r) in roots.iter().enumerate() {
            if !used[j] && issued_by(&roots[i], r) {
                used[j] = true;
                frontier.push(j);
            }
        }
    }
    roots_der
        .iter()
        .zip(used)
        .filter(|(_, u)| !u)
        .map(|(der, _)| hex::encode(sha2::Sha256::digest(der.as_slice())))
        .collect()
}

/// The SubjectPublicKeyInfo of the one usable private key in `text`.
fn key_public(text: &str) -> Result<Zeroizing<Vec<u8>>, Rejection> {
    let scanned = super::scan::scan(text, None).map_err(|_| reject(KEY, "no_private_key"))?;
    let mut found = None;
    for (i, block) in scanned.blocks.iter().enumerate() {
        let encrypted = block.legacy.is_some() || block.label == "ENCRYPTED PRIVATE KEY";
        if encrypted {
            return Err(reject(KEY, "encrypted_key"));
        }
        if !matches!(
            block.label.as_str(),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
        ) {
            continue;
        }
        if found.is_some() {
            return Err(reject(KEY, "two_private_keys"));
        }
        let der = decode(block, i + 1).map_err(|_| reject(KEY, "bad_private_key"))?;
        let key = private_key(&block.label, &der).ok_or_else(|| weak_or_bad(&der))?;
        let spki = key.public_key().ok_or(reject(KEY, "bad_private_key"))?;
        found = Some(Zeroizing::new(spki.as_ref().to_vec()));
    }
    found.ok_or(reject(KEY, "no_private_key"))
}

/// aws-lc refuses RSA keys below 2048 bits to parse at all; say `weak_key` for those rather
/// than `bad_private_key`. Only the modulus length is read, from the DER structure (PKCS#8 wrapping
/// PKCS#1, or bare PKCS#1), never any other part of the key.
fn weak_or_bad(der: &[u8]) -> Rejection {
    match rsa_modulus_bits(der) {
        Some(bits) if bits < MIN_RSA_BITS => reject(KEY, "weak_key"),
        _ => reject(KEY, "bad_private_key"),
    }
}

/// The DER of every CERTIFICATE block of `text`, in order.
fn certificates(text: &str, role: &'static str) -> Result<Vec<Zeroizing<Vec<u8>>>, Rejection> {
    let scanned = super::scan::scan(text, None).map_err(|_| reject(role, "no_certificate"))?;
    scanned
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.label == "CERTIFICATE")
        .map(|(i, b)| decode(b, i + 1).map_err(|_| reject(role, "bad_certificate")))
        .collect()
}

fn parse_all<'a>(
    ders: &'a [Zeroizing<Vec<u8>>],
    role: &'static str,
) -> Result<Vec<X509Certificate<'a>>, Rejection> {
    ders.iter()
        .map(|d| {
            x509_parser::parse_x509_certificate(d)
                .map(|(_, c)| c)
                .map_err(|_| reject(role, "bad_certificate"))
        })
        .collect()
}

fn weak(cert: &X509Certificate<'_>, role: &'static str) -> Result<(), Rejection> {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => Err(reject(role, "weak_key")),
        _ => Ok(()),
    }
}

/// A TLS client certificate signs the handshake (keyUsage `digitalSignature`, where the
/// extension is present) and, where it names purposes, names `clientAuth` (or any purpose).
fn usage(leaf: &X509Certificate<'_>) -> Result<(), Rejection> {
    let bad = || reject(CERT, "wrong_key_usage");
    if let Some(eku) = leaf.extended_key_usage().map_err(|_| bad())?
        && !(eku.value.client_auth || eku.value.any)
    {
        return Err(bad());
    }
    if let Some(ku) = leaf.key_usage().map_err(|_| bad())?
        && !ku.value.digital_signature()
    {
        return Err(bad());
    }
    Ok(())
}

fn issued_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}
