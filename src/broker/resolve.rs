//! [`Expand`](super::Expand) a document: prepare → plan → read → render, all or nothing.

use super::seen::FirstSeen;
use super::{
    Broker, Caller, Document, ReadKey, RepairUse, Resolution, ResolveError, ResolveMetadata,
    SecretUse, source_reason,
};
use crate::audit::{Action, Outcome};
use crate::cache::Fetched;
use crate::pem::{CheckedSecret, RepairKind};
use crate::policy::Destination;
use crate::reference::{
    Format, Layout, Prepared, Reason, Reference, RenderError, Resolved, Target,
};
use crate::source::SourceError;

impl super::ask::Want for super::ask::Expand {
    type Answer = Resolution;
    type Error = ResolveError;
    const ACTION: Action = Action::Resolve;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Resolution, ResolveError> {
        broker
            .resolve_unaudited(caller, self.document, self.layout, host, subjects)
            .await
    }

    fn facts(r: &Resolution) -> super::ask::Facts<'_> {
        let lists = r.metadata.repairs.iter().map(|u| &u.repairs[..]);
        super::ask::Facts {
            repairs: repair_names(lists),
            stale: r.metadata.stale,
            serial: None,
        }
    }

    fn answer_bytes(r: &Resolution) -> Vec<&[u8]> {
        vec![r.document.as_bytes()]
    }
}

impl super::ask::ReadFailure for ResolveError {
    fn outcome(&self) -> (Outcome, &'static str) {
        outcome_of(self)
    }
}

impl Broker {
    pub(super) async fn resolve_unaudited(
        &self,
        caller: &Caller,
        document: Document,
        layout: Layout,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Resolution, ResolveError> {
        let snapshot = self.snapshot(caller);
        let policy = snapshot.policy();
        let large = match &document {
            Document::JsonValue(_) => false,
            Document::Text { text, .. } => text.len() > LARGE_DOCUMENT,
        };
        let prepared = heavy(large, || match document {
            Document::JsonValue(v) => Prepared::json(v, layout),
            Document::Text { format, text } => match format {
                Format::Json => Prepared::json_text(&text),
                Format::Yaml => Prepared::yaml(&text),
                Format::Text => Prepared::text(&text),
            },
        })?;
        let large = large || prepared.occurrences() > LARGE_OCCURRENCES;
        if prepared.occurrences() > self.limits.max_sites {
            return Err(ResolveError::TooManySites {
                limit: self.limits.max_sites,
            });
        }

        // Each distinct reference is mapped once; each distinct read happens once.
        let mut reads: FirstSeen<ReadKey> = FirstSeen::new();
        let mut references: FirstSeen<&Reference> = FirstSeen::new();
        let mut steps: Vec<Result<usize, Reason>> = Vec::new();
        for (reference, _) in prepared.references_unlocated() {
            if !references.insert(reference).1 {
                continue;
            }
            subjects.push(sized_text(reference));
            let step = self
                .plan(policy, caller, reference, host)
                .map(|key| reads.insert(key).0);
            steps.push(step);
            if reads.len() > self.limits.max_references {
                return Err(ResolveError::TooManyReferences {
                    limit: self.limits.max_references,
                });
            }
        }
        let order = reads.keys();
        // Through the cache; PEM values are repaired and verified before they are cached
        // (docs/DESIGN.md §4), so nothing unverified is ever written.
        let secrets: Vec<Result<Fetched, SourceError>> =
            self.read_all(order, super::read::team_of(caller)).await;
        let lookup = |r: &Reference| -> Result<Resolved<'_>, Reason> {
            let index = references
                .get(&r)
                .map_or(Err(Reason::UnknownSource), |i| steps[i].clone())?;
            let fetched = secrets[index].as_ref().map_err(source_reason)?;
            pick(r, &fetched.secret)
        };
        let limits = crate::reference::RenderLimits {
            max_answer_bytes: usize::try_from(self.limits.max_answer_bytes.0).unwrap_or(usize::MAX),
            max_errors: self.limits.max_errors,
        };
        let document = heavy(large, || prepared.render(&lookup, limits)).map_err(|e| match e {
            RenderError::Unresolved { errors, omitted } => {
                ResolveError::Unresolved { errors, omitted }
            }
            RenderError::TooLarge { limit } => ResolveError::TooLarge { limit },
        })?;
        let mut metadata = ResolveMetadata::default();
        for ((source, req), fetched) in order.iter().zip(&secrets) {
            let checked = fetched.as_ref().ok().map(|f| &*f.secret);
            metadata.stale |= fetched.as_ref().is_ok_and(|f| f.stale);
            metadata.secrets.push(SecretUse {
                source: std::sync::Arc::clone(source),
                path: sized_text(&req.path),
                version: checked
                    .and_then(|c| c.secret.meta().version)
                    .or(req.version),
            });
            for (field, repairs) in checked.map_or(&[][..], |c| &c.repaired[..]) {
                metadata.repairs.push(RepairUse {
                    source: source.to_string(),
                    path: sized_text(&req.path),
                    field: field.clone(),
                    repairs: repairs.clone(),
                });
            }
        }
        Ok(Resolution {
            format: prepared.format(),
            document,
            metadata,
        })
    }
}

/// The audit line's decision and reason for a resolution's result: the failure's class
/// decides whether it was a denial, the first reason names it.
fn outcome_of(e: &ResolveError) -> (Outcome, &'static str) {
    let decision = if e.failure() == super::Failure::Denied {
        Outcome::Denied
    } else {
        Outcome::Failed
    };
    // The error's own code, but an unresolved document names its first reference's reason.
    let reason = match e {
        ResolveError::Unresolved { errors, .. } if decision != Outcome::Denied => {
            errors.first().map_or("unresolved", |e| e.reason.code())
        }
        other => other.code(),
    };
    (decision, reason)
}

/// `value` as text, usually in one allocation (`to_string` starts from an empty string and
/// grows it several times for a reference or a path).
fn sized_text(value: &impl std::fmt::Display) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    // Writing into a `String` cannot fail.
    let _ = write!(out, "{value}");
    out
}

/// The names of the repairs in `lists`, for the audit trail.
pub(super) fn repair_names<'a>(lists: impl Iterator<Item = &'a [RepairKind]>) -> Vec<&'static str> {
    lists.flat_map(|l| l.iter().map(|k| k.code())).collect()
}

/// Documents longer than this are prepared and rendered where they cannot hold up a runtime
/// worker (THREATS row 22: two large requests must not stall `/healthz`) …
const LARGE_DOCUMENT: usize = 64 << 10;
/// … and so are documents with more reference occurrences than this.
const LARGE_OCCURRENCES: usize = 1000;

/// Runs CPU-heavy `work` (when `large`) with the runtime told to move this worker's other
/// tasks elsewhere meanwhile; inline otherwise, and on a current-thread runtime, which has no
/// other worker to move them to.
fn heavy<T>(large: bool, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    // The runtime is asked only for large work: the lookup costs a small request as much as
    // some of its parsing.
    let multi =
        || Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if large && multi() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// The part of a secret a reference asks for; a rejected PEM value is an error, also when
/// it is one field of a whole secret.
pub(super) fn pick<'s>(r: &Reference, checked: &'s CheckedSecret) -> Result<Resolved<'s>, Reason> {
    let field = match (&r.target, r.field.as_deref()) {
        (Target::Secret { .. }, None) => {
            if let Some(e) = checked.rejected.values().next() {
                return Err(Reason::PemRejected(e.code()));
            }
            return Ok(Resolved::Whole(&checked.secret));
        }
        (Target::Ccp { .. }, None) => "Content",
        (_, Some(f)) => f,
    };
    if let Some(e) = checked.rejected.get(field) {
        return Err(Reason::PemRejected(e.code()));
    }
    checked
        .secret
        .field(field)
        .map(Resolved::Value)
        .ok_or(Reason::FieldNotFound)
}
