//! Who is calling. In order: a TLS client certificate (verified by the handshake) wins; else
//! a client certificate forwarded in `client_cert_header`, accepted only from
//! `trusted_proxies` and verified like a TLS one (docs/THREATS.md row 8); else a bearer
//! token. Tokens are kept only as SHA-256 digests (row 12).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, header};
use base64::Engine as _;
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use super::{Caller, ClientCert, ConsumerRef, Snapshot, TokenDigest};

/// Why a caller was not authenticated. The answer is a plain 401 either way; the code is for
/// logs and the audit of the refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials presented")]
    Missing,
    #[error("the client certificate identifies no consumer")]
    UnknownCertificate,
    /// Two consumers claim the certificate (a pin and an issuer ACL, or two ACLs): refused,
    /// never settled by order, so an overlap that reached the policy fails closed.
    #[error("the client certificate is claimed by more than one consumer")]
    AmbiguousIdentity,
    #[error("a client-certificate header from an address that is not a trusted proxy")]
    UntrustedHeader,
    #[error("the forwarded client certificate is malformed, repeated or not trusted")]
    BadHeader,
    #[error("unknown bearer token")]
    UnknownToken,
    /// Two headers of the door's credential (`Authorization`, `X-Vault-Token`,
    /// `Proxy-Authorization`): which one counts would depend on the proxy in front (THREATS
    /// row 32), so neither does. Answered 400 (or the door's equivalent), not 401.
    #[error("more than one credential header")]
    RepeatedAuthorization,
    /// Two different credentials in the headers a door reads (`X-Vault-Token` and an
    /// `Authorization` naming someone else): refused, not settled by order.
    #[error("conflicting credentials in X-Vault-Token and Authorization")]
    ConflictingCredentials,
    /// A held blocking query whose consumer was removed or changed (e.g. its token rotated)
    /// by a policy reload: what it authenticated as no longer holds.
    #[error("the consumer changed while the request waited")]
    Changed,
}

impl AuthError {
    /// Whether the request itself is malformed (400), rather than unauthenticated (401).
    pub fn is_bad_request(self) -> bool {
        matches!(
            self,
            Self::RepeatedAuthorization | Self::ConflictingCredentials
        )
    }
}

/// The door a request came through: which headers carry its bearer credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// `Authorization: Bearer`.
    Api,
    /// `X-Vault-Token`, or `Authorization: Bearer`.
    VaultApi,
    /// `Proxy-Authorization: Bearer`.
    Egress,
    /// The CCP-shaped door: the client certificate alone, as CCP identifies an application.
    CcpApi,
    /// The command line (`keybroker resolve`): the operator, or a consumer named by `--as`.
    Cli,
}

impl Door {
    /// Its name: the metrics' `door` label, the audit's `via`, the listener's setting.
    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::VaultApi => "vault_api",
            Self::Egress => "egress",
            Self::CcpApi => "ccp_api",
            Self::Cli => "cli",
        }
    }

    /// The audit line's `via`: every door but the main API names itself.
    pub fn via(self) -> Option<&'static str> {
        (self != Self::Api).then(|| self.name())
    }
}

/// The bearer credential a request presents at `door`, if any — one function for every door,
/// so a repeated or conflicting credential is refused the same way everywhere (THREATS row
/// 32).
pub(crate) fn presented_token(headers: &HeaderMap, door: Door) -> Result<Option<&str>, AuthError> {
    let one = |name: &HeaderName| -> Result<Option<&str>, AuthError> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(AuthError::RepeatedAuthorization),
            (None, None) => Ok(None),
            (Some(v), None) => Ok(Some(v.to_str().map_err(|_| AuthError::Missing)?)),
        }
    };
    let bearer_of =
        |name: &HeaderName| -> Result<Option<&str>, AuthError> { Ok(one(name)?.and_then(bearer)) };
    match door {
        Door::Api => bearer_of(&header::AUTHORIZATION),
        Door::Egress => bearer_of(&header::PROXY_AUTHORIZATION),
        Door::CcpApi | Door::Cli => Ok(None),
        Door::VaultApi => {
            let vault = one(&HeaderName::from_static("x-vault-token"))?;
            let authorization = bearer_of(&header::AUTHORIZATION)?;
            match (vault, authorization) {
                (Some(a), Some(b)) if a != b => Err(AuthError::ConflictingCredentials),
                (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
                (None, None) => Ok(None),
            }
        }
    }
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::UnknownCertificate => "unknown_certificate",
            Self::AmbiguousIdentity => "ambiguous_identity",
            Self::UntrustedHeader => "untrusted_header",
            Self::BadHeader => "bad_header",
            Self::UnknownToken => "unknown_token",
            Self::RepeatedAuthorization => "repeated_authorization",
            Self::ConflictingCredentials => "conflicting_credentials",
            Self::Changed => "consumer_changed",
        }
    }
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    TlsCertificate,
    ForwardedCertificate,
    Token,
}

/// Tokens a door issued itself (the Vault API's `auth/cert/login` tokens): the consumer a
/// token names, when it is one of them and valid now.
pub trait IssuedTokens: Send + Sync {
    /// `None` when `token` is not of this kind; `Some(None)` when it is but does not verify.
    fn consumer(&self, token: &str, now: SystemTime) -> Option<Option<IssuedTo>>;
}

/// Whom an issued token was issued to: the consumer's name, team and origin. A token binds
/// all three, so it never passes to another consumer that later takes the name (a team
/// admin's API-made consumer deleted, the operator's of another team defined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedTo {
    pub consumer: String,
    pub team: String,
    pub origin: crate::policy::Origin,
    /// The login it came from and a digest of that login's definition when it was issued
    /// (`approle:<hex>`, `jwt:<hex>`, `kubernetes:<hex>`; `cert` for a certificate login): a
    /// token dies with the login that made it — a rotated `secret_id`, a removed or changed
    /// role — not only with its consumer.
    pub login: String,
}

/// Which login a token was issued by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Cert,
    AppRole,
    Jwt,
    Kubernetes,
}

/// `kind:` and the first 16 hex digits of the SHA-256 of `parts`, each length-prefixed.
fn login_digest(kind: &str, parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    format!("{kind}:{}", &hex::encode(h.finalize())[..16])
}

impl Login {
    /// A certificate login through the pin `sha256`, as a token carries it.
    pub fn of_pin(sha256: &[u8; 32]) -> String {
        login_digest("cert", &[b"pin", sha256])
    }

    /// A certificate login through `consumer`'s issuer ACL (its CA keys and subject), as a
    /// token carries it; `None` without one.
    fn of_acl(consumer: &crate::policy::Consumer) -> Option<String> {
        let subject = format!("{:?}", consumer.subject.as_ref()?);
        let keys = crate::policy::issuer_keys(&consumer.issuer_certs).concat();
        Some(login_digest("cert", &[b"acl", &keys, subject.as_bytes()]))
    }

    /// The certificate login by which `cert` identifies `consumer` at `now`: its pin, else
    /// its issuer ACL. A token carries it, and dies when that pin or ACL is removed, changed
    /// or (a pin) past its window.
    pub fn of_certificate(
        consumer: &crate::policy::Consumer,
        cert: &ClientCert,
        now: SystemTime,
    ) -> Option<String> {
        let pinned = consumer
            .pins()
            .any(|p| p.sha256 == *cert.fingerprint() && p.identifies_at(now));
        if pinned {
            return Some(Self::of_pin(cert.fingerprint()));
        }
        Self::of_acl(consumer)
    }

    /// Whether `consumer` still holds the certificate login `login` at `now`.
    fn cert_still_held(consumer: &crate::policy::Consumer, login: &str, now: SystemTime) -> bool {
        consumer
            .pins()
            .any(|p| p.identifies_at(now) && Self::of_pin(&p.sha256) == login)
            || Self::of_acl(consumer).is_some_and(|a| a == login)
    }

    /// `consumer`'s definition of this login as it is now, as a token carries it; `None` when
    /// the consumer no longer has this login (a certificate login: [`Login::of_certificate`]).
    pub fn of(self, consumer: &crate::policy::Consumer) -> Option<String> {
        let digest = login_digest;
        match self {
            Self::Cert => None,
            Self::AppRole => consumer
                .approle
                .as_ref()
                .map(|a| digest("approle", &[a.role_id.as_bytes(), &a.secret_id_sha256])),
            Self::Jwt => consumer.jwt.as_ref().map(|j| {
                let audiences = j.bound_audiences.join("\n");
                digest(
                    "jwt",
                    &[
                        j.role.as_bytes(),
                        audiences.as_bytes(),
                        j.bound_subject.as_bytes(),
                    ],
                )
            }),
            Self::Kubernetes => consumer.kubernetes.as_ref().map(|k| {
                digest(
                    "kubernetes",
                    &[
                        k.role.as_bytes(),
                        k.service_account.as_bytes(),
                        k.namespace.as_bytes(),
                        k.audience.as_bytes(),
                    ],
                )
            }),
        }
    }

    fn of_token(login: &str) -> Option<Self> {
        match login.split(':').next()? {
            "cert" => Some(Self::Cert),
            "approle" => Some(Self::AppRole),
            "jwt" => Some(Self::Jwt),
            "kubernetes" => Some(Self::Kubernetes),
            _ => None,
        }
    }
}

impl IssuedTo {
    /// Whom `consumer` would be issued to by `login`; `None` when it has no such login.
    pub fn by(consumer: &crate::policy::Consumer, login: Login) -> Option<Self> {
        Some(Self {
            consumer: consumer.name.clone(),
            team: consumer.team.clone(),
            origin: consumer.origin,
            login: login.of(consumer)?,
        })
    }

    /// Whether this token may be used from `peer`: an AppRole login's token only from inside
    /// its `token_bound_cidrs` (read from the definition in force: the bound that holds now).
    pub fn admits_peer(&self, consumer: &crate::policy::Consumer, peer: Option<IpAddr>) -> bool {
        match Login::of_token(&self.login) {
            Some(Login::AppRole) => consumer
                .approle
                .as_ref()
                .is_some_and(|a| a.admits_token(peer)),
            _ => true,
        }
    }

    /// Whether this token still belongs to `consumer`: the same name, team and origin, and
    /// the login that issued it unchanged.
    pub fn still_held_by(&self, consumer: &crate::policy::Consumer) -> bool {
        if Login::of_token(&self.login) == Some(Login::Cert) {
            return self.consumer == consumer.name
                && self.team == consumer.team
                && self.origin == consumer.origin
                && Login::cert_still_held(consumer, &self.login, SystemTime::now());
        }
        Login::of_token(&self.login)
            .and_then(|l| Self::by(consumer, l))
            .is_some_and(|now| now == *self)
    }
}

/// The one authenticator of every door: what each door reads is fixed by its [`Door`] (the
/// main API: certificate, forwarded certificate, bearer token; the Vault API: its tokens and
/// the policy's; the egress proxy: the policy's tokens), and every door refuses a repeated or
/// conflicting credential alike.
#[derive(Default)]
pub struct Authenticator {
    /// The `serve --dev` bearer token; it authenticates as the operator.
    pub dev_token: Option<TokenDigest>,
    pub trusted_proxies: Vec<IpNet>,
    pub cert_header: Option<HeaderName>,
    /// Tokens the door issued (the Vault API's).
    pub issued: Option<Arc<dyn IssuedTokens>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("dev_token", &self.dev_token)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cert_header", &self.cert_header)
            .field("issued", &self.issued.is_some())
            .finish_non_exhaustive()
    }
}

/// What a request presented at a door, as the door's extractor collected it.
#[derive(Clone, Copy)]
#[expect(
    missing_debug_implementations,
    reason = "the headers hold credentials, and the verifier has no Debug"
)]
pub struct Presented<'a> {
    pub door: Door,
    /// The connection's peer address (unknown when a router is driven without a socket).
    pub peer: Option<IpAddr>,
    /// The client certificate its TLS handshake verified.
    pub certificate: Option<&'a ClientCert>,
    /// What checks a forwarded certificate (`client_ca`, `client_crl`: current).
    pub verifier: Option<&'a dyn ClientCertVerifier>,
    pub headers: &'a HeaderMap,
}

impl Authenticator {
    /// The caller of a request.
    pub fn authenticate(
        &self,
        snapshot: &Arc<Snapshot>,
        presented: Presented<'_>,
    ) -> Result<(Caller, Via), AuthError> {
        let Presented {
            door,
            peer,
            certificate,
            verifier,
            headers,
        } = presented;
        let now = SystemTime::now();
        let ids = snapshot.identities();
        let consumer = |i: usize| Caller::Consumer(ConsumerRef::at(snapshot, i));
        // The one matcher of a certificate to its consumer, for every way one is presented.
        let by_certificate = |cert: &ClientCert, via: Via| {
            ids.by_certificate(snapshot.policy(), cert, now)
                .map_err(|super::Ambiguous| AuthError::AmbiguousIdentity)?
                .map(|i| {
                    let c = ConsumerRef::at(snapshot, i).identified_until(cert.not_after());
                    (Caller::Consumer(c), via)
                })
                .ok_or(AuthError::UnknownCertificate)
        };
        // The token first: a repeated or conflicting credential header is refused at every
        // door, also beside a certificate.
        let token = presented_token(headers, door)?;
        // The CCP-shaped door: the handshake's certificate alone, as CCP identifies a caller.
        if door == Door::CcpApi {
            return by_certificate(certificate.ok_or(AuthError::Missing)?, Via::TlsCertificate);
        }
        if door != Door::Api {
            // The Vault API and the egress proxy read tokens only (a Vault client's
            // certificate is for `auth/cert/login`).
            let token = token.ok_or(AuthError::Missing)?;
            if let Some(found) = self.issued.as_ref().and_then(|i| i.consumer(token, now)) {
                let to = found.ok_or(AuthError::UnknownToken)?;
                return ConsumerRef::of(Arc::clone(snapshot), &to.consumer)
                    .filter(|c| to.still_held_by(c.consumer()))
                    .filter(|c| to.admits_peer(c.consumer(), peer))
                    .map(|c| (Caller::Consumer(c), Via::Token))
                    .ok_or(AuthError::UnknownToken);
            }
            return ids
                .by_token(token)
                .map(|i| (consumer(i), Via::Token))
                .ok_or(AuthError::UnknownToken);
        }
        if let Some(cert) = certificate {
            return by_certificate(cert, Via::TlsCertificate);
        }
        if let Some(name) = &self.cert_header
            && headers.contains_key(name)
        {
            let cert = self.forwarded_certificate(peer, verifier, headers, name)?;
            return by_certificate(&cert, Via::ForwardedCertificate);
        }
        let presented = token.ok_or(AuthError::Missing)?;
        if self.dev_token.as_ref().is_some_and(|d| d.verify(presented)) {
            return Ok((Caller::Operator, Via::Token));
        }
        ids.by_token(presented)
            .map(|i| (consumer(i), Via::Token))
            .ok_or(AuthError::UnknownToken)
    }

    /// The certificate a trusted proxy forwarded, verified against `client_ca`.
    fn forwarded_certificate(
        &self,
        peer: Option<IpAddr>,
        verifier: Option<&dyn ClientCertVerifier>,
        headers: &HeaderMap,
        name: &HeaderName,
    ) -> Result<ClientCert, AuthError> {
        let trusted = peer.is_some_and(|p| {
            let ip = canonical(p);
            self.trusted_proxies.iter().any(|net| net.contains(&ip))
        });
        if !trusted {
            return Err(AuthError::UntrustedHeader);
        }
        // A header the client asked a proxy to drop as hop-by-hop is not the proxy's word.
        let nominated = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()));
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(AuthError::BadHeader);
        };
        if nominated {
            return Err(AuthError::BadHeader);
        }
        let der = decode_certificate(value.as_bytes()).ok_or(AuthError::BadHeader)?;
        let verifier = verifier.ok_or(AuthError::BadHeader)?;
        verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map_err(|_| AuthError::BadHeader)?;
        Ok(ClientCert::new(der))
    }
}

/// `::ffff:a.b.c.d` is the IPv4 peer it maps (dual-stack listeners).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A forwarded certificate: URL-encoded PEM (nginx `$ssl_client_escaped_cert`), base64 of
/// PEM, or base64 of DER (Gravitee, Envoy-style). Exactly one certificate.
pub fn decode_certificate(value: &[u8]) -> Option<CertificateDer<'static>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let pem_text: Option<Vec<u8>> = if text.starts_with("-----BEGIN") || text.contains('%') {
        Some(percent_encoding::percent_decode_str(text).collect::<Vec<u8>>())
    } else {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        if raw.starts_with(b"-----BEGIN") {
            Some(raw)
        } else {
            return (raw.first() == Some(&0x30)).then(|| CertificateDer::from(raw));
        }
    };
    let pem_text = pem_text?;
    let mut certs = CertificateDer::pem_slice_iter(&pem_text);
    match (certs.next(), certs.next()) {
        // A certificate is a DER SEQUENCE; anything else is refused before webpki sees it.
        (Some(Ok(c)), None) if c.first() == Some(&0x30) => Some(c.into_owned()),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    /// An issued token names its consumer by name, team and origin: after a team admin's
    /// consumer is gone and the operator's of another team takes its name, the old token is
    /// nobody's.
    #[test]
    fn an_issued_token_does_not_pass_to_the_next_holder_of_its_name() {
        struct Issued(IssuedTo);
        impl IssuedTokens for Issued {
            fn consumer(&self, _: &str, _: SystemTime) -> Option<Option<IssuedTo>> {
                Some(Some(self.0.clone()))
            }
        }
        let mut policy = crate::policy::Policy::default();
        policy.consumers.push(crate::policy::Consumer {
            name: "payments-gw".into(),
            team: "payments".into(),
            cert_sha256: vec![crate::policy::Pin {
                sha256: [7; 32],
                not_before: None,
                not_after: None,
            }],
            issuer_ca: None,
            issuer_certs: Vec::new(),
            subject: None,
            token_sha256: None,
            approle: None,
            jwt: None,
            kubernetes: None,
            ccp_app_ids: Vec::new(),
            admin: false,
            admin_teams: Vec::new(),
            vault_api_host: None,
            origin: crate::policy::Origin::File,
            identity_profile: None,
            renewed: crate::policy::Renewed::default(),
        });
        let snapshot = Arc::new(Snapshot::new(policy));
        let mut headers = HeaderMap::new();
        headers.insert("x-vault-token", "kbv1.issued".parse().unwrap());
        let presented = Presented {
            door: Door::VaultApi,
            peer: None,
            certificate: None,
            verifier: None,
            headers: &headers,
        };
        let with = |to: IssuedTo| Authenticator {
            issued: Some(Arc::new(Issued(to))),
            ..Authenticator::default()
        };
        let fraud_made = IssuedTo {
            consumer: "payments-gw".into(),
            team: "fraud".into(),
            origin: crate::policy::Origin::Api,
            login: "cert".into(),
        };
        assert_eq!(
            with(fraud_made.clone())
                .authenticate(&snapshot, presented)
                .map(|_| ())
                .unwrap_err(),
            AuthError::UnknownToken
        );
        let its_own = IssuedTo {
            login: Login::of_pin(&[7; 32]),
            ..fraud_made.clone()
        };
        let its_own = IssuedTo {
            team: "payments".into(),
            origin: crate::policy::Origin::File,
            ..its_own
        };
        assert!(
            with(its_own.clone())
                .authenticate(&snapshot, presented)
                .is_ok()
        );
        // Another pin's login (one since removed): nobody's.
        let removed_pin = IssuedTo {
            login: Login::of_pin(&[8; 32]),
            ..its_own
        };
        assert_eq!(
            with(removed_pin)
                .authenticate(&snapshot, presented)
                .map(|_| ())
                .unwrap_err(),
            AuthError::UnknownToken
        );
    }
}
