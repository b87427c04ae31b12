//! The `ccp` source: CyberArk Central Credential Provider (docs/CCP-API.md).
//!
//! `GET <url>/<service_path>/api/Accounts?AppID=…&Safe=…&Folder=…&Object=…` over TLS with a
//! client certificate. Values containing characters CCP does not support (`;`, `&`, `+`, `%`,
//! `=`, control characters) are rejected before any request, never escaped. Failures are
//! classified on `ErrorCode` — CCP answers a transient "cannot reach the vault" with HTTP 400 —
//! and `ErrorMsg`, which echoes the query, the AppID and certificate serials, is never read.
//! IIS in front of CCP answers with HTML pages or a bare 404; those are told apart from CCP's
//! JSON. Redirects are never followed. Every returned property becomes a field (`Content`,
//! `UserName`, `Address`, custom ones); PEM values are repaired by the broker's PEM stage.

use super::Outage;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use super::fields::Fields;
use super::http::{ClientSettings, HttpSetupError, is_loopback};
use super::{ReadFuture, ReadRequest, SecretSource, SourceError, SourceKind};
use crate::config::CcpSourceConfig;
use crate::reference::is_ccp_forbidden;
use crate::secret::{Secret, SecretMeta};

/// Why a CCP query could not be built. Holds the parameter name, never its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CcpQueryError {
    #[error(
        "parameter {0} holds a character CCP does not support (; & + % = or a control character)"
    )]
    Forbidden(&'static str),
    #[error("parameter {0} is empty")]
    Empty(&'static str),
}

/// Unreserved characters (RFC 3986) stay as they are; everything else is percent-encoded,
/// so a space travels as `%20`, never as a `+` (which CCP would not take for a space).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A CCP query value must be non-empty and free of the characters CCP does not support.
fn check_value(name: &'static str, value: &str) -> Result<(), CcpQueryError> {
    if value.is_empty() {
        return Err(CcpQueryError::Empty(name));
    }
    if value.chars().any(is_ccp_forbidden) {
        return Err(CcpQueryError::Forbidden(name));
    }
    Ok(())
}

/// Builds the query string: `AppID` first and exactly once, then the given parameters.
/// Every value is checked against CCP's forbidden characters first.
pub fn build_query(app_id: &str, params: &[(&'static str, &str)]) -> Result<String, CcpQueryError> {
    let mut q = String::new();
    for (i, (name, value)) in std::iter::once(&("AppID", app_id))
        .chain(params)
        .enumerate()
    {
        check_value(name, value)?;
        if i > 0 {
            q.push('&');
        }
        q.push_str(name);
        q.push('=');
        q.extend(utf8_percent_encode(value, ENCODE));
    }
    Ok(q)
}

/// As [`build_query`], with `parts` sent as one `Query=k=v;k=v` parameter and
/// `QueryFormat=Exact`. Each part is checked first, so the only `;` and `=` in the composed
/// value are the ones keybroker put there.
pub(crate) fn build_composite_query(
    app_id: &str,
    parts: &[(&'static str, &str)],
    params: &[(&'static str, &str)],
) -> Result<String, CcpQueryError> {
    let mut composed = String::new();
    for (i, (name, value)) in parts.iter().enumerate() {
        check_value(name, value)?;
        if i > 0 {
            composed.push(';');
        }
        composed.push_str(name);
        composed.push('=');
        composed.push_str(value);
    }
    let mut q = build_query(app_id, params)?;
    q.push_str("&Query=");
    q.extend(utf8_percent_encode(&composed, ENCODE));
    q.push_str("&QueryFormat=Exact");
    Ok(q)
}

#[derive(Debug, thiserror::Error)]
pub enum CcpConfigError {
    #[error("url {0:?} is not a URL")]
    BadUrl(String),
    #[error("http:// is only allowed to a loopback address (or with insecure_dev = true)")]
    InsecureHttp,
    #[error(transparent)]
    Http(#[from] HttpSetupError),
    #[error("app_id, service_path and reason must not hold ; & + % = or control characters")]
    Forbidden,
}

#[derive(Debug)]
pub struct CcpSource {
    name: String,
    http: super::connections::Connections,
    accounts: Url,
    app_id: String,
    reason: Option<String>,
    connection_timeout: Option<u32>,
    fail_on_change: bool,
    use_query: bool,
    ttl: Option<Duration>,
    service_path: String,
    /// Whether the bare-404 warning was given since the last other answer.
    warned_service_path: std::sync::atomic::AtomicBool,
}

impl CcpSource {
    pub fn new(cfg: &CcpSourceConfig) -> Result<Self, CcpConfigError> {
        let base = Url::parse(&cfg.url).map_err(|_| CcpConfigError::BadUrl(cfg.url.clone()))?;
        let loopback = is_loopback(&base);
        if base.scheme() != "https" && !(cfg.insecure_dev || loopback && base.scheme() == "http") {
            return Err(CcpConfigError::InsecureHttp);
        }
        let forbidden = |s: &str| s.chars().any(is_ccp_forbidden);
        if forbidden(&cfg.app_id)
            || forbidden(&cfg.service_path)
            || cfg.reason.as_deref().is_some_and(forbidden)
        {
            return Err(CcpConfigError::Forbidden);
        }
        let mut accounts = base.clone();
        {
            let mut segs = accounts
                .path_segments_mut()
                .map_err(|_| CcpConfigError::BadUrl(cfg.url.clone()))?;
            segs.pop_if_empty();
            for s in cfg.service_path.split('/').filter(|s| !s.is_empty()) {
                segs.push(s);
            }
            segs.push("api").push("Accounts");
        }
        let timeout = cfg.timeout.map_or(Duration::from_secs(10), |d| d.0);
        let identity = cfg.client_cert.as_deref().zip(cfg.client_key.as_deref());
        let http = super::connections::Connections::new(
            ClientSettings::load(timeout, cfg.ca_cert.as_deref(), identity, None)?,
            super::connections::max_age(cfg.keep_alive.map(|d| d.0), &[cfg.ttl.map(|d| d.0)]),
        )?;
        Ok(Self {
            service_path: cfg.service_path.clone(),
            warned_service_path: std::sync::atomic::AtomicBool::new(false),
            name: cfg.name.clone(),
            http,
            accounts,
            app_id: cfg.app_id.clone(),
            reason: cfg.reason.clone(),
            connection_timeout: cfg.connection_timeout,
            fail_on_change: cfg.fail_request_on_password_change,
            use_query: cfg.use_query,
            ttl: cfg.ttl.map(|d| d.0),
        })
    }
}

/// Only `ErrorCode` is read from an error answer; `ErrorMsg` is skipped unread.
#[derive(Deserialize)]
struct CcpError {
    #[serde(rename = "ErrorCode")]
    code: String,
}

/// What an `ErrorCode` means (docs/CCP-API.md, error table).
pub(crate) fn classify_error_code(code: &str) -> SourceError {
    match code {
        "APPAP004E" => SourceError::NotFound,
        "APPAP306E" | "APPAP008E" | "APPAP133E" => SourceError::Denied,
        "APPAP227E" | "APPAP228E" | "APPAP229E" => SourceError::Ambiguous,
        "APPAP007E" => SourceError::Unavailable(Outage::CcpVaultUnreachable),
        "APPAP282E" => SourceError::Unavailable(Outage::CcpPasswordChange),
        "AIMWS030E" | "AIMWS031E" | "APPAP081E" | "CASVL010E" => {
            SourceError::Unsupported("ccp rejected the query")
        }
        _ => SourceError::Unavailable(Outage::ServerError),
    }
}

impl CcpSource {
    async fn fetch(&self, request: &ReadRequest) -> Result<Secret, SourceError> {
        if request.version.is_some() {
            return Err(SourceError::Unsupported("ccp has no versions"));
        }
        let (safe, folder, object) = match request.path.segments()[..] {
            [safe, object] => (safe, None, object),
            [safe, folder, object] => (safe, Some(folder), object),
            _ => {
                return Err(SourceError::Unsupported(
                    "a ccp path is Safe/Object or Safe/Folder/Object",
                ));
            }
        };
        let timeout = self.connection_timeout.map(|t| t.to_string());
        let mut target: Vec<(&'static str, &str)> = vec![("Safe", safe)];
        if let Some(f) = folder {
            target.push(("Folder", f));
        }
        target.push(("Object", object));
        let mut params: Vec<(&'static str, &str)> = Vec::new();
        if let Some(r) = &self.reason {
            params.push(("Reason", r));
        }
        if let Some(t) = &timeout {
            params.push(("ConnectionTimeout", t));
        }
        if self.fail_on_change {
            params.push(("FailRequestOnPasswordChange", "true"));
        }
        let query = if self.use_query {
            build_composite_query(&self.app_id, &target, &params)
        } else {
            target.extend(params);
            build_query(&self.app_id, &target)
        }
        .map_err(|_| {
            SourceError::Invalid(
                "the safe, folder or object holds a character ccp does not support",
            )
        })?;
        let mut url = self.accounts.clone();
        url.set_query(Some(&query));
        let resp = self.http.client().get(url).send().await.map_err(|e| {
            let timed_out = e.is_timeout();
            // The URL carries the query; the log keeps only the causes.
            tracing::warn!(cause = %super::http::causes(&e), "ccp request failed");
            if timed_out {
                SourceError::Unavailable(Outage::TimedOut)
            } else {
                SourceError::Unavailable(Outage::Unreachable)
            }
        })?;
        let status = resp.status();
        let retry_after = super::http::retry_after(resp.headers());
        let json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|_| SourceError::Unavailable(Outage::Truncated))?
                .to_vec(),
        );
        let meta = SecretMeta {
            ttl: self.ttl,
            ..SecretMeta::default()
        };
        let answer = parse_answer(status.as_u16(), json, retry_after, &body, meta);
        // Every query misses the service: the configuration, said at WARN with the fix, once
        // per change (not at DEBUG per read, where nobody looks).
        let misconfigured = matches!(answer, Err(SourceError::Unavailable(Outage::CcpBare404)));
        let was = self
            .warned_service_path
            .swap(misconfigured, std::sync::atomic::Ordering::Relaxed);
        if misconfigured && !was {
            tracing::warn!(
                source = %self.name,
                service_path = %self.service_path,
                "ccp's web server answers a bare 404 to every query: check service_path (e.g. AIMWebService); not retried"
            );
        }
        answer
    }
}

/// An answer of CCP (or of the IIS in front of it) as a secret or a classified error. Public
/// for the fuzz target of source answers.
#[doc(hidden)]
pub fn parse_answer(
    status: u16,
    json: bool,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
    meta: SecretMeta,
) -> Result<Secret, SourceError> {
    if (300..400).contains(&status) {
        return Err(SourceError::Unavailable(Outage::Redirected));
    }
    if (200..300).contains(&status) && json {
        let fields: Fields = serde_json::from_slice(body)
            .map_err(|_| SourceError::Malformed("unexpected ccp answer"))?;
        return Ok(Secret::new(fields.0, meta));
    }
    if json && let Ok(e) = serde_json::from_slice::<CcpError>(body) {
        return Err(classify_error_code(&e.code));
    }
    // Not CCP's JSON: IIS in front of it.
    // A 4xx page answers the request's shape (the caller's); only 5xx and the rest say
    // the service is failing — except a bare 404, which means every query misses.
    Err(match status {
        404 => SourceError::Unavailable(Outage::CcpBare404),
        401 | 403 => SourceError::Denied,
        429 => SourceError::RateLimited { retry_after },
        414 => SourceError::Invalid("the query is too long for the ccp web server (414)"),
        400..=499 => SourceError::Invalid("the ccp web server rejected the request (4xx)"),
        _ => SourceError::Unavailable(Outage::CcpErrorPage),
    })
}

impl SecretSource for CcpSource {
    fn close_connections(&self) {
        self.http.close_idle();
    }

    /// Any HTTP answer from the provider's web server over TLS: reachable. No query is made
    /// (a query would be a password retrieval in CCP's own audit).
    fn probe(&self) -> super::ProbeFuture<'_> {
        Box::pin(async move {
            let mut url = self.accounts.clone();
            url.set_query(None);
            match self.http.client().get(url).send().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::warn!(cause = %super::http::causes(&e), "ccp not reachable");
                    Err(SourceError::Unavailable(if e.is_timeout() {
                        Outage::TimedOut
                    } else {
                        Outage::Unreachable
                    }))
                }
            }
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Ccp
    }

    fn read<'a>(&'a self, request: &'a ReadRequest) -> ReadFuture<'a> {
        Box::pin(self.fetch(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appid_first_and_once_values_encoded_never_escaped() {
        let q = build_query("kb app", &[("Safe", "Pay ments"), ("Object", "key-1.pem")]).unwrap();
        assert_eq!(q, "AppID=kb%20app&Safe=Pay%20ments&Object=key-1.pem");
        for bad in [";Safe=Other", "a&AppID=x", "a+b", "100%", "a=b", "a\nb"] {
            assert_eq!(
                build_query("kb", &[("Object", bad)]),
                Err(CcpQueryError::Forbidden("Object")),
                "{bad:?}"
            );
        }
        assert_eq!(build_query("", &[]), Err(CcpQueryError::Empty("AppID")));
        let shown = build_query("kb", &[("Safe", "s3cr3t;x")])
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("s3cr3t"));
    }

    #[test]
    fn composite_query_checks_each_part() {
        let q = build_composite_query(
            "kb",
            &[("Safe", "S 1"), ("Object", "o")],
            &[("Reason", "audit")],
        )
        .unwrap();
        assert_eq!(
            q,
            "AppID=kb&Reason=audit&Query=Safe%3DS%201%3BObject%3Do&QueryFormat=Exact"
        );
        assert_eq!(
            build_composite_query("kb", &[("Safe", "S;Folder=X")], &[]),
            Err(CcpQueryError::Forbidden("Safe"))
        );
    }

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(classify_error_code("APPAP004E"), SourceError::NotFound);
        assert_eq!(classify_error_code("APPAP306E"), SourceError::Denied);
        assert_eq!(classify_error_code("APPAP008E"), SourceError::Denied);
        assert_eq!(classify_error_code("APPAP227E"), SourceError::Ambiguous);
        assert!(matches!(
            classify_error_code("APPAP007E"),
            SourceError::Unavailable(_)
        ));
        assert!(matches!(
            classify_error_code("APPAP282E"),
            SourceError::Unavailable(_)
        ));
        assert!(matches!(
            classify_error_code("AIMWS031E"),
            SourceError::Unsupported(_)
        ));
    }
}
