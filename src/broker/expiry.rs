//! The certificate expiry sweep (docs/DESIGN.md §15): at start and every `[expiry]
//! interval`, every certificate keybroker knows — each mtls credential's client certificate
//! (read as the operator, through the cache), each consumer pin with `not_after`, each
//! `issuer_ca`, the server's own certificate — becomes a series of
//! `keybroker_certificate_expiry_timestamp_seconds{kind,name}`; series of objects that left
//! the policy are removed. A certificate entering `warn_before`, or expiring, writes one audit
//! event (`certificate.expiring`, `certificate.expired`) per change of state. Each mtls
//! credential is also verified as a whole; a refusal is reported (`credential.rejected`) once
//! per change, before any consumer asks for it.
//!
//! The sweep in the background (at start and every `interval`) reads at most
//! [`SWEEP_BURST`] credentials at once, then [`SWEEP_PER_SECOND`] a second, one at a time:
//! ten thousand stored credentials cost their sources a trickle, never a storm, and readiness
//! never waits for it. A credential whose values a source issues (pki) is not read — a read
//! would issue a certificate before any use — unless `[expiry] issue = true`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use x509_parser::prelude::FromDer;

use super::Broker;
use crate::metrics::ExpiryKind;
use crate::policy::CredentialMode;

/// Where a certificate stands against `warn_before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Valid,
    Expiring,
    Expired,
}

/// What the last sweep saw, by series.
#[derive(Debug, Default)]
pub(super) struct ExpiryState(Mutex<HashMap<(ExpiryKind, String), Phase>>);

/// Credentials the background sweep reads before it paces itself.
pub(crate) const SWEEP_BURST: u32 = 100;
/// Credentials the background sweep reads a second past its burst.
pub(crate) const SWEEP_PER_SECOND: u32 = 20;

impl Broker {
    /// One sweep, as fast as its reads go (an operator's reload waits for it); returns how
    /// many certificates it found.
    pub async fn sweep_expiry(&self) -> usize {
        self.sweep_expiry_paced(None).await
    }

    /// One sweep; `pace`: one credential read per tick past the first [`SWEEP_BURST`].
    async fn sweep_expiry_paced(&self, mut pace: Option<tokio::time::Interval>) -> usize {
        let snapshot = self.policy();
        let policy = snapshot.policy();
        let mut found: Vec<(ExpiryKind, String, i64)> = Vec::new();
        let mut read = 0u32;
        for cred in policy
            .credentials
            .iter()
            .filter(|c| c.mode == CredentialMode::Mtls)
        {
            if !self.expiry.issue && self.issuing_source(cred).is_some() {
                continue;
            }
            read += 1;
            if let Some(tick) = pace.as_mut().filter(|_| read > SWEEP_BURST) {
                tick.tick().await;
            }
            let values = self.read_roles(cred, super::read::BACKGROUND).await;
            // A credential that no longer verifies (or never did) is reported by the sweep
            // too, before any consumer asks for it (once per change).
            let _ = self
                .usable(cred, &values, super::verdict::Phase::Current)
                .await;
            let (_, _, certificate) = super::credentials::facts(cred, &values);
            if let Some(at) = certificate.and_then(|c| c.not_after_unix) {
                found.push((
                    ExpiryKind::Credential,
                    super::credentials::credential_series(cred),
                    at,
                ));
            }
        }
        for c in &policy.consumers {
            for pin in &c.cert_sha256 {
                if let Some(at) = pin.not_after.and_then(unix) {
                    let name = format!("{}/{}", c.name, &hex::encode(pin.sha256)[..16]);
                    found.push((ExpiryKind::ConsumerPin, name, at));
                }
            }
            let earliest = c.issuer_certs.iter().filter_map(|der| not_after(der)).min();
            if let Some(at) = earliest {
                found.push((ExpiryKind::IssuerCa, c.name.clone(), at));
            }
        }
        if let Some(at) = self.server_cert.as_deref().and_then(server_not_after) {
            found.push((ExpiryKind::Server, "server".to_owned(), at));
        }
        let n = found.len();
        self.note_expiries(found, true).await;
        n
    }

    /// The expiry of one credential, right after it was written (the management API): a
    /// certificate that expires soon is announced now, not at the next sweep.
    pub async fn sweep_credential(&self, team: &str, name: &str) {
        let snapshot = self.policy();
        let Some(cred) = snapshot
            .policy()
            .credentials
            .iter()
            .find(|c| c.team == team && c.name == name && c.mode == CredentialMode::Mtls)
        else {
            return;
        };
        let values = self.read_roles(cred, super::read::BACKGROUND).await;
        let (_, _, certificate) = super::credentials::facts(cred, &values);
        if let Some(at) = certificate.and_then(|c| c.not_after_unix) {
            let found = vec![(
                ExpiryKind::Credential,
                super::credentials::credential_series(cred),
                at,
            )];
            self.note_expiries(found, false).await;
        }
    }

    /// Notes what was `found` (metrics, and an event for each certificate whose phase
    /// changed); `whole`: it is everything, so what is no longer there is forgotten.
    async fn note_expiries(&self, found: Vec<(ExpiryKind, String, i64)>, whole: bool) {
        let now = unix(SystemTime::now()).unwrap_or(0);
        let warn = i64::try_from(self.expiry.warn_before.0.as_secs()).unwrap_or(i64::MAX);
        let mut events = Vec::new();
        {
            let mut seen = self
                .expiry_state
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut next = if whole { HashMap::new() } else { seen.clone() };
            for (kind, name, at) in &found {
                self.metrics.certificate_expiry(*kind, name, *at);
                let phase = if *at <= now {
                    Phase::Expired
                } else if at.saturating_sub(now) <= warn {
                    Phase::Expiring
                } else {
                    Phase::Valid
                };
                let before = seen.get(&(*kind, name.clone())).copied();
                if phase != Phase::Valid && before != Some(phase) {
                    events.push((phase, *kind, name.clone(), *at));
                }
                next.insert((*kind, name.clone()), phase);
            }
            if whole {
                for (kind, name) in seen.keys() {
                    if !next.contains_key(&(*kind, name.clone())) {
                        self.metrics.forget_certificate(*kind, name);
                    }
                }
            }
            *seen = next;
        }
        for (phase, kind, name, not_after) in events {
            self.emit(super::event::Event::Expiry {
                kind,
                name: &name,
                expired: phase == Phase::Expired,
                not_after,
                now,
            })
            .await;
        }
    }

    /// Sweeps now and then every `[expiry] interval`, while the broker lives.
    pub fn spawn_expiry_sweep(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.expiry.interval.0;
        tokio::spawn(async move {
            loop {
                let Some(broker) = weak.upgrade() else { return };
                let mut pace =
                    tokio::time::interval(std::time::Duration::from_secs(1) / SWEEP_PER_SECOND);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                broker.sweep_expiry_paced(Some(pace)).await;
                drop(broker);
                tokio::time::sleep(every).await;
            }
        });
    }
}

fn unix(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}

fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The first certificate of the server's PEM file (read at each sweep: it may be rotated).
fn server_not_after(path: &std::path::Path) -> Option<i64> {
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .ok()?
        .next()?
        .ok()?;
    not_after(first.as_ref())
}
