//! The management routes (docs/MANAGEMENT.md): thin — parse, hand to the broker's management
//! decision, render. Values come in by value and never go out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::names::{NamePath, NameQuery};
use super::{ApiError, AppState, Authenticated, if_match, parse_body, with_etag};
use crate::manage::{CredentialInput, CredentialPatch, EntryName, IfMatch, Managed, TeamSlug};
use crate::policy::{CredentialMode, ReadAccess};
use crate::source::FieldValue;

/// `POST /v1/credentials`, `PUT /v1/credentials/{name}`: keybroker's own shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialBody {
    name: Option<EntryName>,
    team: TeamSlug,
    mode: CredentialMode,
    client_certificate: Option<FieldValue>,
    client_private_key: Option<FieldValue>,
    root_certificate: Option<FieldValue>,
    /// The upstream's trust when it differs from `root_certificate`.
    upstream_ca: Option<FieldValue>,
    value: Option<FieldValue>,
    #[serde(default)]
    read_access: ReadAccess,
    #[serde(default)]
    shared_team_slugs: Vec<TeamSlug>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// `PUT` only: stage the rotation for this time (RFC 3339).
    activate_at: Option<String>,
}

impl CredentialBody {
    fn input(self, name: EntryName) -> Result<CredentialInput, ApiError> {
        let activate_at = self
            .activate_at
            .as_deref()
            .map(|t| {
                crate::policy::rfc3339(t).ok_or_else(|| ApiError::BadRequest {
                    code: "invalid",
                    message: "activate_at: an RFC 3339 time".to_owned(),
                })
            })
            .transpose()?;
        Ok(CredentialInput {
            activate_at,
            ..self.input_now(name)
        })
    }

    fn input_now(self, name: EntryName) -> CredentialInput {
        CredentialInput {
            name,
            team: self.team,
            mode: self.mode,
            client_certificate: self.client_certificate.map(|v| v.0),
            client_private_key: self.client_private_key.map(|v| v.0),
            root_certificate: self.root_certificate.map(|v| v.0),
            upstream_ca: self.upstream_ca.map(|v| v.0),
            value: self.value.map(|v| v.0),
            read_access: self.read_access,
            shared_team_slugs: self.shared_team_slugs,
            allowed_hosts: self.allowed_hosts,
            description: self.description,
            metadata: self.metadata,
            display_name: None,
            folder_id: None,
            activate_at: None,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct WriteQuery {
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
pub(super) struct TeamQuery {
    team: Option<TeamSlug>,
}

/// The `If-Match` of a write on `/v1/credentials/{name}`, as the manager compares it. RFC 9110:
/// a validator a caller got from a `GET` on a URI is what a conditional request on that URI
/// compares — the ETag of `GET /v1/credentials/{name}` (the metadata answer, as this caller
/// sees it now) stands for the stored credential's management ETag; any other is compared as
/// given (a management ETag from `GET /v1/teams/{team}/credentials/{name}`, or a stale one).
async fn uri_if_match(
    state: &AppState,
    caller: &crate::broker::Caller,
    team: &TeamSlug,
    name: &EntryName,
    headers: &HeaderMap,
) -> Option<String> {
    let given = if_match(headers)?;
    let on_this_uri = super::credentials::info_tagged(state, caller, name)
        .await
        .is_ok_and(|(_, tag)| tag == given);
    if on_this_uri && let Ok(m) = state.manager.show_credential(caller, team, name).await {
        return Some(m.etag);
    }
    Some(given.to_owned())
}

fn answer(status: StatusCode, m: &Managed) -> Response {
    with_etag(super::json_response(status, m), &m.etag)
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CredentialBody = parse_body(&body, "a credential definition with its material")?;
    let name = body.name.clone().ok_or(ApiError::BadRequest {
        code: "invalid",
        message: "name: required".to_owned(),
    })?;
    let managed = state
        .manager
        .create_credential(&caller, body.input(name)?, q.dry_run)
        .await?;
    let status = if q.dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(answer(status, &managed))
}

pub(super) async fn replace(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<EntryName>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CredentialBody = parse_body(&body, "a credential definition with its material")?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::BadRequest {
            code: "invalid",
            message: "name: differs from the path (a rename is a create and a delete)".to_owned(),
        });
    }
    let input = body.input(name)?;
    let expected = uri_if_match(&state, &caller, &input.team, &input.name, &headers).await;
    let managed = state
        .manager
        .replace_credential(&caller, input, IfMatch::Required(expected.as_deref()))
        .await?;
    Ok(answer(StatusCode::OK, &managed))
}

pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<EntryName>,
    NameQuery(q): NameQuery<TeamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let team = state.manager.team_of(&caller, &name, q.team)?;
    let expected = uri_if_match(&state, &caller, &team, &name, &headers).await;
    state
        .manager
        .delete_credential(&caller, &team, &name, expected.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /v1/credentials/{name}`: definition fields only; the material stays.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    team: Option<TeamSlug>,
    read_access: Option<ReadAccess>,
    shared_team_slugs: Option<Vec<TeamSlug>>,
    allowed_hosts: Option<Vec<String>>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

pub(super) async fn patch(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<EntryName>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: PatchBody = parse_body(&body, "definition fields of a credential")?;
    let team = state.manager.team_of(&caller, &name, body.team)?;
    let patch = CredentialPatch {
        read_access: body.read_access,
        shared_team_slugs: body.shared_team_slugs,
        allowed_hosts: body.allowed_hosts,
        description: body.description,
        metadata: body.metadata,
        ..CredentialPatch::default()
    };
    let expected = uri_if_match(&state, &caller, &team, &name, &headers).await;
    let m = state
        .manager
        .patch_credential(
            &caller,
            &team,
            &name,
            patch,
            IfMatch::Required(expected.as_deref()),
        )
        .await?;
    Ok(answer(StatusCode::OK, &m))
}

/// `GET /v1/credentials/{name}/versions`: who wrote each material version when, and its
/// certificate's fingerprint and `notAfter`.
pub(super) async fn versions(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<EntryName>,
    NameQuery(q): NameQuery<TeamQuery>,
) -> Result<Response, ApiError> {
    let team = state.manager.team_of(&caller, &name, q.team)?;
    let versions = state
        .manager
        .credential_versions(&caller, &team, &name)
        .await?;
    Ok(super::json_response(
        StatusCode::OK,
        &json!({ "team": team, "name": name, "versions": versions }),
    ))
}

/// `GET /v1/teams/{team}/credentials/{name}`: the store's view (definition and record) with
/// its ETag, for a replace or delete.
pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath((team, name)): NamePath<(TeamSlug, EntryName)>,
) -> Result<Response, ApiError> {
    let m = state.manager.show_credential(&caller, &team, &name).await?;
    Ok(answer(StatusCode::OK, &m))
}

// ---- Tines' shape: /api/v1/user_credentials (docs/MANAGEMENT.md, "Tines' shape") ----

#[derive(Deserialize)]
struct TinesBody {
    name: String,
    mode: String,
    team_id: serde_json::Value,
    mtls_client_certificate: Option<FieldValue>,
    mtls_client_private_key: Option<FieldValue>,
    mtls_root_certificate: Option<FieldValue>,
    /// keybroker's extension of Tines' shape: the upstream's trust when it differs from
    /// `mtls_root_certificate`.
    mtls_upstream_ca: Option<FieldValue>,
    value: Option<FieldValue>,
    folder_id: Option<u64>,
    #[serde(default)]
    read_access: ReadAccess,
    #[serde(default)]
    shared_team_slugs: Vec<TeamSlug>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

/// Tines' `slug`: the name lower-cased, every other character an underscore.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn tines(m: &Managed, tines_id: Option<u64>) -> serde_json::Value {
    json!({
        "id": m.record.id,
        "name": m.record.display_name.clone().unwrap_or_else(|| m.name.to_string()),
        "mode": match m.mode { CredentialMode::Mtls => "MTLS", _ => "TEXT" },
        "team_id": tines_id.map_or_else(|| json!(m.team), |id| json!(id)),
        "folder_id": m.record.folder_id,
        "read_access": m.read_access,
        "shared_team_slugs": m.shared_team_slugs,
        "slug": m.name,
        "created_at": m.record.created_at,
        "updated_at": m.record.updated_at,
        "description": m.description,
        "allowed_hosts": m.allowed_hosts,
        "metadata": m.metadata,
    })
}

/// Tines' `name` (shown back as given).
const MAX_TINES_NAME: usize = 256;

fn tines_id_of(state: &AppState, team: &str) -> Option<u64> {
    let snapshot = state.broker.policy();
    snapshot
        .policy()
        .tines_ids
        .iter()
        .find(|(_, t)| *t == team)
        .map(|(id, _)| *id)
}

pub(super) async fn tines_create(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TinesBody = parse_body(&body, "a Tines user_credentials request")?;
    let mode = match body.mode.as_str() {
        "MTLS" => CredentialMode::Mtls,
        "TEXT" => CredentialMode::Text,
        _ => {
            return Err(ApiError::BadRequest {
                code: "invalid",
                message: "mode: MTLS or TEXT".to_owned(),
            });
        }
    };
    // `team_id`: the team's `tines_id` from the policy, or its slug. A numeric ID of a team
    // the caller may not manage answers as one no team has, naming nothing: the answer is no
    // map from Tines IDs to other teams' slugs.
    let numeric = body.team_id.as_u64();
    let team = match &body.team_id {
        serde_json::Value::Number(n) => {
            let snapshot = state.broker.policy();
            n.as_u64()
                .and_then(|id| snapshot.policy().tines_ids.get(&id).cloned())
                .filter(|t| caller.may_manage(t))
        }
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
    .and_then(|t| TeamSlug::parse(&t).ok())
    .ok_or_else(|| match numeric {
        Some(id) => crate::manage::ManageError::NotAllowed(format!("tines team {id}")).into(),
        None => ApiError::BadRequest {
            code: "invalid",
            message: "team_id: a team's tines_id or slug".to_owned(),
        },
    })?;
    // Tines' name is shown back as given; keybroker's name is its slug, a name like any.
    if body.name.len() > MAX_TINES_NAME {
        return Err(ApiError::BadRequest {
            code: "invalid",
            message: "name: at most 256 bytes".to_owned(),
        });
    }
    let name = EntryName::parse(&slug(&body.name)).map_err(|_| ApiError::BadRequest {
        code: "invalid",
        message: "name: its slug must match [a-z0-9_-]{1,64}".to_owned(),
    })?;
    let input = CredentialInput {
        name,
        team,
        mode,
        client_certificate: body.mtls_client_certificate.map(|v| v.0),
        client_private_key: body.mtls_client_private_key.map(|v| v.0),
        root_certificate: body.mtls_root_certificate.map(|v| v.0),
        upstream_ca: body.mtls_upstream_ca.map(|v| v.0),
        value: body.value.map(|v| v.0),
        read_access: body.read_access,
        shared_team_slugs: body.shared_team_slugs,
        allowed_hosts: body.allowed_hosts,
        description: (!body.description.is_empty()).then_some(body.description),
        metadata: body.metadata,
        display_name: Some(body.name),
        folder_id: body.folder_id,
        activate_at: None,
    };
    let m = state
        .manager
        .create_credential(&caller, input, false)
        .await?;
    let id = tines_id_of(&state, &m.team);
    Ok((StatusCode::CREATED, axum::Json(tines(&m, id))).into_response())
}

/// `GET /api/v1/user_credentials`'s query, as Tines pages: `page` (from 1), `per_page`
/// (default 20, at most 500), and the `team_id` and `folder_id` filters.
#[derive(Deserialize)]
pub(super) struct TinesPage {
    page: Option<u64>,
    per_page: Option<u64>,
    team_id: Option<u64>,
    folder_id: Option<u64>,
}

pub(super) async fn tines_list(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NameQuery(q): NameQuery<TinesPage>,
) -> Result<Response, ApiError> {
    let per_page = q.per_page.unwrap_or(20).clamp(1, 500);
    let page = q.page.unwrap_or(1).max(1);
    let all: Vec<serde_json::Value> = state
        .manager
        .list_credentials(&caller)
        .await?
        .iter()
        .map(|m| tines(m, tines_id_of(&state, &m.team)))
        .filter(|v| q.team_id.is_none_or(|t| v["team_id"] == t))
        .filter(|v| q.folder_id.is_none_or(|f| v["folder_id"] == f))
        .collect();
    let count = all.len() as u64;
    let pages = count.div_ceil(per_page).max(1);
    let start = usize::try_from((page - 1).saturating_mul(per_page)).unwrap_or(usize::MAX);
    let list: Vec<&serde_json::Value> = all
        .iter()
        .skip(start)
        .take(usize::try_from(per_page).unwrap_or(usize::MAX))
        .collect();
    let link = |p: u64| format!("/api/v1/user_credentials?page={p}&per_page={per_page}");
    let meta = json!({
        "current_page": link(page),
        "previous_page": (page > 1).then(|| link(page - 1)),
        "next_page": (page < pages).then(|| link(page + 1)),
        "per_page": per_page,
        "pages": pages,
        "count": count,
    });
    Ok(axum::Json(json!({ "user_credentials": list, "meta": meta })).into_response())
}

/// Tines' update: every field optional but `mode`; material given makes it a rotation
/// (client certificate and key together), else only the definition changes. Tines sends no
/// `If-Match`: without one the update applies to the credential as it is now (writes are
/// serialized, and a vault store's check-and-set still refuses one that raced another);
/// one given is checked.
#[derive(Deserialize)]
struct TinesUpdate {
    mode: String,
    name: Option<String>,
    mtls_client_certificate: Option<FieldValue>,
    mtls_client_private_key: Option<FieldValue>,
    mtls_root_certificate: Option<FieldValue>,
    mtls_upstream_ca: Option<FieldValue>,
    value: Option<FieldValue>,
    folder_id: Option<u64>,
    read_access: Option<ReadAccess>,
    shared_team_slugs: Option<Vec<TeamSlug>>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    allowed_hosts: Option<Vec<String>>,
}

pub(super) async fn tines_update(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: TinesUpdate = parse_body(&body, "a Tines user_credentials update")?;
    let m = state.manager.credential_by_id(&caller, id).await?;
    let mode_matches = matches!(
        (body.mode.as_str(), m.mode),
        ("MTLS", CredentialMode::Mtls) | ("TEXT", CredentialMode::Text)
    );
    if !mode_matches {
        return Err(ApiError::BadRequest {
            code: "invalid",
            message: "mode: a credential's mode cannot change".to_owned(),
        });
    }
    let material = body.mtls_client_certificate.is_some()
        || body.mtls_client_private_key.is_some()
        || body.mtls_root_certificate.is_some()
        || body.mtls_upstream_ca.is_some()
        || body.value.is_some();
    let updated = if material {
        let input = CredentialInput {
            name: m.name.clone(),
            team: m.team.clone(),
            mode: m.mode,
            client_certificate: body.mtls_client_certificate.map(|v| v.0),
            client_private_key: body.mtls_client_private_key.map(|v| v.0),
            root_certificate: body.mtls_root_certificate.map(|v| v.0),
            upstream_ca: body.mtls_upstream_ca.map(|v| v.0),
            value: body.value.map(|v| v.0),
            read_access: body.read_access.unwrap_or(m.read_access),
            shared_team_slugs: body.shared_team_slugs.unwrap_or(m.shared_team_slugs),
            allowed_hosts: body.allowed_hosts.unwrap_or(m.allowed_hosts),
            description: Some(body.description.unwrap_or(m.description)).filter(|d| !d.is_empty()),
            metadata: body.metadata.unwrap_or(m.metadata),
            display_name: body.name.or(m.record.display_name),
            folder_id: body.folder_id.or(m.record.folder_id),
            activate_at: None,
        };
        state
            .manager
            .replace_credential(&caller, input, IfMatch::Optional(if_match(&headers)))
            .await?
    } else {
        let patch = CredentialPatch {
            read_access: body.read_access,
            shared_team_slugs: body.shared_team_slugs,
            allowed_hosts: body.allowed_hosts,
            description: body.description,
            metadata: body.metadata,
            display_name: body.name,
            folder_id: body.folder_id,
        };
        state
            .manager
            .patch_credential(
                &caller,
                &m.team,
                &m.name,
                patch,
                IfMatch::Optional(if_match(&headers)),
            )
            .await?
    };
    let tines_id = tines_id_of(&state, &updated.team);
    Ok(axum::Json(tines(&updated, tines_id)).into_response())
}

pub(super) async fn tines_show(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let m = state.manager.credential_by_id(&caller, id).await?;
    Ok(axum::Json(tines(&m, tines_id_of(&state, &m.team))).into_response())
}

pub(super) async fn tines_delete(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let m = state.manager.credential_by_id(&caller, id).await?;
    state
        .manager
        .delete_credential(&caller, &m.team, &m.name, None)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
