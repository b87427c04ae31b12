//! The `vault` source: HashiCorp Vault and OpenBao over their HTTP API (docs/DESIGN.md §3).
//!
//! Direct HTTP (reqwest + rustls) rather than vaultrs: keybroker reads the `VAULT_*`
//! environment itself (vaultrs' builder reads it implicitly and treats any
//! `VAULT_SKIP_VERIFY` but `0`/`false` as "skip"), keeps its token in a `SecretString` (vaultrs
//! holds a plain `String` in a `Debug` struct), and needs the lease metadata vaultrs' KV helpers
//! drop. The API surface used is small: KV v1/v2 reads, mount lookup, token lookup/renewal and
//! logins.
//!
//! Tokens: looked up at first use; renewed when two thirds of their TTL have passed (on use
//! and by a background task); a login-based token (AppRole, cert) is replaced by a new login
//! when it cannot be renewed any more (the old one is revoked), and after a 403 only when
//! `lookup-self` says the token itself is no longer valid. Failures are classified on HTTP
//! status by who caused them and never carry a token, a secret or Vault's error text.

use super::Outage;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

use super::fields::{FieldValue, Fields};
use super::http::{HttpSetupError, is_loopback};
use super::{ReadFuture, ReadRequest, SecretSource, SourceError, SourceKind};
use crate::config::{KvVersion, VaultAuth, VaultSourceConfig};
use crate::secret::{Secret, SecretMeta, secret_string};

/// The `VAULT_*` variables, read once by keybroker itself (never by a library).
#[derive(Clone, Debug, Default)]
pub struct VaultEnv {
    pub addr: Option<String>,
    /// Never printed: `Debug` of this struct shows only whether it is set.
    pub token: Option<SecretString>,
    pub namespace: Option<String>,
    pub cacert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `VAULT_SKIP_VERIFY` was set truthy: refused at start, never honoured.
    pub skip_verify: bool,
    pub tls_server_name: Option<String>,
}

impl VaultEnv {
    /// As the vault and bao CLIs read them: `BAO_*` first, then `VAULT_*`.
    pub fn from_process() -> Self {
        let var = |k: &str| {
            [format!("BAO_{k}"), format!("VAULT_{k}")]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        };
        let truthy = |v: Option<String>| {
            v.is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no" | ""))
        };
        Self {
            addr: var("ADDR"),
            token: var("TOKEN").map(|t| secret_string(&Zeroizing::new(t))),
            namespace: var("NAMESPACE"),
            // VAULT_CACERT wins over VAULT_CAPATH (a folder of CA files), as in the CLI.
            cacert: var("CACERT").or_else(|| var("CAPATH")).map(PathBuf::from),
            client_cert: var("CLIENT_CERT").map(PathBuf::from),
            client_key: var("CLIENT_KEY").map(PathBuf::from),
            skip_verify: truthy(var("SKIP_VERIFY")),
            tls_server_name: var("TLS_SERVER_NAME"),
        }
    }
}

/// Why a vault source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VaultConfigError {
    #[error("no address: set `address`, or BAO_ADDR / VAULT_ADDR")]
    NoAddress,
    /// keybroker never turns TLS verification off; the variable is refused rather than
    /// ignored, so nobody believes it took effect.
    #[error(
        "VAULT_SKIP_VERIFY (or BAO_SKIP_VERIFY) is set: keybroker does not turn off TLS verification; give the server's CA in `ca_cert` or VAULT_CACERT instead"
    )]
    SkipVerifyRefused,
    #[error("address {0:?} is not a URL")]
    BadAddress(String),
    #[error("http:// is only allowed to a loopback address (or with insecure_dev = true)")]
    InsecureHttp,
    #[error(transparent)]
    Http(#[from] HttpSetupError),
    #[error("token auth needs BAO_TOKEN / VAULT_TOKEN or token_file")]
    NoToken,
    #[error("tls_server_name {0:?} is not a DNS name")]
    BadServerName(String),
    #[error("tls_server_name is for one address, not a list")]
    ServerNameWithList,
    #[error("tls_server_name needs an https:// address")]
    ServerNameWithoutTls,
    #[error("cannot resolve {0} (resolved once at start when tls_server_name is set)")]
    Unresolvable(String),
}

mod write;
pub(crate) use write::KvPart;

#[derive(Debug)]
pub struct VaultSource {
    name: String,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The source's name, for log lines.
    name: String,
    http: super::connections::Connections,
    /// `address`, one or a list tried in order; `current` is the one that answered last.
    bases: Vec<Url>,
    current: std::sync::atomic::AtomicUsize,
    mount: String,
    namespace: Option<String>,
    configured_kv: KvVersion,
    auth: Auth,
    ttl: Option<Duration>,
    state: Mutex<State>,
    /// When the current token expires, readable without the state lock (metrics).
    token_expires: std::sync::Mutex<Option<Instant>>,
}

#[derive(Debug)]
enum Auth {
    /// A fixed token from the environment.
    Token(SecretString),
    /// A token file, re-read when its modification time changes.
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    Cert {
        mount: String,
        name: Option<String>,
    },
    /// JWT and Kubernetes auth: the same login with a token file read each time.
    Jwt {
        mount: String,
        role: String,
        token_file: PathBuf,
    },
}

#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    kv: Option<u8>,
    token_file_mtime: Option<SystemTime>,
    /// After a failed login: no new attempt before this instant (backoff with jitter), so
    /// an outage or a bad credential does not become a login storm.
    login_not_before: Option<Instant>,
    login_failures: u32,
    /// The last login was refused (not merely failed): while backing off, reads say so.
    login_refused: bool,
    /// When a fixed token was last looked up after a 403, and whether it was valid: at most
    /// one look-up a second, however many denied reads (THREATS row 24).
    token_checked: Option<(Instant, bool)>,
    /// A login-issued token being replaced while it may still be valid; revoked after the
    /// new login succeeds.
    replaced: Option<SecretString>,
}

#[derive(Debug)]
struct Token {
    value: SecretString,
    obtained: Instant,
    /// None: does not expire.
    ttl: Option<Duration>,
    renewable: bool,
}

impl Token {
    fn due_for_renewal(&self) -> bool {
        self.ttl
            .is_some_and(|ttl| self.obtained.elapsed() >= ttl.mul_f64(2.0 / 3.0))
    }
}

impl VaultSource {
    pub fn new(cfg: &VaultSourceConfig, env: &VaultEnv) -> Result<Self, VaultConfigError> {
        let addresses = match &cfg.address {
            Some(list) => list.0.clone(),
            None => vec![env.addr.clone().ok_or(VaultConfigError::NoAddress)?],
        };
        if addresses.is_empty() {
            return Err(VaultConfigError::NoAddress);
        }
        if env.skip_verify {
            return Err(VaultConfigError::SkipVerifyRefused);
        }
        let mut bases = Vec::with_capacity(addresses.len());
        for address in &addresses {
            let mut base =
                Url::parse(address).map_err(|_| VaultConfigError::BadAddress(address.clone()))?;
            if base.scheme() == "http" && !cfg.insecure_dev && !is_loopback(&base) {
                return Err(VaultConfigError::InsecureHttp);
            }
            if !base.path().ends_with('/') {
                let path = format!("{}/", base.path());
                base.set_path(&path);
            }
            bases.push(base);
        }
        let timeout = cfg.timeout.map_or(Duration::from_secs(10), |d| d.0);
        let ca = cfg.ca_cert.as_deref().or(env.cacert.as_deref());
        let cert = cfg.client_cert.as_deref().or(env.client_cert.as_deref());
        let key = cfg.client_key.as_deref().or(env.client_key.as_deref());
        let server_name = cfg
            .tls_server_name
            .clone()
            .or_else(|| env.tls_server_name.clone());
        let pinned = match &server_name {
            None => None,
            Some(_) if bases.len() > 1 => return Err(VaultConfigError::ServerNameWithList),
            Some(name) => Some(pin_server_name(&mut bases[0], name)?),
        };
        let settings = super::http::ClientSettings::load(
            timeout,
            ca,
            cert.zip(key),
            pinned.as_ref().map(|(n, a)| (n.as_str(), a.as_slice())),
        )?;
        let http = super::connections::Connections::new(
            settings,
            super::connections::max_age(cfg.keep_alive.map(|d| d.0), &[cfg.ttl.map(|d| d.0)]),
        )?;
        let auth = auth_of(cfg, env)?;
        Ok(Self {
            name: cfg.name.clone(),
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                http,
                bases,
                current: std::sync::atomic::AtomicUsize::new(0),
                mount: cfg.mount.trim_matches('/').to_owned(),
                namespace: cfg.namespace.clone().or_else(|| env.namespace.clone()),
                configured_kv: cfg.kv_version,
                auth,
                ttl: cfg.ttl.map(|d| d.0),
                state: Mutex::new(State::default()),
                token_expires: std::sync::Mutex::new(None),
            }),
        })
    }
}

/// How the source logs in, from its `auth` (a token from the environment when none is named).
fn auth_of(cfg: &VaultSourceConfig, env: &VaultEnv) -> Result<Auth, VaultConfigError> {
    Ok(match &cfg.auth {
        VaultAuth::Token {
            token_file: Some(f),
        } => Auth::TokenFile(f.clone()),
        VaultAuth::Token { token_file: None } => Auth::Token(
            env.token
                .as_ref()
                .map(|t| secret_string(t.expose_secret()))
                .ok_or(VaultConfigError::NoToken)?,
        ),
        VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
            mount,
        } => Auth::AppRole {
            mount: mount.clone().unwrap_or_else(|| "approle".to_owned()),
            role_id_file: role_id_file.clone().ok_or(VaultConfigError::NoToken)?,
            secret_id_file: secret_id_file.clone().ok_or(VaultConfigError::NoToken)?,
        },
        VaultAuth::Cert { name, mount } => Auth::Cert {
            mount: mount.clone().unwrap_or_else(|| "cert".to_owned()),
            name: name.clone(),
        },
        VaultAuth::Jwt {
            role,
            token_file,
            mount,
        } => Auth::Jwt {
            mount: mount.clone().unwrap_or_else(|| "jwt".to_owned()),
            role: role.clone(),
            token_file: token_file.clone(),
        },
        VaultAuth::Kubernetes {
            role,
            token_file,
            mount,
        } => Auth::Jwt {
            mount: mount.clone().unwrap_or_else(|| "kubernetes".to_owned()),
            role: role.clone(),
            token_file: token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::config::KUBERNETES_TOKEN_FILE)),
        },
    })
}

impl VaultSource {
    /// An answer that came over this source's connections stays cached only `ttl`.
    pub(super) fn carried(&self, ttl: Option<Duration>) {
        self.inner.http.carried(ttl);
    }
}

impl SecretSource for VaultSource {
    fn start(&self) {
        self.spawn_renewer();
    }

    fn close_connections(&self) {
        self.inner.http.close_idle();
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn probe(&self) -> super::ProbeFuture<'_> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.token().await?;
            // 200 active, 429/472/473 standbys: answered. 501 uninitialized, 503 sealed: not.
            let url = inner.url("sys/health?standbyok=true&perfstandbyok=true")?;
            inner.call(reqwest::Method::GET, url, None, None).await?;
            Ok(())
        })
    }

    /// The token looked up (`lookup-self`); an invalid one is dropped and, where the source
    /// can log in, replaced — a refused login or an invalid fixed token is
    /// `CredentialsRefused`.
    fn self_check(&self) -> super::ProbeFuture<'_> {
        Box::pin(async move {
            let inner = &self.inner;
            let token = inner.token().await?;
            match inner.lookup(secret_string(token.expose_secret())).await {
                Ok(_) => Ok(()),
                Err(SourceError::Denied) if inner.can_login() => {
                    inner.drop_if_invalid(&token).await;
                    inner.token().await.map(|_| ())
                }
                Err(SourceError::Denied) => {
                    Err(SourceError::Unavailable(Outage::CredentialsRefused))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Vault
    }

    fn token_ttl(&self) -> Option<Duration> {
        let expires = *self
            .inner
            .token_expires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        expires.map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            self.authorized(|token| async move { inner.read_once(request, &token).await })
                .await
        })
    }

    fn list<'a>(&'a self, folder: &'a [String]) -> super::ListFuture<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            self.authorized(|token| async move { inner.list_once(folder, &token).await })
                .await
        })
    }
}

impl VaultSource {
    /// Runs `once` with the current token, and classifies a 403 — the one place that does,
    /// for reads, the store's calls and PKI issuance alike. A 403 is usually Vault's policy
    /// saying no to this path, which a new login would not change (and a consumer could
    /// repeat at will, THREATS row 24): the caller's denial. But when the token itself is no
    /// longer valid, a source that can log in does so once and runs `once` again; a fixed
    /// token is keybroker's own credentials refused, an outage for everyone
    /// (`CredentialsRefused`), whether it was refused at start or while serving.
    async fn authorized<T, F, Fut>(&self, mut once: F) -> Result<T, SourceError>
    where
        F: FnMut(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        let inner = &self.inner;
        let token = inner.token().await?;
        match once(secret_string(token.expose_secret())).await {
            Err(SourceError::Denied) if inner.can_login() => {
                if !inner.drop_if_invalid(&token).await {
                    return Err(SourceError::Denied);
                }
                once(inner.token().await?).await
            }
            Err(SourceError::Denied) => {
                if inner.fixed_token_valid(&token).await {
                    Err(SourceError::Denied)
                } else {
                    Err(SourceError::Unavailable(Outage::CredentialsRefused))
                }
            }
            other => other,
        }
    }
}

/// Vault's answers, parsed into types at the edge. Secret values go straight into
/// zeroizing strings ([`Fields`], [`FieldValue`]).
#[derive(Deserialize)]
struct KvV2 {
    data: KvV2Data,
}
#[derive(Deserialize)]
struct KvV2Data {
    data: Option<Fields>,
    metadata: Option<KvV2Meta>,
}
#[derive(Deserialize)]
struct KvV2Meta {
    version: Option<u64>,
    created_time: Option<String>,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}
#[derive(Deserialize)]
struct KvV1 {
    data: Fields,
    #[serde(default)]
    lease_duration: u64,
}
#[derive(Deserialize)]
struct Mounts {
    data: MountData,
}
#[derive(Deserialize)]
struct MountData {
    #[serde(default)]
    options: Option<MountOptions>,
}
#[derive(Deserialize)]
struct MountOptions {
    version: Option<String>,
}
#[derive(Deserialize)]
struct LoginAnswer {
    auth: AuthData,
}
#[derive(Deserialize)]
struct AuthData {
    client_token: FieldValue,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}
#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}
#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

/// Who caused a failed answer: a 4xx to the request's shape is the caller's reference
/// (`Invalid`), a 429 asks for quiet, only 5xx and the unexpected say the server is failing.
fn classify(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> SourceError {
    match status.as_u16() {
        404 => SourceError::NotFound,
        401 | 403 => SourceError::Denied,
        429 => SourceError::RateLimited {
            retry_after: super::http::retry_after(headers),
        },
        // Vault's "consistency not yet reached" on performance standbys: transient.
        412 => SourceError::Unavailable(Outage::VaultNotConsistent),
        // A standby that cannot forward sends clients to the active node: never followed
        // (the target is Vault's to choose); another configured address is tried instead.
        307 | 308 => SourceError::Unavailable(Outage::Redirected),
        414 => SourceError::Invalid("the path is too long for vault (414)"),
        400..=499 => SourceError::Invalid("vault rejected the request (4xx)"),
        503 => SourceError::Unavailable(Outage::VaultSealed),
        500..=599 => SourceError::Unavailable(Outage::ServerError),
        _ => SourceError::Unavailable(Outage::UnexpectedAnswer),
    }
}

/// Whether a 400 is the cluster saying it cannot serve yet (an election under way, a mount on
/// the new active node not ready), not a request Vault refused. Read only to classify: Vault's error text is never
/// logged nor passed on (it can quote request data). Bounded: a short error body.
async fn no_leader(resp: reqwest::Response) -> bool {
    let Ok(body) = resp.bytes().await else {
        return false;
    };
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    // A standby with no active node; a KV v2 mount on a new active node still loading
    // ("waiting for the primary to upgrade … will resume service").
    text.contains("node not active")
        || text.contains("cannot forward")
        || text.contains("will resume service")
}

/// Whether another address of the list may answer what this one could not: it was not
/// reached, or it is sealed or has no active node to forward to (an election).
fn fails_over(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Unavailable(
            Outage::Unreachable
                | Outage::TimedOut
                | Outage::VaultSealed
                | Outage::VaultNoLeader
                | Outage::Redirected
                | Outage::ServerError
        )
    )
}

fn transport(source: &str, address: &str, e: &reqwest::Error) -> SourceError {
    // At warn: a wrong address or a dead server must be visible at the default level — with
    // which source and which address, so a person can act on it.
    tracing::warn!(source, address, cause = %super::http::causes(e), "vault request failed");
    if e.is_timeout() {
        SourceError::Unavailable(Outage::TimedOut)
    } else {
        SourceError::Unavailable(Outage::Unreachable)
    }
}

impl Inner {
    /// Notes when `token` expires, for the TTL gauge.
    fn remember(&self, token: &Token) {
        let expires = token.ttl.map(|ttl| token.obtained + ttl);
        *self
            .token_expires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = expires;
    }

    fn can_login(&self) -> bool {
        matches!(
            self.auth,
            Auth::AppRole { .. } | Auth::Cert { .. } | Auth::Jwt { .. } | Auth::TokenFile(_)
        )
    }

    fn url(&self, path: &str) -> Result<Url, SourceError> {
        self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed)]
            .join(&format!("v1/{path}"))
            .map_err(|_| SourceError::Invalid("the path does not form a URL"))
    }

    /// A GET or POST with the token and namespace headers; the body bytes on 2xx.
    async fn call(
        &self,
        method: reqwest::Method,
        url: Url,
        token: Option<&SecretString>,
        body: Option<serde_json::Value>,
    ) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        let body = body.map(|b| bytes::Bytes::from(b.to_string()));
        self.call_bytes(method, url, token, body).await
    }

    /// As [`Inner::call`], with a JSON body already encoded (a zeroizing owner for material).
    async fn call_bytes(
        &self,
        method: reqwest::Method,
        url: Url,
        token: Option<&SecretString>,
        body: Option<bytes::Bytes>,
    ) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        // The address in use first; on a connection failure or an answer that says this node
        // cannot serve now (sealed, standby without a leader), the next ones in order.
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.bases.len();
        let mut last = None;
        for i in (0..n).map(|k| (first + k) % n) {
            let mut url = url.clone();
            let base = &self.bases[i];
            if i != first {
                let _ = url.set_scheme(base.scheme());
                let _ = url.set_host(base.host_str());
                let _ = url.set_port(base.port());
            }
            match self.send(method.clone(), url, token, body.clone()).await {
                Err(e) if n > 1 && fails_over(&e) => {
                    tracing::warn!(address = i, error = %e, "vault address failed; trying the next");
                    last = Some(e);
                }
                other => {
                    if other.is_ok() && i != first {
                        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        Err(last.unwrap_or(SourceError::Unavailable(Outage::Unreachable)))
    }

    /// One request to one address.
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        token: Option<&SecretString>,
        body: Option<bytes::Bytes>,
    ) -> Result<Zeroizing<Vec<u8>>, SourceError> {
        let endpoint = endpoint_of(&url, &self.mount);
        let address = url.origin().ascii_serialization();
        let mut req = self.http.client().request(method, url);
        if let Some(t) = token {
            let mut hv = HeaderValue::from_str(t.expose_secret())
                .map_err(|_| SourceError::Unavailable(Outage::VaultTokenHeader))?;
            hv.set_sensitive(true);
            req = req.header("X-Vault-Token", hv);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport(&self.name, &address, &e))?;
        let status = resp.status();
        if !status.is_success() {
            // What failed, where — never Vault's error text (it can quote request data).
            if status == reqwest::StatusCode::NOT_FOUND {
                tracing::debug!(status = status.as_u16(), %endpoint, "vault answered an error");
            } else {
                tracing::info!(status = status.as_u16(), %endpoint, "vault answered an error");
            }
            let error = classify(status, resp.headers());
            if status == reqwest::StatusCode::BAD_REQUEST && no_leader(resp).await {
                return Err(SourceError::Unavailable(Outage::VaultNoLeader));
            }
            return Err(error);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&self.name, &address, &e))?;
        Ok(Zeroizing::new(bytes.to_vec()))
    }

    /// After a 403 with a fixed token: whether the token itself is still valid
    /// (`lookup-self`), looked up at most once a second; when Vault cannot say, valid.
    async fn fixed_token_valid(&self, used: &SecretString) -> bool {
        let mut state = self.state.lock().await;
        if let Some((at, valid)) = state.token_checked
            && at.elapsed() < Duration::from_secs(1)
        {
            return valid;
        }
        let valid = !matches!(
            self.lookup(secret_string(used.expose_secret())).await,
            Err(SourceError::Denied)
        );
        if !valid && state.token_checked.is_none_or(|(_, was)| was) {
            tracing::error!(
                cause = Outage::CredentialsRefused.to_string(),
                "vault token invalid or revoked"
            );
        }
        state.token_checked = Some((Instant::now(), valid));
        valid
    }

    /// After a 403 with `used`: whether the token is invalid (then it is dropped, so the next
    /// [`Inner::token`] logs in — once, under the state lock, however many reads saw the 403).
    /// A token another read already replaced counts as invalid: the caller retries with the new.
    async fn drop_if_invalid(&self, used: &SecretString) -> bool {
        let mut state = self.state.lock().await;
        let Some(current) = &state.token else {
            return true;
        };
        if current.value.expose_secret() != used.expose_secret() {
            return true;
        }
        if state.login_not_before.is_some() {
            // The last login was refused: another one now would only hammer it.
            return false;
        }
        match self.lookup(secret_string(used.expose_secret())).await {
            Ok(_) => false,
            Err(SourceError::Denied) => {
                tracing::info!("vault token no longer valid; logging in again");
                state.token = None;
                true
            }
            // Cannot tell (Vault unreachable): keep the token, report the denial.
            Err(_) => false,
        }
    }

    async fn read_once(
        &self,
        request: &ReadRequest,
        token: &SecretString,
    ) -> Result<Secret, SourceError> {
        let token = secret_string(token.expose_secret());
        let kv = self.kv_version(&token).await?;
        let mut url = self.url(&self.mount)?;
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| SourceError::Invalid("the path does not form a URL"))?;
            if kv == 2 {
                segs.push("data");
            }
            for s in request.path.segments() {
                segs.push(s);
            }
        }
        if let Some(v) = request.version {
            if kv != 2 {
                return Err(SourceError::Unsupported("versions need a KV v2 mount"));
            }
            url.query_pairs_mut().append_pair("version", &v.to_string());
        }
        let body = self
            .call(reqwest::Method::GET, url, Some(&token), None)
            .await?;
        let meta = SecretMeta {
            ttl: self.ttl,
            ..SecretMeta::default()
        };
        let secret = parse_kv_answer(&body, kv, meta);
        if let Ok(s) = &secret {
            // A lease shorter than the source's TTL (KV v1 `ttl`): see `Connections::carried`.
            self.http.carried(s.meta().ttl);
        }
        secret
    }

    /// `LIST <mount>/[metadata/]<folder>/`: the names Vault gives, those a reference can hold,
    /// at most [`super::MAX_LIST_ENTRIES`]; Vault's 404 (nothing there) is an empty list.
    async fn list_once(
        &self,
        folder: &[String],
        token: &SecretString,
    ) -> Result<Vec<String>, SourceError> {
        let token = secret_string(token.expose_secret());
        let kv = self.kv_version(&token).await?;
        let mut url = self.url(&self.mount)?;
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| SourceError::Invalid("the path does not form a URL"))?;
            if kv == 2 {
                segs.push("metadata");
            }
            for s in folder {
                segs.push(s);
            }
            // A trailing slash: the folder.
            segs.push("");
        }
        url.query_pairs_mut().append_pair("list", "true");
        let body = match self
            .call(reqwest::Method::GET, url, Some(&token), None)
            .await
        {
            Err(SourceError::NotFound) => return Ok(Vec::new()),
            other => other?,
        };
        #[derive(Deserialize)]
        struct Listed {
            data: ListedKeys,
        }
        #[derive(Deserialize)]
        struct ListedKeys {
            #[serde(default)]
            keys: Vec<String>,
        }
        let listed: Listed = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Malformed("not a Vault LIST answer"))?;
        Ok(listed
            .data
            .keys
            .into_iter()
            .filter(|k| {
                let segment = k.strip_suffix('/').unwrap_or(k);
                !segment.is_empty()
                    && !segment.contains('/')
                    && crate::reference::SecretPath::from_segments([segment]).is_ok()
            })
            .take(super::MAX_LIST_ENTRIES)
            .collect())
    }

    /// The KV version of the mount: configured, or asked once (`sys/internal/ui/mounts`).
    async fn kv_version(&self, token: &SecretString) -> Result<u8, SourceError> {
        match self.configured_kv {
            KvVersion::V1 => return Ok(1),
            KvVersion::V2 => return Ok(2),
            KvVersion::Auto => {}
        }
        if let Some(v) = self.state.lock().await.kv {
            return Ok(v);
        }
        let url = self.url(&format!("sys/internal/ui/mounts/{}", self.mount))?;
        let body = self
            .call(reqwest::Method::GET, url, Some(token), None)
            .await
            .inspect_err(|e| {
                if *e == SourceError::Denied {
                    // Vault answers 403 both for a mount that does not exist and for one the
                    // token may not see: say both, with the mount's name.
                    tracing::warn!(
                        mount = %self.mount,
                        "vault: the mount does not exist or keybroker's token may not look it up \
                         (sys/internal/ui/mounts/<mount>); set kv_version to skip the lookup"
                    );
                }
            })?;
        let mounts: Mounts = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Malformed("unexpected mount answer"))?;
        let v = match mounts.data.options.and_then(|o| o.version).as_deref() {
            Some("2") => 2,
            _ => 1,
        };
        self.state.lock().await.kv = Some(v);
        Ok(v)
    }

    /// The current token: reused, renewed when due, or obtained by a login.
    async fn token(self: &Inner) -> Result<SecretString, SourceError> {
        let mut state = self.state.lock().await;
        if let Auth::TokenFile(path) = &self.auth {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime != state.token_file_mtime {
                state.token = None;
                state.token_file_mtime = mtime;
            }
        }
        if let Some(t) = &state.token {
            if !t.due_for_renewal() {
                return Ok(secret_string(t.value.expose_secret()));
            }
            let renewable = t.renewable;
            let current = secret_string(t.value.expose_secret());
            if renewable && let Ok(renewed) = self.renew(&current).await {
                self.remember(&renewed);
                state.token = Some(renewed);
                let t = state.token.as_ref().expect("just set");
                return Ok(secret_string(t.value.expose_secret()));
            }
            if !self.can_login() {
                // A fixed token that cannot be renewed any more: use it while it lasts.
                tracing::warn!("vault token is not renewable or reached its max TTL");
                return Ok(current);
            }
            state.token = None;
            state.replaced = Some(current);
        }
        if state.login_not_before.is_some_and(|t| Instant::now() < t) {
            return Err(SourceError::Unavailable(if state.login_refused {
                Outage::CredentialsRefused
            } else {
                Outage::LoginBackoff
            }));
        }
        match self.login().await {
            Ok(token) => {
                state.login_failures = 0;
                state.login_not_before = None;
                state.login_refused = false;
                let value = secret_string(token.value.expose_secret());
                self.remember(&token);
                state.token = Some(token);
                // The token this login replaces may still be live: revoke it, so replacing
                // tokens never leaves a trail of valid ones behind.
                if let Some(old) = state.replaced.take()
                    && matches!(
                        self.auth,
                        Auth::AppRole { .. } | Auth::Cert { .. } | Auth::Jwt { .. }
                    )
                {
                    self.revoke(&old).await;
                }
                Ok(value)
            }
            Err(e) => {
                state.login_failures = state.login_failures.saturating_add(1);
                state.login_not_before = Some(Instant::now() + login_backoff(state.login_failures));
                // Refused (a wrong token, role or secret) is keybroker's own credentials being
                // wrong: an outage for every caller, told apart from a caller's denial.
                state.login_refused = e == SourceError::Denied;
                if state.login_refused {
                    tracing::error!(
                        cause = Outage::CredentialsRefused.to_string(),
                        "vault refused keybroker's credentials"
                    );
                    return Err(SourceError::Unavailable(Outage::CredentialsRefused));
                }
                Err(e)
            }
        }
    }

    /// Best effort: a token that cannot be revoked now expires by its TTL.
    async fn revoke(&self, token: &SecretString) {
        let Ok(url) = self.url("auth/token/revoke-self") else {
            return;
        };
        match self
            .call(
                reqwest::Method::POST,
                url,
                Some(token),
                Some(serde_json::json!({})),
            )
            .await
        {
            Ok(_) => tracing::debug!("replaced vault token revoked"),
            Err(e) => tracing::debug!(error = %e, "could not revoke the replaced vault token"),
        }
    }

    async fn renew(&self, token: &SecretString) -> Result<Token, SourceError> {
        let url = self.url("auth/token/renew-self")?;
        let body = self
            .call(
                reqwest::Method::POST,
                url,
                Some(token),
                Some(serde_json::json!({})),
            )
            .await?;
        let answer: LoginAnswer = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Malformed("unexpected renewal answer"))?;
        tracing::debug!(ttl = answer.auth.lease_duration, "vault token renewed");
        Ok(token_from(answer.auth))
    }

    async fn login(&self) -> Result<Token, SourceError> {
        let (path, body) = match &self.auth {
            Auth::Token(t) => return self.lookup(secret_string(t.expose_secret())).await,
            Auth::TokenFile(f) => {
                let raw = Zeroizing::new(
                    std::fs::read_to_string(f)
                        .map_err(|_| SourceError::Unavailable(Outage::VaultTokenFile))?,
                );
                return self.lookup(secret_string(raw.trim())).await;
            }
            Auth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map(Zeroizing::new)
                        .map_err(|_| SourceError::Unavailable(Outage::AppRoleCredentials))
                };
                let role_id = read(role_id_file)?;
                let secret_id = read(secret_id_file)?;
                let body = serde_json::json!({
                    "role_id": role_id.trim(),
                    "secret_id": secret_id.trim(),
                });
                (format!("auth/{mount}/login"), body)
            }
            Auth::Cert { mount, name } => {
                let body = match name {
                    Some(n) => serde_json::json!({ "name": n }),
                    None => serde_json::json!({}),
                };
                (format!("auth/{mount}/login"), body)
            }
            Auth::Jwt {
                mount,
                role,
                token_file,
            } => {
                // Read at every login: the issuer rotates the file, and an expired JWT is
                // the usual reason a login is needed again.
                let jwt = std::fs::read_to_string(token_file)
                    .map(Zeroizing::new)
                    .map_err(|_| SourceError::Unavailable(Outage::JwtFile))?;
                let body = serde_json::json!({ "role": role, "jwt": jwt.trim() });
                (format!("auth/{mount}/login"), body)
            }
        };
        let url = self.url(&path)?;
        // Vault answers 400 to a wrong role_id/secret_id: the login was refused.
        let answer = self
            .call(reqwest::Method::POST, url, None, Some(body))
            .await
            .map_err(|e| match e {
                SourceError::Invalid(_) => SourceError::Denied,
                other => other,
            })?;
        let answer: LoginAnswer = serde_json::from_slice(&answer)
            .map_err(|_| SourceError::Malformed("unexpected login answer"))?;
        tracing::debug!(ttl = answer.auth.lease_duration, "vault login");
        Ok(token_from(answer.auth))
    }

    /// A given token, looked up for its TTL and renewability.
    async fn lookup(&self, value: SecretString) -> Result<Token, SourceError> {
        let url = self.url("auth/token/lookup-self")?;
        let body = self
            .call(reqwest::Method::GET, url, Some(&value), None)
            .await?;
        let answer: LookupAnswer = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Malformed("unexpected token lookup answer"))?;
        Ok(Token {
            value,
            obtained: Instant::now(),
            ttl: (answer.data.ttl > 0).then(|| Duration::from_secs(answer.data.ttl)),
            renewable: answer.data.renewable,
        })
    }
}

/// A KV read's answer (v1 or v2) as a secret; a deleted or destroyed v2 version is not found.
/// Public for the fuzz target of source answers.
#[doc(hidden)]
pub fn parse_kv_answer(body: &[u8], kv: u8, mut meta: SecretMeta) -> Result<Secret, SourceError> {
    let fields = if kv == 2 {
        let answer: KvV2 = serde_json::from_slice(body)
            .map_err(|_| SourceError::Malformed("unexpected KV v2 answer"))?;
        if let Some(m) = answer.data.metadata {
            if m.destroyed || !m.deletion_time.is_empty() {
                return Err(SourceError::NotFound);
            }
            meta.version = m.version;
            meta.created_time = m.created_time;
        }
        answer.data.data.ok_or(SourceError::NotFound)?
    } else {
        let answer: KvV1 = serde_json::from_slice(body)
            .map_err(|_| SourceError::Malformed("unexpected KV v1 answer"))?;
        // A lease the writer asked for (a `ttl` field, KV v1's refresh hint) is the value's
        // own TTL; without one, OpenBao answers the mount's default (32 days), which must not
        // replace the cache's `ttl`.
        if answer.lease_duration > 0 && meta.ttl.is_none() && answer.data.0.contains_key("ttl") {
            meta.ttl = Some(Duration::from_secs(answer.lease_duration));
        }
        answer.data
    };
    Ok(Secret::new(fields.0, meta))
}

/// What a request was to, for logs: `sys/…` and `auth/<mount>/…` by their first two
/// segments, reads by their mount (never the secret's path: that is the caller's business).
fn endpoint_of(url: &Url, mount: &str) -> String {
    let path = url.path().trim_start_matches('/');
    let path = path.strip_prefix("v1/").unwrap_or(path);
    if path.starts_with("sys/") || path.starts_with("auth/") {
        path.split('/').take(2).collect::<Vec<_>>().join("/")
    } else {
        format!("{mount} (read)")
    }
}

/// `tls_server_name`: the URL's host becomes `name` (what TLS verifies and SNI sends) and `name`
/// is pinned to the addresses the configured host has now — reqwest has no separate SNI
/// setting, and the result is the same: connect here, check the certificate for that name.
fn pin_server_name(
    base: &mut Url,
    name: &str,
) -> Result<(String, Vec<std::net::SocketAddr>), VaultConfigError> {
    use std::net::ToSocketAddrs as _;
    if base.scheme() != "https" {
        return Err(VaultConfigError::ServerNameWithoutTls);
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(VaultConfigError::BadServerName(name.to_owned()));
    }
    let port = base.port_or_known_default().unwrap_or(443);
    let host = match base.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string(),
        None => return Err(VaultConfigError::Unresolvable(base.to_string())),
    };
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|_| VaultConfigError::Unresolvable(host.clone()))?
        .collect();
    if addrs.is_empty() {
        return Err(VaultConfigError::Unresolvable(host));
    }
    base.set_host(Some(name))
        .map_err(|_| VaultConfigError::BadServerName(name.to_owned()))?;
    Ok((name.to_ascii_lowercase(), addrs))
}

/// 0.5 s doubling per failure up to 60 s, with ±25 % jitter so replicas spread out.
fn login_backoff(failures: u32) -> Duration {
    crate::backoff::Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(60),
        jitter: 0.25,
    }
    .delay(failures)
}

fn token_from(auth: AuthData) -> Token {
    Token {
        value: auth.client_token.0,
        obtained: Instant::now(),
        ttl: (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration)),
        renewable: auth.renewable,
    }
}

impl VaultSource {
    /// Keeps the token fresh while nothing is read: wakes at two thirds of its TTL and renews
    /// (or logs in again). Stops when the source is dropped. Call from within a runtime.
    pub fn spawn_renewer(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    let state = inner.state.lock().await;
                    match &state.token {
                        Some(t) => t
                            .ttl
                            .map(|ttl| ttl.mul_f64(2.0 / 3.0).saturating_sub(t.obtained.elapsed()))
                            .unwrap_or(Duration::from_secs(300)),
                        None => Duration::from_secs(5),
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_millis(200))).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.state.lock().await.token.is_some()
                    && let Err(e) = inner.token().await
                {
                    tracing::warn!(error = %e, "vault token renewal failed");
                }
            }
        });
    }
}
