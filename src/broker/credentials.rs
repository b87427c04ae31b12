//! Named credentials (`/v1/credentials…`): what a caller may see, a credential's metadata, and
//! its material. The policy decides first (visibility, then `allowed_hosts` for material);
//! the references of the credential are then read through the same cache and PEM stage as a
//! document's. A consumer is told the same thing for a credential it may not see and for
//! one that does not exist.

use super::verdict::Phase;
use std::collections::BTreeMap;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{AuditEntry, Broker, Caller, pick, source_reason};
use crate::audit::{Action, Outcome};
use crate::pem::credential::{Parts, Rejection};
use crate::pem::{self, BlockFacts, RepairKind};
use crate::policy::{
    Credential, CredentialMode, CredentialValues, Destination, Policy, ReadAccess,
};
use crate::reference::{Reason, Reference, Resolved};
use crate::secret::secret_string;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not allowed — or not there: the two are never told apart for a consumer. The
    /// policy's reason code goes to the audit trail, not to the caller.
    #[error("denied by policy")]
    Denied(crate::policy::DecisionReason),
    /// No credential of that name is visible (metadata; for consumers also "not allowed").
    #[error("no such credential")]
    NotFound,
    /// The operator named a credential several teams define.
    #[error("several teams define this credential; ask as a consumer of one of them")]
    Ambiguous,
    /// Its values could not be read or were rejected, by role.
    #[error("the credential's values could not be resolved")]
    Unresolved(Vec<RoleError>),
    /// Its values were read, but do not make a usable mTLS credential together (a key that is
    /// not the leaf's, a CA or expired leaf, a chain that does not reach the root…).
    #[error("the credential was refused by verification: {}: {}", .0.role, .0.code)]
    Rejected(Rejection),
    #[error(transparent)]
    AuditUnavailable(#[from] crate::broker::AuditRefused),
    /// No credential was named, and not exactly one the caller may see fits the destination
    /// (the egress proxy's choice).
    #[error("name the credential: none, or more than one, fits this destination")]
    NoneFits(crate::policy::DecisionReason),
}

/// PEM repairs applied to one value of a credential.
#[derive(Clone, Debug, Serialize)]
pub struct RoleRepair {
    pub role: &'static str,
    pub field: String,
    pub repairs: Vec<RepairKind>,
}

/// One value of a credential that failed.
#[derive(Clone, Debug, Serialize)]
pub struct RoleError {
    pub role: &'static str,
    #[serde(serialize_with = "reason_code")]
    pub reason: Reason,
}

fn reason_code<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.code())
}

/// A line of `GET /v1/credentials`.
#[derive(Clone, Debug, Serialize)]
pub struct CredentialSummary {
    pub name: String,
    pub team: String,
    pub mode: CredentialMode,
    pub read_access: ReadAccess,
    pub allowed_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `file` (a policy file) or `api` (the management store).
    pub origin: crate::policy::Origin,
}

/// `GET /v1/credentials/{name}`: the summary plus facts read from the source (never values).
#[derive(Clone, Debug, Serialize)]
pub struct CredentialInfo {
    #[serde(flatten)]
    pub summary: CredentialSummary,
    pub metadata: BTreeMap<String, String>,
    /// `ok`; `rejected` when the values were read but verification refused the credential
    /// (see `rejected`); else the reason code of the first value that could not be read.
    pub status: &'static str,
    /// Why verification refused the credential: the role at fault and the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    /// When the client certificate (mtls) expires, RFC 3339 (also in `certificate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Facts of the client certificate (mtls), e.g. `sha256`, `not_after`, `days_left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<BlockFacts>,
    pub repairs: Vec<RoleRepair>,
    pub stale: bool,
    /// What the reader should know (e.g. a root bundle that is also the upstream's trust and
    /// holds CAs the client chain does not rest on: their fingerprints).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The CAs of a root bundle that is also the upstream's trust (no `upstream_ca`) and that the
/// client chain does not rest on, as a warning.
fn mixed_bundle(values: &[RoleValue]) -> Vec<String> {
    if values.iter().any(|v| v.role == "upstream_ca") {
        return Vec::new();
    }
    let (Some(certificate), Some(root)) = (
        role_text(values, "client_certificate"),
        role_text(values, "root_certificate"),
    ) else {
        return Vec::new();
    };
    let loose = pem::credential::unanchoring_roots(&certificate, &root);
    if loose.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "root_certificate is also the upstream's trust and holds CAs the client chain does not rest on (sha256 {}): give the upstream's CA as upstream_ca",
        loose.join(", ")
    )]
}

/// The values of a credential, by answer field, with facts about them.
#[derive(Debug)]
pub(crate) struct Material {
    pub credential: String,
    pub mode: CredentialMode,
    /// `certificate`, `private_key`, `ca` (mtls), `value` (text) or the secret's fields.
    pub values: Vec<(String, SecretString)>,
    pub metadata: MaterialMetadata,
    /// Asked for with `include_next`, and the credential's source rotates on a schedule:
    /// the values that take over at `not_before` (staged rotation).
    pub next: Option<NextMaterial>,
}

/// The next values of a credential and when they take over; verified as a whole like the
/// current ones.
#[derive(Debug)]
pub(crate) struct NextMaterial {
    pub values: Vec<(String, SecretString)>,
    pub not_before: std::time::SystemTime,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct MaterialMetadata {
    pub stale: bool,
    pub repairs: Vec<RoleRepair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<BlockFacts>,
}

/// The read one role of a credential needs.
type RoleKey = Result<super::ReadKey, Reason>;

/// The answer's fields of `values` (every role read and usable).
fn answer_values(values: &[RoleValue]) -> Vec<(String, SecretString)> {
    let mut out = Vec::new();
    // With `upstream_ca`, it alone is the upstream's trust (`ca`); `root_certificate` then
    // only anchors the client chain and is not handed out as a trust.
    let split = values.iter().any(|v| v.role == "upstream_ca");
    for v in values {
        if split && v.role == "root_certificate" {
            continue;
        }
        let Ok(Ok(resolved)) = v.fetched.as_ref().map(|f| pick(&v.reference, &f.secret)) else {
            continue; // not reached: role_errors found none
        };
        match resolved {
            Resolved::Value(s) => out.push((
                answer_field(v.role).to_owned(),
                secret_string(s.expose_secret()),
            )),
            Resolved::Whole(secret) => out.extend(
                secret
                    .fields()
                    .map(|(k, s)| (k.to_owned(), secret_string(s.expose_secret()))),
            ),
        }
    }
    out
}

/// Where a role's value goes in a material answer.
fn answer_field(role: &str) -> &str {
    match role {
        "client_certificate" => "certificate",
        "client_private_key" => "private_key",
        "root_certificate" | "upstream_ca" => "ca",
        other => other,
    }
}

fn summary(c: &Credential) -> CredentialSummary {
    CredentialSummary {
        name: c.name.clone(),
        team: c.team.clone(),
        mode: c.mode,
        read_access: c.read_access,
        allowed_hosts: c.allowed_hosts.iter().map(ToString::to_string).collect(),
        description: c.description.clone(),
        origin: c.origin,
    }
}

/// What one role of a credential resolved to.
pub(super) struct RoleValue {
    role: &'static str,
    reference: Reference,
    fetched: Result<crate::cache::Fetched, Reason>,
}

impl Broker {
    /// The credentials `caller` may see (own team's, GLOBAL ones, those shared with it).
    pub async fn list_credentials(
        &self,
        caller: &Caller,
    ) -> Result<Vec<CredentialSummary>, CredentialError> {
        let snapshot = self.snapshot(caller);
        let policy = snapshot.policy();
        let mut names: Vec<&str> = policy.credentials.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let out: Vec<CredentialSummary> = names
            .into_iter()
            .filter_map(|n| visible(policy, caller, n).ok())
            .map(summary)
            .collect();
        self.audit(AuditEntry::new(
            Action::CredentialsList,
            Some(caller),
            Outcome::Allowed,
            "allowed",
            Instant::now(),
        ))
        .await
        .map_err(CredentialError::from)?;
        Ok(out)
    }

    /// Metadata of one credential: its policy entry and facts of its values.
    pub async fn credential_info(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<CredentialInfo, CredentialError> {
        let started = Instant::now();
        let snapshot = self.snapshot(caller);
        let policy = snapshot.policy();
        let result = match visible(policy, caller, name) {
            Err(e) => Err(e),
            Ok(cred) => {
                let values = self.read_roles(cred, super::read::team_of(caller)).await;
                let (repairs, stale, certificate) = facts(cred, &values);
                let (unread, rejected) = match self.usable(cred, &values, Phase::Current).await {
                    Err(CredentialError::Rejected(r)) => (None, Some(r)),
                    Err(CredentialError::Unresolved(e)) => {
                        (e.first().map(|r| r.reason.code()), None)
                    }
                    _ => (None, None),
                };
                let status = match (unread, rejected) {
                    (Some(code), _) => code,
                    (None, Some(_)) => "rejected",
                    (None, None) => "ok",
                };
                Ok(CredentialInfo {
                    summary: summary(cred),
                    metadata: cred.metadata.clone(),
                    status,
                    rejected,
                    not_after: certificate.as_ref().and_then(|c| c.not_after.clone()),
                    certificate,
                    repairs,
                    stale,
                    warnings: mixed_bundle(&values),
                })
            }
        };
        let (decision, reason) = outcome(&result);
        self.audit(AuditEntry {
            subjects: vec![name.to_owned()],
            ..AuditEntry::new(
                Action::CredentialMetadata,
                Some(caller),
                decision,
                reason,
                started,
            )
        })
        .await
        .map_err(CredentialError::from)?;
        result
    }

    async fn material_unaudited(
        &self,
        policy: &Policy,
        caller: &Caller,
        name: &str,
        host: Option<&Destination>,
        include_next: bool,
    ) -> Result<Material, CredentialError> {
        let cred = decided(policy, caller, name, host)?;
        let team = super::read::team_of(caller);
        let now = std::time::SystemTime::now();
        let current = cred.values_at(now);
        // The keys read, once: the next version is the one after the version read (a period
        // may end in between). What the next values are is settled before the read takes
        // them: a rotation staged in the definition first, else a scheduled source's next
        // period.
        let keys = self.role_keys(current);
        let next_plan = if !include_next {
            None
        } else if let Some((staged, activate_at)) = cred.staged(now) {
            Some((staged, self.role_keys(staged), activate_at))
        } else {
            self.next_keys(&keys)
                .map(|(next, not_before)| (current, next, not_before))
        };
        let values = self.read_roles_by(current, team, keys).await;
        self.usable(cred, &values, Phase::Current).await?;
        let out = answer_values(&values);
        // The next values, all or nothing: a caller that asked for them gets them or an
        // error, never the current ones alone as if there were no next.
        let next = match next_plan {
            None => None,
            Some((of, keys, not_before)) => {
                let next = self.read_roles_by(of, team, keys).await;
                self.usable(cred, &next, Phase::Next).await?;
                Some(NextMaterial {
                    values: answer_values(&next),
                    not_before,
                })
            }
        };
        let (repairs, stale, certificate) = facts(cred, &values);
        if let Some(at) = certificate.as_ref().and_then(|c| c.not_after_unix) {
            let kind = crate::metrics::ExpiryKind::Credential;
            self.metrics
                .certificate_expiry(kind, &credential_series(cred), at);
        }
        Ok(Material {
            credential: cred.name.clone(),
            mode: cred.mode,
            values: out,
            metadata: MaterialMetadata {
                stale,
                repairs,
                certificate,
            },
            next,
        })
    }

    /// When every value of a credential comes from a scheduled source: the read of each
    /// role's next version after the one in `current`, and when it takes over (the
    /// earliest).
    fn next_keys(&self, current: &[RoleKey]) -> Option<(Vec<RoleKey>, std::time::SystemTime)> {
        let mut keys = Vec::with_capacity(current.len());
        let mut at: Option<std::time::SystemTime> = None;
        for key in current {
            let (next, when) = self.next_key(key.as_ref().ok()?)?;
            at = Some(at.map_or(when, |a| a.min(when)));
            keys.push(Ok(next));
        }
        Some((keys, at?))
    }

    /// The read each role of `values` needs, in role order.
    fn role_keys(&self, values: &CredentialValues) -> Vec<RoleKey> {
        values.by_role.values().map(|r| self.read_key(r)).collect()
    }

    /// Whether `cred`'s values may be handed out: every role read and accepted by the PEM
    /// stage, then the credential verified as a whole. The outcome is noted (a new refusal is
    /// reported once).
    pub(super) async fn usable(
        &self,
        cred: &Credential,
        values: &[RoleValue],
        phase: Phase,
    ) -> Result<(), CredentialError> {
        let errors = role_errors(cred, values);
        let result = if errors.is_empty() {
            self.verdict(cred, values, phase)
                .await
                .map_err(CredentialError::Rejected)
        } else {
            Err(unresolved(errors))
        };
        self.note_outcome(cred, &result, phase).await;
        result
    }

    /// The whole-credential verification of an mtls credential whose values were all read
    /// (`pem::credential`): made once per cache fill of its values, the clock checked on every
    /// use. Other modes have nothing to verify together.
    async fn verdict(
        &self,
        cred: &Credential,
        values: &[RoleValue],
        phase: Phase,
    ) -> Result<(), Rejection> {
        if cred.mode != CredentialMode::Mtls {
            return Ok(());
        }
        let inputs: Vec<&std::sync::Arc<pem::CheckedSecret>> = values
            .iter()
            .filter_map(|v| v.fetched.as_ref().ok().map(|f| &f.secret))
            .collect();
        let verdict = self.verdicts.get_or_verify(
            phase,
            (&cred.team, &cred.name),
            &cred.values,
            &inputs,
            || {
                let certificate = role_text(values, "client_certificate");
                let private_key = role_text(values, "client_private_key");
                let root = role_text(values, "root_certificate");
                let upstream = role_text(values, "upstream_ca");
                pem::credential::verify(&Parts {
                    certificate: certificate.as_deref().map_or("", String::as_str),
                    private_key: private_key.as_deref().map_or("", String::as_str),
                    root: root.as_deref().map(String::as_str),
                    upstream: upstream.as_deref().map(String::as_str),
                })
            },
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        verdict?.check(now)
    }

    /// How a use of `cred` ended; a refusal that differs from the last one noted is reported:
    /// one WARN, one metric increment (no name), one `credential.rejected` audit event,
    /// whatever the number of requests that see it.
    async fn note_outcome<T>(
        &self,
        cred: &Credential,
        result: &Result<T, CredentialError>,
        phase: Phase,
    ) {
        let outcome = match result {
            Ok(_) => None,
            Err(CredentialError::Rejected(r)) => Some(*r),
            Err(_) => return,
        };
        let Some(r) = outcome else {
            self.verdicts.note(phase, (&cred.team, &cred.name), None);
            return;
        };
        if !self.verdicts.note(phase, (&cred.team, &cred.name), outcome) {
            return;
        }
        // The request's own line is its decision; this is the event.
        self.emit(super::event::Event::Rejected {
            team: &cred.team,
            name: &cred.name,
            next: phase == Phase::Next,
            rejection: r,
        })
        .await;
    }

    /// Reads every role of `cred` through the cache (no grant check: the credential decision
    /// covers its own references).
    ///
    /// Roles in one secret share one read: read separately, a rotation landing between them
    /// could pair the old certificate with the new key.
    pub(super) async fn read_roles(&self, cred: &Credential, team: &str) -> Vec<RoleValue> {
        let values = cred.values_at(std::time::SystemTime::now());
        self.read_roles_by(values, team, self.role_keys(values))
            .await
    }

    /// The roles of `values`, each read with its key of `keys` (in role order).
    async fn read_roles_by(
        &self,
        values: &CredentialValues,
        team: &str,
        keys: Vec<RoleKey>,
    ) -> Vec<RoleValue> {
        let mut out: Vec<RoleValue> = Vec::new();
        let mut read: Vec<(super::ReadKey, Result<crate::cache::Fetched, Reason>)> = Vec::new();
        for ((role, reference), key) in values.by_role.iter().zip(keys) {
            let fetched = match key {
                Err(reason) => Err(reason),
                Ok(key) => match read.iter().find(|(k, _)| *k == key) {
                    Some((_, earlier)) => earlier.clone(),
                    None => {
                        let fetched = self
                            .read_one(key.clone(), team, true)
                            .await
                            .map_err(|e| source_reason(&e));
                        read.push((key, fetched.clone()));
                        fetched
                    }
                },
            };
            out.push(RoleValue {
                role,
                reference: reference.clone(),
                fetched,
            });
        }
        out
    }
}

/// Why each role of `cred` cannot be used, if any: not read, not in the secret, refused by the
/// PEM stage, or (a credential with `pem = "strict"`) needing repair.
fn role_errors(cred: &Credential, values: &[RoleValue]) -> Vec<RoleError> {
    let strict = cred.pem == Some(pem::Mode::Strict);
    values
        .iter()
        .filter_map(|v| {
            let usable = v.fetched.as_ref().map_err(Clone::clone).and_then(|f| {
                if strict && field_repaired(&f.secret.repaired, &v.reference) {
                    return Err(Reason::PemRejected("not_intact"));
                }
                pick(&v.reference, &f.secret).map(|_| ())
            });
            usable.err().map(|reason| RoleError {
                role: v.role,
                reason,
            })
        })
        .collect()
}

/// A credential whose values could not all be used: an outage stays an outage (503, try
/// again); otherwise a value the PEM stage refused makes the credential `rejected`, like a
/// verification failure, with the role and the PEM code.
fn unresolved(errors: Vec<RoleError>) -> CredentialError {
    if errors.iter().any(|e| e.reason.is_outage()) {
        return CredentialError::Unresolved(errors);
    }
    let pem = errors.iter().find_map(|e| match e.reason {
        Reason::PemRejected(code) => Some(Rejection { role: e.role, code }),
        _ => None,
    });
    match pem {
        Some(r) => CredentialError::Rejected(r),
        None => CredentialError::Unresolved(errors),
    }
}

/// The text of `role`'s value (a whole secret: its fields, one after another), if it resolved.
fn role_text(values: &[RoleValue], role: &str) -> Option<zeroize::Zeroizing<String>> {
    let v = values.iter().find(|v| v.role == role)?;
    let fetched = v.fetched.as_ref().ok()?;
    match pick(&v.reference, &fetched.secret).ok()? {
        Resolved::Value(s) => Some(zeroize::Zeroizing::new(s.expose_secret().to_owned())),
        Resolved::Whole(secret) => {
            let mut text = zeroize::Zeroizing::new(String::new());
            for (_, s) in secret.fields() {
                text.push_str(s.expose_secret());
                text.push('\n');
            }
            Some(text)
        }
    }
}

/// The credential `name` as `caller` sees it.
impl super::ask::Want for super::ask::CredentialRead {
    type Answer = Material;
    type Error = CredentialError;
    const ACTION: Action = Action::CredentialMaterial;

    async fn read_unaudited(
        self,
        broker: &Broker,
        caller: &Caller,
        host: Option<&Destination>,
        subjects: &mut Vec<String>,
    ) -> Result<Material, CredentialError> {
        let snapshot = broker.snapshot(caller);
        let policy = snapshot.policy();
        let name = match (self.name, caller, host) {
            (Some(name), _, _) => name,
            // The egress proxy's choice: the one credential whose allowed_hosts fit; then
            // decided below like a named one.
            (None, Caller::Consumer(consumer), Some(dest)) => {
                match policy.credential_for_destination(consumer.name(), dest) {
                    Ok(c) => c.name.clone(),
                    Err(reason) => return Err(CredentialError::NoneFits(reason)),
                }
            }
            (None, _, _) => {
                return Err(CredentialError::NoneFits(
                    crate::policy::DecisionReason::NoCredentialFits,
                ));
            }
        };
        subjects.push(name.clone());
        broker
            .material_unaudited(policy, caller, &name, host, self.next)
            .await
    }

    fn facts(m: &Material) -> super::ask::Facts<'_> {
        let lists = m.metadata.repairs.iter().map(|u| &u.repairs[..]);
        super::ask::Facts {
            repairs: super::repair_names(lists),
            stale: m.metadata.stale,
            serial: m
                .metadata
                .certificate
                .as_ref()
                .and_then(|c| c.serial.as_deref()),
        }
    }

    fn answer_bytes(m: &Material) -> Vec<&[u8]> {
        let next = m.next.as_ref().map_or(&[][..], |n| &n.values[..]);
        m.values
            .iter()
            .chain(next)
            .flat_map(|(k, v)| [k.as_bytes(), v.expose_secret().as_bytes()])
            .collect()
    }
}

impl super::ask::ReadFailure for CredentialError {
    fn outcome(&self) -> (Outcome, &'static str) {
        // The error's own code, but the audit line names the policy's reason, the first
        // value's reason or the verification's code where there is one.
        match self {
            Self::Denied(reason) => (Outcome::Denied, reason.code()),
            Self::NotFound => (Outcome::Denied, self.code()),
            Self::NoneFits(reason) => (Outcome::Failed, reason.code()),
            Self::Unresolved(e) => (
                Outcome::Failed,
                e.first().map_or("unresolved", |r| r.reason.code()),
            ),
            Self::Rejected(r) => (Outcome::Failed, r.code),
            Self::Ambiguous | Self::AuditUnavailable(_) => (Outcome::Failed, self.code()),
        }
    }
}

/// Credential `name` as `caller` may use it at `host`: `read_access` and `allowed_hosts`
/// decided for a consumer; the operator holds the sources' own credentials and, like
/// `resolve` without `--as`, is not held to a destination.
pub(super) fn decided<'p>(
    policy: &'p Policy,
    caller: &Caller,
    name: &str,
    host: Option<&Destination>,
) -> Result<&'p Credential, CredentialError> {
    match caller {
        Caller::Operator => visible(policy, caller, name),
        Caller::Consumer(consumer) => match policy.decide_credential(consumer.name(), name, host) {
            (decision, Some(cred)) if decision.allowed => Ok(cred),
            (decision, _) => {
                tracing::debug!(consumer = %consumer.name(), reason = decision.reason.code(), "credential denied");
                Err(CredentialError::Denied(decision.reason))
            }
        },
    }
}

fn visible<'p>(
    policy: &'p Policy,
    caller: &Caller,
    name: &str,
) -> Result<&'p Credential, CredentialError> {
    match caller {
        Caller::Operator => {
            let mut all = policy.credentials.iter().filter(|c| c.name == name);
            match (all.next(), all.next()) {
                (Some(c), None) => Ok(c),
                (Some(_), Some(_)) => Err(CredentialError::Ambiguous),
                (None, _) => Err(CredentialError::NotFound),
            }
        }
        Caller::Consumer(consumer) => policy
            .visible_credential(consumer.team(), name)
            .map_err(|_| CredentialError::NotFound),
    }
}

fn field_repaired(repaired: &[(String, Vec<RepairKind>)], reference: &Reference) -> bool {
    match reference.field.as_deref() {
        Some(f) => repaired.iter().any(|(name, _)| name == f),
        None => !repaired.is_empty(),
    }
}

/// The series name of a credential in metrics and expiry events: team and name (names are
/// unique only per team).
pub(super) fn credential_series(cred: &Credential) -> String {
    format!("{}/{}", cred.team, cred.name)
}

/// Repairs, staleness and the client certificate's facts of a credential's values.
pub(super) fn facts(
    cred: &Credential,
    values: &[RoleValue],
) -> (Vec<RoleRepair>, bool, Option<BlockFacts>) {
    let mut repairs = Vec::new();
    let mut stale = false;
    let mut certificate = None;
    for v in values {
        let Ok(f) = &v.fetched else { continue };
        stale |= f.stale;
        let field = v.reference.field.as_deref().unwrap_or("Content");
        for (name, kinds) in &f.secret.repaired {
            if v.reference.field.is_none() || name == field {
                repairs.push(RoleRepair {
                    role: v.role,
                    field: name.clone(),
                    repairs: kinds.clone(),
                });
            }
        }
        if v.role == "client_certificate" && cred.mode == CredentialMode::Mtls {
            certificate = f
                .secret
                .facts
                .get(field)
                .and_then(|blocks| blocks.iter().find(|b| b.kind == "certificate"))
                .cloned();
        }
    }
    (repairs, stale, certificate)
}

fn outcome<T>(result: &Result<T, CredentialError>) -> (Outcome, &'static str) {
    match result {
        Ok(_) => (Outcome::Allowed, "allowed"),
        Err(e) => super::ask::ReadFailure::outcome(e),
    }
}
