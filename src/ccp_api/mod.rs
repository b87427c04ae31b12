//! A CyberArk CCP-shaped door (`[ccp_api]`, docs/CCP-API.md "keybroker as CCP"): tools
//! configured for CCP — Ansible's `cyberark.pas.cyberark_credential`, Itential's CyberArk
//! integration, CCP SDKs — point at keybroker and get repaired, verified, policy-checked,
//! audited material with no change on their side.
//!
//! `GET /AIMWebService/api/Accounts?AppID=…&Safe=…&Folder=…&Object=…` (or `Query=Safe=…;…`).
//! The caller is its client certificate, identified by the one authenticator as at every door,
//! and the `AppID` must be one that consumer holds (`ccp_app_ids`). Then:
//! - `Safe=keybroker`, `Folder=<team>`, `Object=<credential>` (text) or
//!   `<credential>#<field>` (`certificate`, `private_key`, `ca`, or a field): a named
//!   credential, decided as `/material` decides it;
//! - any other safe: `Safe/Object` (or `Safe/Folder/Object`) of the CCP source, PEM repaired,
//!   decided as a `$SAFE_` reference.
//!
//! Reads are for the consumer's `vault_api_host` (the door carries no destination). A refused
//! read answers CCP's "not found" whether or not the object exists. **Boundary:** uses
//! `broker`, `identity` and `door`, like the Vault API; no door uses it.

mod error;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;

use crate::broker::{Broker, Caller, CredentialRead, Failure, SecretRead};
use crate::door::listen::Peer;
use crate::identity::Door;
use crate::reference::SecretPath;
use crate::secret::SecretBuf;
pub use error::{CcpError, status};

/// The safe under which keybroker's named credentials are served (reserved: a CCP safe of
/// this name is not reachable through this door).
pub(crate) const CREDENTIALS_SAFE: &str = "keybroker";

#[derive(Debug)]
pub(crate) struct CcpApiState {
    pub broker: Arc<Broker>,
    pub auth: crate::identity::Authenticator,
    /// The IIS application in the path (`AIMWebService`).
    pub service_path: String,
    /// The CCP source `Safe/Object` reads go to, if any.
    pub ccp_source: Option<String>,
}

pub(crate) fn router(state: Arc<CcpApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// The CCP API as a door (request metrics, timeout in CCP's error shape).
pub(crate) fn door() -> crate::door::observe::DoorSpec {
    crate::door::observe::DoorSpec {
        door: crate::identity::Door::CcpApi,
        route_of: |path| {
            if path.ends_with("/api/Accounts") {
                "/{service}/api/Accounts"
            } else {
                "other"
            }
        },
        timed_out: || CcpError::TimedOut.into_response(),
        json_errors: false,
        extra_wait: crate::door::observe::no_wait,
        carries_material: crate::door::observe::never,
    }
}

/// What a request asks: the application and where the account is.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AccountQuery {
    pub app_id: String,
    pub safe: String,
    pub folder: Option<String>,
    pub object: String,
}

/// Why a query was refused before anything else (CCP's 400s).
#[derive(Debug, PartialEq, Eq)]
pub enum AskError {
    /// `AIMWS031E`.
    NoAppId,
    /// `AIMWS030E`: no `Safe` and `Object`, a malformed `Query`, a repeated parameter, or
    /// something this door does not serve (a search on account properties).
    BadQuery,
}

/// Parameters a query may hold at most: CCP's own are a dozen; more is refused before any
/// further work (a query of thousands of distinct names cost a quadratic scan — attack review).
const MAX_PARAMETERS: usize = 32;

/// The parameter names this door reads (lower case); others are accepted and ignored.
const KNOWN: [&str; 9] = [
    "appid", "safe", "folder", "object", "query", "username", "address", "database", "policyid",
];

/// Parses the query string: parameter names, percent-decoded, without regard to case;
/// `Query` (`Safe=S;Folder=F;Object=O`) replaces the single-property parameters; a parameter
/// given twice is refused, never read one way here and another way elsewhere.
pub(crate) fn ask(query: Option<&str>) -> Result<AccountQuery, AskError> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " "))
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| AskError::BadQuery)
    };
    let mut seen: Vec<(&'static str, String)> = Vec::new();
    for (n, pair) in query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if n >= MAX_PARAMETERS {
            return Err(AskError::BadQuery);
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k)?.to_ascii_lowercase();
        let Some(known) = KNOWN.iter().find(|n| **n == k) else {
            continue;
        };
        if seen.iter().any(|(s, _)| s == known) {
            return Err(AskError::BadQuery);
        }
        seen.push((known, decode(v)?));
    }
    let get = |k: &str| seen.iter().find(|(s, _)| *s == k).map(|(_, v)| v.clone());
    let app_id = get("appid")
        .filter(|a| !a.is_empty())
        .ok_or(AskError::NoAppId)?;
    let (mut safe, mut folder, mut object) = (get("safe"), get("folder"), get("object"));
    if let Some(q) = get("query") {
        (safe, folder, object) = (None, None, None);
        for part in q.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or(AskError::BadQuery)?;
            let slot = match k.trim().to_ascii_lowercase().as_str() {
                "safe" => &mut safe,
                "folder" => &mut folder,
                "object" => &mut object,
                _ => return Err(AskError::BadQuery),
            };
            if slot.replace(v.to_owned()).is_some() {
                return Err(AskError::BadQuery);
            }
        }
    } else if ["username", "address", "database", "policyid"]
        .iter()
        .any(|k| get(k).is_some())
    {
        return Err(AskError::BadQuery);
    }
    match (safe, object) {
        (Some(safe), Some(object)) if !safe.is_empty() && !object.is_empty() => Ok(AccountQuery {
            app_id,
            safe,
            folder: folder.filter(|f| !f.is_empty() && !f.eq_ignore_ascii_case("root")),
            object,
        }),
        _ => Err(AskError::BadQuery),
    }
}

async fn handle(State(state): State<Arc<CcpApiState>>, request: Request) -> Response {
    account_answer(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn account_answer(state: &CcpApiState, request: Request) -> Result<Response, CcpError> {
    let (parts, _body) = request.into_parts();
    let path = parts.uri.path();
    let service_ok = path
        .strip_suffix("/api/Accounts")
        .and_then(|s| s.strip_prefix('/'))
        .is_some_and(|s| s.eq_ignore_ascii_case(&state.service_path));
    if parts.method != axum::http::Method::GET || !service_ok {
        return Err(CcpError::NoApplication);
    }
    let ask = ask(parts.uri.query())?;
    let peer = parts.extensions.get::<Peer>();
    let presented = crate::identity::Presented {
        door: crate::identity::Door::CcpApi,
        peer: peer.map(|p| p.addr.ip()),
        certificate: peer.and_then(|p| p.certificate.as_deref()),
        verifier: None,
        headers: &parts.headers,
    };
    let Ok((caller, _)) = state.broker.authenticate(&state.auth, presented).await else {
        return Err(Failure::Unauthenticated.into());
    };
    let Caller::Consumer(consumer) = &caller else {
        return Err(Failure::Unauthenticated.into());
    };
    // The application must be one this consumer holds: CCP's own rule (the AppID and its
    // certificate together), refused like an unknown application.
    if !consumer.consumer().ccp_app_ids.contains(&ask.app_id) {
        let _ = state
            .broker
            .audit_unauthenticated("ccp_app_id_refused", peer.map(|p| p.addr.ip()))
            .await;
        return Err(Failure::Unauthenticated.into());
    }
    let host = consumer.consumer().vault_api_host.clone();
    // The reserved safe in any spelling CCP would take for it (safe names are not case
    // sensitive there): never the CCP source's.
    if ask.safe.trim().eq_ignore_ascii_case(CREDENTIALS_SAFE) {
        credential(state, &caller, &ask, host.as_ref()).await
    } else {
        account(state, &caller, &ask, host.as_ref()).await
    }
}

/// `Safe=keybroker;Folder=<team>;Object=<credential>[#<field>]`.
async fn credential(
    state: &CcpApiState,
    caller: &Caller,
    ask: &AccountQuery,
    host: Option<&crate::policy::Destination>,
) -> Result<Response, CcpError> {
    let (name, field) = match ask.object.split_once('#') {
        Some((n, f)) => (n, Some(f)),
        None => (ask.object.as_str(), None),
    };
    // The folder names the team that owns it: the credential of that name the caller sees
    // must be that team's (another team's of the same name, visible or not, is not this one).
    // Denied, missing, another team's: one answer (docs/THREATS.md row 80).
    let not_found = || Err(Failure::NotFound.into());
    let Caller::Consumer(consumer) = caller else {
        return not_found();
    };
    let visible = state
        .broker
        .policy()
        .policy()
        .visible_credential(consumer.team(), name)
        .ok()
        .map(|c| c.team.clone());
    let team = match visible {
        Some(team) if ask.folder.as_deref() == Some(team.as_str()) => team,
        // Of its own view, under the wrong folder: nothing it may not see is named.
        Some(_) => return not_found(),
        // Not visible (another team's, or none): the broker decides and audits the refusal,
        // as at every door (attack review: these refusals left no audit line).
        None => {
            state
                .broker
                .read(
                    crate::broker::Ask::new(caller, Door::CcpApi, CredentialRead::named(name))
                        .towards(host),
                )
                .await?;
            return not_found();
        }
    };
    let team = team.as_str();
    let material = state
        .broker
        .read(
            crate::broker::Ask::new(caller, Door::CcpApi, CredentialRead::named(name))
                .towards(host),
        )
        .await?;
    let wanted = field.unwrap_or("value");
    let Some((_, value)) = material.values.iter().find(|(k, _)| k == wanted) else {
        return not_found();
    };
    let mut body = SecretBuf::with_capacity(value.expose_secret().len() + 256);
    body.push_str("{\"Content\":");
    body.push_quoted(value.expose_secret());
    for (k, v) in [
        ("Name", ask.object.as_str()),
        ("Safe", CREDENTIALS_SAFE),
        ("Folder", team),
    ] {
        body.push_str(",");
        body.push_quoted(k);
        body.push_str(":");
        body.push_quoted(v);
    }
    body.push_str("}");
    Ok(answer(body))
}

/// `Safe/Object` (or `Safe/Folder/Object`) of the CCP source.
async fn account(
    state: &CcpApiState,
    caller: &Caller,
    ask: &AccountQuery,
    host: Option<&crate::policy::Destination>,
) -> Result<Response, CcpError> {
    let Some(source) = &state.ccp_source else {
        return Err(Failure::NotFound.into());
    };
    let segments: Vec<&str> = std::iter::once(ask.safe.as_str())
        .chain(ask.folder.as_deref())
        .chain(std::iter::once(ask.object.as_str()))
        .collect();
    let Ok(path) = SecretPath::from_segments(segments.iter().copied()) else {
        return Err(CcpError::InvalidCharacters);
    };
    let read = SecretRead {
        source: source.clone(),
        path,
        version: None,
    };
    let found = state
        .broker
        .read(crate::broker::Ask::new(caller, Door::CcpApi, read).towards(host))
        .await?;
    Ok(answer(found.fields))
}

fn answer(body: SecretBuf) -> Response {
    let mut r = Response::new(Body::from(Bytes::from_owner(body)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_as_ccp_reads_them_and_ambiguity_is_refused() {
        let a = ask(Some("AppId=gw&Safe=Payments&Object=partner-key")).unwrap();
        assert_eq!(
            (a.safe.as_str(), a.object.as_str(), a.folder),
            ("Payments", "partner-key", None)
        );
        let a = ask(Some(
            "appid=gw&Query=Safe%3Dkeybroker%3BFolder%3Dpayments%3BObject%3Dapi%23private_key",
        ))
        .unwrap();
        assert_eq!(a.folder.as_deref(), Some("payments"));
        assert_eq!(a.object, "api#private_key");
        // Query replaces the single-property parameters.
        let a = ask(Some("AppID=gw&Safe=X&Object=Y&Query=Safe=A;Object=B")).unwrap();
        assert_eq!((a.safe.as_str(), a.object.as_str()), ("A", "B"));
        assert_eq!(ask(Some("Safe=A&Object=B")), Err(AskError::NoAppId));
        // Past the bound, refused before more work (a quadratic scan of thousands of names
        // stalled the runtime — attack review); unknown names below it are ignored.
        let many: String = (0..40).map(|i| format!("&x{i}=1")).collect();
        assert_eq!(
            ask(Some(&format!("AppID=gw&Safe=A&Object=B{many}"))),
            Err(AskError::BadQuery)
        );
        assert!(
            ask(Some(
                "AppID=gw&Safe=A&Object=B&Reason=r&ConnectionTimeout=30"
            ))
            .is_ok()
        );
        for bad in [
            "AppID=gw&Safe=A",
            "AppID=gw&AppID=other&Safe=A&Object=B",
            "AppID=gw&Safe=A&safe=B&Object=C",
            "AppID=gw&Query=Safe=A;Safe=B;Object=C",
            "AppID=gw&Query=Safe=A;Object",
            "AppID=gw&Query=Safe=A;UserName=u;Object=B",
            "AppID=gw&UserName=root&Safe=A&Object=B",
            "AppID=gw&Safe=A&Object=%FF",
            // A name percent-encoded is the name: a repeat all the same.
            "AppID=gw&Safe=A&%53afe=B&Object=C",
            "AppID=gw&Safe=A&Object=B&%61ppid=other",
        ] {
            assert_eq!(ask(Some(bad)), Err(AskError::BadQuery), "{bad}");
        }
    }
}
