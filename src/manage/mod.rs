//! The management plane's one decision point (docs/MANAGEMENT.md): who may create, replace
//! and delete a credential, ingest verification of its material, the store write and the
//! policy reload — all or nothing, one audit line per action, never a value in an answer.
//!
//! Order of a write: authorize (the caller manages the owning team; only a global admin
//! gives `GLOBAL`) → check the input → repair and verify the material as a whole (a refusal
//! writes nothing) → write the material, then the definition (the commit point) → reload the
//! policy (a definition the policy refuses is put back as it was, its material removed) →
//! audit. The material is referenced only from the store, so an API-made credential can
//! never republish a secret outside its team's grants.

use std::collections::BTreeMap;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

mod certificates;
mod consumers;
mod identity;
mod ingest;
mod patch;
mod reads;

use ingest::{Ingested, ingest};
pub(crate) use patch::CredentialPatch;

pub(crate) use consumers::{
    AclInput, ApproleInput, CertificateInput, ConsumerInput, ConsumerPatch, ManagedConsumer,
};

use crate::audit::{Action, Outcome};
use crate::broker::{AuditEntry, Broker, Caller};
use crate::pem::{self, RepairKind};
use crate::policy::{CredentialMode, ReadAccess};
pub(crate) use crate::store::{EntryName, TeamSlug};
use crate::store::{Kind, Record, Store, StoreError};
use std::sync::Arc;

/// A credential as the management API receives it: the definition, and the material by
/// value (never read back).
#[derive(Debug)]
pub struct CredentialInput {
    pub name: EntryName,
    pub team: TeamSlug,
    pub mode: CredentialMode,
    pub client_certificate: Option<SecretString>,
    pub client_private_key: Option<SecretString>,
    pub root_certificate: Option<SecretString>,
    /// The upstream's trust when it differs from `root_certificate` (mtls).
    pub upstream_ca: Option<SecretString>,
    pub value: Option<SecretString>,
    pub read_access: ReadAccess,
    pub shared_team_slugs: Vec<TeamSlug>,
    pub allowed_hosts: Vec<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Tines' own name and folder, kept for the Tines-shaped routes.
    pub display_name: Option<String>,
    pub folder_id: Option<u64>,
    /// A rotation staged for this time: the new material takes over then (`next` until).
    pub activate_at: Option<std::time::SystemTime>,
}

/// What a management answer says of a credential: the definition and the record, never
/// material.
#[derive(Clone, Debug, Serialize)]
pub struct Managed {
    pub name: EntryName,
    pub team: TeamSlug,
    pub mode: CredentialMode,
    pub read_access: ReadAccess,
    pub shared_team_slugs: Vec<TeamSlug>,
    pub allowed_hosts: Vec<String>,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    pub origin: &'static str,
    #[serde(flatten)]
    pub record: Record,
    /// The PEM repairs applied at ingest, by role.
    pub repairs: Vec<RoleRepairs>,
    /// What the caller should know of what was stored (e.g. a root bundle that is also the
    /// upstream's trust and holds CAs the client chain does not rest on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A dry run's answer to "who will be able to read it": consumer, team and why — the
    /// consumers of teams the caller manages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<Reader>,
    /// A dry run's count of the other teams the credential would be shared with: never their
    /// consumers, and never depending on what those teams hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_teams: Option<usize>,
    /// Opaque; changes with every write. `If-Match` on a replace or delete.
    #[serde(skip)]
    pub etag: String,
}

impl Managed {
    /// The answer to a write of `input` as `toml` and `record`.
    fn written(input: &CredentialInput, toml: &str, record: &Record) -> Self {
        Self {
            name: input.name.clone(),
            team: input.team.clone(),
            mode: input.mode,
            read_access: input.read_access,
            shared_team_slugs: input.shared_team_slugs.clone(),
            allowed_hosts: input.allowed_hosts.clone(),
            description: input.description.clone().unwrap_or_default(),
            metadata: input.metadata.clone(),
            origin: "api",
            etag: etag(toml, record),
            record: shown(record),
            repairs: Vec::new(),
            warnings: Vec::new(),
            readers: Vec::new(),
            other_teams: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Reader {
    pub consumer: String,
    pub team: String,
    /// `team`, `global` or `shared`.
    pub why: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleRepairs {
    pub role: &'static str,
    pub repairs: Vec<RepairKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no [store] is configured: credentials are managed in policy files")]
    NoStore,
    #[error("this caller does not administer team `{0}`")]
    NotAllowed(String),
    #[error("only a global admin may give read_access GLOBAL")]
    GlobalNotAllowed,
    #[error("no such credential in the store")]
    NotFound,
    #[error("a credential of that name already exists for this team")]
    Exists,
    #[error("several teams hold a credential of this name: add ?team=")]
    TeamRequired,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{role}: the PEM value was refused ({code})")]
    PemRejected {
        role: &'static str,
        code: &'static str,
    },
    #[error("the credential was refused by verification: {}: {}", .0.role, .0.code)]
    Rejected(pem::credential::Rejection),
    #[error("the policy refuses this definition")]
    PolicyRefused(Vec<String>),
    /// The team's `[store.quota]` of this (`credentials`, `consumers`, `material_bytes`) is
    /// spent; nothing was written.
    #[error("the team's store quota of {0} is spent")]
    QuotaExceeded(&'static str),
    /// The operator's policy files do not load now: no write can take effect; it was put
    /// back.
    #[error("the policy cannot be reloaded now; nothing was written")]
    PolicyUnavailable,
    /// A deletion is stored but the policy cannot be reloaded now: it takes effect with the
    /// next reload that succeeds.
    #[error(
        "deleted from the store; the policy cannot be reloaded now, so it is still in force until the next reload"
    )]
    ReloadPending,
    #[error("If-Match is required: send the ETag of the credential as you last read it")]
    PreconditionRequired,
    #[error("the credential changed since the ETag given")]
    Stale,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    AuditUnavailable(#[from] crate::broker::AuditRefused),
    /// A consumer certificate that cannot identify anyone here (`code` says why; never the
    /// certificate's text).
    #[error("certificate: {message}")]
    CertificateRejected { code: &'static str, message: String },
    #[error("this certificate already identifies a consumer (or was revoked)")]
    CertificateInUse,
    #[error("this issuer ACL could match a certificate another consumer's ACL matches")]
    AclOverlap,
    /// The certificate (or a certificate the ACL would match) identifies another consumer
    /// by the matcher authentication uses; which one is not said.
    #[error("this identity is claimed by another consumer")]
    IdentityClaimed,
    /// An option keybroker will not pretend to honour (`field` says which, `message` why).
    #[error("{field}: {message}")]
    Unsupported {
        field: &'static str,
        message: &'static str,
    },
}

impl ManageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoStore => "no_store",
            Self::NotAllowed(_) | Self::GlobalNotAllowed => "not_allowed",
            Self::NotFound => "not_found",
            Self::Exists => "exists",
            Self::TeamRequired => "team_required",
            Self::Invalid { .. } => "invalid",
            Self::PemRejected { .. } => "pem_rejected",
            Self::Rejected(_) => "credential_rejected",
            Self::PolicyRefused(_) => "policy_refused",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::PolicyUnavailable => "policy_unavailable",
            Self::ReloadPending => "reload_pending",
            Self::PreconditionRequired => "precondition_required",
            Self::Stale => "stale",
            Self::Store(_) => "store_unavailable",
            Self::AuditUnavailable(_) => crate::broker::Failure::AuditUnavailable.code(),
            Self::CertificateRejected { code, .. } => code,
            Self::CertificateInUse => "certificate_in_use",
            Self::AclOverlap => "acl_overlap",
            Self::IdentityClaimed => "identity_claimed",
            Self::Unsupported { .. } => "unsupported",
        }
    }
}

impl ManageError {
    /// The class of this failure in the one classification every door maps; `None` for the
    /// management plane's own answers (409 exists, 428, 412, and 422 for material or a
    /// definition the caller sent that fails verification — the caller's input, not stored
    /// material failing, which is the class `Rejected`).
    pub fn failure(&self) -> Option<crate::broker::Failure> {
        use crate::broker::Failure as F;
        Some(match self {
            Self::NoStore | Self::NotFound => F::NotFound,
            Self::NotAllowed(_) | Self::GlobalNotAllowed => F::Denied,
            Self::Invalid { .. } | Self::TeamRequired => F::Invalid,
            Self::AuditUnavailable(_) => F::AuditUnavailable,
            Self::PolicyUnavailable | Self::ReloadPending => F::Unavailable,
            // The store's vault: an outage is an outage (retry), its refusal of keybroker's
            // own token is the operator's to fix; anything else is the server's failure.
            Self::Store(StoreError::Remote(e)) => match crate::broker::source_reason(e) {
                crate::reference::Reason::SourceUnavailable => F::Unavailable,
                crate::reference::Reason::SourceCredentialsRefused => F::SourceCredentialsRefused,
                crate::reference::Reason::SourceDenied => F::SourceMisconfigured,
                _ => F::Broken,
            },
            Self::Store(_) => F::Broken,
            Self::Exists
            | Self::CertificateInUse
            | Self::AclOverlap
            | Self::IdentityClaimed
            | Self::Unsupported { .. }
            | Self::CertificateRejected { .. }
            | Self::PreconditionRequired
            | Self::Stale
            | Self::PemRejected { .. }
            | Self::Rejected(_)
            | Self::PolicyRefused(_)
            | Self::QuotaExceeded(_) => return None,
        })
    }
}

/// A write's precondition: the `If-Match` given, and whether one is required (keybroker's
/// routes) or optional (Tines' update sends none: it then applies to the entry as it is when
/// the write runs, under the write lock; a vault store's check-and-set still refuses one that
/// raced another replica).
#[derive(Clone, Copy, Debug)]
pub enum IfMatch<'a> {
    Required(Option<&'a str>),
    Optional(Option<&'a str>),
}

impl IfMatch<'_> {
    /// 428 when one is required and none was given.
    fn given(self) -> Result<(), ManageError> {
        match self {
            Self::Required(None) => Err(ManageError::PreconditionRequired),
            _ => Ok(()),
        }
    }

    /// 412 when one was given and the entry is no longer what it tagged.
    fn check(self, current: &str) -> Result<(), ManageError> {
        self.given()?;
        match self {
            Self::Required(Some(m)) | Self::Optional(Some(m)) if m != current => {
                Err(ManageError::Stale)
            }
            _ => Ok(()),
        }
    }
}

/// The ETag of a stored definition and record.
fn etag(toml: &str, record: &Record) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(toml.as_bytes());
    h.update(serde_json::to_vec(record).unwrap_or_default());
    format!("\"kb-{}\"", &hex::encode(h.finalize())[..24])
}

/// Names become file names and policy names: a slug.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Bounds on what a caller may store (ingest bombs).
const MAX_VALUE_BYTES: usize = 64 << 10;
const MAX_METADATA: usize = 32;
const MAX_METADATA_BYTES: usize = 256;
const MAX_HOSTS: usize = 64;
const MAX_SHARED: usize = 64;

/// The definition the store keeps for `input` at `version`: the policy's own schema, its
/// values references to the store's material.
#[derive(Serialize)]
struct Definition<'a> {
    credential: [DefinitionBody<'a>; 1],
}

#[derive(Serialize)]
struct DefinitionBody<'a> {
    name: &'a str,
    team: &'a str,
    mode: CredentialMode,
    read_access: ReadAccess,
    #[serde(skip_serializing_if = "<[TeamSlug]>::is_empty")]
    shared_team_slugs: &'a [TeamSlug],
    allowed_hosts: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
    #[serde(flatten)]
    values: Refs,
    /// A rotation staged for a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<NextBody>,
}

/// The references of one version's material, by role.
#[derive(Serialize, Default)]
struct Refs {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

#[derive(Serialize)]
struct NextBody {
    activate_at: String,
    #[serde(flatten)]
    values: Refs,
}

/// The management plane: the store, the one write lock, and every management decision —
/// writes and reads alike. Doors (keybroker's and Tines' routes) translate to and from it;
/// it decides, writes, reloads the broker's policy and audits.
#[derive(Debug)]
pub struct Manager {
    broker: Arc<Broker>,
    store: Option<Arc<Store>>,
    /// One management write at a time (each is read-check-write-reload).
    lock: tokio::sync::Mutex<()>,
    /// A shared store's polling: when its last pull succeeded, and how old that may be
    /// before this replica is not ready (set by [`Manager::spawn_store_poll`]).
    polled: std::sync::Mutex<Option<Polled>>,
}

#[derive(Debug, Clone, Copy)]
struct Polled {
    stale_after: std::time::Duration,
    last_ok: Instant,
}

/// A shared store's state as `/readyz` reports it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StoreHealth {
    /// Seconds since the last successful pull.
    pub pulled_seconds_ago: u64,
    /// Older than `[store] stale_after`: this replica may not know of a deletion or a
    /// revocation made on another one, and is not ready.
    pub stale: bool,
}

impl Manager {
    /// The manager of `broker`'s store (none configured: every call answers
    /// [`ManageError::NoStore`]). One per broker: its lock serializes the writes.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            store: broker.store(),
            broker,
            lock: tokio::sync::Mutex::new(()),
            polled: std::sync::Mutex::new(None),
        }
    }

    /// A polled (shared) store's health: `None` without one.
    pub fn store_health(&self) -> Option<StoreHealth> {
        let polled = (*self
            .polled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let ago = polled.last_ok.elapsed();
        Some(StoreHealth {
            pulled_seconds_ago: ago.as_secs(),
            stale: ago > polled.stale_after,
        })
    }

    fn store(&self) -> Result<&Store, ManageError> {
        self.store.as_deref().ok_or(ManageError::NoStore)
    }

    /// Creates a credential (`dry_run`: everything but the write).
    pub async fn create_credential(
        &self,
        caller: &Caller,
        input: CredentialInput,
        dry_run: bool,
    ) -> Result<Managed, ManageError> {
        let work = self.write_credential(caller, &input, None, dry_run);
        let action = if dry_run {
            Action::CredentialDryRun
        } else {
            Action::CredentialCreate
        };
        self.one_write(action, caller, &input.team, &input.name, work)
            .await
    }

    /// Replaces a credential's definition and material (a rotation): `if_match` must be the
    /// ETag of the current one.
    pub async fn replace_credential(
        &self,
        caller: &Caller,
        input: CredentialInput,
        if_match: IfMatch<'_>,
    ) -> Result<Managed, ManageError> {
        let work = async {
            if_match.given()?;
            let store = self.store()?;
            self.authorize(caller, &input.team)?;
            let (toml, record) = stored(store, Kind::Credential, &input.team, &input.name)?
                .ok_or(ManageError::NotFound)?;
            if_match.check(&etag(&toml, &record))?;
            self.write_credential(caller, &input, Some((toml, record)), false)
                .await
        };
        self.one_write(
            Action::CredentialUpdate,
            caller,
            &input.team,
            &input.name,
            work,
        )
        .await
    }

    /// Deletes a credential of the store; with `if_match`, only if it is unchanged.
    pub async fn delete_credential(
        &self,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<&str>,
    ) -> Result<(), ManageError> {
        let work = self.delete_stored(Kind::Credential, caller, team, name, if_match);
        self.one_write(Action::CredentialDelete, caller, team, name, work)
            .await
    }

    /// Deletes an entry of the store (with `if_match`, only if it is unchanged), then
    /// reloads: no door serves a deleted credential, or accepts a deleted consumer, after it.
    async fn delete_stored(
        &self,
        kind: Kind,
        caller: &Caller,
        team: &TeamSlug,
        name: &EntryName,
        if_match: Option<&str>,
    ) -> Result<(), ManageError> {
        let store = self.store()?;
        self.authorize(caller, team)?;
        let (toml, record) = stored(store, kind, team, name)?.ok_or(ManageError::NotFound)?;
        if if_match.is_some_and(|m| m != etag(&toml, &record)) {
            return Err(ManageError::Stale);
        }
        // A consumer's revoked certificates outlive it (tombstones, before the delete: a
        // failure leaves the consumer, never a revocation lost).
        let revoked: Vec<String> = record
            .certificates
            .iter()
            .filter(|c| c.revoked_at.is_some())
            .map(|c| c.fingerprint.clone())
            .collect();
        if !revoked.is_empty() {
            store
                .change_revoked(team, |set| set.extend(revoked))
                .await
                .map_err(|e| lost_race(e, true))?;
        }
        store
            .delete(kind, team, name, &record)
            .await
            .map_err(|e| lost_race(e, true))?;
        // A reload that fails (the operator's files do not load now) keeps the previous
        // policy, which still holds it — say so, with none of the loader's lines (they are the
        // operator's, and name other teams').
        self.broker
            .reload_policy_changed(&[store.definition_file(kind, team, name)])
            .map_err(|_| ManageError::ReloadPending)?;
        Ok(())
    }

    /// A vault store: every `poll`, pulls what other replicas wrote and reloads the policy
    /// when it changed (which wakes blocking queries and agents), while the broker lives.
    pub fn spawn_store_poll(
        self: &Arc<Self>,
        every: std::time::Duration,
        stale_after: std::time::Duration,
    ) {
        *self
            .polled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Polled {
            stale_after,
            last_ok: Instant::now(),
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(broker) = weak.upgrade() else { return };
                broker.pull_store().await;
                drop(broker);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Every `grace` (and once now): removes material no definition references once
    /// `grace` old ([`Store::find_orphans`] then, under the write lock, [`Store::remove_orphans`]), while the broker lives.
    pub fn spawn_orphan_sweep(self: &Arc<Self>, grace: std::time::Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(broker) = weak.upgrade() else { return };
                if let Some(store) = broker.store.as_deref() {
                    // Listed without the lock (O(store) requests); only the candidates are
                    // checked again and removed under it.
                    let found = store.find_orphans(grace).await;
                    let _one = broker.lock.lock().await;
                    let removed = match found {
                        Ok(found) => store.remove_orphans(found, grace).await,
                        Err(e) => Err(e),
                    };
                    match removed {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(removed = n, "store: unreferenced material removed")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store: orphan sweep failed; retrying later")
                        }
                    }
                }
                drop(broker);
                tokio::time::sleep(grace).await;
            }
        });
    }

    /// One pull of a shared store, under the write lock (never beside this replica's own
    /// write). Failures are logged and retried at the next poll; the policy in force stays.
    pub async fn pull_store(&self) {
        let Some(store) = self.store.as_deref().filter(|s| s.is_shared()) else {
            return;
        };
        let _one = self.lock.lock().await;
        match store.pull().await {
            Ok(pulled) => {
                match pulled {
                    crate::store::Pulled::Unchanged => {}
                    crate::store::Pulled::Entries(entries) => {
                        let changed: Vec<_> = entries
                            .iter()
                            .map(|(kind, team, name)| store.definition_file(*kind, team, name))
                            .collect();
                        let _ = self.broker.reload_policy_changed(&changed);
                    }
                    crate::store::Pulled::Everything => {
                        let _ = self.broker.reload_policy();
                    }
                }
                if let Some(p) = self
                    .polled
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_mut()
                {
                    p.last_ok = Instant::now();
                }
                self.broker.metrics().store_pulled();
            }
            Err(e) => tracing::warn!(error = %e, "store: pull failed; retrying at the next poll"),
        }
    }

    /// Runs one management write: alone (one at a time), its intent audited before it, its
    /// outcome after.
    async fn one_write<T>(
        &self,
        action: Action,
        caller: &Caller,
        team: &str,
        name: &str,
        work: impl std::future::Future<Output = Result<T, ManageError>>,
    ) -> Result<T, ManageError> {
        let started = Instant::now();
        // Decided before the lock: a caller who may not manage the team waits behind no one's
        // write, makes no one wait, and leaves one line (denied), no intent.
        if !caller.may_manage(team) {
            let denied = Err(ManageError::NotAllowed(team.to_owned()));
            self.audit_manage(action, caller, team, name, &denied, started)
                .await?;
            return denied;
        }
        let _one = self.lock.lock().await;
        // The intent first: a trail that cannot take it refuses the write before anything is
        // written (fail-closed), and a write that is made is always in the trail.
        self.broker
            .audit(AuditEntry {
                subjects: vec![format!("{team}/{name}")],
                ..AuditEntry::new(action, Some(caller), Outcome::Notice, "intent", started)
            })
            .await
            .map_err(ManageError::from)?;
        let result = work.await;
        // The outcome line. If it cannot be written now, the write stands (its intent is in
        // the trail) and the answer says what happened — not a 503 for a write that was made.
        if let Err(e) = self
            .audit_manage(action, caller, team, name, &result, started)
            .await
        {
            tracing::error!(error = %e, "management: the outcome's audit line was not written; its intent line was");
        }
        result
    }

    /// The store's view of a credential (for `GET` with its ETag), if the store holds it.
    pub fn managed_credential(
        &self,
        team: &TeamSlug,
        name: &EntryName,
    ) -> Result<Option<Managed>, ManageError> {
        let store = self.store()?;
        let Some((toml, record)) = stored(store, Kind::Credential, team, name)? else {
            return Ok(None);
        };
        let snapshot = self.broker.policy();
        let Some(cred) = snapshot
            .policy()
            .credentials
            .iter()
            .find(|c| *team == c.team && *name == c.name)
        else {
            return Ok(None);
        };
        Ok(Some(Managed {
            name: name.clone(),
            team: team.clone(),
            mode: cred.mode,
            read_access: cred.read_access,
            shared_team_slugs: cred
                .shared_team_slugs
                .iter()
                .filter_map(|t| TeamSlug::parse(t).ok())
                .collect(),
            allowed_hosts: cred.allowed_hosts.iter().map(ToString::to_string).collect(),
            description: cred.description.clone().unwrap_or_default(),
            metadata: cred.metadata.clone(),
            origin: "api",
            etag: etag(&toml, &record),
            record: shown(&record),
            repairs: Vec::new(),
            warnings: Vec::new(),
            readers: Vec::new(),
            other_teams: None,
        }))
    }

    /// Every credential of the store, with team and record (the Tines routes list and find
    /// by numeric ID).
    pub fn managed_credentials(&self) -> Result<Vec<Managed>, ManageError> {
        let store = self.store()?;
        let mut out = Vec::new();
        for (team, name, _) in store.records(Kind::Credential)? {
            if let Some(m) = self.managed_credential(&team, &name)? {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.record.id);
        Ok(out)
    }

    fn authorize(&self, caller: &Caller, team: &str) -> Result<(), ManageError> {
        if caller.may_manage(team) {
            Ok(())
        } else {
            Err(ManageError::NotAllowed(team.to_owned()))
        }
    }

    /// A create or a rotation (`previous`: the stored definition and record it replaces):
    /// checked, ingested, written, reloaded — or, for a dry run, everything but the write.
    async fn write_credential(
        &self,
        caller: &Caller,
        input: &CredentialInput,
        previous: Option<(String, Record)>,
        dry_run: bool,
    ) -> Result<Managed, ManageError> {
        let store = self.store()?;
        let snapshot = self.broker.policy();
        let policy = snapshot.policy();
        self.check_write(caller, input, policy, previous.is_some())?;
        let in_force = staged(input, previous.as_ref().map(|(_, r)| r), policy)?;
        let Ingested {
            fields,
            repairs,
            certificate,
            warnings,
        } = ingest(input)?;
        let bytes: u64 = fields
            .iter()
            .map(|(_, v)| v.expose_secret().len() as u64)
            .sum();
        check_quota(store, Kind::Credential, &input.team, &input.name, bytes)?;
        let was = previous.as_ref().map(|(_, r)| r);
        let id = match was {
            Some(r) => r.id,
            None if dry_run => 0,
            None => store.allocate_id().await?,
        };
        let facts = Facts {
            by: who(caller),
            id,
            bytes,
            certificate,
            in_force: in_force.as_ref().map(|(v, _)| *v),
        };
        let record = new_record(input, was, facts);
        let has = |f: &str| fields.iter().any(|(k, _)| *k == f);
        let toml = definition_toml(store, input, record.version, &has, in_force.as_ref())?;
        let managed = Managed {
            repairs,
            warnings,
            ..Managed::written(input, &toml, &record)
        };
        if dry_run {
            return Ok(self::dry_run(policy, caller, input, managed));
        }
        let refs: Vec<(&str, &SecretString)> = fields.iter().map(|(k, v)| (*k, v)).collect();
        let write = crate::store::Write {
            team: &input.team,
            name: &input.name,
            fields: &refs,
            toml: &toml,
            record: &record,
        };
        store
            .write(write, was)
            .await
            .map_err(|e| lost_race(e, was.is_some()))?;
        let previous = previous.as_ref().map(|(t, r)| (t.as_str(), r));
        self.reload_or_restore(
            Kind::Credential,
            &input.team,
            &input.name,
            &record,
            previous,
        )
        .await?;
        // Its certificate's expiry is known now, not at the next sweep (in the background:
        // the answer does not wait for the read).
        if input.mode == CredentialMode::Mtls {
            let broker = Arc::clone(&self.broker);
            let (team, name) = (input.team.to_string(), input.name.to_string());
            tokio::spawn(async move { broker.sweep_credential(&team, &name).await });
        }
        Ok(managed)
    }

    /// Who may write this credential, and whether it may be: the caller manages the team
    /// (a global admin alone gives `GLOBAL`), the input is in bounds, the team is known, and
    /// a create's name is not taken.
    fn check_write(
        &self,
        caller: &Caller,
        input: &CredentialInput,
        policy: &crate::policy::Policy,
        replaces: bool,
    ) -> Result<(), ManageError> {
        self.authorize(caller, &input.team)?;
        if input.read_access == ReadAccess::Global && !caller.may_administer() {
            return Err(ManageError::GlobalNotAllowed);
        }
        check_input(input)?;
        if !policy.teams.iter().any(|t| input.team == *t) {
            return Err(ManageError::Invalid {
                field: "team",
                message: format!("unknown team `{}`", input.team),
            });
        }
        let exists = policy
            .credentials
            .iter()
            .any(|c| c.team == input.team && c.name == input.name);
        if !replaces && exists {
            return Err(ManageError::Exists);
        }
        Ok(())
    }

    /// After a store write: the policy reloaded — or, when it refuses what was written, the
    /// previous definition put back (a bad definition never replaces a good one) and the
    /// loader's lines returned.
    async fn reload_or_restore(
        &self,
        kind: Kind,
        team: &TeamSlug,
        name: &EntryName,
        written: &Record,
        previous: Option<(&str, &Record)>,
    ) -> Result<(), ManageError> {
        let store = self.store()?;
        let file = store.definition_file(kind, team, name);
        let changed = [file.clone()];
        let refused = match self.broker.reload_policy_changed(&changed) {
            // Loaded — unless this very entry was set aside (a policy file defines the name,
            // or it conflicts): then it is the caller's to hear, and only its own lines.
            Ok(_) => {
                let snapshot = self.broker.policy();
                let own: Vec<String> = snapshot
                    .policy()
                    .quarantined
                    .iter()
                    .filter(|d| d.file == file)
                    .map(own_line)
                    .collect();
                if own.is_empty() {
                    return Ok(());
                }
                ManageError::PolicyRefused(own)
            }
            // The operator's files do not load now: nothing of the caller's, and none of the
            // operator's lines are the caller's to read.
            Err(_) => ManageError::PolicyUnavailable,
        };
        store.restore(kind, team, name, written, previous).await?;
        // What was there before is in force again (or nothing, for a create).
        let _ = self.broker.reload_policy_changed(&changed);
        Err(refused)
    }

    async fn audit_manage<T>(
        &self,
        action: Action,
        caller: &Caller,
        team: &str,
        name: &str,
        result: &Result<T, ManageError>,
        started: Instant,
    ) -> Result<(), ManageError> {
        let (decision, reason) = match result {
            Ok(_) => (Outcome::Allowed, "allowed"),
            Err(ManageError::NotAllowed(_) | ManageError::GlobalNotAllowed) => {
                (Outcome::Denied, "not_allowed")
            }
            Err(e) => (Outcome::Failed, e.code()),
        };
        self.broker
            .audit(AuditEntry {
                subjects: vec![format!("{team}/{name}")],
                ..AuditEntry::new(action, Some(caller), decision, reason, started)
            })
            .await
            .map_err(ManageError::from)
    }
}

/// A staged rotation replaces what is in force now at `activate_at`: the version in force,
/// and the roles its material holds (from the policy in force). `None`: in force at once.
fn staged(
    input: &CredentialInput,
    previous: Option<&Record>,
    policy: &crate::policy::Policy,
) -> Result<Option<(u64, Vec<&'static str>)>, ManageError> {
    let (Some(at), previous) = (input.activate_at, previous) else {
        return Ok(None);
    };
    let Some(r) = previous else {
        return Err(ManageError::Invalid {
            field: "activate_at",
            message: "a rotation's; a new credential is in force at once".to_owned(),
        });
    };
    let now = std::time::SystemTime::now();
    if at <= now || at > now + std::time::Duration::from_secs(366 * 86_400) {
        return Err(ManageError::Invalid {
            field: "activate_at",
            message: "in the future, within a year".to_owned(),
        });
    }
    let roles: Vec<&'static str> = policy
        .credentials
        .iter()
        .find(|c| c.team == input.team && c.name == input.name)
        .map(|c| c.values_at(now).by_role.keys().copied().collect())
        .unwrap_or_default();
    Ok(Some((in_force_version(r, now), roles)))
}

/// What a write's record says besides its input: who, the ID, the material's size, its
/// client certificate's facts and the version staying in force (a staged rotation).
struct Facts {
    by: String,
    id: u64,
    bytes: u64,
    certificate: Option<(String, String)>,
    in_force: Option<u64>,
}

/// The record of a write replacing `previous` (none: a create): the next version, its
/// history entry, at most [`crate::store::MAX_HISTORY`] kept.
fn new_record(input: &CredentialInput, previous: Option<&Record>, facts: Facts) -> Record {
    let version = previous.map_or(1, |r| r.version + 1);
    let at = crate::store::now();
    let mut history = previous.map(|r| r.history.clone()).unwrap_or_default();
    let (fingerprint, not_after) = facts.certificate.unzip();
    history.push(crate::store::VersionRecord {
        version,
        at: at.clone(),
        by: facts.by.clone(),
        fingerprint,
        not_after,
    });
    let excess = history.len().saturating_sub(crate::store::MAX_HISTORY);
    history.drain(..excess);
    Record {
        bytes: facts.bytes,
        version,
        revision: previous.map_or(1, |r| r.revision + 1),
        created_at: previous.map_or_else(|| at.clone(), |r| r.created_at.clone()),
        updated_at: at,
        updated_by: facts.by,
        id: facts.id,
        display_name: input.display_name.clone(),
        folder_id: input.folder_id,
        history,
        certificates: Vec::new(),
        current_version: facts.in_force,
        activate_at: input
            .activate_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    }
}

/// The definition (policy TOML) of version `version`, its values references to the store's
/// material for the roles `has` says it holds; a staged rotation keeps `in_force` current
/// until `activate_at`.
fn definition_toml(
    store: &Store,
    input: &CredentialInput,
    version: u64,
    has: &dyn Fn(&str) -> bool,
    in_force: Option<&(u64, Vec<&'static str>)>,
) -> Result<String, ManageError> {
    let refs = |v: u64, has: &dyn Fn(&str) -> bool| {
        let (source, path) = store.reference(&input.team, &input.name, v);
        let r = |field: &str| has(field).then(|| format!("$SECRET_{source}:{path} $KEY_{field}"));
        Refs {
            client_certificate: r("client_certificate"),
            client_private_key: r("client_private_key"),
            root_certificate: r("root_certificate"),
            upstream_ca: r("upstream_ca"),
            value: r("value"),
        }
    };
    let new_refs = refs(version, has);
    let (values, next) = match (input.activate_at, in_force) {
        (Some(at), Some((v, roles))) => (
            refs(*v, &|f| roles.contains(&f)),
            Some(NextBody {
                activate_at: humantime::format_rfc3339_seconds(at).to_string(),
                values: new_refs,
            }),
        ),
        _ => (new_refs, None),
    };
    let definition = Definition {
        credential: [DefinitionBody {
            name: &input.name,
            team: &input.team,
            mode: input.mode,
            read_access: input.read_access,
            shared_team_slugs: &input.shared_team_slugs,
            allowed_hosts: &input.allowed_hosts,
            description: input.description.as_deref(),
            metadata: &input.metadata,
            values,
            next,
        }],
    };
    toml::to_string(&definition).map_err(|e| ManageError::Invalid {
        field: "definition",
        message: e.to_string(),
    })
}

/// A team's room in the store (`[store.quota]`): entries of `kind`, and bytes of material —
/// what is there now, less the entry being replaced, plus what this write adds. A refusal
/// writes nothing.
fn check_quota(
    store: &Store,
    kind: Kind,
    team: &TeamSlug,
    name: &EntryName,
    bytes: u64,
) -> Result<(), ManageError> {
    let quota = store.quota();
    let (mut count, mut held) = (0usize, 0u64);
    for (n, r) in store.team_records(kind, team)? {
        if n != *name {
            count += 1;
            held += r.bytes;
        }
    }
    let max = match kind {
        Kind::Credential => quota.credentials,
        // Identity pins are keybroker's, one entry per operator consumer: no team quota.
        Kind::Consumer | Kind::Identity => quota.consumers,
    };
    if count >= max {
        return Err(ManageError::QuotaExceeded(match kind {
            Kind::Credential => "credentials",
            Kind::Consumer | Kind::Identity => "consumers",
        }));
    }
    if held.saturating_add(bytes) > quota.material_bytes {
        return Err(ManageError::QuotaExceeded("material_bytes"));
    }
    Ok(())
}

/// A loader line about the caller's own entry, as its answer says it: where in the
/// definition and why — never the server's paths or another consumer's name.
fn own_line(d: &crate::diag::Diagnostic) -> String {
    let message = if d.message.contains("already pinned by consumer")
        || d.message.contains("pins this fingerprint too")
    {
        "this fingerprint is already pinned by another consumer".to_owned()
    } else if d.message.contains("has the same token") {
        "another consumer has the same token".to_owned()
    } else {
        d.message.clone()
    };
    format!("line {}: {message}", d.line)
}

/// Another replica wrote first: a create finds the name taken (409), a change or delete
/// finds the credential changed (412).
fn lost_race(e: StoreError, existed: bool) -> ManageError {
    match e {
        StoreError::Conflict if existed => ManageError::Stale,
        StoreError::Conflict => ManageError::Exists,
        other => other.into(),
    }
}

/// A stored credential's definition text and record, when both are there.
fn stored(
    store: &Store,
    kind: Kind,
    team: &TeamSlug,
    name: &EntryName,
) -> Result<Option<(String, Record)>, ManageError> {
    Ok(store
        .definition(kind, team, name)?
        .zip(store.record(kind, team, name)?))
}

fn check_input(input: &CredentialInput) -> Result<(), ManageError> {
    let invalid = |field, message: &str| ManageError::Invalid {
        field,
        message: message.to_owned(),
    };
    if !valid_name(&input.name) {
        return Err(invalid("name", "must match [a-z0-9_-]{1,64}"));
    }
    if !valid_name(&input.team) {
        return Err(invalid("team", "must be a team slug"));
    }
    check_definition(
        Some(&input.metadata),
        Some(&input.allowed_hosts),
        Some(&input.shared_team_slugs),
        input.description.as_deref(),
    )?;
    for (field, v) in [
        ("client_certificate", &input.client_certificate),
        ("client_private_key", &input.client_private_key),
        ("root_certificate", &input.root_certificate),
        ("upstream_ca", &input.upstream_ca),
        ("value", &input.value),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.expose_secret().len() > MAX_VALUE_BYTES)
        {
            return Err(invalid(field, "at most 64 KiB"));
        }
    }
    Ok(())
}

/// The material to store for `input`, each PEM value repaired and an mtls credential
/// verified as a whole; a refusal names the role and a code, never the input.
/// Bounds on a definition's descriptive fields (those given).
fn check_definition(
    metadata: Option<&BTreeMap<String, String>>,
    allowed_hosts: Option<&[String]>,
    shared_team_slugs: Option<&[TeamSlug]>,
    description: Option<&str>,
) -> Result<(), ManageError> {
    let invalid = |field, message: &str| ManageError::Invalid {
        field,
        message: message.to_owned(),
    };
    if metadata.is_some_and(|m| {
        m.len() > MAX_METADATA
            || m.iter()
                .any(|(k, v)| k.len() > MAX_METADATA_BYTES || v.len() > MAX_METADATA_BYTES)
    }) {
        return Err(invalid(
            "metadata",
            "at most 32 entries of at most 256 bytes each",
        ));
    }
    if allowed_hosts.is_some_and(|h| h.len() > MAX_HOSTS) {
        return Err(invalid("allowed_hosts", "at most 64 entries"));
    }
    if shared_team_slugs.is_some_and(|t| t.len() > MAX_SHARED) {
        return Err(invalid("shared_team_slugs", "at most 64 teams"));
    }
    if description.is_some_and(|d| d.len() > 1024) {
        return Err(invalid("description", "at most 1024 bytes"));
    }
    Ok(())
}

/// A record as answers show it: its version history is `…/versions`' alone.
fn shown(record: &Record) -> Record {
    Record {
        history: Vec::new(),
        ..record.clone()
    }
}

/// The material version in force at `now`: the newest, unless a staged one is still
/// waiting for its `activate_at`.
fn in_force_version(r: &Record, now: std::time::SystemTime) -> u64 {
    let at = r.activate_at.as_deref().and_then(crate::policy::rfc3339);
    match (r.current_version, at) {
        (Some(current), Some(at)) if now < at => current,
        _ => r.version,
    }
}

/// Who a record names as the writer.
fn who(caller: &Caller) -> String {
    match caller {
        Caller::Operator => "operator".to_owned(),
        Caller::Consumer(c) => c.name().to_owned(),
    }
}

/// A dry run's answer: who would read the credential — the readers `caller` may see, and how
/// many other teams — and nothing written.
fn dry_run(
    policy: &crate::policy::Policy,
    caller: &Caller,
    input: &CredentialInput,
    managed: Managed,
) -> Managed {
    let shared: Vec<String> = input
        .shared_team_slugs
        .iter()
        .map(ToString::to_string)
        .collect();
    let readers = policy
        .readers(&input.team, &input.name, input.read_access, &shared)
        .into_iter()
        .filter(|(_, team, _)| caller.may_manage(team))
        .map(|(consumer, team, why)| Reader {
            consumer: consumer.to_owned(),
            team: team.to_owned(),
            why,
        })
        .collect();
    let other_teams = policy
        .teams
        .iter()
        .filter(|t| {
            !caller.may_manage(t)
                && match input.read_access {
                    ReadAccess::Team => false,
                    ReadAccess::Global => true,
                    ReadAccess::SpecificTeams => shared.contains(t),
                }
        })
        .count();
    Managed {
        readers,
        other_teams: Some(other_teams),
        ..managed
    }
}
