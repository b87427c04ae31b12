//! The pins of certificates an operator's consumer renewed through its `identity_profile`
//! (`POST /v1/consumers/self/certificates`): one store entry per consumer (kind `identity`,
//! beside its policy file), each pin identifying until the certificate's own end — the old
//! certificate keeps its own end (Gravitee's overlap). Written by keybroker only; the loader
//! attaches them to the consumer while its file names the profile, and management's
//! "identifies no one else" check sees them as any pin.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{ManageError, Manager, lost_race, stored};
use crate::broker::Renewal;
use crate::store::{CertificateRecord, EntryName, Kind, Record, TeamSlug};

#[derive(Default, Serialize, Deserialize)]
struct Definition {
    #[serde(default)]
    identity_pin: Vec<PinBody>,
}

#[derive(Serialize, Deserialize)]
struct PinBody {
    consumer: String,
    team: String,
    fingerprint: String,
    not_after: String,
    root: String,
}

fn rfc3339(unix: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn ended(not_after: &str, now: SystemTime) -> bool {
    crate::policy::rfc3339(not_after).is_none_or(|t| t < now)
}

impl Manager {
    /// Pins `renewal`'s certificate to its consumer until the certificate's end (pins past
    /// their end are dropped from the entry), and reloads; a pin the policy refuses (a
    /// fingerprint someone else pins) is put back and refused.
    pub(crate) async fn pin_renewed(&self, renewal: &Renewal) -> Result<(), ManageError> {
        let store = self.store()?;
        let invalid = |field| ManageError::Invalid {
            field,
            message: "not a name".to_owned(),
        };
        let team = TeamSlug::parse(&renewal.team).map_err(|_| invalid("team"))?;
        let name = EntryName::parse(&renewal.consumer).map_err(|_| invalid("consumer"))?;
        let _one = self.lock.lock().await;
        let previous = stored(store, Kind::Identity, &team, &name)?;
        let now = SystemTime::now();
        let mut def: Definition = match &previous {
            Some((text, _)) => toml::from_str(text)
                .map_err(|_| crate::store::StoreError::Malformed("an identity entry".into()))?,
            None => Definition::default(),
        };
        // A pin another consumer's record holds too would set this entry aside at every
        // load, and with it each renewal after: dropped (that certificate then identifies
        // no one, never the wrong consumer).
        let taken: std::collections::BTreeSet<String> = store
            .records(Kind::Consumer)?
            .into_iter()
            .flat_map(|(_, _, r)| r.certificates)
            .filter(|c| c.revoked_at.is_none())
            .map(|c| c.fingerprint)
            .collect();
        // Renewed from the identity the operator gives the consumer now: pins renewed from
        // an earlier one (a replaced first certificate) go.
        let root = self
            .broker
            .policy()
            .policy()
            .consumers
            .iter()
            .find(|c| c.name == renewal.consumer && c.team == renewal.team)
            .map(crate::policy::Consumer::identity_root)
            .ok_or(ManageError::NotFound)?;
        def.identity_pin.retain(|p| {
            !ended(&p.not_after, now) && !taken.contains(&p.fingerprint) && p.root == root
        });
        let fingerprint = hex::encode(renewal.fingerprint);
        let not_after = rfc3339(renewal.signed.not_after);
        def.identity_pin.push(PinBody {
            consumer: renewal.consumer.clone(),
            team: renewal.team.clone(),
            fingerprint: fingerprint.clone(),
            not_after: not_after.clone(),
            root,
        });
        let mut record = match &previous {
            Some((_, r)) => {
                let mut next = r.clone();
                next.version += 1;
                next.revision += 1;
                next.updated_at = crate::store::now();
                next
            }
            None => Record::first(crate::store::now(), renewal.consumer.clone(), 0),
        };
        // The record lists what the entry pins, nothing more.
        record.certificates.retain(|c| {
            def.identity_pin
                .iter()
                .any(|p| p.fingerprint == c.fingerprint)
        });
        record
            .certificates
            .push(record_of(renewal, fingerprint, not_after));
        let text = toml::to_string(&def).map_err(|e| ManageError::Invalid {
            field: "definition",
            message: e.to_string(),
        })?;
        let before = previous.as_ref().map(|(_, r)| r);
        store
            .commit(Kind::Identity, &team, &name, &text, &record, before)
            .await
            .map_err(|e| lost_race(e, before.is_some()))?;
        let previous = previous.as_ref().map(|(t, r)| (t.as_str(), r));
        self.reload_or_restore(Kind::Identity, &team, &name, &record, previous)
            .await
    }
}

/// The store's record of a renewed certificate: public facts only.
fn record_of(renewal: &Renewal, fingerprint: String, not_after: String) -> CertificateRecord {
    use base64::Engine as _;
    use x509_parser::prelude::FromDer as _;
    let der = x509_parser::pem::parse_x509_pem(renewal.signed.certificate.as_bytes())
        .map(|(_, p)| p.contents)
        .unwrap_or_default();
    let parsed = x509_parser::certificate::X509Certificate::from_der(&der).ok();
    let (subject, issuer, not_before) = parsed.map_or_else(Default::default, |(_, c)| {
        (
            c.subject().to_string(),
            c.issuer().to_string(),
            rfc3339(c.validity().not_before.timestamp()),
        )
    });
    CertificateRecord {
        fingerprint,
        subject,
        issuer,
        not_before,
        not_after,
        starts_at: None,
        ends_at: None,
        added_at: crate::store::now(),
        added_by: renewal.consumer.clone(),
        revoked_at: None,
        certificate: Some(base64::engine::general_purpose::STANDARD.encode(der)),
    }
}
