//! Change detection for answers that carry material (docs/DESIGN.md §15): a keyed `ETag`,
//! `If-None-Match` → 304, and `?wait=` blocking queries that hold a request until the answer
//! changes. A waiter is a parked task (no thread): it wakes when the cache announces changed
//! content, or to re-read at an interval so the entries it depends on stay in use (and so
//! refreshed ahead of their TTL), or when its wait ends.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use hmac::KeyInit;
use zeroize::Zeroizing;

use super::ApiError;
use crate::secret::SecretBuf;

/// The longest `?wait=` accepted.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

/// The key of ETags. Keyed, so an ETag never lets anyone test a guess of a value. Held as the
/// keyed HMAC state (wiped on drop), cloned per tag: the key is not re-hashed per answer.
pub struct EtagKey(hmac::HmacReset<sha2::Sha256>);

impl std::fmt::Debug for EtagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtagKey([redacted])")
    }
}

impl EtagKey {
    /// A fresh random key (ETags then differ between processes).
    pub fn random() -> Self {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        // Without an OS random source no key can be made safely.
        getrandom::fill(&mut key).expect("the OS random number generator is available");
        Self::keyed(&key)
    }

    fn keyed(key: &[u8]) -> Self {
        Self(
            <hmac::HmacReset<sha2::Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length"),
        )
    }

    /// The key in `path` (its bytes, trailing whitespace ignored), for replicas to share.
    pub fn from_file(path: &Path) -> Result<Self, crate::secret::KeyFileError> {
        let key = crate::secret::KeyFile::load("[server] etag_key_file", path, 16)?;
        Ok(Self::keyed(key.bytes()))
    }

    /// `"kb1-" + base64url(HMAC-SHA256(key, parts))`, 22 characters of it, quoted. Each part
    /// is length-prefixed, so different splits of the same bytes tag differently.
    pub fn tag<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> String {
        let digest = crate::secret::keyed_digest(&self.0, parts);
        // The first 22 base64 digits of the MAC (those of its first 17 bytes), in one string.
        let mut tag = String::with_capacity(28);
        tag.push_str("\"kb1-");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&digest[..17], &mut tag);
        tag.truncate(5 + 22);
        tag.push('"');
        tag
    }
}

/// Whose answer an ETag tags: the consumer's team (the operator has its own scope). ETags of
/// the same content differ between teams, so a tag seen elsewhere is no guess oracle for
/// another team's document or material (THREATS row 40).
pub(crate) fn scope(caller: &crate::broker::Caller) -> &[u8] {
    match caller {
        crate::broker::Caller::Operator => b"\0operator",
        crate::broker::Caller::Consumer(c) => c.team().as_bytes(),
    }
}

/// Blocking queries held per consumer: one consumer cannot hold every connection slot and
/// wake-up of the server with waiters (THREATS row 43).
#[derive(Debug, Default)]
pub struct Waiting {
    held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One held blocking query; counted down when dropped.
#[derive(Debug)]
pub struct WaitSlot<'w> {
    waiting: &'w Waiting,
    consumer: String,
}

impl Waiting {
    /// A slot for `caller`'s blocking query, unless it holds `max` already. The operator is
    /// not counted.
    pub fn enter(
        &self,
        caller: &crate::broker::Caller,
        max: usize,
    ) -> Result<Option<WaitSlot<'_>>, ApiError> {
        let crate::broker::Caller::Consumer(c) = caller else {
            return Ok(None);
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(c.name().to_owned()).or_insert(0);
        if *n >= max {
            return Err(ApiError::TooManyWaiting);
        }
        *n += 1;
        Ok(Some(WaitSlot {
            waiting: self,
            consumer: c.name().to_owned(),
        }))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.waiting.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.consumer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.consumer);
            }
        }
    }
}

/// What a request asks about change: the ETags it holds and how long it will wait.
#[derive(Debug, Default)]
pub struct Conditional {
    /// `None`: no `If-None-Match`. `Some(empty)` never matches.
    if_none_match: Option<Vec<String>>,
    any: bool,
    wait: Option<Duration>,
}

impl Conditional {
    /// From the request's `If-None-Match` headers and its query (`wait=30s`, nothing else).
    pub fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Self, ApiError> {
        let mut tags = None::<Vec<String>>;
        let mut any = false;
        for value in headers.get_all(header::IF_NONE_MATCH) {
            let text = value
                .to_str()
                .map_err(|_| bad("invalid_if_none_match", "If-None-Match is not ASCII"))?;
            let list = tags.get_or_insert_with(Vec::new);
            for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if t == "*" {
                    any = true;
                } else {
                    // Weak comparison: `W/"x"` matches `"x"`.
                    list.push(t.trim_start_matches("W/").to_owned());
                }
                if list.len() > 64 {
                    return Err(bad(
                        "invalid_if_none_match",
                        "more than 64 ETags in If-None-Match",
                    ));
                }
            }
        }
        Ok(Self {
            if_none_match: tags,
            any,
            wait: wait(query)?,
        })
    }

    fn matches(&self, etag: &str) -> bool {
        self.any
            || self
                .if_none_match
                .as_ref()
                .is_some_and(|l| l.iter().any(|t| t == etag))
    }

    /// How long a request may take beyond the server's `request_timeout`.
    pub fn wait(&self) -> Duration {
        if self.if_none_match.is_some() {
            self.wait.unwrap_or_default()
        } else {
            Duration::ZERO
        }
    }
}

/// From the request's parts by reference: no copy of the header map per request.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Conditional {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Self::parse(&parts.headers, parts.uri.query())
    }
}

/// The `wait` of a query (`30s`, `2m`; at most [`MAX_WAIT`]); other parameters are refused.
pub(crate) fn wait(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "wait" || found.is_some() {
            return Err(bad(
                "invalid_query",
                "the only query parameter is one `wait`",
            ));
        }
        let d = humantime::parse_duration(v)
            .map_err(|_| bad("invalid_wait", "wait is a duration such as 30s or 5m"))?;
        if d > MAX_WAIT {
            return Err(bad("invalid_wait", "wait is at most 300s"));
        }
        found = Some(d);
    }
    Ok(found)
}

fn bad(code: &'static str, message: &str) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.to_owned(),
    }
}

/// An answer and its ETag.
#[derive(Debug)]
pub(crate) struct Tagged {
    pub etag: String,
    pub body: SecretBuf,
}

/// Answers `cond` with what `answer` makes: the answer (200, with its ETag) when its ETag is
/// not one the caller holds; else, without `wait`, 304; with `wait`, the request is held and
/// `answer` asked again on each change (and every `recheck`) until its ETag differs (200) or
/// the wait ends (304). Each asking is a full request — decided again, so a policy change
/// during the wait applies, and audited when something changed (`broker::AuditMemo`).
pub(crate) async fn answer<F, Fut>(
    mut changes: tokio::sync::watch::Receiver<u64>,
    cond: &Conditional,
    recheck: Duration,
    mut answer: F,
) -> Result<Response, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Tagged, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + cond.wait();
    loop {
        changes.mark_unchanged();
        let tagged = answer().await?;
        if !cond.matches(&tagged.etag) {
            return Ok(with_etag(super::secret_response(tagged.body), &tagged.etag));
        }
        let etag = tagged.etag;
        drop(tagged.body);
        if tokio::time::Instant::now() >= deadline {
            return Ok(not_modified(&etag));
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(recheck) => {}
            () = tokio::time::sleep_until(deadline) => return Ok(not_modified(&etag)),
        }
    }
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn not_modified(etag: &str) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_etag(response, etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag is the first 22 base64 digits of the whole MAC, as it always was: replicas
    /// sharing `etag_key_file` across an upgrade keep matching each other's tags.
    #[test]
    fn tags_keep_their_format() {
        use hmac::Mac as _;
        let key = EtagKey::keyed(b"0123456789abcdef");
        // The plain HMAC, as tags were made before the state became resettable (issue 49).
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(&3u64.to_be_bytes());
        mac.update(b"abc");
        let whole =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            key.tag([b"abc".as_slice()]),
            format!("\"kb1-{}\"", &whole[..22])
        );
    }

    #[test]
    fn tags_are_keyed_short_and_split_aware() {
        let a = EtagKey::random();
        let b = EtagKey::random();
        let t = a.tag([b"ab".as_slice(), b"c"]);
        assert_eq!(t.len(), 2 + 4 + 22);
        assert!(t.starts_with("\"kb1-"));
        assert_eq!(t, a.tag([b"ab".as_slice(), b"c"]));
        assert_ne!(t, a.tag([b"a".as_slice(), b"bc"]), "length-prefixed parts");
        assert_ne!(t, b.tag([b"ab".as_slice(), b"c"]), "keyed");
    }

    #[test]
    fn if_none_match_and_wait() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"x\", \"y\""),
        );
        let c = Conditional::parse(&h, Some("wait=30s")).unwrap();
        assert!(c.matches("\"x\"") && c.matches("\"y\"") && !c.matches("\"z\""));
        assert_eq!(c.wait(), Duration::from_secs(30));
        assert!(Conditional::parse(&h, Some("wait=301s")).is_err());
        assert!(Conditional::parse(&h, Some("wait=soon")).is_err());
        assert!(Conditional::parse(&h, Some("wait=1s&wait=2s")).is_err());
        assert!(Conditional::parse(&h, Some("other=1")).is_err());
        // Without If-None-Match a wait holds nothing.
        let c = Conditional::parse(&HeaderMap::new(), Some("wait=30s")).unwrap();
        assert_eq!(c.wait(), Duration::ZERO);
        assert!(!c.matches("\"x\""));
    }
}
