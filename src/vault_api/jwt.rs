//! The JWT and Kubernetes logins' verification: a token signed by one of the operator's public
//! keys (`[vault_api.jwt] validation_pubkeys`, read at start), with an algorithm of that key's
//! family only — never `none`, never an HMAC keyed by a public key (key confusion) — and its
//! issuer, audience, expiry and not-before checked with a small leeway. Which consumer a role
//! is and what it binds (`sub`) is the policy's; this file only says whether a token is good
//! and what it claims.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::JwtConfig;

/// The operator's keys and the issuer every token must carry. A JWKS file is read again when
/// it changes (its modification time), so a cluster's rotated signing keys are taken without
/// a restart; a file that no longer loads keeps the keys in force (and says so in the log).
pub(crate) struct JwtKeys {
    cfg: JwtConfig,
    set: arc_swap::ArcSwap<Vec<(&'static [Algorithm], DecodingKey)>>,
    /// The JWKS file's modification time when it was last read.
    stamp: std::sync::Mutex<Option<std::time::SystemTime>>,
    issuer: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("keys", &self.set.load().len())
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("[vault_api] jwt keys {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    #[error(
        "[vault_api] jwt keys {0}: key {1} is not an RSA, EC (P-256, P-384) or Ed25519 public key"
    )]
    NotAKey(std::path::PathBuf, usize),
    #[error("[vault_api] jwt keys {0} holds no public key")]
    Empty(std::path::PathBuf),
    #[error("[vault_api] jwt keys {0}: not a JWKS document ({{\"keys\": [...]}})")]
    NotJwks(std::path::PathBuf),
    #[error("[vault_api] a JWT key set needs exactly one of validation_pubkeys and jwks_file")]
    OneSource,
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

/// What a good token claims, as far as a login binds it.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Claims {
    pub sub: Option<String>,
    #[serde(default)]
    aud: Audience,
    /// Required by [`JwtKeys::verify`]: a token issued here never outlives it.
    pub exp: u64,
    /// Kept to refuse a list: RFC 7519 makes `iss` one string, but a validator that takes
    /// "one of the list matches" lets a token name several issuers at once.
    #[serde(default)]
    iss: Option<serde_json::Value>,
}

/// `aud`: one string or a list of them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Claims {
    /// Until when the token is valid (its `exp`).
    pub(crate) fn expires_at(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.exp)
    }

    /// Whether the token was minted for `audience`.
    pub(crate) fn for_audience(&self, audience: &str) -> bool {
        match &self.aud {
            Audience::None => false,
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

impl JwtKeys {
    /// Reads the keys of `cfg`: PEM public keys (each `-----BEGIN PUBLIC KEY-----` block one
    /// key) or a JWKS file.
    pub(crate) fn load(cfg: &JwtConfig) -> Result<Self, JwtKeyError> {
        let (set, stamp) = read_keys(cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            set: arc_swap::ArcSwap::from_pointee(set),
            stamp: std::sync::Mutex::new(stamp),
            issuer: cfg.bound_issuer.clone(),
            leeway: cfg.leeway.0.as_secs(),
        })
    }

    /// The JWKS file read again when its modification time changed since it was read.
    fn refresh(&self) {
        let Some(path) = &self.cfg.jwks_file else {
            return;
        };
        let now = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut stamp = self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.is_none() || now == *stamp {
            return;
        }
        match read_keys(&self.cfg) {
            Ok((set, read_at)) => {
                self.set.store(std::sync::Arc::new(set));
                *stamp = read_at;
                tracing::info!(path = %path.display(), "JWKS file read again");
            }
            Err(e) => {
                // Tried once per change: the keys in force stay.
                *stamp = now;
                tracing::warn!(error = %e, "the changed JWKS file does not load; the keys read before stay in force");
            }
        }
    }

    /// The claims of `token` when one of the keys signed it with an algorithm of its family,
    /// it is within its `exp`/`nbf` (± leeway), carries an `aud`, and its `iss` is the bound
    /// issuer (when one is configured); else `None`. Which audience is the role's to check
    /// ([`Claims::for_audience`]): a token is verified before any role is looked up, so a
    /// missing role costs the same work as a present one.
    pub(crate) fn verify(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        self.refresh();
        let keys = self.set.load();
        for (family, key) in keys.iter() {
            if !family.contains(&header.alg) {
                continue;
            }
            let mut v = Validation::new(header.alg);
            v.algorithms = family.to_vec();
            v.leeway = self.leeway;
            v.validate_nbf = true;
            v.validate_aud = false;
            let mut required = vec!["exp", "aud"];
            if let Some(iss) = &self.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &v) {
                // `iss` as a list is refused, whatever it holds (and with no bound issuer).
                let one_issuer = data.claims.iss.as_ref().is_none_or(|i| i.is_string());
                return one_issuer.then_some(data.claims);
            }
        }
        None
    }
}

type KeySet = Vec<(&'static [Algorithm], DecodingKey)>;

/// The keys of `cfg` and, for a JWKS file, its modification time.
fn read_keys(cfg: &JwtConfig) -> Result<(KeySet, Option<std::time::SystemTime>), JwtKeyError> {
    match (&cfg.validation_pubkeys, &cfg.jwks_file) {
        (Some(path), None) => pem_keys(path).map(|k| (k, None)),
        (None, Some(path)) => {
            let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            jwks_keys(path).map(|k| (k, stamp))
        }
        _ => Err(JwtKeyError::OneSource),
    }
}

fn pem_keys(path: &std::path::Path) -> Result<KeySet, JwtKeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| JwtKeyError::Read(path.to_owned(), e))?;
    let mut keys = Vec::new();
    for (i, block) in text
        .split_inclusive("-----END PUBLIC KEY-----")
        .filter(|b| b.contains("-----BEGIN"))
        .enumerate()
    {
        let pem = block.trim().as_bytes();
        let key = DecodingKey::from_rsa_pem(pem)
            .map(|k| (RSA, k))
            .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (EC, k)))
            .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (ED, k)))
            .map_err(|_| JwtKeyError::NotAKey(path.to_owned(), i + 1))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(JwtKeyError::Empty(path.to_owned()));
    }
    Ok(keys)
}

/// A JWKS file's signature keys, each with the algorithms of its type and curve only. A
/// symmetric key (`kty: oct`) is refused: an HMAC secret in a key file would let whoever
/// reads the file sign tokens.
fn jwks_keys(path: &std::path::Path) -> Result<KeySet, JwtKeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
    const ES256: &[Algorithm] = &[Algorithm::ES256];
    const ES384: &[Algorithm] = &[Algorithm::ES384];
    let text = std::fs::read(path).map_err(|e| JwtKeyError::Read(path.to_owned(), e))?;
    if text.len() > 1 << 20 {
        return Err(JwtKeyError::NotJwks(path.to_owned()));
    }
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|_| JwtKeyError::NotJwks(path.to_owned()))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let not_a_key = || JwtKeyError::NotAKey(path.to_owned(), i + 1);
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => ES256,
                EllipticCurve::P384 => ES384,
                _ => return Err(not_a_key()),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => ED,
            _ => return Err(not_a_key()),
        };
        keys.push((family, DecodingKey::from_jwk(jwk).map_err(|_| not_a_key())?));
    }
    if keys.is_empty() {
        return Err(JwtKeyError::Empty(path.to_owned()));
    }
    Ok(keys)
}
