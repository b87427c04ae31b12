//! Secret sources (docs/DESIGN.md §3): one trait, one implementation per backend.
//!
//! **Boundary:** a source knows how to read one secret from its backend and classify the
//! failure. It knows nothing of references, policy, caching or who is asking.

mod ccp;
mod connections;
mod fields;
pub(crate) use fields::FieldValue;
mod file;
mod http;
mod pki;
mod vault;

use std::future::Future;
use std::pin::Pin;

pub(crate) use ccp::CcpConfigError;
pub use ccp::CcpSource;
/// CCP's query builder and error classification, exported for the fuzz targets and the
/// CCP conformance tests; not an API.
#[doc(hidden)]
pub use ccp::build_query;
pub use ccp::parse_answer as parse_ccp_answer;
pub(crate) use connections::max_age as connection_max_age;
pub use file::FileSource;
pub(crate) use http::is_loopback;
pub(crate) use http::{HttpSetupError, causes as http_causes, client as http_client};
pub(crate) use pki::{PkiSource, Signed};
pub use vault::parse_kv_answer;
pub(crate) use vault::{KvPart, VaultConfigError};
pub use vault::{VaultEnv, VaultSource};

use crate::reference::SecretPath;
use crate::secret::Secret;

/// What to read: a path relative to the source's root or mount, and optionally a version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadRequest {
    pub path: SecretPath,
    pub version: Option<u64>,
}

/// Why a source could not return a secret. Never carries a secret value or backend text
/// that could echo one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The secret (or that version of it) does not exist.
    #[error("not found")]
    NotFound,
    /// The backend refused keybroker's own credentials.
    #[error("access denied by the source")]
    Denied,
    /// The backend could not be reached or answered with a transient failure.
    #[error("source unavailable: {0}")]
    Unavailable(Outage),
    /// The request cannot be served by this kind of source.
    #[error("unsupported by this source: {0}")]
    Unsupported(&'static str),
    /// The backend holds something that is not a valid secret.
    #[error("malformed secret: {0}")]
    Malformed(&'static str),
    /// Several objects match the query (CCP `APPAP227E`).
    #[error("several objects match")]
    Ambiguous,
    /// The caller's reference cannot be served as written: a name too long for the backend,
    /// a path through a file, a URI the backend cannot take, a 4xx answer to the request's
    /// shape. The caller's failure: never retried, never counted against the source.
    #[error("the source cannot serve this reference as written: {0}")]
    Invalid(&'static str),
    /// The backend asked keybroker to slow down (429). Not retried; the source is left alone
    /// for `retry_after` (capped) and not counted as down.
    #[error("the source is rate limiting keybroker")]
    RateLimited {
        retry_after: Option<std::time::Duration>,
    },
}

/// Why a source is unavailable: a closed list, so logs and tests name a case rather than a
/// sentence. Each has a stable `code()` and a sentence for operators (`Display`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outage {
    /// The backend did not answer in time.
    TimedOut,
    /// No connection could be made (refused, no route, DNS, TLS handshake).
    Unreachable,
    /// The backend answered 5xx.
    ServerError,
    /// The backend answered something it should not (a status or body keybroker cannot read).
    UnexpectedAnswer,
    /// The answer ended before its declared length.
    Truncated,
    /// A redirect (never followed).
    Redirected,
    /// keybroker's own circuit breaker: the source failed repeatedly and is left alone.
    CircuitOpen,
    /// The task reading the source failed (panicked or was cancelled).
    ReadTaskFailed,
    FileAccess,
    FileRoot,
    FileRead,
    /// Vault 412: a performance standby has not caught up yet.
    VaultNotConsistent,
    /// Vault 503: sealed or in maintenance.
    VaultSealed,
    /// A Vault cluster between leaders: a standby with no active node to forward to, or a
    /// mount on the new active node not ready yet (answered 400 by Vault).
    VaultNoLeader,
    VaultTokenHeader,
    VaultTokenFile,
    AppRoleCredentials,
    JwtFile,
    /// A login failed a moment ago; the next is not tried before the back-off ends.
    LoginBackoff,
    /// The source refused keybroker's *own* credentials (a Vault token that is invalid or
    /// revoked, a refused login): an outage for every caller, not a caller's denial, and not
    /// something retrying soon will fix (`resolve` exits 77).
    CredentialsRefused,
    /// CCP `APPAP007E`: the provider cannot reach its vault.
    CcpVaultUnreachable,
    /// CCP `APPAP282E`: the password is being changed.
    CcpPasswordChange,
    /// A bare 404 from IIS: most likely a wrong `service_path`.
    CcpBare404,
    /// An HTML error page from the web server in front of CCP.
    CcpErrorPage,
}

impl Outage {
    pub fn code(self) -> &'static str {
        match self {
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::ServerError => "server_error",
            Self::UnexpectedAnswer => "unexpected_answer",
            Self::Truncated => "truncated",
            Self::Redirected => "redirected",
            Self::CircuitOpen => "circuit_open",
            Self::ReadTaskFailed => "read_task_failed",
            Self::FileAccess => "file_access",
            Self::FileRoot => "file_root",
            Self::FileRead => "file_read",
            Self::VaultNotConsistent => "vault_not_consistent",
            Self::VaultSealed => "vault_sealed",
            Self::VaultNoLeader => "vault_no_leader",
            Self::VaultTokenHeader => "vault_token_header",
            Self::VaultTokenFile => "vault_token_file",
            Self::AppRoleCredentials => "approle_credentials",
            Self::JwtFile => "jwt_file",
            Self::LoginBackoff => "login_backoff",
            Self::CredentialsRefused => "credentials_refused",
            Self::CcpVaultUnreachable => "ccp_vault_unreachable",
            Self::CcpPasswordChange => "ccp_password_change",
            Self::CcpBare404 => "ccp_bare_404",
            Self::CcpErrorPage => "ccp_error_page",
        }
    }
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "timed out",
            Self::Unreachable => "unreachable",
            Self::ServerError => "server error",
            Self::UnexpectedAnswer => "unexpected answer",
            Self::Truncated => "answer cut short",
            Self::Redirected => "redirected; redirects are not followed",
            Self::CircuitOpen => "circuit open: the source failed repeatedly",
            Self::ReadTaskFailed => "read task failed",
            Self::FileAccess => "cannot access the secret file",
            Self::FileRoot => "cannot open the file source's root",
            Self::FileRead => "cannot read the secret file",
            Self::VaultNotConsistent => "vault is not yet consistent (412)",
            Self::VaultSealed => "vault sealed or in maintenance (503)",
            Self::VaultNoLeader => "vault cluster between leaders (an election)",
            Self::VaultTokenHeader => "the vault token is not a valid header",
            Self::VaultTokenFile => "cannot read the vault token file",
            Self::AppRoleCredentials => "cannot read the AppRole credentials",
            Self::JwtFile => "cannot read the JWT token file of the vault login",
            Self::LoginBackoff => "vault login failed recently; backing off",
            Self::CredentialsRefused => {
                "the source refused keybroker's own credentials (check VAULT_TOKEN/BAO_TOKEN, token_file, or the login method's role and secret)"
            }
            Self::CcpVaultUnreachable => "ccp cannot reach its vault (APPAP007E)",
            Self::CcpPasswordChange => "password change in progress (APPAP282E)",
            Self::CcpBare404 => "bare 404 from the web server: is service_path right?",
            Self::CcpErrorPage => "ccp web server error page",
        })
    }
}

impl SourceError {
    /// Whether the failure says the source itself is failing (what circuit breakers count
    /// and retries retry). Caller-caused failures and answers of a working backend do not.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// An outage that retrying a moment later cannot fix: keybroker's own credentials refused,
    /// or a configuration the source itself shows to be wrong (CCP's bare 404:
    /// `service_path`). Not retried; an operator has to act.
    pub fn is_permanent_outage(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(Outage::CredentialsRefused | Outage::CcpBare404)
        )
    }
}

/// Longest path segment any source accepts (NAME_MAX of common file systems; Vault and CCP
/// names are shorter in practice). Checked before any source call.
pub(crate) const MAX_SEGMENT_BYTES: usize = 255;
/// Longest whole path (segments and `/`) any source accepts. Checked before any source call.
pub(crate) const MAX_PATH_BYTES: usize = 1024;

/// The kinds of backend keybroker speaks to (defined with the configuration, which names
/// them, so that `config` depends on nothing).
pub(crate) use crate::config::SourceKind;

pub(crate) type ReadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Secret, SourceError>> + Send + 'a>>;

/// A backend that returns secrets. Object-safe so the broker can hold `dyn SecretSource`.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The configured name (`$SECRET_<name>:…`).
    fn name(&self) -> &str;
    fn kind(&self) -> SourceKind;
    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a>;
    /// The start-up check `/readyz` waits for (docs/DESIGN.md §15): Vault logged in and
    /// `sys/health` answered, CCP reachable over TLS, the file tree readable. Reads no secret.
    fn probe(&self) -> ProbeFuture<'_>;
    /// The periodic check that keybroker's own credentials still work (Vault:
    /// `auth/token/lookup-self`), so readiness tells the truth without waiting for a read.
    /// Sources without credentials of their own probe.
    fn self_check(&self) -> ProbeFuture<'_> {
        self.probe()
    }
    /// What `check --online` says of the source, a line per item (`ok` or not), never a value.
    /// It must not change anything at the source: the default is the start-up probe.
    fn verify(&self) -> VerifyFuture<'_> {
        Box::pin(async move {
            match self.probe().await {
                Ok(()) => vec![(true, format!("source {}: answered", self.name()))],
                Err(e) => vec![(false, format!("source {}: {e}", self.name()))],
            }
        })
    }
    /// The source's own background work (Vault: renewing its token while nothing is read),
    /// started once by the server's operations (`app/operations.rs`), never by a constructor.
    fn start(&self) {}
    /// Whether a read makes something new at the source (PKI: a certificate is issued), so
    /// `check --online` does not read it.
    fn reads_issue(&self) -> bool {
        false
    }
    /// For a source whose secrets change on a schedule (PKI: one certificate per rotation
    /// period), the version in force now: a read without a version reads it, so each period
    /// is one cache entry and the next one can be read ahead. `None`: no schedule.
    fn current_version(&self, _path: &crate::reference::SecretPath) -> Option<u64> {
        None
    }
    /// The version after `current` (as read: a period may have ended since) and when it
    /// takes over (staged rotation: `include_next`).
    fn next_version(
        &self,
        _path: &crate::reference::SecretPath,
        _current: u64,
    ) -> Option<(u64, std::time::SystemTime)> {
        None
    }
    /// How long the source's current login token has left (Vault), for
    /// `keybroker_vault_token_ttl_seconds`; `None`: no token, or one that does not expire.
    fn token_ttl(&self) -> Option<std::time::Duration> {
        None
    }
    /// Closes the idle keep-alive connections to the backend (a purge of the source's cache:
    /// their read buffers may still hold what was purged).
    fn close_connections(&self) {}
    /// The names directly under the folder `folder` (segments; empty: the source's root),
    /// as Vault's `LIST` gives them: a secret as its name, a folder as `name/`. At most
    /// `MAX_LIST_ENTRIES`; a missing folder is an empty list. Sources that cannot list
    /// answer `Unsupported` (the default). Called only after the policy says the caller may
    /// read something under `folder` (the broker's `SecretList` read).
    fn list<'a>(&'a self, _folder: &'a [String]) -> ListFuture<'a> {
        Box::pin(async { Err(SourceError::Unsupported("this source cannot list")) })
    }
}

/// Names one `LIST` of a source gives at most (the rest are not listed).
pub(crate) const MAX_LIST_ENTRIES: usize = 1000;

pub(crate) type ListFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<String>, SourceError>> + Send + 'a>>;

pub(crate) type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>>;
pub(crate) type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Vec<(bool, String)>> + Send + 'a>>;
