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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use secrecy::SecretString;
use serde::Deserialize;

use super::fields::FieldValue;
use super::{Outage, ReadFuture, ReadRequest, SecretSource, SourceError, SourceKind, VaultSource};
use crate::config::{PkiProfile, PkiSourceConfig};
use crate::secret::{Secret, SecretMeta};

#[derive(Debug)]
pub struct PkiSource {
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

impl PkiSource {
    pub fn new(cfg: &PkiSourceConfig, vault: Arc<VaultSource>) -> Self {
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
        let mut body = serde_json::json!({ "common_name": profile.common_name });
        let join = |v: &[String]| v.join(",");
        if let Some(ttl) = profile.ttl {
            body["ttl"] = format!("{}s", ttl.0.as_secs()).into();
        }
        for (key, list) in [
            ("alt_names", &profile.alt_names),
            ("ip_sans", &profile.ip_sans),
            ("uri_sans", &profile.uri_sans),
        ] {
            if !list.is_empty() {
                body[key] = join(list).into();
            }
        }
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
