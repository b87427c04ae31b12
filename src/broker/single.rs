//! The typed single read: one secret by source, path and version, for a door that asks for
//! one secret rather than a document (the Vault API). The same decision, cache, PEM stage and
//! audit line as a document holding one whole-secret reference; no door formats reference
//! text, so no part of a URL can add reference syntax.

use super::{Broker, Caller, ResolveError, source_reason};
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

impl super::ask::Want for SecretRead {
    type Answer = SecretAnswer;
    type Error = ResolveError;
    const ACTION: Action = Action::Resolve;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<SecretAnswer, ResolveError> {
        let reference = Reference {
            target: Target::Secret {
                source: Some(self.source),
                path: self.path,
                version: self.version,
            },
            field: None,
        };
        subjects.push(reference.to_string());
        broker.read_unaudited(caller, &reference, host).await
    }

    fn facts(answer: &SecretAnswer) -> super::ask::Facts<'_> {
        super::ask::Facts {
            stale: answer.stale,
            ..super::ask::Facts::default()
        }
    }

    fn answer_bytes(answer: &SecretAnswer) -> Vec<&[u8]> {
        vec![answer.fields.as_bytes()]
    }
}

impl Broker {
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
            .map_err(|reason| match reason {
                // One secret that is not there is a typed "not found", not a document's
                // unresolved reference.
                Reason::NotFound => ResolveError::NotFound,
                other => unresolved(other),
            })?;
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
