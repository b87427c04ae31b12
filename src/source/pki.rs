//! `kind = "pki"`: a short-lived client certificate per read, issued by an OpenBao/Vault PKI
//! mount (`<mount>/issue/<role>`) through a vault source's address and token. A reference's
//! path names one of the operator's profiles (`$SECRET_pki:<profile> $KEY_certificate`); the
//! fields are `certificate`, `private_key`, `issuing_ca`, `ca_chain` and `serial_number`.
//!
//! A profile with a `ttl` T rotates on a schedule: time is cut into periods of T/3, and each
//! period's certificate is one version (its number the period's). A read without a version
//! reads the current period's; `include_next` reads the next one's ahead (staged rotation).
//! Either is issued on first use — during its period or the one before — so it is valid for
//! all of its period and at least one more period after it, the overlap a gateway switching
//! late needs. Its cache entry lives until its period ends and is never refreshed ahead, so the
//! certificate staged as next is the one that becomes current. Versions other than the current
//! and the next (and the one that just ended, for a read planned a moment before its end) are
//! refused: no caller can make OpenBao issue more than three certificates per profile per
//! period.
//!
//! A profile without a `ttl` (the role's default) has no schedule: its answer's `ttl` is two
//! thirds of the certificate's remaining life, refreshed ahead like any secret.
//!
//! Concurrent first uses share one issuance (the cache's single flight). The private key goes
//! from the answer into zeroizing fields and nowhere else.
//!
//! A profile with `issue = "sign"` makes no key: a read of it is refused, and [`PkiSource::sign`]
//! has a checked CSR signed (`<mount>/sign/<role>`) with the profile's names and lifetime; the
//! certificate that comes back must carry the CSR's key and the profile's name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use secrecy::SecretString;
use serde::Deserialize;

use super::fields::FieldValue;
use super::{Outage, ReadFuture, ReadRequest, SecretSource, SourceError, SourceKind, VaultSource};
use crate::config::{PkiIssue, PkiProfile, PkiSourceConfig};
use crate::secret::{Secret, SecretMeta};

#[derive(Debug)]
pub(crate) struct PkiSource {
    name: String,
    vault: Arc<VaultSource>,
    mount: String,
    profiles: BTreeMap<String, PkiProfile>,
}

#[derive(Deserialize)]
struct Issued {
    data: IssuedData,
}

#[derive(Deserialize)]
struct IssuedData {
    certificate: FieldValue,
    private_key: FieldValue,
    issuing_ca: FieldValue,
    #[serde(default)]
    ca_chain: Vec<String>,
    serial_number: String,
    /// Unix seconds.
    expiration: i64,
}

/// Whether `cert` is what `profile` gives: its common name alone in the subject, no CA flag,
/// and no alternative name but the profile's (DNS: the common name and `alt_names`; IP:
/// `ip_sans`; URI: `uri_sans`).
fn names_are_the_profiles(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    profile: &PkiProfile,
) -> bool {
    use x509_parser::extensions::GeneralName;
    let cn_ok = {
        let mut cns = cert.subject().iter_common_name();
        matches!((cns.next(), cns.next()), (Some(cn), None) if cn.as_str().ok() == Some(profile.common_name.as_str()))
    };
    let sans_ok = match cert.subject_alternative_name() {
        Ok(None) => true,
        Ok(Some(san)) => san.value.general_names.iter().all(|n| match n {
            GeneralName::DNSName(d) => {
                *d == profile.common_name || profile.alt_names.iter().any(|a| a == d)
            }
            GeneralName::IPAddress(ip) => profile.ip_sans.iter().any(|a| {
                a.parse::<std::net::IpAddr>().is_ok_and(|want| match want {
                    std::net::IpAddr::V4(v) => v.octets().as_slice() == *ip,
                    std::net::IpAddr::V6(v) => v.octets().as_slice() == *ip,
                })
            }),
            GeneralName::URI(u) => profile.uri_sans.iter().any(|a| a == u),
            _ => false,
        }),
        Err(_) => false,
    };
    cn_ok && sans_ok && !cert.is_ca()
}

/// What a profile asks OpenBao for, issuing or signing: its names and lifetime — never a
/// caller's.
fn asked(profile: &PkiProfile) -> serde_json::Value {
    let mut body = serde_json::json!({ "common_name": profile.common_name });
    if let Some(ttl) = profile.ttl {
        body["ttl"] = format!("{}s", ttl.0.as_secs()).into();
    }
    for (key, list) in [
        ("alt_names", &profile.alt_names),
        ("ip_sans", &profile.ip_sans),
        ("uri_sans", &profile.uri_sans),
    ] {
        if !list.is_empty() {
            body[key] = list.join(",").into();
        }
    }
    body
}

#[derive(Deserialize)]
struct SignedAnswer {
    data: SignedData,
}

#[derive(Deserialize)]
struct SignedData {
    certificate: String,
    issuing_ca: String,
    #[serde(default)]
    ca_chain: Vec<String>,
    serial_number: String,
    expiration: i64,
}

/// A certificate signed for a caller's CSR: public material only (the key never left the
/// caller).
#[derive(Clone, Debug)]
pub(crate) struct Signed {
    pub certificate: String,
    pub issuing_ca: String,
    pub ca_chain: String,
    pub serial_number: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl PkiSource {
    pub(crate) fn new(cfg: &PkiSourceConfig, vault: Arc<VaultSource>) -> Self {
        Self {
            name: cfg.name.clone(),
            vault,
            mount: cfg.mount.trim_matches('/').to_owned(),
            profiles: cfg.profiles.clone(),
        }
    }

    /// The rotation period of `profile`: a third of its `ttl` (none without one).
    fn period(profile: &PkiProfile) -> Option<u64> {
        profile.ttl.map(|t| (t.0.as_secs() / 3).max(1))
    }

    fn profile(&self, path: &crate::reference::SecretPath) -> Option<&PkiProfile> {
        self.profiles.get(path.to_string().as_str())
    }

    async fn issue(
        &self,
        profile: &PkiProfile,
        version: Option<u64>,
    ) -> Result<Secret, SourceError> {
        let mut body = asked(profile);
        if let Some(k) = &profile.key_type {
            body["key_type"] = k.clone().into();
        }
        let path = format!("{}/issue/{}", self.mount, profile.role);
        let answer = self
            .vault
            .api(
                reqwest::Method::POST,
                &path,
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        let issued: Issued = serde_json::from_slice(&answer)
            .map_err(|_| SourceError::Unavailable(Outage::UnexpectedAnswer))?;
        let d = issued.data;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
        let left = u64::try_from(d.expiration.saturating_sub(now)).unwrap_or(0);
        let mut fields: BTreeMap<String, SecretString> = BTreeMap::new();
        fields.insert("certificate".to_owned(), d.certificate.0);
        fields.insert("private_key".to_owned(), d.private_key.0);
        fields.insert("issuing_ca".to_owned(), d.issuing_ca.0);
        fields.insert(
            "ca_chain".to_owned(),
            crate::secret::secret_string(&d.ca_chain.join("\n")),
        );
        fields.insert(
            "serial_number".to_owned(),
            crate::secret::secret_string(&d.serial_number),
        );
        let period = version.map_or_else(|| "none".to_owned(), |v| v.to_string());
        tracing::info!(source = %self.name, serial = %d.serial_number, expires = d.expiration, %period, "pki: certificate issued");
        let meta = match (version, Self::period(profile)) {
            // Until its period ends; never refreshed ahead (the staged one stays the one).
            (Some(v), Some(period)) => {
                let now = u64::try_from(now).unwrap_or(0);
                let ends = (v + 1).saturating_mul(period);
                SecretMeta {
                    version: Some(v),
                    ttl: Some(Duration::from_secs(
                        ends.saturating_sub(now).clamp(1, left.max(1)),
                    )),
                    pinned: true,
                    ..SecretMeta::default()
                }
            }
            // Two thirds of the life left: refreshed well before the end, never served past
            // it from the fresh cache.
            _ => SecretMeta {
                ttl: Some(Duration::from_secs((left * 2 / 3).max(1))),
                ..SecretMeta::default()
            },
        };
        // The key came back over the vault source's connections.
        self.vault.carried(meta.ttl);
        Ok(Secret::new(fields, meta))
    }

    /// The rules a CSR for signing profile `name` must follow; `None` when there is no such
    /// signing profile.
    pub(crate) fn csr_rules(&self, name: &str) -> Option<crate::pem::csr::CsrRules<'_>> {
        let p = self
            .profiles
            .get(name)
            .filter(|p| p.issue == PkiIssue::Sign)?;
        Some(crate::pem::csr::CsrRules {
            key_type: p.key_type.as_deref(),
            common_name: &p.common_name,
            names: &p.alt_names,
        })
    }

    /// The signing period of profile `name` (a third of its `ttl`, else an hour): what a
    /// caller's signing budget is counted per.
    pub(crate) fn sign_period(&self, name: &str) -> Duration {
        let period = self
            .profiles
            .get(name)
            .and_then(Self::period)
            .unwrap_or(3600);
        Duration::from_secs(period)
    }

    /// Has `csr` signed under signing profile `name`, with the profile's names and `ttl` (not
    /// the CSR's), and checks that the certificate carries the CSR's key and the profile's
    /// common name before it is answered.
    pub(crate) async fn sign(
        &self,
        name: &str,
        csr: &crate::pem::csr::CheckedCsr,
    ) -> Result<Signed, SourceError> {
        let profile = self
            .profiles
            .get(name)
            .filter(|p| p.issue == PkiIssue::Sign)
            .ok_or(SourceError::NotFound)?;
        let mut body = asked(profile);
        body["csr"] = csr.pem.clone().into();
        body["format"] = "pem".into();
        let path = format!("{}/sign/{}", self.mount, profile.role);
        let answer = self
            .vault
            .api(
                reqwest::Method::POST,
                &path,
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        let unexpected = || SourceError::Unavailable(Outage::UnexpectedAnswer);
        let signed: SignedAnswer = serde_json::from_slice(&answer).map_err(|_| unexpected())?;
        let d = signed.data;
        // What came back is what was asked for: the CSR's key, the profile's name.
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(d.certificate.as_bytes()).map_err(|_| unexpected())?;
        let cert = pem.parse_x509().map_err(|_| unexpected())?;
        if cert.public_key().raw != csr.spki.as_slice() || !names_are_the_profiles(&cert, profile) {
            // Signed, but not what the profile gives (a role that takes names from the CSR
            // and a CSR this check missed): never answered, and revoked at once.
            let revoke = serde_json::json!({ "serial_number": d.serial_number }).to_string();
            let revoked = self
                .vault
                .api(
                    reqwest::Method::POST,
                    &format!("{}/revoke", self.mount),
                    Some(Bytes::from(revoke)),
                )
                .await
                .is_ok();
            tracing::error!(source = %self.name, profile = %name, serial = %d.serial_number, revoked, "pki: the signed certificate is not the profile's (key, names or CA flag); not answered");
            return Err(unexpected());
        }
        tracing::info!(source = %self.name, serial = %d.serial_number, expires = d.expiration, profile = %name, "pki: certificate signed");
        Ok(Signed {
            certificate: d.certificate,
            issuing_ca: d.issuing_ca,
            ca_chain: d.ca_chain.join("\n"),
            serial_number: d.serial_number,
            not_after: d.expiration,
        })
    }

    /// The current period of `profile`, now.
    fn current(profile: &PkiProfile) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(now / Self::period(profile)?)
    }
}

impl SecretSource for PkiSource {
    /// Issued keys came back over the vault source's connections.
    fn close_connections(&self) {
        self.vault.close_connections();
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Pki
    }

    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a> {
        Box::pin(async move {
            let profile = self.profile(&request.path).ok_or(SourceError::NotFound)?;
            if profile.issue == PkiIssue::Sign {
                return Err(SourceError::Unsupported(
                    "a signing profile makes no key: send a CSR to /v1/credentials/{name}/sign",
                ));
            }
            match (request.version, Self::current(profile)) {
                (None, _) => {}
                // The current period's and the next one's — and the one that just ended, for
                // a read planned a moment before its end — nothing else (THREATS row 54).
                (Some(v), Some(now)) if v + 1 >= now && v <= now + 1 => {}
                (Some(_), _) => {
                    return Err(SourceError::Unsupported(
                        "an issued certificate's versions are its period and the next",
                    ));
                }
            }
            self.issue(profile, request.version).await
        })
    }

    fn current_version(&self, path: &crate::reference::SecretPath) -> Option<u64> {
        Self::current(self.profile(path)?)
    }

    fn next_version(
        &self,
        path: &crate::reference::SecretPath,
        current: u64,
    ) -> Option<(u64, std::time::SystemTime)> {
        let profile = self.profile(path)?;
        let next = current + 1;
        let at = std::time::UNIX_EPOCH
            + Duration::from_secs(next.saturating_mul(Self::period(profile)?));
        Some((next, at))
    }

    /// Issuing is what the source does: it answers when the vault it issues through does,
    /// and refuses keybroker's credentials when that vault does (one truth about a source).
    fn probe(&self) -> super::ProbeFuture<'_> {
        self.vault.probe()
    }

    fn self_check(&self) -> super::ProbeFuture<'_> {
        self.vault.self_check()
    }

    /// The vault it issues through, then each profile's role read (`<mount>/roles/<role>`):
    /// the role exists and the token reaches it — without issuing a certificate.
    fn verify(&self) -> super::VerifyFuture<'_> {
        Box::pin(async move {
            let name = &self.name;
            let vault = self.vault.name();
            if let Err(e) = self.vault.probe().await {
                return vec![(
                    false,
                    format!("source {name}: its vault source {vault}: {e}"),
                )];
            }
            let mut out = vec![(
                true,
                format!("source {name}: its vault source {vault} answered"),
            )];
            for (profile, p) in &self.profiles {
                let path = format!("{}/roles/{}", self.mount, p.role);
                let line = match self.vault.api(reqwest::Method::GET, &path, None).await {
                    Ok(_) => (
                        true,
                        format!(
                            "source {name}: profile {profile}: role {path} readable (no certificate issued)"
                        ),
                    ),
                    Err(SourceError::NotFound) => (
                        false,
                        format!("source {name}: profile {profile}: role {path} does not exist"),
                    ),
                    Err(e) => (
                        false,
                        format!(
                            "source {name}: profile {profile}: role {path}: {e} (check --online reads the role; the token needs read on it)"
                        ),
                    ),
                };
                out.push(line);
            }
            out
        })
    }

    fn reads_issue(&self) -> bool {
        true
    }
}
