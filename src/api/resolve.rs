//! `POST /v1/resolve`: a document with references in, the expanded document out.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::change::{self, Conditional, Tagged};
use super::{ApiError, AppState, Authenticated, destination, parse_body};
use crate::broker::{Ask, Document, Expand};
use crate::identity::Door;
use crate::reference::{DocumentError, Format, Layout};
use crate::secret::SecretBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// As sent: a JSON document is expanded in its own bytes (whitespace, number spellings,
    /// duplicate keys kept), not re-serialized from a tree.
    document: Box<RawValue>,
    #[serde(default = "json_format")]
    format: Format,
    /// Where the caller will use the values; consumers must give it (allowed_hosts).
    #[serde(default)]
    host: Option<String>,
}

fn json_format() -> Format {
    Format::Json
}

pub(super) async fn resolve(
    State(state): State<Arc<AppState>>,
    Authenticated(caller): Authenticated,
    cond: Conditional,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ResolveBody = parse_body(
        &body,
        "{\"document\": …, \"format\": \"json\"|\"yaml\"|\"text\", \"host\": …}",
    )?;
    let host = destination(body.host.as_deref())?;
    let raw = body.document.get();
    let document = match body.format {
        Format::Json => Document::Text {
            format: Format::Json,
            text: raw.to_owned(),
        },
        format => match serde_json::from_str::<String>(raw) {
            Ok(text) => Document::Text { format, text },
            Err(_) => return Err(ApiError::Resolve(DocumentError::WrongShape.into())),
        },
    };
    // A blocking query holds a slot of its consumer's for as long as it waits.
    let _slot = state.wait_slot(&caller, &cond)?;
    let (caller, host, state) = (&caller, host.as_ref(), &*state);
    // A blocking query asks again with the same document; only then is it copied.
    let mut once = Some(document);
    let copy = |d: &Document| match d {
        Document::JsonValue(v) => Document::JsonValue(v.clone()),
        Document::Text { format, text } => Document::Text {
            format: *format,
            text: text.clone(),
        },
    };
    let template = (cond.wait() > std::time::Duration::ZERO).then(|| once.as_ref().map(copy));
    let template = template.flatten();
    // A held wait's re-asks write a line only when something changed (THREATS row 43).
    let memo = (cond.wait() > std::time::Duration::ZERO).then(crate::broker::AuditMemo::default);
    let memo = memo.as_ref();
    change::answer(state.broker.changes(), &cond, state.recheck(), || {
        let document = once.take().or_else(|| template.as_ref().map(copy));
        async move {
            let document = document.ok_or(ApiError::Timeout)?;
            // Each asking under the policy in force now (a held wait outlives reloads).
            let caller = &state
                .broker
                .caller_now(caller)
                .map_err(ApiError::Unauthorized)?;
            let resolution = state
                .broker
                .read(
                    Ask::new(
                        caller,
                        Door::Api,
                        Expand {
                            document,
                            layout: Layout::Compact,
                        },
                    )
                    .towards(host)
                    .remembered(memo),
                )
                .await?;
            Ok(resolution_answer(
                &state.etag,
                change::scope(caller),
                resolution,
            ))
        }
    })
    .await
}

/// The expansion as JSON in a zeroizing buffer, tagged by the expanded document.
fn resolution_answer(
    key: &change::EtagKey,
    scope: &[u8],
    resolution: crate::broker::Resolution,
) -> Tagged {
    let etag = key.tag([
        b"resolve".as_slice(),
        scope,
        format_code(resolution.format),
        resolution.document.as_bytes(),
    ]);
    let doc = resolution.document.as_bytes();
    let mut out = SecretBuf::with_capacity(doc.len() + doc.len() / 8 + 256);
    out.push_str("{\"document\":");
    match resolution.format {
        Format::Json => out.extend_from_slice(doc),
        Format::Yaml | Format::Text => {
            // The expanded text came from a `String` and UTF-8 secrets.
            let text = std::str::from_utf8(doc).expect("expanded text is UTF-8");
            out.push_quoted(text);
        }
    }
    out.push_str(",\"metadata\":");
    serde_json::to_writer(&mut out, &resolution.metadata)
        .expect("metadata serializes into a buffer that cannot fail");
    out.push_str("}");
    drop(resolution);
    Tagged { etag, body: out }
}

fn format_code(f: Format) -> &'static [u8] {
    match f {
        Format::Json => b"json",
        Format::Yaml => b"yaml",
        Format::Text => b"text",
    }
}
