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
pub(crate) struct SecretRead {
    pub source: String,
    pub path: SecretPath,
    pub version: Option<u64>,
}

/// A secret read whole: its fields as one JSON object in a zeroizing buffer.
#[derive(Debug)]
pub(crate) struct SecretAnswer {
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

/// Source `LIST` calls one listing may make (the folder itself, then the folders below it
/// searched for a secret the caller may read).
const MAX_LIST_CALLS: usize = 64;
/// How deep below the listed folder that search goes.
const MAX_LIST_DEPTH: usize = 8;

/// The names directly under `folder` of `source` that the caller may read towards the
/// destination (the Vault API's `LIST <mount>/metadata/<folder>/`): a secret when a read of it
/// would be allowed; a folder `name/` when it holds, within [`MAX_LIST_DEPTH`] levels and
/// [`MAX_LIST_CALLS`] source calls, a secret the caller may read — so a list reveals no name a
/// read would not. The source is not called at all unless one of the team's grants on it could
/// reach under `folder`; an unknown source, a folder no grant reaches and an empty one answer
/// alike (empty). Answered `None`: the source cannot list.
#[derive(Clone, Debug)]
pub(crate) struct SecretList {
    pub source: String,
    pub folder: Vec<String>,
}

impl super::ask::Want for SecretList {
    type Answer = Option<Vec<String>>;
    type Error = super::Failure;
    const ACTION: Action = Action::SecretsList;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Option<Vec<String>>, super::Failure> {
        subjects.push(format!("{}:{}/", self.source, self.folder.join("/")));
        broker
            .list_unaudited(caller, &self.source, &self.folder, host)
            .await
    }

    fn facts(_: &Option<Vec<String>>) -> super::ask::Facts<'_> {
        super::ask::Facts::default()
    }

    fn answer_bytes(names: &Option<Vec<String>>) -> Vec<&[u8]> {
        names.iter().flatten().map(String::as_bytes).collect()
    }
}

impl super::ask::ReadFailure for super::Failure {
    fn outcome(&self) -> (crate::audit::Outcome, &'static str) {
        (crate::audit::Outcome::Failed, self.code())
    }
}

impl From<super::AuditRefused> for super::Failure {
    fn from(_: super::AuditRefused) -> Self {
        Self::AuditUnavailable
    }
}

impl Broker {
    async fn list_unaudited(
        &self,
        caller: &Caller,
        source: &str,
        folder: &[String],
        host: Option<&Destination>,
    ) -> Result<Option<Vec<String>>, super::Failure> {
        let Caller::Consumer(c) = caller else {
            return Ok(Some(Vec::new()));
        };
        let snapshot = self.snapshot(caller);
        let policy = snapshot.policy();
        let patterns: Vec<&crate::policy::PathPattern> = policy
            .grants
            .iter()
            .filter(|g| g.team == c.team() && g.source == source)
            .flat_map(|g| g.paths.iter())
            .collect();
        let reaches = |f: &[String]| patterns.iter().any(|p| p.may_reach_under(&f.join("/")));
        let readable = |path: &[String]| {
            SecretPath::from_segments(path.iter().map(String::as_str)).is_ok_and(|p| {
                super::plan::check_lengths(&p).is_ok()
                    && policy
                        .decide(
                            c.name(),
                            crate::policy::Subject::Reference { source, path: &p },
                            host,
                        )
                        .allowed
            })
        };
        let Some(entry) = self.sources.get(source).filter(|_| reaches(folder)) else {
            return Ok(Some(Vec::new()));
        };
        let src = &*entry.source;
        let failed = |e: &crate::source::SourceError| super::Failure::of_reason(&source_reason(e));
        let names = match src.list(folder).await {
            Ok(n) => n,
            Err(crate::source::SourceError::Unsupported(_)) => return Ok(None),
            Err(crate::source::SourceError::NotFound) => Vec::new(),
            Err(e) => return Err(failed(&e)),
        };
        let mut calls = 1;
        let mut out = Vec::new();
        for name in names {
            let mut path = folder.to_vec();
            match name.strip_suffix('/') {
                None => {
                    path.push(name.clone());
                    if readable(&path) {
                        out.push(name);
                    }
                }
                Some(sub) => {
                    path.push(sub.to_owned());
                    // Depth-first below this folder, pruned by the grants, until one secret
                    // the caller may read is found or the budget is spent (then: absent).
                    let mut stack = vec![path];
                    let mut found = false;
                    while let Some(f) = stack.pop() {
                        if found || calls >= MAX_LIST_CALLS {
                            break;
                        }
                        if !reaches(&f) || f.len() > folder.len() + MAX_LIST_DEPTH {
                            continue;
                        }
                        calls += 1;
                        let below = match src.list(&f).await {
                            Ok(n) => n,
                            Err(crate::source::SourceError::NotFound) => Vec::new(),
                            Err(e) => return Err(failed(&e)),
                        };
                        for n in below {
                            let mut p = f.clone();
                            match n.strip_suffix('/') {
                                None => {
                                    p.push(n);
                                    if readable(&p) {
                                        found = true;
                                        break;
                                    }
                                }
                                Some(s) => {
                                    p.push(s.to_owned());
                                    stack.push(p);
                                }
                            }
                        }
                    }
                    if found {
                        out.push(name);
                    }
                }
            }
        }
        Ok(Some(out))
    }
}
