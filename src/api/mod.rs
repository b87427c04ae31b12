//! The HTTP API (docs/DESIGN.md §6, docs/openapi.yaml). Handlers are thin: authenticate,
//! parse the body into types, call the broker, write the answer. Errors become HTTP in
//! `error.rs` only; secret-bearing answers are built in a [`SecretBuf`] that is wiped when
//! hyper drops the body.
//!
//! **Boundary:** the API decides nothing about secrets; it calls [`crate::broker`].

mod admin;
pub(crate) mod change;
mod consumers;
mod credentials;
mod door;
mod error;
mod manage;
mod names;
mod ops;
mod renew;
mod resolve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

pub(crate) use crate::door::listen::Peer;
pub use crate::door::tls::ServerTls;
pub(crate) use crate::door::tls::TlsSetupError;
use crate::identity::{Authenticator, TokenDigest};
pub(crate) use error::ApiError;
pub use error::status;

use crate::broker::{Broker, Caller};
use crate::config::ServerConfig;
use crate::secret::SecretBuf;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Every route: method and path template. docs/openapi.yaml describes exactly these (a test
/// holds the two together), and [`router`] serves exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/resolve"),
    ("GET", "/v1/credentials"),
    ("GET", "/v1/credentials/{name}"),
    ("POST", "/v1/credentials/{name}/material"),
    ("POST", "/v1/credentials/{name}/sign"),
    ("POST", "/v1/consumers/self/certificates"),
    ("POST", "/v1/admin/reload"),
    ("POST", "/v1/admin/cache/purge"),
    ("POST", "/v1/credentials"),
    ("PUT", "/v1/credentials/{name}"),
    ("DELETE", "/v1/credentials/{name}"),
    ("PATCH", "/v1/credentials/{name}"),
    ("GET", "/v1/credentials/{name}/versions"),
    ("PUT", "/api/v1/user_credentials/{id}"),
    ("GET", "/v1/teams/{team}/credentials/{name}"),
    ("POST", "/api/v1/user_credentials"),
    ("GET", "/api/v1/user_credentials"),
    ("GET", "/api/v1/user_credentials/{id}"),
    ("DELETE", "/api/v1/user_credentials/{id}"),
    ("GET", "/v1/teams/{team}/consumers"),
    ("POST", "/v1/teams/{team}/consumers"),
    ("GET", "/v1/teams/{team}/consumers/{name}"),
    ("PATCH", "/v1/teams/{team}/consumers/{name}"),
    ("DELETE", "/v1/teams/{team}/consumers/{name}"),
    ("POST", "/v1/teams/{team}/consumers/{name}/token"),
    ("GET", "/v1/teams/{team}/consumers/{name}/certificates"),
    ("POST", "/v1/teams/{team}/consumers/{name}/certificates"),
    (
        "DELETE",
        "/v1/teams/{team}/consumers/{name}/certificates/{fingerprint}",
    ),
    ("PUT", "/v1/teams/{team}/consumers/{name}/issuer-acl"),
    (
        "DELETE",
        "/v1/teams/{team}/revoked-certificates/{fingerprint}",
    ),
    ("DELETE", "/v1/teams/{team}/consumers/{name}/issuer-acl"),
    ("POST", "/v1/teams/{team}/consumers/{name}/approle"),
    ("DELETE", "/v1/teams/{team}/consumers/{name}/approle"),
];

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// The management plane (its store, lock and decisions), one per broker.
    pub manager: Arc<crate::manage::Manager>,
    pub auth: Authenticator,
    /// The main listener's TLS: its verifier checks forwarded certificates.
    tls: Option<Arc<ServerTls>>,
    /// Every listener's TLS, reloaded with the policy.
    reloadable: Vec<Arc<ServerTls>>,
    pub request_timeout: Duration,
    /// The key of answers' ETags.
    pub etag: change::EtagKey,
    /// Blocking queries held, per consumer.
    pub waiting: change::Waiting,
}

impl AppState {
    /// State for `broker` with no way in but tokens of the policy (add a dev token or
    /// [`AppState::with_server`]).
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            manager: Arc::new(crate::manage::Manager::new(Arc::clone(&broker))),
            broker,
            auth: Authenticator::default(),
            tls: None,
            reloadable: Vec::new(),
            request_timeout: Duration::from_secs(30),
            etag: change::EtagKey::random(),
            waiting: change::Waiting::default(),
        }
    }

    /// Tags answers with `key` (`[server] etag_key_file`).
    pub fn with_etag_key(mut self, key: change::EtagKey) -> Self {
        self.etag = key;
        self
    }

    /// How often a blocking query asks again without a change announcement: often enough
    /// that the entries it reads are used in every TTL (and so refreshed ahead).
    fn recheck(&self) -> Duration {
        (self.broker.cache_ttl() / 2).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// Reloads `tls` (another listener's) with the main listener's.
    pub fn reloads_tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.reloadable.push(tls);
        self
    }

    /// Reads every listener's TLS files again (SIGHUP, `POST /v1/admin/reload`). A listener
    /// whose files do not load keeps its previous settings; the first such error is returned.
    pub fn reload_tls(&self) -> Result<(), TlsSetupError> {
        let mut first = None;
        for tls in &self.reloadable {
            match tls.reload() {
                Ok(()) => tracing::info!(files = %tls.describe(), "TLS settings reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload rejected; the previous settings stay in force");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Accepts `token` as the operator (`serve --dev`).
    pub fn with_dev_token(mut self, token: TokenDigest) -> Self {
        self.auth.dev_token = Some(token);
        self
    }

    /// Takes trusted proxies, the client-certificate header, the request timeout from
    /// `[server]`, and the main listener's TLS (whose verifier checks forwarded certificates).
    pub fn with_server(
        mut self,
        server: &ServerConfig,
        tls: Arc<ServerTls>,
    ) -> Result<Self, TlsSetupError> {
        self.auth.trusted_proxies = server.trusted_proxies.clone();
        self.auth.cert_header = match &server.client_cert_header {
            None => None,
            Some(h) => Some(HeaderName::try_from(h.as_str()).map_err(|_| {
                TlsSetupError::Rustls(format!("client_cert_header {h:?} is not a header name"))
            })?),
        };
        self.reloadable.insert(0, Arc::clone(&tls));
        self.tls = Some(tls);
        self.request_timeout = server.request_timeout.0;
        Ok(self)
    }

    /// For a blocking query (`?wait=`), a slot of the caller's held waits (none for the
    /// operator, or without a wait); 429 past `[limits] max_waiting_per_consumer`.
    fn wait_slot<'s>(
        &'s self,
        caller: &crate::broker::Caller,
        cond: &change::Conditional,
    ) -> Result<Option<change::WaitSlot<'s>>, ApiError> {
        if cond.wait().is_zero() {
            return Ok(None);
        }
        let max = self.broker.limits().max_waiting_per_consumer;
        self.waiting.enter(caller, max)
    }

    /// The main listener's TLS settings now (its verifier checks client certificates).
    fn main_tls(&self) -> Option<Arc<crate::door::tls::Loaded>> {
        self.tls.as_ref().map(|t| t.current())
    }

    /// The authenticated caller of a request.
    async fn caller(&self, peer: Option<&Peer>, headers: &HeaderMap) -> Result<Caller, ApiError> {
        // The verifier checks forwarded certificates only: no TLS generation to load otherwise.
        let tls = match (&self.tls, &self.auth.cert_header) {
            (Some(t), Some(_)) => Some(t.current()),
            _ => None,
        };
        let presented = crate::identity::Presented {
            door: crate::identity::Door::Api,
            peer: peer.map(|p| p.addr.ip()),
            certificate: peer.and_then(|p| p.certificate.as_deref()),
            verifier: tls.as_ref().and_then(|t| t.verifier.as_deref()),
            headers,
        };
        let (caller, via) = match self.broker.authenticate(&self.auth, presented).await {
            Ok(found) => found,
            Err(why) if why.is_bad_request() => {
                return Err(ApiError::BadRequest {
                    code: why.code(),
                    message: why.to_string(),
                });
            }
            Err(why) => return Err(ApiError::Unauthorized(why)),
        };
        tracing::debug!(?caller, ?via, "authenticated");
        Ok(caller)
    }

    /// The caller, who must be the operator or an admin consumer (`action` names the endpoint
    /// in the audit line of a refusal).
    async fn admin(
        &self,
        caller: Caller,
        action: crate::audit::Action,
    ) -> Result<Caller, ApiError> {
        if caller.may_administer() {
            Ok(caller)
        } else {
            // Refused either way; a failing audit sink changes nothing here.
            let _ = self.broker.audit_not_admin(&caller, action).await;
            Err(ApiError::NotAdmin)
        }
    }
}

/// Whether a request with a body to this route may hold material: every route but those whose
/// bodies are known to hold none (a document of references, a destination, a purge's source),
/// so a body sent to a neighbouring route, a wrong method or a path that is no route — a client's
/// mistake — is treated as the values it may be. Their answers close the connection
/// ([`observe::DoorSpec::carries_material`] says why).
fn carries_material(method: &axum::http::Method, route: &str) -> bool {
    use axum::http::Method;
    !matches!(
        (method, route),
        (&Method::POST, "/v1/resolve")
            | (&Method::POST, "/v1/credentials/{name}/material")
            | (&Method::POST, "/v1/admin/cache/purge")
            | (&Method::POST, "/v1/admin/reload")
    )
}

/// The probes and metrics alone (`[server] ops_listen`): for kubelets and scrapers that cannot
/// present client certificates. Nothing here carries a value or needs a caller.
pub(crate) fn ops_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The router; tests drive it without a socket (then no `Peer` is known: no certificate,
/// no trusted proxy).
pub fn router(state: Arc<AppState>) -> Router {
    // Every `/v1/` handler takes an [`Authenticated`] caller first.
    let routes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::admin_metrics))
        .route("/v1/resolve", post(resolve::resolve))
        .route(
            "/v1/credentials",
            get(credentials::list).post(manage::create),
        )
        .route(
            "/v1/credentials/{name}",
            get(credentials::info)
                .put(manage::replace)
                .patch(manage::patch)
                .delete(manage::delete),
        )
        .route("/v1/credentials/{name}/versions", get(manage::versions))
        .route("/v1/teams/{team}/credentials/{name}", get(manage::show))
        .route(
            "/api/v1/user_credentials",
            get(manage::tines_list).post(manage::tines_create),
        )
        .route(
            "/api/v1/user_credentials/{id}",
            get(manage::tines_show)
                .put(manage::tines_update)
                .delete(manage::tines_delete),
        )
        .route(
            "/v1/credentials/{name}/material",
            post(credentials::material),
        )
        .route("/v1/credentials/{name}/sign", post(credentials::sign))
        .route("/v1/consumers/self/certificates", post(renew::renew))
        .route(
            "/v1/teams/{team}/consumers",
            get(consumers::list).post(consumers::create),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}",
            get(consumers::show)
                .patch(consumers::update)
                .delete(consumers::delete),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}/token",
            post(consumers::token),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}/certificates",
            get(consumers::certificates).post(consumers::add_certificate),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}/certificates/{fingerprint}",
            delete(consumers::revoke_certificate),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}/issuer-acl",
            put(consumers::put_issuer_acl).delete(consumers::delete_issuer_acl),
        )
        .route(
            "/v1/teams/{team}/consumers/{name}/approle",
            post(consumers::set_approle).delete(consumers::delete_approle),
        )
        .route(
            "/v1/teams/{team}/revoked-certificates/{fingerprint}",
            delete(consumers::lift_revoked),
        )
        .route("/v1/admin/reload", post(admin::reload))
        .route("/v1/admin/cache/purge", post(admin::purge))
        .fallback(not_found)
        .with_state(Arc::clone(&state));
    // Around the routing, not through `Router::layer` (observe.rs says why).
    let limited = tower_layer::Layer::layer(&DefaultBodyLimit::max(MAX_BODY_BYTES), routes);
    let observed = door::api(limited, &state);
    Router::new().fallback_service(observed)
}

/// The caller of a `/v1/` request, found from the headers (and the connection's certificate).
/// Handlers take it before any other fallible extractor and before the body, so an anonymous
/// caller never costs a body buffer (THREATS row 26); a wrong method is refused (405) by the
/// router before it runs.
pub(crate) struct Authenticated(pub Caller);

impl axum::extract::FromRequestParts<Arc<AppState>> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let peer = parts.extensions.get::<Peer>();
        match state.caller(peer, &parts.headers).await {
            Ok(caller) => Ok(Self(caller)),
            Err(e) => Err(e.into_response()),
        }
    }
}

async fn not_found() -> Response {
    let body = "{\"error\":{\"code\":\"no_route\",\"message\":\"no such endpoint\"}}";
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Parses a JSON body without letting serde's message (which can quote input) out.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        code: "invalid_body",
        message: format!(
            "the body must be {shape} (line {}, column {})",
            e.line(),
            e.column()
        ),
    })
}

/// The destination a caller names, normalised.
fn destination(host: Option<&str>) -> Result<Option<crate::policy::Destination>, ApiError> {
    host.map(|h| {
        crate::policy::Destination::parse(h).map_err(|e| ApiError::BadRequest {
            code: e.code(),
            message: format!("host: {e}"),
        })
    })
    .transpose()
}

/// A 200 answer whose body is zeroized when hyper drops it.
fn secret_response(body: SecretBuf) -> Response {
    let mut response = Response::new(Body::from(Bytes::from_owner(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `If-Match` a management write names (the ETag the caller last read).
fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

/// `response` with the management ETag `etag`.
fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// A JSON answer without secrets.
fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
