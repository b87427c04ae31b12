//! From a reference to a read: the policy's decision first (for a consumer), then the
//! source and the read, with lengths checked before any source is asked.

use super::{Broker, Caller, ReadKey};
use crate::policy::{Destination, Policy, Subject};
use crate::reference::{Reason, Reference, Target};
use crate::source::ReadRequest;

impl Broker {
    /// The read of `r` for `caller`. For a consumer the policy decides first, on the source
    /// name as written (or the default/CCP source): an unknown source is denied like any
    /// other reference the consumer may not read, so no consumer learns which sources exist
    /// (THREATS row 33).
    pub(super) fn plan(
        &self,
        policy: &Policy,
        caller: &Caller,
        r: &Reference,
        host: Option<&Destination>,
    ) -> Result<ReadKey, Reason> {
        if let Caller::Consumer(c) = caller {
            let source = self.source_of(r).map_err(|_| Reason::Denied)?;
            let request = request_of(r)?;
            authorize(policy, c.name(), source, &request, host)?;
            return self.read_of(source, request);
        }
        self.read_key(r)
    }

    /// The source a reference names, or the default (`$SECRET_` without `<source>:`) or CCP
    /// (`$SAFE_`) source; not checked to exist.
    pub(super) fn source_of<'a>(&'a self, r: &'a Reference) -> Result<&'a str, Reason> {
        self.routes.source_of(&r.target).map_err(|e| match e {
            crate::policy::Unrouted::NoDefaultSource => Reason::NoDefaultSource,
            crate::policy::Unrouted::NoCcpSource => Reason::UnknownSource,
        })
    }

    /// Which source and which read a reference needs (no policy: the operator's view, and
    /// the credentials', whose decision covers their own references).
    pub(super) fn read_key(&self, r: &Reference) -> Result<ReadKey, Reason> {
        let source = self.source_of(r)?;
        self.read_of(source, request_of(r)?)
    }

    fn read_of(&self, source: &str, mut request: ReadRequest) -> Result<ReadKey, Reason> {
        let entry = self.sources.get(source).ok_or(Reason::UnknownSource)?;
        check_lengths(&request.path)?;
        // A signing profile makes no key to read: refused here, before its source is asked
        // (and so before a refusal could pass for the source's answer in `/readyz`).
        if self
            .signers
            .get(source)
            .is_some_and(|pki| pki.csr_rules(&request.path.to_string()).is_some())
        {
            return Err(Reason::Unsupported(
                "a signing profile makes no key: send a CSR to /v1/credentials/{name}/sign",
            ));
        }
        // A scheduled source's "now" is a version: one cache entry per period.
        if request.version.is_none() {
            request.version = entry.source.current_version(&request.path);
        }
        Ok((std::sync::Arc::clone(&entry.name), request))
    }

    /// The read that stages `key`'s next version, and when that version takes over; `None`
    /// for a source without a schedule.
    pub(super) fn next_key(&self, key: &ReadKey) -> Option<(ReadKey, std::time::SystemTime)> {
        let entry = self.sources.get(&*key.0)?;
        let (version, at) = entry.source.next_version(&key.1.path, key.1.version?)?;
        let request = ReadRequest {
            path: key.1.path.clone(),
            version: Some(version),
        };
        Some(((std::sync::Arc::clone(&key.0), request), at))
    }
}

/// The policy's decision for one read by consumer `name`, before anything is read: a denial
/// never depends on whether the secret (or its source) exists.
pub(super) fn authorize(
    policy: &Policy,
    name: &str,
    source: &str,
    request: &ReadRequest,
    host: Option<&Destination>,
) -> Result<(), Reason> {
    let subject = Subject::Reference {
        source,
        path: &request.path,
    };
    let decision = policy.decide(name, subject, host);
    if decision.allowed {
        Ok(())
    } else {
        tracing::debug!(consumer = %name, source = %source, reason = decision.reason.code(), "reference denied");
        Err(Reason::Denied)
    }
}

/// The read a reference asks for (path and version), whatever its source.
pub(super) fn request_of(r: &Reference) -> Result<ReadRequest, Reason> {
    let version = match &r.target {
        Target::Secret { version, .. } => *version,
        Target::Ccp { .. } => None,
    };
    Ok(ReadRequest {
        path: crate::policy::path_of(&r.target).map_err(Reason::Syntax)?,
        version,
    })
}

/// Names longer than any backend takes are the caller's failure, found before any source
/// call (a source would answer ENAMETOOLONG, 414 or a URI error — THREATS row 20).
pub(super) fn check_lengths(path: &crate::reference::SecretPath) -> Result<(), Reason> {
    use crate::source::{MAX_PATH_BYTES, MAX_SEGMENT_BYTES};
    if path.iter().any(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Err(Reason::InvalidReference(
            "a path segment is longer than 255 bytes",
        ));
    }
    let total: usize = path.iter().map(|s| s.len() + 1).sum();
    if total > MAX_PATH_BYTES + 1 {
        return Err(Reason::InvalidReference(
            "the path is longer than 1024 bytes",
        ));
    }
    Ok(())
}
