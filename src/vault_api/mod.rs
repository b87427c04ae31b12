//! A read-only subset of Vault's HTTP API (docs/VAULT-API.md), so every Vault client — the
//! `bao`/`vault` CLIs, Vault Agent, hvac, external-secrets — reads through keybroker: each
//! source is a KV v2 mount named after it, `credentials/` holds the named credentials.
//!
//! A read of `<mount>/data/<path>` is the reference `$SECRET_<mount>:<path>` decided and audited
//! exactly as `/v1/resolve` decides it for that consumer, for the consumer's `vault_api_host`
//! (this API carries no destination). Answers have Vault's shapes and are built in zeroizing
//! buffers. **Boundary:** uses `broker`, `identity` and `door`; `api` does not
//! use it.

mod error;
pub(crate) mod jwt;
pub(crate) mod route;
pub(crate) mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::broker::{Ask, CredentialRead};
use crate::broker::{Broker, Caller, ConsumerRef, Failure, SecretRead};
use crate::door::listen::Peer;
use crate::identity::{AuthError, Door};
use crate::reference::SecretPath;
use crate::secret::SecretBuf;
pub use error::{VaultError, status};
use route::{Route, RouteError};
pub use token::TokenKey;

/// What the Vault API's handlers share.
#[derive(Debug)]
pub(crate) struct VaultApiState {
    pub broker: Arc<Broker>,
    pub tokens: Arc<TokenKey>,
    /// The one authenticator, set for this door: its own tokens and the policy's.
    pub auth: crate::identity::Authenticator,
    pub token_ttl: Duration,
    /// `[vault_api.jwt]`: the keys JWT and Kubernetes logins are verified with (none: both
    /// logins are refused).
    pub jwt: Option<jwt::JwtKeys>,
    /// `[vault_api.kubernetes]`: the Kubernetes login's own keys; absent, it uses `jwt`'s.
    pub kubernetes: Option<jwt::JwtKeys>,
}

/// The router: one handler, since Vault's paths are a tree of mounts rather than routes.
pub(crate) fn router(state: Arc<VaultApiState>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// The Vault-compatible API as a door (request metrics, timeout in Vault's error shape).
pub(crate) fn door() -> crate::door::observe::DoorSpec {
    crate::door::observe::DoorSpec {
        door: crate::identity::Door::VaultApi,
        route_of: route_label,
        timed_out: || VaultError::TimedOut.into_response(),
        json_errors: false,
        extra_wait: crate::door::observe::no_wait,
        // A login's `secret_id` is a credential: its connection's buffers go with it.
        carries_material: |_, route| route.starts_with("/v1/auth/") && route.ends_with("/login"),
    }
}

/// A closed vocabulary of routes for the request metrics: never the caller's path. Named as
/// the router reads the path (empty segments dropped, each segment percent-decoded), so
/// `/v1/auth/approle//%6Cogin/` is the login it is — and closes its connection as one.
fn route_label(raw: &str) -> &'static str {
    let segments: Vec<String> = raw
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let path = format!("/{}", segments.join("/"));
    match path.as_str() {
        "/v1/sys/health" => "/v1/sys/health",
        "/v1/auth/cert/login" => "/v1/auth/cert/login",
        "/v1/auth/approle/login" => "/v1/auth/approle/login",
        "/v1/auth/jwt/login" => "/v1/auth/jwt/login",
        "/v1/auth/kubernetes/login" => "/v1/auth/kubernetes/login",
        "/v1/auth/token/lookup-self" => "/v1/auth/token/lookup-self",
        p if p.starts_with("/v1/sys/") => "/v1/sys/*",
        p if p.starts_with("/v1/auth/") => "/v1/auth/*",
        p if p.starts_with("/v1/") => "/v1/{mount}/*",
        _ => "other",
    }
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn secret_answer(body: SecretBuf) -> Response {
    let mut r = Response::new(Body::from(Bytes::from_owner(body)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn request_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator is available");
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn handle(State(state): State<Arc<VaultApiState>>, request: Request) -> Response {
    answer(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn answer(state: &VaultApiState, request: Request) -> Result<Response, VaultError> {
    let (parts, body) = request.into_parts();
    let route = match route::route(&parts.method, parts.uri.path(), parts.uri.query()) {
        Ok(r) => r,
        Err(RouteError::NotApi) => return Err(VaultError::Unsupported),
        Err(RouteError::NotUtf8) => return Err(VaultError::BadRequest("the path is not UTF-8")),
    };
    let peer = parts.extensions.get::<Peer>().cloned();
    match route {
        Route::Health => {
            return Ok(json_answer(
                StatusCode::OK,
                &json!({
                    "initialized": true, "sealed": false, "standby": false,
                    "version": concat!("keybroker-", env!("CARGO_PKG_VERSION")),
                    "server_time_utc": unix(SystemTime::now()),
                }),
            ));
        }
        Route::Login => return login(state, peer.as_ref()).await,
        Route::AppRoleLogin => return approle_login(state, peer.as_ref(), body).await,
        Route::JwtLogin { kubernetes } => {
            return jwt_login(state, peer.as_ref(), body, kubernetes).await;
        }
        _ => {}
    }
    // Response wrapping is not served: a client asking for it must not get the secret
    // unwrapped in its place.
    if parts.headers.contains_key("x-vault-wrap-ttl") {
        return Err(VaultError::BadRequest(
            "response wrapping (X-Vault-Wrap-TTL) is not supported",
        ));
    }
    let caller = authenticate(state, &parts.headers, peer.as_ref()).await?;
    match route {
        Route::MountInfo(mount) => Ok(mount_info(&mount)),
        Route::LookupSelf => lookup_self(state, &caller, &parts.headers),
        Route::RenewSelf => Err(VaultError::BadRequest("lease is not renewable")),
        Route::ReadOnly => Err(VaultError::ReadOnly),
        Route::BadVersion => Err(VaultError::BadRequest("version is a number")),
        Route::List { mount, path } => list(state, &caller, &mount, &path).await,
        Route::Read {
            mount,
            path,
            version,
            metadata,
        } => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            read(state, &caller, &mount, &path, version, metadata).await
        }
        Route::Health
        | Route::Login
        | Route::AppRoleLogin
        | Route::JwtLogin { .. }
        | Route::NotFound => Err(VaultError::Unsupported),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The consumer a request's token names: a policy bearer token, or a token issued here.
async fn authenticate(
    state: &VaultApiState,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<Caller, VaultError> {
    let presented = crate::identity::Presented {
        door: crate::identity::Door::VaultApi,
        peer: peer.map(|p| p.addr.ip()),
        certificate: None,
        verifier: None,
        headers,
    };
    match state.broker.authenticate(&state.auth, presented).await {
        Ok((caller, _)) => Ok(caller),
        Err(why) if why.is_bad_request() => Err(VaultError::BadAuth(why)),
        // Vault's own answer to a missing or wrong token.
        Err(why) => Err(VaultError::Failed(why.into())),
    }
}

/// `auth/cert/login`: the connection's verified client certificate → its consumer → a token.
async fn login(state: &VaultApiState, peer: Option<&Peer>) -> Result<Response, VaultError> {
    let snapshot = state.broker.policy();
    // The matcher authentication uses: a certificate two consumers claim gets no token.
    let found = match peer.and_then(|p| p.certificate.as_deref()) {
        None => Err(AuthError::Missing),
        Some(cert) => snapshot
            .identities()
            .by_certificate(snapshot.policy(), cert, SystemTime::now())
            .map_err(|crate::identity::Ambiguous| AuthError::AmbiguousIdentity)
            .and_then(|i| i.ok_or(AuthError::UnknownCertificate)),
    };
    let index = match found {
        Ok(i) => i,
        Err(why) => {
            if why == AuthError::AmbiguousIdentity {
                state.broker.metrics().ambiguous_identity();
            }
            let _ = state
                .broker
                .audit_unauthenticated(why.code(), peer.map(|p| p.addr.ip()))
                .await;
            return Err(Failure::Denied.into());
        }
    };
    // The token carries the pin or issuer ACL that identified the certificate: it dies when
    // that is removed.
    let cert = peer.and_then(|p| p.certificate.as_deref());
    let to = cert.and_then(|cert| {
        let consumer = &snapshot.policy().consumers[index];
        crate::identity::Login::of_certificate(consumer, cert, SystemTime::now()).map(|login| {
            crate::identity::IssuedTo {
                consumer: consumer.name.clone(),
                team: consumer.team.clone(),
                origin: consumer.origin,
                login,
            }
        })
    });
    issue_to(state, &snapshot, index, to, None).await
}

/// What `auth/approle/login` takes (Vault's names). The `secret_id` is held in a zeroizing
/// string and never printed.
#[derive(serde::Deserialize)]
struct AppRoleBody {
    role_id: String,
    secret_id: crate::source::FieldValue,
}

/// A login body is small; more is refused before it is read whole.
const LOGIN_BODY_MAX: usize = 8 * 1024;

/// A login's JSON body: at most [`LOGIN_BODY_MAX`] bytes, read into a zeroizing buffer (it
/// holds a secret), else Vault's 400 — `missing` when it does not parse as `T`.
async fn login_body<T: serde::de::DeserializeOwned>(
    body: Body,
    missing: &'static str,
) -> Result<T, VaultError> {
    let Ok(bytes) = axum::body::to_bytes(body, LOGIN_BODY_MAX).await else {
        return Err(VaultError::BadRequest(
            "the login body is too large or cut short",
        ));
    };
    let bytes = zeroize::Zeroizing::new(bytes.to_vec());
    serde_json::from_slice(&bytes).map_err(|_| VaultError::BadRequest(missing))
}

/// `auth/approle/login`: `role_id` and `secret_id` → their consumer → a token. A wrong role
/// and a wrong secret get one answer (Vault's 400 `invalid role or secret ID`), counted and
/// audited as every failed authentication is (the refusal budget).
async fn approle_login(
    state: &VaultApiState,
    peer: Option<&Peer>,
    body: Body,
) -> Result<Response, VaultError> {
    let login: AppRoleBody = login_body(body, "missing role_id or secret_id").await?;
    let snapshot = state.broker.policy();
    let now = SystemTime::now();
    let peer_ip = peer.map(|p| p.addr.ip());
    // The role and secret first, then the secret's bounds — an expired `secret_id` or one
    // presented from outside `secret_id_bound_cidrs` is refused like a wrong one.
    let found = snapshot
        .identities()
        .by_approle(&login.role_id, login.secret_id.0.expose_secret())
        .and_then(|i| {
            let role = snapshot.policy().consumers[i].approle.as_ref()?;
            role.admits_login(peer_ip, now)
                .then_some((i, role.secret_id_expires_at))
        });
    match found {
        Some((index, until)) => {
            issue_until(
                state,
                &snapshot,
                index,
                crate::identity::Login::AppRole,
                until,
            )
            .await
        }
        None => {
            let _ = state
                .broker
                .audit_unauthenticated("approle_refused", peer.map(|p| p.addr.ip()))
                .await;
            Err(VaultError::BadRequest("invalid role or secret ID"))
        }
    }
}

/// What `auth/jwt/login` and `auth/kubernetes/login` take (Vault's names).
#[derive(serde::Deserialize)]
struct JwtBody {
    role: String,
    jwt: crate::source::FieldValue,
}

/// `auth/jwt/login` and `auth/kubernetes/login`: a role and a JWT → the role's consumer → a
/// token, when the JWT is good ([`jwt::JwtKeys::verify`]) and carries what the role binds
/// (a `sub`; for Kubernetes, `system:serviceaccount:<namespace>:<service_account>`). One
/// answer for every refusal — an unknown role, a bad signature, a wrong audience, issuer or
/// subject, an expired token — audited and budgeted as every failed authentication.
async fn jwt_login(
    state: &VaultApiState,
    peer: Option<&Peer>,
    body: Body,
    kubernetes: bool,
) -> Result<Response, VaultError> {
    let login: JwtBody = login_body(body, "missing role or jwt").await?;
    let snapshot = state.broker.policy();
    let consumers = &snapshot.policy().consumers;
    // Each login its own keys when the operator separated them: a token of the JWT issuer is
    // never a service-account token, nor the reverse.
    let keys = if kubernetes {
        state.kubernetes.as_ref().or(state.jwt.as_ref())
    } else {
        state.jwt.as_ref()
    };
    let found = keys.and_then(|keys| {
        // The token first, whatever the role: a missing role costs the same work.
        let claims = keys.verify(login.jwt.0.expose_secret())?;
        let sub = claims.sub.as_deref();
        if kubernetes {
            let i = snapshot.identities().by_kubernetes_role(&login.role)?;
            let k = consumers[i].kubernetes.as_ref()?;
            let want = format!(
                "system:serviceaccount:{}:{}",
                k.namespace, k.service_account
            );
            (claims.for_audience(&k.audience) && sub == Some(want.as_str()))
                .then_some((i, claims.expires_at()))
        } else {
            let i = snapshot.identities().by_jwt_role(&login.role)?;
            let j = consumers[i].jwt.as_ref()?;
            let audience = j.bound_audiences.iter().any(|a| claims.for_audience(a));
            (audience && sub == Some(j.bound_subject.as_str())).then_some((i, claims.expires_at()))
        }
    });
    let login_kind = if kubernetes {
        crate::identity::Login::Kubernetes
    } else {
        crate::identity::Login::Jwt
    };
    match found {
        // The token issued never outlives the JWT that got it.
        Some((index, until)) => issue_until(state, &snapshot, index, login_kind, Some(until)).await,
        None => {
            let code = if kubernetes {
                "kubernetes_refused"
            } else {
                "jwt_refused"
            };
            let _ = state
                .broker
                .audit_unauthenticated(code, peer.map(|p| p.addr.ip()))
                .await;
            Err(VaultError::BadRequest("invalid role or JWT"))
        }
    }
}

/// A token for the consumer at `index` by `login`, its lifetime cut to end by `until` (what the login was valid until:
/// a `secret_id`'s expiry, a JWT's `exp`) — a token never outlives the credential that got it.
async fn issue_until(
    state: &VaultApiState,
    snapshot: &Arc<crate::identity::Snapshot>,
    index: usize,
    login: crate::identity::Login,
    until: Option<SystemTime>,
) -> Result<Response, VaultError> {
    let to = crate::identity::IssuedTo::by(&snapshot.policy().consumers[index], login);
    issue_to(state, snapshot, index, to, until).await
}

/// A token for `to` (the consumer at `index`, by the login `to` names), in Vault's login
/// answer, its lifetime cut to end by `until`.
async fn issue_to(
    state: &VaultApiState,
    snapshot: &Arc<crate::identity::Snapshot>,
    index: usize,
    to: Option<crate::identity::IssuedTo>,
    until: Option<SystemTime>,
) -> Result<Response, VaultError> {
    let now = SystemTime::now();
    let ttl = until.map_or(state.token_ttl, |end| {
        let left = end.duration_since(now).unwrap_or_default();
        state.token_ttl.min(left)
    });
    let name = snapshot.policy().consumers[index].name.clone();
    // A token is a credential handed out: audited like a read (and refused when the trail
    // cannot be written).
    let (Some(consumer), Some(to)) = (ConsumerRef::of(Arc::clone(snapshot), &name), to) else {
        return Err(Failure::Denied.into());
    };
    if state
        .broker
        .audit_login(&Caller::Consumer(consumer), Door::VaultApi)
        .await
        .is_err()
    {
        return Err(Failure::AuditUnavailable.into());
    }
    let token = state.tokens.issue(&to, ttl, now);
    let mut body = SecretBuf::with_capacity(token.len() + 512);
    body.push_str("{\"request_id\":");
    body.push_quoted(&request_id());
    body.push_str(",\"lease_id\":\"\",\"renewable\":false,\"lease_duration\":0,\"data\":null,\"wrap_info\":null,\"warnings\":null,\"auth\":{\"client_token\":");
    body.push_quoted(&token);
    body.push_str(",\"accessor\":\"\",\"policies\":[\"default\"],\"token_policies\":[\"default\"],\"metadata\":{\"consumer\":");
    body.push_quoted(&name);
    body.push_str(&format!(
        "}},\"lease_duration\":{},\"renewable\":false,\"entity_id\":\"\",\"token_type\":\"service\",\"orphan\":true}}}}",
        ttl.as_secs()
    ));
    Ok(secret_answer(body))
}

fn lookup_self(
    state: &VaultApiState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Response, VaultError> {
    let Caller::Consumer(c) = caller else {
        return Err(Failure::Denied.into());
    };
    let ttl = crate::identity::presented_token(headers, crate::identity::Door::VaultApi)
        .ok()
        .flatten()
        .filter(|t| token::is_issued(t))
        .map_or(0, |t| state.tokens.ttl_left(t, SystemTime::now()));
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "request_id": request_id(), "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {
                "display_name": c.name(), "policies": ["default"], "meta": { "team": c.team() },
                "renewable": false, "ttl": ttl, "type": "service", "orphan": true,
                "path": "auth/token/create", "entity_id": "",
            },
            "wrap_info": null, "warnings": null, "auth": null,
        }),
    ))
}

/// The CLI's mount detection: every first segment is a KV v2 mount, known or not, so the
/// answer says nothing about which sources exist (docs/THREATS.md row 33).
fn mount_info(mount: &str) -> Response {
    json_answer(
        StatusCode::OK,
        &json!({
            "request_id": request_id(), "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {
                "path": format!("{mount}/"), "type": "kv", "description": "keybroker",
                "options": { "version": "2" }, "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
                "local": false, "seal_wrap": false, "external_entropy_access": false,
            },
            "wrap_info": null, "warnings": null, "auth": null,
        }),
    )
}

/// `LIST credentials/metadata/`: the names of the credentials the caller may read for its
/// `vault_api_host` — decided as a read of each would be, so a list reveals nothing a read
/// would not (one it may not read is absent, never a 403). Vault answers 404 for an empty
/// list. `LIST <source>/metadata/<folder>/`: the broker's read of a [`crate::broker::SecretList`], decided
/// the same way; a source that cannot list (CCP, PKI, HTTP) answers 405.
async fn list(
    state: &VaultApiState,
    caller: &Caller,
    mount: &str,
    path: &[String],
) -> Result<Response, VaultError> {
    let Caller::Consumer(c) = caller else {
        return Err(Failure::Denied.into());
    };
    let Some(host) = c.consumer().vault_api_host.clone() else {
        return Err(VaultError::NotFound);
    };
    if mount != "credentials" {
        let name_ok = !mount.is_empty()
            && mount
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let folder_ok =
            path.is_empty() || SecretPath::from_segments(path.iter().map(String::as_str)).is_ok();
        if !name_ok || !folder_ok {
            return Err(VaultError::NotFound);
        }
        let listed = state
            .broker
            .read(
                Ask::new(
                    caller,
                    Door::VaultApi,
                    crate::broker::SecretList {
                        source: mount.to_owned(),
                        folder: path.to_vec(),
                    },
                )
                .towards(Some(&host)),
            )
            .await;
        return match listed {
            Ok(None) => Err(VaultError::ReadOnly),
            Ok(Some(keys)) if keys.is_empty() => Err(VaultError::NotFound),
            Ok(Some(keys)) => Ok(json_answer(
                StatusCode::OK,
                &json!({
                    "request_id": request_id(), "lease_id": "", "renewable": false, "lease_duration": 0,
                    "data": { "keys": keys }, "wrap_info": null, "warnings": null, "auth": null,
                }),
            )),
            Err(f) => Err(f.into()),
        };
    }
    if !path.is_empty() {
        // Credential names are flat: nothing lies under one.
        return Err(VaultError::NotFound);
    }
    let listed = state.broker.list_credentials(caller).await?;
    let snapshot = state.broker.policy();
    let keys: Vec<String> = listed
        .into_iter()
        .filter(|s| {
            snapshot
                .policy()
                .decide_credential(c.name(), &s.name, Some(&host))
                .0
                .allowed
        })
        .map(|s| s.name)
        .collect();
    if keys.is_empty() {
        return Err(VaultError::NotFound);
    }
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "request_id": request_id(), "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": { "keys": keys }, "wrap_info": null, "warnings": null, "auth": null,
        }),
    ))
}

/// `<mount>/data/<path>` (or `metadata/`): a credential, or a whole secret of a source.
async fn read(
    state: &VaultApiState,
    caller: &Caller,
    mount: &str,
    path: &[&str],
    version: Option<u64>,
    metadata_only: bool,
) -> Result<Response, VaultError> {
    let host = match caller {
        Caller::Consumer(c) => c.consumer().vault_api_host.clone(),
        _ => None,
    };
    if mount == "credentials" {
        let [name] = path else {
            return Err(VaultError::NotFound);
        };
        let m = state
            .broker
            .read(
                Ask::new(caller, Door::VaultApi, CredentialRead::named(*name))
                    .towards(host.as_ref()),
            )
            .await?;
        let size = m
            .values
            .iter()
            .map(|(k, v)| k.len() + v.expose_secret().len() + 8)
            .sum::<usize>();
        let mut inner = SecretBuf::with_capacity(size + 2);
        inner.push_object(m.values.iter().map(|(k, v)| (k.as_str(), v)));
        return Ok(envelope(&inner, 1, metadata_only));
    }
    // The mount must be a source name, the path one keybroker's references can hold; the
    // broker reads it as a typed read (no reference text is built from the URL).
    let name_ok = !mount.is_empty()
        && mount
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let Ok(secret_path) = SecretPath::from_segments(path.iter().copied()) else {
        return Err(VaultError::BadRequest("invalid path"));
    };
    if !name_ok {
        return Err(Failure::Denied.into());
    }
    let read = SecretRead {
        source: mount.to_owned(),
        path: secret_path,
        version,
    };
    let answer = state
        .broker
        .read(Ask::new(caller, Door::VaultApi, read).towards(host.as_ref()))
        .await?;
    Ok(envelope(
        &answer.fields,
        answer.version.unwrap_or(1),
        metadata_only,
    ))
}

/// Vault's KV v2 answer around `data` (a JSON object, in a zeroizing buffer), or — for
/// `metadata/` — the metadata alone.
fn envelope(data: &SecretBuf, version: u64, metadata_only: bool) -> Response {
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    if metadata_only {
        return json_answer(
            StatusCode::OK,
            &json!({
                "request_id": request_id(), "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {
                    "cas_required": false, "created_time": now, "current_version": version,
                    "custom_metadata": null, "delete_version_after": "0s", "max_versions": 0,
                    "oldest_version": 0, "updated_time": now,
                    "versions": { version.to_string(): { "created_time": now, "deletion_time": "", "destroyed": false } },
                },
                "wrap_info": null, "warnings": null, "auth": null,
            }),
        );
    }
    let mut out = SecretBuf::with_capacity(data.as_bytes().len() + 400);
    out.push_str("{\"request_id\":");
    out.push_quoted(&request_id());
    out.push_str(",\"lease_id\":\"\",\"renewable\":false,\"lease_duration\":0,\"data\":{\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push_str(",\"metadata\":{\"created_time\":");
    out.push_quoted(&now);
    out.push_str(&format!(
        ",\"custom_metadata\":null,\"deletion_time\":\"\",\"destroyed\":false,\"version\":{version}}}}},\"wrap_info\":null,\"warnings\":null,\"auth\":null}}"
    ));
    secret_answer(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_vaults() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
