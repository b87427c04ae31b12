//! `kind = "pki"`: a short-lived client certificate per read, issued by an OpenBao/Vault PKI
//! mount (`<mount>/issue/<role>`) through a vault source's address and token. A reference's
//! path names one of the operator's profiles (`$SECRET_pki:<profile> $KEY_certificate`); the
//! fields are `certificate`, `private_key`, `issuing_ca`, `ca_chain` and `serial_number`.
//!
//! The answer's `ttl` is two thirds of the certificate's remaining life, so the cache keeps
//! one issued certificate per profile (concurrent first uses share one issuance) and its
//! refresh-ahead replaces it at about half to three fifths of its life. The private key goes
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

    async fn issue(&self, profile: &PkiProfile) -> Result<Secret, SourceError> {
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
        tracing::info!(source = %self.name, serial = %d.serial_number, expires = d.expiration, "pki: certificate issued");
        Ok(Secret::new(
            fields,
            SecretMeta {
                // Two thirds of the life left: refreshed well before the end, never served
                // past it from the fresh cache.
                ttl: Some(Duration::from_secs((left * 2 / 3).max(1))),
                ..SecretMeta::default()
            },
        ))
    }
}

impl SecretSource for PkiSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Pki
    }

    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a> {
        Box::pin(async move {
            if request.version.is_some() {
                return Err(SourceError::Unsupported(
                    "an issued certificate has no versions",
                ));
            }
            let profile = self
                .profiles
                .get(request.path.to_string().as_str())
                .ok_or(SourceError::NotFound)?;
            self.issue(profile).await
        })
    }

    fn probe(&self) -> super::ProbeFuture<'_> {
        // Issuing is what the source does; its vault source's probe says whether it can.
        Box::pin(async { Ok(()) })
    }
}
