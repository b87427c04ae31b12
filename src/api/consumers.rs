//! The management routes of consumers (docs/MANAGEMENT.md, "Consumers"): thin — parse, hand
//! to the broker's management decision, render. A token goes out once, in the answer that
//! made it, from a zeroizing buffer; no other answer carries it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::names::NamePath;
use super::{
    ApiError, AppState, Authenticated, if_match, json_response, parse_body, secret_response,
    with_etag,
};
use crate::manage::{
    AclInput, ApproleInput, CertificateInput, ConsumerInput, ConsumerPatch, EntryName,
    ManagedConsumer, TeamSlug,
};
use crate::secret::SecretBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: EntryName,
    #[serde(default)]
    admin_teams: Vec<TeamSlug>,
    vault_api_host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    admin_teams: Option<Vec<TeamSlug>>,
    /// `null` removes it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    vault_api_host: Option<Option<String>>,
}

/// A field given as `null` is `Some(None)`, an absent one `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateBody {
    certificate: String,
    starts_at: Option<String>,
    ends_at: Option<String>,
}

/// Apinizer's names are accepted beside keybroker's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclBody {
    issuer_ca: String,
    subject: String,
    #[serde(default = "yes", alias = "validateCertificate")]
    validate_certificate: bool,
    #[serde(default = "yes", alias = "validateACLForIssuer")]
    validate_acl_for_issuer: bool,
}

/// Vault's names for a `secret_id`'s options. `secret_id_ttl` as Vault takes it: seconds, or
/// a duration (`"90m"`, `"24h"`); CIDR lists as arrays or one comma-separated string.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproleBody {
    secret_id_ttl: Option<Ttl>,
    secret_id_num_uses: Option<u64>,
    #[serde(default)]
    secret_id_bound_cidrs: Cidrs,
    #[serde(default)]
    token_bound_cidrs: Cidrs,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Cidrs {
    #[default]
    None,
    List(Vec<String>),
    Text(String),
}

impl Cidrs {
    fn into_list(self) -> Vec<String> {
        match self {
            Self::None => Vec::new(),
            Self::List(l) => l,
            Self::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

impl Ttl {
    fn duration(self) -> Result<std::time::Duration, ApiError> {
        match self {
            Self::Seconds(s) => Ok(std::time::Duration::from_secs(s)),
            Self::Text(t) if t.len() <= 32 => t
                .parse::<u64>()
                .map(std::time::Duration::from_secs)
                .or_else(|_| humantime::parse_duration(&t))
                .map_err(|_| bad_ttl()),
            Self::Text(_) => Err(bad_ttl()),
        }
    }
}

fn bad_ttl() -> ApiError {
    ApiError::BadRequest {
        code: "invalid_body",
        message: "secret_id_ttl: seconds, or a duration such as \"24h\"".to_owned(),
    }
}

fn yes() -> bool {
    true
}

fn answer(status: StatusCode, m: &ManagedConsumer) -> Response {
    with_etag(json_response(status, m), &m.etag)
}

/// The consumer with its new token: `{"token": …, <the consumer's fields>}`, in a buffer
/// zeroized when the answer is dropped.
fn with_token(status: StatusCode, m: &ManagedConsumer, token: &Zeroizing<String>) -> Response {
    let rest = serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned());
    let mut body = SecretBuf::with_capacity(rest.len() + token.len() + 16);
    body.push_str("{\"token\":");
    body.push_quoted(token);
    if rest.len() > 2 {
        body.push_str(",");
    }
    body.push_str(&rest[1..]);
    let mut r = secret_response(body);
    *r.status_mut() = status;
    with_etag(r, &m.etag)
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(team): NamePath<TeamSlug>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CreateBody = parse_body(&body, "a consumer: {name, admin_teams, vault_api_host}")?;
    let input = ConsumerInput {
        name: body.name,
        team,
        admin_teams: body.admin_teams,
        vault_api_host: body.vault_api_host,
    };
    let (m, token) = state.manager.create_consumer(&caller, input).await?;
    Ok(with_token(StatusCode::CREATED, &m, &token))
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(team): NamePath<TeamSlug>,
) -> Result<Response, ApiError> {
    let list = state.manager.list_consumers(&caller, &team).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "consumers": list }),
    ))
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
) -> Result<Response, ApiError> {
    let m = state.manager.show_consumer(&caller, &team, &name).await?;
    Ok(answer(StatusCode::OK, &m))
}

pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: PatchBody = parse_body(&body, "consumer fields: {admin_teams, vault_api_host}")?;
    let patch = ConsumerPatch {
        admin_teams: body.admin_teams,
        vault_api_host: body.vault_api_host,
    };
    let m = state
        .manager
        .update_consumer(&caller, &team, &name, patch, if_match(&headers))
        .await?;
    Ok(answer(StatusCode::OK, &m))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .manager
        .delete_consumer(&caller, &team, &name, if_match(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST …/token`: a new token, returned once; the old one stops working.
pub(super) async fn token(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (m, token) = state
        .manager
        .rotate_consumer_token(&caller, &team, &name, if_match(&headers))
        .await?;
    Ok(with_token(StatusCode::OK, &m, &token))
}

pub(super) async fn certificates(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
) -> Result<Response, ApiError> {
    let m = state.manager.show_consumer(&caller, &team, &name).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "certificates": m.certificates }),
    ))
}

pub(super) async fn add_certificate(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CertificateBody =
        parse_body(&body, "a certificate: {certificate, starts_at, ends_at}")?;
    let input = CertificateInput {
        certificate: body.certificate,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
    };
    // The verifier handshakes use now: chain to client_ca, revocation by client_crl.
    let tls = state.main_tls();
    let verifier = tls.as_ref().and_then(|t| t.verifier.as_deref());
    let added = state
        .manager
        .add_consumer_certificate(&caller, &team, &name, input, verifier)
        .await?;
    Ok(json_response(StatusCode::CREATED, &added))
}

pub(super) async fn revoke_certificate(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name, fingerprint)): NamePath<(TeamSlug, EntryName, String)>,
) -> Result<Response, ApiError> {
    let revoked = state
        .manager
        .revoke_consumer_certificate(&caller, &team, &name, &fingerprint)
        .await?;
    Ok(json_response(StatusCode::OK, &revoked))
}

/// `DELETE /v1/teams/{team}/revoked-certificates/{fingerprint}`: the operator lifts the
/// tombstone of a fingerprint revoked by a consumer since deleted.
pub(super) async fn lift_revoked(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, fingerprint)): NamePath<(TeamSlug, String)>,
) -> Result<Response, ApiError> {
    state
        .manager
        .lift_revoked(&caller, &team, &fingerprint)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn put_issuer_acl(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: AclBody = parse_body(
        &body,
        "an issuer ACL: {issuer_ca, subject, validate_certificate, validate_acl_for_issuer}",
    )?;
    let acl = AclInput {
        issuer_ca: body.issuer_ca,
        subject: body.subject,
        validate_certificate: body.validate_certificate,
        validate_acl_for_issuer: body.validate_acl_for_issuer,
    };
    // An ACL's CA must be, or chain to, a certificate of `client_ca` (the handshakes').
    let tls = state.main_tls();
    let client_cas = tls.as_ref().map_or(&[][..], |t| &t.client_cas[..]);
    let m = state
        .manager
        .set_issuer_acl(
            &caller,
            &team,
            &name,
            Some((acl, client_cas)),
            if_match(&headers),
        )
        .await?;
    Ok(answer(StatusCode::OK, &m))
}

pub(super) async fn delete_issuer_acl(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let m = state
        .manager
        .set_issuer_acl(&caller, &team, &name, None, if_match(&headers))
        .await?;
    Ok(answer(StatusCode::OK, &m))
}

/// `POST …/approle`: the consumer's AppRole made, or its `secret_id` replaced — `role_id` and
/// `secret_id` answered once, with the consumer (`{"role_id", "secret_id", …}`) in a buffer
/// zeroized when the answer is dropped. An empty body takes Vault's defaults.
pub(super) async fn set_approle(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let shape = "AppRole options: {secret_id_ttl, secret_id_bound_cidrs, token_bound_cidrs}";
    let body: ApproleBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproleBody {
            secret_id_ttl: None,
            secret_id_num_uses: None,
            secret_id_bound_cidrs: Cidrs::None,
            token_bound_cidrs: Cidrs::None,
        }
    } else {
        parse_body(&body, shape)?
    };
    let input = ApproleInput {
        secret_id_ttl: body.secret_id_ttl.map(Ttl::duration).transpose()?,
        secret_id_num_uses: body.secret_id_num_uses,
        secret_id_bound_cidrs: body.secret_id_bound_cidrs.into_list(),
        token_bound_cidrs: body.token_bound_cidrs.into_list(),
    };
    let (m, secret_id) = state
        .manager
        .set_approle(&caller, &team, &name, input, if_match(&headers))
        .await?;
    let rest = serde_json::to_string(&m).unwrap_or_else(|_| "{}".to_owned());
    let role_id = m.approle.as_ref().map_or("", |a| a.role_id.as_str());
    let mut out = SecretBuf::with_capacity(rest.len() + role_id.len() + secret_id.len() + 32);
    out.push_str("{\"role_id\":");
    out.push_quoted(role_id);
    out.push_str(",\"secret_id\":");
    out.push_quoted(&secret_id);
    if rest.len() > 2 {
        out.push_str(",");
    }
    out.push_str(&rest[1..]);
    Ok(with_etag(secret_response(out), &m.etag))
}

/// `DELETE …/approle`: the AppRole removed; its `secret_id` and tokens stop working.
pub(super) async fn delete_approle(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let m = state
        .manager
        .delete_approle(&caller, &team, &name, if_match(&headers))
        .await?;
    Ok(answer(StatusCode::OK, &m))
}
