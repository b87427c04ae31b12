//! Tokens issued by `auth/cert/login`: self-contained and signed, so any replica sharing
//! `[vault_api] token_key_file` accepts them and nothing is stored. Not renewable; a client
//! logs in again (Vault Agent does this by itself).
//!
//! `kbv1.<base64url(payload)>.<base64url(HMAC-SHA256(key, "kbv1." + payload))>`, the payload
//! `{"c": consumer, "t": its team, "o": its origin, "e": expiry (Unix seconds), "n": nonce}`:
//! a token names its consumer by all three, so it never passes to another consumer that
//! later takes the name.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::IssuedTo;

const PREFIX: &str = "kbv1.";

/// The signing key.
pub struct TokenKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    c: String,
    t: String,
    o: crate::policy::Origin,
    /// The login it came from ([`IssuedTo::login`]).
    l: String,
    e: u64,
    n: String,
}

/// Why a presented issued token is not accepted (all answered "permission denied").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    BadSignature,
    Expired,
}

impl TokenKey {
    pub fn random() -> Self {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut key).expect("the OS random number generator is available");
        Self(key)
    }

    pub fn from_file(path: &Path) -> Result<Self, crate::secret::KeyFileError> {
        let key = crate::secret::KeyFile::load("[vault_api] token_key_file", path, 32)?;
        Ok(Self(key.into_bytes()))
    }

    fn mac(&self, signed: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(signed);
        mac
    }

    /// A token for `to`, valid for `ttl` from `now`.
    pub fn issue(&self, to: &IssuedTo, ttl: Duration, now: SystemTime) -> Zeroizing<String> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random number generator is available");
        let expiry = now
            .checked_add(ttl)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let payload = Payload {
            c: to.consumer.clone(),
            l: to.login.clone(),
            t: to.team.clone(),
            o: to.origin,
            e: expiry,
            n: hex::encode(nonce),
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(serde_json::to_vec(&payload).expect("a payload serializes"));
        let signed = format!("{PREFIX}{body}");
        let tag = b64.encode(self.mac(signed.as_bytes()).finalize().into_bytes());
        Zeroizing::new(format!("{signed}.{tag}"))
    }

    /// Whether `token` is one this key issued; whom it names if so, and unexpired.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<IssuedTo, Rejected> {
        let rest = token.strip_prefix(PREFIX).ok_or(Rejected::Malformed)?;
        let (body, tag) = rest.split_once('.').ok_or(Rejected::Malformed)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tag = b64.decode(tag).map_err(|_| Rejected::Malformed)?;
        let signed = &token[..PREFIX.len() + body.len()];
        // Constant-time comparison of the tags.
        self.mac(signed.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| Rejected::BadSignature)?;
        let payload: Payload = b64
            .decode(body)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(Rejected::Malformed)?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(u64::MAX, |d| d.as_secs());
        if now >= payload.e {
            return Err(Rejected::Expired);
        }
        Ok(IssuedTo {
            consumer: payload.c,
            team: payload.t,
            origin: payload.o,
            login: payload.l,
        })
    }

    /// Seconds left on `token` (for `lookup-self`); 0 if it does not verify.
    pub fn ttl_left(&self, token: &str, now: SystemTime) -> u64 {
        let Some(body) = token
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('.'))
            .map(|(b, _)| b)
        else {
            return 0;
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload: Option<Payload> = b64
            .decode(body)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(u64::MAX, |d| d.as_secs());
        payload.map_or(0, |p| p.e.saturating_sub(now))
    }
}

impl crate::identity::IssuedTokens for TokenKey {
    fn consumer(&self, token: &str, now: SystemTime) -> Option<Option<IssuedTo>> {
        is_issued(token).then(|| self.verify(token, now).ok())
    }
}

/// Whether `token` looks like an issued token (else it is a policy bearer token).
pub fn is_issued(token: &str) -> bool {
    token.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_tampering_or_expiry_is_refused() {
        let key = TokenKey::random();
        let now = SystemTime::now();
        let gw = IssuedTo {
            consumer: "gw".to_owned(),
            team: "payments".to_owned(),
            origin: crate::policy::Origin::File,
            login: "cert".to_owned(),
        };
        let t = key.issue(&gw, Duration::from_secs(60), now);
        assert_eq!(key.verify(&t, now), Ok(gw));
        assert!(key.ttl_left(&t, now) > 50);
        assert_eq!(
            key.verify(&t, now + Duration::from_secs(61)),
            Err(Rejected::Expired)
        );
        assert_eq!(
            TokenKey::random().verify(&t, now),
            Err(Rejected::BadSignature),
            "another key"
        );
        // The payload changed to another consumer, the old tag kept.
        let (body, tag) = t[PREFIX.len()..].split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: serde_json::Value =
            serde_json::from_slice(&b64.decode(body).unwrap()).unwrap();
        payload["c"] = "admin".into();
        let forged = format!(
            "{PREFIX}{}.{tag}",
            b64.encode(serde_json::to_vec(&payload).unwrap())
        );
        assert_eq!(key.verify(&forged, now), Err(Rejected::BadSignature));
        assert_eq!(key.verify("kbv1.x", now), Err(Rejected::Malformed));
    }
}
