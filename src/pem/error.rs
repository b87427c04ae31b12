//! Why a PEM value was rejected. No variant carries input bytes: for key material a parser's
//! message is itself a leak (rustls-pki-types echoes the offending line), so only codes and
//! block numbers leave this module.

/// A rejected PEM value. `code()` is the stable reason code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `-----BEGIN …-----` line at all.
    #[error("no PEM block found")]
    NoBlock,
    /// Non-whitespace text before, between or after the blocks.
    #[error("text outside PEM blocks")]
    TextOutsideBlocks,
    /// A BEGIN line without its END line.
    #[error("block {block}: missing END line")]
    MissingEnd { block: usize },
    /// BEGIN and END labels differ.
    #[error("block {block}: BEGIN and END labels differ")]
    LabelMismatch { block: usize },
    /// A malformed BEGIN/END line or label.
    #[error("block {block}: malformed BEGIN or END line")]
    BadArmour { block: usize },
    /// RFC 1421 headers other than a well-formed `Proc-Type: 4,ENCRYPTED` + `DEK-Info`.
    #[error("block {block}: unsupported or malformed PEM headers")]
    BadHeader { block: usize },
    /// Characters outside the base64 alphabet, bad padding or non-canonical trailing bits.
    #[error("block {block}: body is not valid base64")]
    BadBase64 { block: usize },
    /// The body does not decode to one DER element (bad tag or length, truncated).
    #[error("block {block}: body is not a complete DER element")]
    BadDer { block: usize },
    /// Bytes after the DER element.
    #[error("block {block}: data after the DER element")]
    TrailingData { block: usize },
    #[error("block {block}: the certificate does not parse")]
    BadCertificate { block: usize },
    /// The private key does not parse as its label says (or is of an unsupported type/size).
    #[error("block {block}: the private key does not parse")]
    BadKey { block: usize },
    #[error("block {block}: the public key does not parse")]
    BadPublicKey { block: usize },
    #[error("block {block}: the CRL does not parse")]
    BadCrl { block: usize },
    /// A label keybroker does not know, in strict mode.
    #[error("block {block}: unsupported label (strict mode)")]
    UnsupportedLabel { block: usize },
    /// An RSA key below 2048 bits (`pem::credential::MIN_RSA_BITS`).
    #[error("block {block}: the key is too weak (RSA below 2048 bits)")]
    WeakKey { block: usize },
    /// The private key is not the key of the (first) certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("more than one private key in one value")]
    TwoPrivateKeys,
    /// Certificate `block` is not issued (subject and signature) by the one after it.
    #[error(
        "block {block}: the certificate is not signed by the next certificate (chain must go leaf to CA)"
    )]
    ChainOrder { block: usize },
    /// The first certificate is a CA where a leaf was expected.
    #[error("block {block}: a CA certificate where a leaf certificate is expected")]
    CaNotLeaf { block: usize },
    #[error("block {block}: the certificate has expired")]
    Expired { block: usize },
    #[error("block {block}: the certificate is not valid yet")]
    NotYetValid { block: usize },
    /// Strict mode: the value would need repairs.
    #[error("the value is not intact PEM (strict mode); it would need: {0}")]
    NotIntact(String),
    /// The expected kind of PEM was not found.
    #[error("expected a {0} block")]
    UnexpectedLabel(String),
}

impl PemError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBlock => "no_pem_block",
            Self::TextOutsideBlocks => "text_outside_blocks",
            Self::MissingEnd { .. } => "missing_end",
            Self::LabelMismatch { .. } => "label_mismatch",
            Self::BadArmour { .. } => "bad_armour",
            Self::BadHeader { .. } => "bad_header",
            Self::BadBase64 { .. } => "bad_base64",
            Self::BadDer { .. } => "bad_der",
            Self::TrailingData { .. } => "trailing_data",
            Self::BadCertificate { .. } => "bad_certificate",
            Self::BadKey { .. } => "bad_private_key",
            Self::BadPublicKey { .. } => "bad_public_key",
            Self::BadCrl { .. } => "bad_crl",
            Self::UnsupportedLabel { .. } => "unsupported_label",
            Self::WeakKey { .. } => "weak_key",
            Self::KeyMismatch => "key_certificate_mismatch",
            Self::TwoPrivateKeys => "two_private_keys",
            Self::ChainOrder { .. } => "chain_order",
            Self::CaNotLeaf { .. } => "ca_not_leaf",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::NotIntact(_) => "not_intact",
            Self::UnexpectedLabel(_) => "unexpected_label",
        }
    }
}
