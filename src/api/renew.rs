//! `POST /v1/consumers/self/certificates`: a consumer's own next client certificate, signed
//! through the `identity_profile` the operator named for it and pinned to it (docs/PKI.md,
//! docs/AGENT.md). The caller is its TLS client certificate: nothing else renews.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, AppState, Authenticated, Peer, json_response, parse_body};
use crate::broker::{Ask, SelfRenew};
use crate::identity::Door;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    /// One PEM `CERTIFICATE REQUEST`, made on the caller's host with its new key.
    csr: String,
}

pub(super) async fn renew(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RenewBody = parse_body(&body, "{\"csr\": \"-----BEGIN CERTIFICATE REQUEST-----…\"}")?;
    let want = SelfRenew {
        csr: body.csr,
        presented: peer.and_then(|Extension(p)| p.certificate),
    };
    let renewal = state
        .broker
        .read(Ask::new(&caller, Door::Api, want))
        .await?;
    // Pinned before it is answered: a certificate out there always identifies its consumer.
    state.manager.pin_renewed(&renewal).await.inspect_err(|e| {
        tracing::error!(consumer = %renewal.consumer, serial = %renewal.signed.serial_number, error = %e, "renewal signed but not pinned; not answered");
    })?;
    let mut answer = super::credentials::signed_json(&renewal.signed, &renewal.key_sha256);
    answer["consumer"] = renewal.consumer.clone().into();
    answer["fingerprint"] = hex::encode(renewal.fingerprint).into();
    Ok(json_response(StatusCode::OK, &answer))
}
