//! `/v1/credentials…`: what the caller may see, one credential's metadata, its material.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::change::{self, Conditional, Tagged};
use super::names::NamePath;
use super::{ApiError, AppState, Authenticated, destination, json_response, parse_body};
use crate::broker::{Ask, CredentialRead};
use crate::identity::Door;
use crate::policy::CredentialMode;
use crate::secret::SecretBuf;

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    let credentials = state.broker.list_credentials(&caller).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "credentials": credentials }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaterialBody {
    /// Where the material will be used; checked against `allowed_hosts`.
    host: Option<String>,
    /// Also the next values (a credential whose source rotates on a schedule), with when
    /// they take over: staged rotation.
    #[serde(default)]
    include_next: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    /// One PEM `CERTIFICATE REQUEST`, made on the caller's host with its own key.
    csr: String,
    /// Where the certificate will be used; checked against `allowed_hosts`.
    host: Option<String>,
}

/// `POST /v1/credentials/{name}/sign`: a certificate for the caller's CSR, from the
/// credential's signing profile — the certificate and its chain, never a key (docs/PKI.md).
pub(super) async fn sign(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<crate::policy::EntryName>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SignBody = parse_body(
        &body,
        "{\"csr\": \"-----BEGIN CERTIFICATE REQUEST-----…\", \"host\": \"…\"}",
    )?;
    let host = destination(body.host.as_deref())?;
    let want = crate::broker::SignRead {
        name: name.to_string(),
        csr: body.csr,
    };
    let signed = state
        .broker
        .read(Ask::new(&caller, Door::Api, want).towards(host.as_ref()))
        .await?;
    let mut answer = signed_json(&signed.signed, &signed.key_sha256);
    answer["credential"] = signed.credential.into();
    Ok(json_response(StatusCode::OK, &answer))
}

/// A certificate signed for the caller's CSR as a sign and a renewal answer it: the
/// certificate and its chain, never a key.
pub(super) fn signed_json(s: &crate::source::Signed, key_sha256: &str) -> serde_json::Value {
    let not_after = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(s.not_after).unwrap_or(0));
    serde_json::json!({
        "certificate": s.certificate,
        "issuing_ca": s.issuing_ca,
        "ca_chain": s.ca_chain,
        "serial_number": s.serial_number,
        "not_after": humantime::format_rfc3339_seconds(not_after).to_string(),
        "key_sha256": key_sha256,
    })
}

pub(super) async fn info(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<crate::policy::EntryName>,
) -> Result<Response, ApiError> {
    let (info, etag) = info_tagged(&state, &caller, &name).await?;
    let mut response = json_response(StatusCode::OK, &info);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// What `GET /v1/credentials/{name}` answers `caller`, and its ETag.
pub(super) async fn info_tagged(
    state: &AppState,
    caller: &crate::broker::Caller,
    name: &str,
) -> Result<(crate::broker::CredentialInfo, String), ApiError> {
    let info = state.broker.credential_info(caller, name).await?;
    let body = serde_json::to_vec(&info).unwrap_or_default();
    let etag = state
        .etag
        .tag([b"info".as_slice(), change::scope(caller), &body]);
    Ok((info, etag))
}

pub(super) async fn material(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    NamePath(name): NamePath<crate::policy::EntryName>,
    cond: Conditional,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: MaterialBody = if body.is_empty() {
        MaterialBody {
            host: None,
            include_next: false,
        }
    } else {
        parse_body(&body, "{\"host\": \"…\"}")?
    };
    let host = destination(body.host.as_deref())?;
    // A blocking query holds a slot of its consumer's for as long as it waits.
    let _slot = state.wait_slot(&caller, &cond)?;
    let (caller, name, host) = (&caller, name.as_str(), host.as_ref());
    let include_next = body.include_next;
    let state = &*state;
    // A held wait's re-asks write a line only when something changed (THREATS row 43).
    let memo = (cond.wait() > std::time::Duration::ZERO).then(crate::broker::AuditMemo::default);
    let memo = memo.as_ref();
    change::answer(
        state.broker.changes(),
        &cond,
        state.recheck(),
        || async move {
            // Each asking under the policy in force now (a held wait outlives reloads).
            let caller = &state
                .broker
                .caller_now(caller)
                .map_err(ApiError::Unauthorized)?;
            let material = state
                .broker
                .read(
                    Ask::new(
                        caller,
                        Door::Api,
                        CredentialRead {
                            name: Some(name.to_owned()),
                            next: include_next,
                        },
                    )
                    .towards(host)
                    .remembered(memo),
                )
                .await?;
            Ok(material_answer(
                &state.etag,
                change::scope(caller),
                material,
            ))
        },
    )
    .await
}

/// `"field":"value"` members, comma-separated (and after a comma when `after_comma`, i.e.
/// not first in their object).
fn push_members(
    out: &mut SecretBuf,
    values: &[(String, secrecy::SecretString)],
    after_comma: bool,
) {
    for (i, (field, value)) in values.iter().enumerate() {
        if after_comma || i > 0 {
            out.push_str(",");
        }
        out.push_quoted(field);
        out.push_str(":");
        out.push_quoted(value.expose_secret());
    }
}

/// The material as JSON in a zeroizing buffer, tagged by its values (not its metadata,
/// which holds e.g. days left).
fn material_answer(
    key: &change::EtagKey,
    scope: &[u8],
    material: crate::broker::Material,
) -> Tagged {
    let etag = key.tag(
        [
            b"material".as_slice(),
            scope,
            material.credential.as_bytes(),
        ]
        .into_iter()
        .chain(
            material
                .values
                .iter()
                .chain(material.next.iter().flat_map(|n| n.values.iter()))
                .flat_map(|(k, v)| [k.as_bytes(), v.expose_secret().as_bytes()]),
        ),
    );

    let size: usize = material
        .values
        .iter()
        .chain(material.next.iter().flat_map(|n| n.values.iter()))
        .map(|(k, v)| k.len() + v.expose_secret().len() + 8)
        .sum();
    let mut out = SecretBuf::with_capacity(size + size / 8 + 512);
    out.push_str("{\"credential\":");
    out.push_quoted(&material.credential);
    let nested = material.mode == CredentialMode::Fields;
    if nested {
        out.push_str(",\"fields\":{");
    }
    push_members(&mut out, &material.values, !nested);
    if nested {
        out.push_str("}");
    }
    if let Some(next) = &material.next {
        out.push_str(",\"next\":{\"not_before\":");
        out.push_quoted(&humantime::format_rfc3339_seconds(next.not_before).to_string());
        push_members(&mut out, &next.values, true);
        out.push_str("}");
    }
    out.push_str(",\"metadata\":");
    serde_json::to_writer(&mut out, &material.metadata)
        .expect("metadata serializes into a buffer that cannot fail");
    out.push_str("}");
    drop(material);
    Tagged { etag, body: out }
}
