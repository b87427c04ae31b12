//! The typed single read: one secret by source, path and version, for a door that asks for
//! one secret rather than a document (the Vault API). The same decision, cache, PEM stage and
//! audit line as a document holding one whole-secret reference; no door formats reference
//! text, so no part of a URL can add reference syntax.

use std::time::Instant;

use super::{AuditEntry, AuditRefused, Broker, Caller, ResolveError, source_reason};
use crate::audit::Action;
use crate::policy::Destination;
use crate::reference::{ExpandError, Location, Reason, Reference, Resolved, SecretPath, Target};
use crate::secret::SecretBuf;

/// Which secret to read.
#[derive(Clone, Debug)]
pub struct SecretRead {
    pub source: String,
    pub path: SecretPath,
    pub version: Option<u64>,
}

/// A secret read whole: its fields as one JSON object in a zeroizing buffer.
#[derive(Debug)]
pub struct SecretAnswer {
    pub fields: SecretBuf,
    /// The version the source served (KV v2), when it says.
    pub version: Option<u64>,
    /// Served from the cache past its TTL.
    pub stale: bool,
}

impl Broker {
    /// Reads one whole secret for `caller` towards `host`, deciding and auditing it like
    /// [`Broker::resolve_via`] decides and audits a document.
    pub async fn read_secret(
        &self,
        via: Option<&'static str>,
        caller: &Caller,
        read: SecretRead,
        host: Option<&Destination>,
    ) -> Result<SecretAnswer, ResolveError> {
        let started = Instant::now();
        let ticket = self.announce_audit();
        let reference = Reference {
            target: Target::Secret {
                source: Some(read.source),
                path: read.path,
                version: read.version,
            },
            field: None,
        };
        let result = self.read_unaudited(caller, &reference, host).await;
        let (decision, reason) = super::resolve::outcome(&result);
        let entry = AuditEntry {
            subjects: vec![reference.to_string()],
            host,
            stale: result.as_ref().is_ok_and(|a| a.stale),
            via,
            ticket,
            ..AuditEntry::new(Action::Resolve, Some(caller), decision, reason, started)
        };
        self.audit(entry)
            .await
            .map_err(|AuditRefused| ResolveError::AuditUnavailable)?;
        result
    }

    async fn read_unaudited(
        &self,
        caller: &Caller,
        reference: &Reference,
        host: Option<&Destination>,
    ) -> Result<SecretAnswer, ResolveError> {
        let unresolved = |reason: Reason| ResolveError::Unresolved {
            errors: vec![ExpandError {
                location: Location::Pointer {
                    pointer: String::new(),
                },
                reference: Some(reference.to_string()),
                reason,
            }],
            omitted: 0,
        };
        let snapshot = self.snapshot(caller);
        let key = self
            .plan(snapshot.policy(), caller, reference, host)
            .map_err(unresolved)?;
        let fetched = self
            .read_all(std::slice::from_ref(&key), super::read::team_of(caller))
            .await
            .pop()
            .ok_or(Reason::SourceUnavailable)
            .and_then(|r| r.map_err(|e| source_reason(&e)))
            .map_err(unresolved)?;
        let secret = match super::pick(reference, &fetched.secret).map_err(unresolved)? {
            Resolved::Whole(s) => s,
            // A reference without a field is always answered whole.
            Resolved::Value(_) => return Err(unresolved(Reason::FieldNotFound)),
        };
        let size: usize = secret
            .fields()
            .map(|(k, v)| k.len() + secrecy::ExposeSecret::expose_secret(v).len() + 8)
            .sum();
        let limit = usize::try_from(self.limits.max_answer_bytes.0).unwrap_or(usize::MAX);
        if size > limit {
            return Err(ResolveError::TooLarge { limit });
        }
        let mut fields = SecretBuf::with_capacity(size + 2 + size / 8);
        fields.push_object(secret.fields());
        Ok(SecretAnswer {
            fields,
            version: secret.meta().version.or(key.1.version),
            stale: fetched.stale,
        })
    }
}
