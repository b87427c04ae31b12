//! Assembly: from a loaded configuration to everything `serve` runs — TLS acceptor, broker,
//! API state — without touching the network. `check`, `serve`, the benches and tests use this
//! one path, so `check` refuses exactly what `serve` would.

pub(crate) mod operations;
pub(crate) mod process;
mod run;

pub(crate) use run::Listeners;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::{self, AppState, ServerTls, TlsSetupError};
use crate::audit::AuditError;
use crate::broker::{Broker, BuildError};
use crate::config::{Config, Diagnostic, Setting};

/// How the server is to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Where it will listen.
    pub listen: SocketAddr,
    /// `serve --dev`: a policy-free operator token, loopback only.
    pub dev: bool,
    /// Open (create) the audit file. `check` does not; it only checks the folder exists.
    pub open_audit: bool,
}

impl Options {
    /// What `check` verifies for `config`: its own listener, no file created.
    pub fn check(config: &Config) -> Self {
        Self {
            listen: config.server.listen,
            dev: false,
            open_audit: false,
        }
    }
}

/// What `serve` runs.
pub struct App {
    pub broker: Arc<Broker>,
    pub state: AppState,
    /// The main listener's TLS (plain HTTP when it has no certificate).
    pub tls: Arc<ServerTls>,
    /// The Vault-compatible API's listener, when `[vault_api]` is configured.
    pub vault_api: Option<Listener>,
    /// The egress proxy's listener, when `[egress]` is configured.
    pub egress: Option<Listener>,
    /// The CCP-shaped door's listener, when `[ccp_api]` is configured.
    pub ccp_api: Option<Listener>,
    /// What runs on its own once serving: [`operations::start`] starts it.
    pub operations: operations::Operations,
}

/// A door's own listener (`[vault_api]`, `[egress]`, `[ccp_api]`): which door, where, with
/// which TLS, serving what.
#[expect(
    missing_debug_implementations,
    reason = "the TLS acceptor and router have none"
)]
pub struct Listener {
    pub door: crate::identity::Door,
    pub listen: SocketAddr,
    pub tls: Arc<ServerTls>,
    pub router: axum::Router,
}

impl Listener {
    /// `router` wrapped in the one observe layer, as `spec` says.
    fn observed(
        spec: crate::door::observe::DoorSpec,
        router: axum::Router,
        (listen, tls): (SocketAddr, Arc<ServerTls>),
        broker: &Broker,
        timeout: std::time::Duration,
    ) -> Self {
        let observed =
            crate::door::observe::Observe::new(router, broker.shared_metrics(), timeout, spec);
        Self {
            door: spec.door,
            listen,
            tls,
            router: axum::Router::new().fallback_service(observed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The dev token is the policy-free operator: it never leaves the machine, TLS or not
    /// (docs/THREATS.md row 31).
    #[error("--dev serves a policy-free operator token and only listens on loopback, not {0}")]
    DevOffLoopback(SocketAddr),
    #[error("plain HTTP only listens on loopback, not {0}: set [server] tls_cert and tls_key")]
    PlainOffLoopback(SocketAddr),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A key file (`etag_key_file`, `token_key_file`); the error names its setting.
    #[error(transparent)]
    KeyFile(#[from] crate::secret::KeyFileError),
    #[error("[vault_api] {0}")]
    VaultApiTls(TlsSetupError),
    #[error("[ccp_api] {0}")]
    CcpApiTls(TlsSetupError),
    #[error(
        "[ccp_api] needs tls_cert, tls_key and client_ca: CCP callers are their client certificates"
    )]
    CcpApiWithoutClientCertificates,
    #[error(transparent)]
    VaultApiJwt(#[from] crate::vault_api::jwt::JwtKeyError),
    #[error("[vault_api]: plain HTTP only listens on loopback, not {0}: set tls_cert and tls_key")]
    VaultApiPlainOffLoopback(SocketAddr),
    #[error("[egress] {0}")]
    EgressTls(TlsSetupError),
    #[error("[egress]: plain HTTP only listens on loopback, not {0}: set tls_cert and tls_key")]
    EgressPlainOffLoopback(SocketAddr),
    #[error("[egress] ca_cert {path}: {why}")]
    EgressCa { path: PathBuf, why: String },
    #[error("[audit] path {path}: the folder {folder} does not exist")]
    AuditFolder { path: PathBuf, folder: PathBuf },
}

impl AppError {
    /// The setting of `config` this error is about (`None`: the error has its own positions,
    /// as invalid policies do).
    pub fn setting<'c>(&self, config: &'c Config) -> Option<Setting<'c>> {
        let server = &config.server;
        let tls_file = |path: &Path| {
            let key = if server.tls_key.as_deref() == Some(path) {
                "tls_key"
            } else if server.client_ca.as_deref() == Some(path) {
                "client_ca"
            } else {
                "tls_cert"
            };
            Setting::Key("server", key)
        };
        let source = |name: &str| {
            config
                .sources
                .iter()
                .find(|s| s.name() == name)
                .map(|s| Setting::Source(s.name()))
        };
        match self {
            Self::DevOffLoopback(_) | Self::PlainOffLoopback(_) => {
                Some(Setting::Key("server", "listen"))
            }
            Self::Tls(TlsSetupError::Certificates { path, .. } | TlsSetupError::Key(path)) => {
                Some(tls_file(path))
            }
            Self::Tls(TlsSetupError::Crl { .. } | TlsSetupError::CrlWithoutCa) => {
                Some(Setting::Key("server", "client_crl"))
            }
            Self::Tls(TlsSetupError::Rustls(_)) => Some(Setting::Key("server", "tls_cert")),
            Self::AuditFolder { .. } | Self::Build(BuildError::Audit(AuditError::Open { .. })) => {
                Some(Setting::Key("audit", "path"))
            }
            Self::Build(BuildError::Audit(_)) => Some(Setting::Key("audit", "hmac_key_file")),
            Self::Build(
                BuildError::SourceNotAvailable { name, .. }
                | BuildError::Ccp { name, .. }
                | BuildError::Vault { name, .. }
                | BuildError::FileSource { name, .. },
            ) => source(name),
            Self::Build(BuildError::Policy(_)) => None,
            Self::Build(BuildError::Store(_)) => Some(Setting::Key("store", "path")),
            Self::Build(BuildError::StoreSource(_)) => Some(Setting::Key("store", "source")),
            Self::Build(BuildError::PkiVault(name)) => source(name),
            Self::Build(BuildError::Notify(e)) => Some(Setting::Key(
                "notify",
                match e {
                    crate::notify::NotifyError::Url(_) => "webhook",
                    crate::notify::NotifyError::Http(_) => "ca_cert",
                    _ => "hmac_key_file",
                },
            )),
            Self::KeyFile(e) => e
                .setting()
                .strip_prefix('[')
                .and_then(|s| s.split_once("] "))
                .map(|(section, key)| Setting::Key(section, key)),
            Self::VaultApiTls(_) => Some(Setting::Key("vault_api", "tls_cert")),
            Self::VaultApiPlainOffLoopback(_) => Some(Setting::Key("vault_api", "listen")),
            Self::VaultApiJwt(_) => Some(Setting::Key("vault_api", "jwt")),
            Self::CcpApiTls(_) => Some(Setting::Key("ccp_api", "tls_cert")),
            Self::CcpApiWithoutClientCertificates => Some(Setting::Key("ccp_api", "client_ca")),
            Self::EgressTls(_) => Some(Setting::Key("egress", "tls_cert")),
            Self::EgressPlainOffLoopback(_) => Some(Setting::Key("egress", "listen")),
            Self::EgressCa { .. } => Some(Setting::Key("egress", "ca_cert")),
        }
    }

    /// This error as `check` and `serve` print it: at its setting's `file:line:column`.
    pub fn diagnostic(&self, config: &Config) -> Option<Diagnostic> {
        self.setting(config)
            .map(|at| config.diagnostic(at, self.to_string()))
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.broker)
            .field("tls", &self.tls.is_tls())
            .field("vault_api", &self.vault_api.as_ref().map(|v| v.listen))
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn build(config: &Config, options: &Options) -> Result<Self, AppError> {
        let addr = options.listen;
        if options.dev && !addr.ip().is_loopback() {
            return Err(AppError::DevOffLoopback(addr));
        }
        let tls = Arc::new(ServerTls::load(&config.server)?);
        if !tls.is_tls() && !addr.ip().is_loopback() {
            return Err(AppError::PlainOffLoopback(addr));
        }
        let broker = if options.open_audit {
            Broker::from_config(config)?
        } else {
            let mut without_audit = config.clone();
            if let Some(audit) = without_audit.audit.take() {
                audit_folder_exists(&audit.path)?;
            }
            // `check` creates nothing: a store that is not there yet has nothing to check.
            if without_audit
                .store
                .as_ref()
                .is_some_and(|st| !st.path.is_dir())
            {
                without_audit.store = None;
            }
            // Checked, not started: `check` sends nothing.
            if let Some(notify) = without_audit.notify.take() {
                crate::notify::Notifier::check(&notify).map_err(crate::broker::BuildError::from)?;
            }
            Broker::from_config(&without_audit)?
        };
        let broker = Arc::new(broker);
        let mut state =
            AppState::new(Arc::clone(&broker)).with_server(&config.server, Arc::clone(&tls))?;
        if let Some(path) = &config.server.etag_key_file {
            state = state.with_etag_key(crate::api::change::EtagKey::from_file(path)?);
        }
        let vault_api = match &config.vault_api {
            None => None,
            Some(v) => Some(vault_api(v, &broker, config.server.request_timeout.0)?),
        };
        let (egress, egress_pool) = match &config.egress {
            None => (None, None),
            Some(e) => {
                let (door, pool) = egress(e, &broker, config.server.request_timeout.0)?;
                (Some(door), Some(pool))
            }
        };
        let ccp_api = match &config.ccp_api {
            None => None,
            Some(c) => Some(ccp_api(c, config, &broker)?),
        };
        for door in vault_api.iter().chain(&egress).chain(&ccp_api) {
            state = state.reloads_tls(Arc::clone(&door.tls));
        }
        Ok(Self {
            operations: operations::Operations::new(&broker, config, egress_pool),
            broker,
            state,
            tls,
            vault_api,
            egress,
            ccp_api,
        })
    }

    /// The router over this app's state (what `serve` listens with; tests drive it with
    /// `oneshot`).
    pub fn router(self) -> axum::Router {
        api::router(Arc::new(self.state))
    }
}

/// The Vault-compatible API, with the TLS rules of `[server]` applied to its own keys.
/// `request_timeout` is `[server]`'s: every door keeps the one the operator set (a door's own
/// `server()` settings would carry the default).
fn vault_api(
    v: &crate::config::VaultApiConfig,
    broker: &Arc<Broker>,
    request_timeout: std::time::Duration,
) -> Result<Listener, AppError> {
    let server = v.server();
    let tls = Arc::new(ServerTls::load(&server).map_err(AppError::VaultApiTls)?);
    if !tls.is_tls() && !v.listen.ip().is_loopback() {
        return Err(AppError::VaultApiPlainOffLoopback(v.listen));
    }
    let tokens = match &v.token_key_file {
        Some(path) => crate::vault_api::TokenKey::from_file(path)?,
        None => crate::vault_api::TokenKey::random(),
    };
    let tokens = Arc::new(tokens);
    let state = crate::vault_api::VaultApiState {
        broker: Arc::clone(broker),
        auth: crate::identity::Authenticator {
            issued: Some(Arc::clone(&tokens) as Arc<dyn crate::identity::IssuedTokens>),
            ..Default::default()
        },
        tokens,
        token_ttl: v.token_ttl.0,
        jwt: v
            .jwt
            .as_ref()
            .map(crate::vault_api::jwt::JwtKeys::load)
            .transpose()?,
        kubernetes: v
            .kubernetes
            .as_ref()
            .map(crate::vault_api::jwt::JwtKeys::load)
            .transpose()?,
    };
    Ok(Listener::observed(
        crate::vault_api::door(),
        crate::vault_api::router(Arc::new(state)),
        (v.listen, tls),
        broker,
        request_timeout,
    ))
}

/// The CCP-shaped door: TLS with required client certificates, always.
fn ccp_api(
    c: &crate::config::CcpApiConfig,
    config: &Config,
    broker: &Arc<Broker>,
) -> Result<Listener, AppError> {
    if c.tls_cert.is_none() || c.tls_key.is_none() || c.client_ca.is_none() {
        return Err(AppError::CcpApiWithoutClientCertificates);
    }
    let server = c.server();
    let request_timeout = config.server.request_timeout.0;
    let tls = Arc::new(ServerTls::load(&server).map_err(AppError::CcpApiTls)?);
    let state = crate::ccp_api::CcpApiState {
        broker: Arc::clone(broker),
        auth: crate::identity::Authenticator::default(),
        service_path: c.service_path.clone(),
        ccp_source: config.ccp_source().map(str::to_owned),
    };
    Ok(Listener::observed(
        crate::ccp_api::door(),
        crate::ccp_api::router(Arc::new(state)),
        (c.listen, tls),
        broker,
        request_timeout,
    ))
}

/// The egress proxy, with the TLS rules of `[server]` applied to its own keys.
fn egress(
    e: &crate::config::EgressConfig,
    broker: &Arc<Broker>,
    request_timeout: std::time::Duration,
) -> Result<(Listener, Arc<crate::egress::Pool>), AppError> {
    let server = e.server();
    let tls = Arc::new(ServerTls::load(&server).map_err(AppError::EgressTls)?);
    if !tls.is_tls() && !e.listen.ip().is_loopback() {
        return Err(AppError::EgressPlainOffLoopback(e.listen));
    }
    // Read once and checked now: a bundle that does not parse is a start-up error, not a
    // 502 at the first request.
    let ca_bundle = match &e.ca_cert {
        None => None,
        Some(path) => {
            let failed = |why: String| AppError::EgressCa {
                path: path.clone(),
                why,
            };
            let pem = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
            crate::policy::pem_certificates(pem.as_bytes()).map_err(failed)?;
            Some(pem)
        }
    };
    let pool = Arc::new(crate::egress::Pool::new(e.keep_alive.0));
    let state = crate::egress::EgressState {
        auth: crate::identity::Authenticator::default(),
        broker: Arc::clone(broker),
        resolve: e.resolve.clone(),
        timeout: e.timeout.0,
        pool: Arc::clone(&pool),
        ca_bundle,
    };
    // The whole exchange with the upstream is within `timeout`; the door's own work on top.
    let listener = Listener::observed(
        crate::egress::door(),
        crate::egress::router(Arc::new(state)),
        (e.listen, tls),
        broker,
        e.timeout.0 + request_timeout,
    );
    Ok((listener, pool))
}

/// `check` does not create the audit file, but its folder must exist.
fn audit_folder_exists(path: &Path) -> Result<(), AppError> {
    if path == Path::new("-") {
        return Ok(());
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if folder.is_dir() {
        Ok(())
    } else {
        Err(AppError::AuditFolder {
            path: path.to_owned(),
            folder: folder.to_owned(),
        })
    }
}
