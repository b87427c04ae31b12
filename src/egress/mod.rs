//! The egress proxy (docs/EGRESS.md): keybroker makes the mTLS call, so the key never leaves
//! it and `allowed_hosts` is checked against the destination actually connected to.
//!
//! An HTTP forward proxy: `curl -x http://kb:8081 -H 'Proxy-Authorization: Bearer …'
//! -H 'Keybroker-Credential: partner-api' http://api.partner.example/x`. The consumer is
//! authenticated, the credential chosen and decided for the URL's real host and port (one
//! `Broker::read` of a `CredentialRead`, audited with `via: "egress"`), the name resolved once and the
//! checked address connected to with the credential's client certificate; the answer is
//! streamed back. Redirects are returned, never followed; `CONNECT` is refused.
//!
//! **Boundary:** uses `broker`, `identity`, `policy`; nothing uses it but `app`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::broker::{Ask, Broker, Caller, CredentialError, CredentialRead, Failure};
use crate::identity::Door;
use crate::policy::Destination;
use crate::policy::host::Host;

/// What the egress handler shares.
#[derive(Debug)]
pub(crate) struct EgressState {
    pub broker: Arc<Broker>,
    /// The one authenticator, set for this door: the policy's tokens in
    /// `Proxy-Authorization`.
    pub auth: crate::identity::Authenticator,
    /// `[egress] resolve`: names pinned to addresses (split-horizon DNS, tests). A destination
    /// named here may be private.
    pub resolve: BTreeMap<String, IpAddr>,
    pub timeout: Duration,
    /// Clients (with their keep-alive connections) by credential and destination; see
    /// [`Pool`].
    pub pool: Arc<Pool>,
    /// `[egress] ca_cert`: what upstreams are verified against when the credential has no
    /// root (PEM; public certificates).
    pub ca_bundle: Option<String>,
}

/// One HTTP client per (credential, host, checked address), reused so that requests to a
/// keep-alive upstream share connections. A client holds the credential's private key, so
/// its life is bounded: an entry remembers the digest of the material it was built from
/// (changed material: the next request replaces it), its birth (older than `keep_alive`: the
/// keeper drops it, used or not), and every change of the cache or the policy — a rotation,
/// a reload, a deletion, a purge — drops them all. The old client's connections close with it.
#[derive(Debug)]
pub(crate) struct Pool {
    clients: std::sync::Mutex<std::collections::HashMap<PoolKey, Pooled>>,
    keep_alive: Duration,
}

#[derive(Debug)]
struct Pooled {
    digest: [u8; 32],
    client: reqwest::Client,
    born: std::time::Instant,
}

/// (team/credential, host, checked address).
type PoolKey = (String, String, SocketAddr);

/// Clients kept before the pool starts over.
const POOL_MAX: usize = 256;

impl Pool {
    pub(crate) fn new(keep_alive: Duration) -> Self {
        Self {
            clients: std::sync::Mutex::default(),
            keep_alive,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PoolKey, Pooled>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &PoolKey, digest: &[u8; 32]) -> Option<reqwest::Client> {
        self.lock()
            .get(key)
            .filter(|p| p.digest == *digest && p.born.elapsed() < self.keep_alive)
            .map(|p| p.client.clone())
    }

    fn put(&self, key: PoolKey, digest: [u8; 32], client: reqwest::Client) {
        let mut m = self.lock();
        if m.len() >= POOL_MAX && !m.contains_key(&key) {
            m.clear();
        }
        let born = std::time::Instant::now();
        m.insert(
            key,
            Pooled {
                digest,
                client,
                born,
            },
        );
    }

    /// Drops every client (a change: its material may be gone or rotated).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Drops the clients older than `keep_alive`.
    fn expire(&self) {
        let keep_alive = self.keep_alive;
        self.lock().retain(|_, p| p.born.elapsed() < keep_alive);
    }

    /// How many clients (keys) are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// While `pool` lives: drops every client on each change `changes` announces (a
    /// rotation, reload, deletion or purge), and those past `keep_alive` at least every
    /// `keep_alive`.
    pub(crate) fn spawn_keeper(pool: &Arc<Self>, mut changes: tokio::sync::watch::Receiver<u64>) {
        let weak = Arc::downgrade(pool);
        let every = pool.keep_alive.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                let changed = tokio::select! {
                    r = changes.changed() => r.is_ok(),
                    () = tokio::time::sleep(every) => false,
                };
                let Some(pool) = weak.upgrade() else { return };
                if changed {
                    pool.clear();
                } else {
                    pool.expire();
                }
            }
        });
    }
}

/// The largest request body forwarded.
const MAX_REQUEST_BODY: usize = 1 << 20;

pub(crate) fn router(state: Arc<EgressState>) -> Router {
    Router::new().fallback(proxy).with_state(state)
}

/// The egress proxy as a door (request metrics, timeout as a JSON refusal).
pub(crate) fn door() -> crate::door::observe::DoorSpec {
    crate::door::observe::DoorSpec {
        door: crate::identity::Door::Egress,
        route_of: |_| "proxy",
        timed_out: || {
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request took longer than the proxy's timeout",
            )
        },
        json_errors: false,
        extra_wait: crate::door::observe::no_wait,
        carries_material: crate::door::observe::never,
    }
}

/// The egress proxy's answer for each failure class: this door's row of the one table
/// (`tests/doors.rs`). A credential that is not there is a denial, as for any consumer.
pub fn status(class: Failure) -> (StatusCode, &'static str, &'static str) {
    match class {
        Failure::Unauthenticated => (
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy_authentication_required",
            "Proxy-Authorization: Bearer <consumer token>",
        ),
        Failure::Denied | Failure::NotFound => (
            StatusCode::FORBIDDEN,
            "denied",
            "not allowed for this destination",
        ),
        Failure::Ambiguous => (
            StatusCode::BAD_REQUEST,
            "credential_required",
            "name the credential in Keybroker-Credential (none, or more than one, fits this host)",
        ),
        Failure::Invalid | Failure::TooMany | Failure::Unresolved => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request cannot be served",
        ),
        Failure::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request is too large",
        ),
        Failure::Unavailable | Failure::SourceCredentialsRefused | Failure::SourceMisconfigured => {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "source_unavailable",
                "the credential's source is unavailable",
            )
        }
        Failure::AuditUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit trail cannot be written",
        ),
        Failure::Rejected => (
            StatusCode::BAD_GATEWAY,
            "credential_rejected",
            "the credential was refused by verification",
        ),
        Failure::Broken => (
            StatusCode::BAD_GATEWAY,
            "credential_unresolved",
            "the credential's values could not be resolved",
        ),
    }
}

/// A refusal: a JSON error with a stable code (never a value).
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    refuse_with(status, &body)
}

/// A refusal whose JSON body is `body`.
fn refuse_with(status: StatusCode, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_owned()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), plus those naming this proxy's own
/// inputs; never forwarded either way.
fn hop_by_hop(name: &HeaderName, nominated: &[String]) -> bool {
    const FIXED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    ];
    let n = name.as_str();
    FIXED.contains(&n)
        || n.starts_with("keybroker-")
        // A caller's claims about where the request came from are not this proxy's word: an
        // upstream that trusts them would be told what the caller chose.
        || n == "forwarded"
        || n.starts_with("x-forwarded-")
        || nominated.iter().any(|x| x == n)
}

/// Header names a `Connection` header nominates as hop-by-hop.
fn nominated(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

/// Loopback, private, link-local, unspecified, CGNAT, unique-local: not on the internet.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let v4 = |a: u8, b: u8, c: u8, d: u8| internal(IpAddr::V4([a, b, c, d].into()));
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| internal(IpAddr::V4(v4)))
                // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
                || (s[..6] == [0; 6] && v4(o[12], o[13], o[14], o[15]))
                // NAT64, the well-known prefix 64:ff9b::/96 and the local-use 64:ff9b:1::/48.
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4(o[12], o[13], o[14], o[15]))
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // 6to4: 2002:a.b.c.d::/48 carries an IPv4 address.
                || (s[0] == 0x2002 && v4(o[2], o[3], o[4], o[5]))
        }
    }
}

/// Where a proxy-form request goes: the URL's host (brackets of an IPv6 literal removed), its
/// port (443 when absent: keybroker always calls out over TLS), and the destination the policy
/// decides on.
#[doc(hidden)]
#[derive(Debug)]
pub struct Target {
    /// The decided host, canonical: what is pinned, resolved and checked.
    pub host: String,
    /// The same host as a URL writes it (an IPv6 literal in brackets).
    pub url_host: String,
    pub port: u16,
    /// The decided path and query, normalised as WHATWG parsing does (dot segments
    /// resolved): what URL-form `allowed_hosts` matched and what is sent upstream.
    pub path_and_query: String,
    pub dest: Destination,
}

#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Origin form (`GET /path`): not a proxy request.
    NotAbsolute,
    InvalidHost,
    /// An encoded `/`, `\` or `.` in the path: the upstream may decode it into a path the
    /// policy did not decide on (`/v1/..%2Fadmin`).
    AmbiguousPath,
}

/// The request-target of a proxy request (the fuzz target's entry point).
///
/// The host connected to is the *decided* one, in its canonical form — lower-case A-labels,
/// or the IP address WHATWG parsing gives (`http://1/` is 0.0.0.1, `0x7f000001` is 127.0.0.1)
/// — never the text as the caller wrote it: resolving, pinning and the URL then all see the
/// same host, and no parser can read the caller's spelling differently from the policy.
#[doc(hidden)]
pub fn target(uri: &axum::http::Uri) -> Result<Target, TargetError> {
    let authority = uri.authority().ok_or(TargetError::NotAbsolute)?;
    let port = authority.port_u16().unwrap_or(443);
    let mut dest = Destination::parse(&format!("{}:{port}", authority.host()))
        .map_err(|_| TargetError::InvalidHost)?;
    let (host, url_host) = match &dest.host {
        Host::Dns(name) => (name.clone(), name.clone()),
        Host::Ip(IpAddr::V6(v6)) => (v6.to_string(), format!("[{v6}]")),
        Host::Ip(ip) => (ip.to_string(), ip.to_string()),
    };
    let path = uri.path();
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e"].iter().any(|e| lower.contains(e)) || path.contains('\\') {
        return Err(TargetError::AmbiguousPath);
    }
    // keybroker always calls out over TLS: the destination decided on is the https URL
    // (so URL-form allowed_hosts match it), with its path as WHATWG parsing resolves it.
    let url = url::Url::parse(&format!("https://{url_host}:{port}{path}"))
        .map_err(|_| TargetError::InvalidHost)?;
    dest.scheme = Some("https".to_owned());
    dest.path = Some(url.path().to_owned());
    let path_and_query = match uri.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    Ok(Target {
        host,
        url_host,
        port,
        path_and_query,
        dest,
    })
}

async fn proxy(State(state): State<Arc<EgressState>>, request: Request) -> Response {
    match forward(&state, request).await {
        Ok(answer) => answer,
        Err(refusal) => refusal.into_response(),
    }
}

/// Why the proxy did not forward a request; each rendered once, by
/// [`Refusal::into_response`], before any upstream connection is opened.
#[derive(Debug)]
enum Refusal {
    /// TRACE echoes the request, Proxy-Authorization and all, back to whoever reads it.
    Trace,
    /// A tunnel cannot carry the credential.
    Connect,
    Target(TargetError),
    Unauthenticated(crate::identity::AuthError),
    /// Only the main API knows an operator token; nothing else gets through here.
    NotConsumer,
    /// `Keybroker-Credential` repeated, not text or not a name.
    CredentialHeader(&'static str),
    Credential(CredentialError),
    /// The credential's material cannot make a client.
    Unusable(&'static str),
    BodyTooLarge,
    /// Already rendered where its facts are (the address check, the upstream's failure).
    Rendered(Box<Response>),
}

impl Refusal {
    fn into_response(self) -> Response {
        let bad = |code, message| refuse(StatusCode::BAD_REQUEST, code, message);
        match self {
            Self::Trace => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "trace_refused",
                "TRACE is not forwarded",
            ),
            Self::Connect => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_refused",
                "CONNECT is refused: a tunnel cannot carry the credential; send http://host/path",
            ),
            Self::Target(TargetError::NotAbsolute) => bad(
                "absolute_url_required",
                "send the request in proxy form: GET http://host/path",
            ),
            Self::Target(TargetError::InvalidHost) => {
                bad("invalid_host", "the URL's host is not valid")
            }
            Self::Target(TargetError::AmbiguousPath) => bad(
                "ambiguous_path",
                "the path holds an encoded '/', '\\' or '.': send it decoded",
            ),
            Self::Unauthenticated(why) if why.is_bad_request() => {
                refuse(status(why.into()).0, why.code(), &why.to_string())
            }
            Self::Unauthenticated(why) => {
                let (status, code, message) = status(why.into());
                refuse(status, code, message)
            }
            Self::NotConsumer => {
                let (status, code, message) = status(Failure::Unauthenticated);
                refuse(status, code, message)
            }
            Self::CredentialHeader(message) => bad("invalid", message),
            Self::Credential(CredentialError::NoneFits(_)) => bad(
                "credential_required",
                "name the credential in Keybroker-Credential (none, or more than one, fits this host)",
            ),
            // The main API's shape (502 `credential_rejected`, the role and the code as
            // `details`).
            Self::Credential(CredentialError::Rejected(r)) => {
                let message = CredentialError::Rejected(r).to_string();
                let (status, code, _) = status(Failure::Rejected);
                let body = serde_json::json!({ "error": {
                    "code": code,
                    "message": message,
                    "details": [{ "role": r.role, "reason": r.code }],
                }});
                refuse_with(status, &body.to_string())
            }
            Self::Credential(e) => {
                let (status, code, message) = status(e.failure());
                refuse(status, code, message)
            }
            Self::Unusable(why) => refuse(StatusCode::BAD_GATEWAY, "credential_unusable", why),
            Self::BodyTooLarge => refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is larger than 1 MiB",
            ),
            Self::Rendered(answer) => *answer,
        }
    }
}

/// The proxy's pipeline: the target, the caller, the credential (decided and audited by the
/// broker on the URL's real host and port), the checked address, then the exchange.
async fn forward(state: &EgressState, request: Request) -> Result<Response, Refusal> {
    if request.method() == Method::TRACE {
        return Err(Refusal::Trace);
    }
    if request.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let target = target(request.uri()).map_err(Refusal::Target)?;
    let peer = request
        .extensions()
        .get::<crate::door::listen::Peer>()
        .map(|p| p.addr.ip());
    let consumer = authenticated(state, request.headers(), peer).await?;
    let want = credential_asked(request.headers())?;
    let caller = Caller::Consumer(consumer.clone());
    let material = state
        .broker
        .read(Ask::new(&caller, Door::Egress, want).towards(Some(&target.dest)))
        .await
        .map_err(Refusal::Credential)?;
    let addr = checked_address(state, &target.host, target.port)
        .await
        .map_err(|answer| Refusal::Rendered(Box::new(answer)))?;
    let socket = SocketAddr::new(addr, target.port);
    let client = client_for(state, consumer.team(), material, &target.host, socket)
        .map_err(Refusal::Unusable)?;
    exchange(&client, request, &target).await
}

/// Who is asking: the one authenticator, set for this door (refusals budgeted per peer
/// address like every door's, THREATS 27; repeated credentials refused, THREATS 32).
async fn authenticated(
    state: &EgressState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<crate::identity::ConsumerRef, Refusal> {
    let presented = crate::identity::Presented {
        door: Door::Egress,
        peer,
        certificate: None,
        verifier: None,
        headers,
    };
    match state.broker.authenticate(&state.auth, presented).await {
        Ok((Caller::Consumer(c), _)) => Ok(c),
        Ok((Caller::Operator, _)) => Err(Refusal::NotConsumer),
        Err(why) => Err(Refusal::Unauthenticated(why)),
    }
}

/// Which credential: named, or the one visible credential whose allowed_hosts match (the
/// policy's choice, `policy explain` prints it). A name is a type before it is a lookup: a
/// header that is repeated, not text or not a name is refused — never read as "no name
/// given", which would pick one for the caller.
fn credential_asked(headers: &HeaderMap) -> Result<CredentialRead, Refusal> {
    let mut given = headers.get_all("keybroker-credential").iter();
    match (given.next(), given.next()) {
        (None, _) => Ok(CredentialRead::for_destination()),
        (Some(v), None) => match v.to_str().ok().map(crate::policy::EntryName::parse) {
            Some(Ok(n)) => Ok(CredentialRead::named(n.to_string())),
            _ => Err(Refusal::CredentialHeader(
                "Keybroker-Credential: a credential name must match [a-z0-9_-]{1,64}",
            )),
        },
        (Some(_), Some(_)) => Err(Refusal::CredentialHeader(
            "Keybroker-Credential: given more than once",
        )),
    }
}

/// Forwards, without hop-by-hop and keybroker's own headers; streams the answer back.
async fn exchange(
    client: &reqwest::Client,
    request: Request,
    target: &Target,
) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    // The path decided on, not the caller's spelling of it.
    let url = format!(
        "https://{}:{}{}",
        target.url_host, target.port, target.path_and_query
    );
    let skip = nominated(&parts.headers);
    let mut out = client.request(parts.method.clone(), &url);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k, &skip) {
            out = out.header(k, v);
        }
    }
    // The request body is read whole within the API's body limit (workflow requests are
    // small); the answer streams.
    let body = axum::body::to_bytes(body, MAX_REQUEST_BODY)
        .await
        .map_err(|_| Refusal::BodyTooLarge)?;
    out = out.body(body);
    let answer = out.send().await.map_err(|e| {
        Refusal::Rendered(Box::new(upstream_failure(&e, &target.host, target.port)))
    })?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = answer.status();
    let skip = nominated(answer.headers());
    for (k, v) in answer.headers() {
        // The answer's length is kept: an answer cut short (the upstream or `timeout` ends it
        // mid-stream) is then an error at the client, not a complete-looking short body.
        if !hop_by_hop(k, &skip) || *k == header::CONTENT_LENGTH {
            response.headers_mut().append(k.clone(), v.clone());
        }
    }
    *response.body_mut() = Body::new(reqwest::Body::from(answer));
    Ok(response)
}

/// The one address `host` is connected at: pinned by `[egress] resolve`, an IP literal, or
/// resolved once — and then refused when it leads inside.
async fn checked_address(state: &EgressState, host: &str, port: u16) -> Result<IpAddr, Response> {
    let pinned = state.resolve.get(host).copied();
    let literal: Option<IpAddr> = host.parse().ok();
    let addr = match (pinned, literal) {
        (Some(ip), _) | (None, Some(ip)) => ip,
        (None, None) => match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => a.ip(),
                None => {
                    return Err(refuse(
                        StatusCode::BAD_GATEWAY,
                        "unresolvable",
                        "the host does not resolve",
                    ));
                }
            },
            Err(_) => {
                return Err(refuse(
                    StatusCode::BAD_GATEWAY,
                    "unresolvable",
                    "the host does not resolve",
                ));
            }
        },
    };
    // An IP literal passed allowed_hosts only through an IP pattern, which names it; a pinned
    // name is the operator's word. Anything else must not lead inside.
    if pinned.is_none() && literal.is_none() && internal(addr) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "internal_destination",
            "the host resolves to a loopback, private or link-local address",
        ));
    }
    Ok(addr)
}

/// A client with the credential's certificate, trusting its root (else `[egress] ca_cert`,
/// else the system roots),
/// reused from the pool while the material is the same; `Err` says why the material makes
/// no client.
fn client_for(
    state: &EgressState,
    team: &str,
    material: crate::broker::Material,
    host: &str,
    socket: SocketAddr,
) -> Result<reqwest::Client, &'static str> {
    let mut identity = Zeroizing::new(String::new());
    let mut roots = None;
    for (field, value) in &material.values {
        match field.as_str() {
            "certificate" | "private_key" => {
                identity.push_str(value.expose_secret());
                if !identity.ends_with('\n') {
                    identity.push('\n');
                }
            }
            "ca" => roots = Some(value.expose_secret().to_owned()),
            _ => {}
        }
    }
    // The credential's own root first; else the operator's bundle (borrowed, not copied per
    // request); else the system roots.
    let roots: Option<std::borrow::Cow<'_, str>> = roots
        .map(std::borrow::Cow::Owned)
        .or_else(|| state.ca_bundle.as_deref().map(std::borrow::Cow::Borrowed));
    let credential_id = format!("{team}/{}", material.credential);
    drop(material);
    let digest = crate::secret::digest([
        identity.as_bytes(),
        roots.as_deref().unwrap_or("").as_bytes(),
    ]);
    let pool_key = (credential_id, host.to_owned(), socket);
    let client = match state.pool.get(&pool_key, &digest) {
        Some(c) => c,
        None => match build_client(&identity, roots.as_deref(), host, socket, state.timeout) {
            Ok(c) => {
                state.pool.put(pool_key, digest, c.clone());
                c
            }
            Err(why) => return Err(why),
        },
    };
    drop(identity);
    Ok(client)
}

/// The answer when the upstream could not be asked: its causes logged (the URL, which holds
/// the path the workflow chose, is not), the kind of failure answered.
fn upstream_failure(e: &reqwest::Error, host: &str, port: u16) -> Response {
    let mut causes = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(c) = next {
        causes.push_str(&c.to_string());
        causes.push_str("; ");
        next = c.source();
    }
    tracing::warn!(%host, port, %causes, "egress request failed");
    let (code, message) = if e.is_timeout() {
        ("upstream_timeout", "the destination did not answer in time")
    } else if causes.to_ascii_lowercase().contains("certificate") {
        (
            "upstream_untrusted",
            "the destination's certificate is not trusted for this credential",
        )
    } else {
        (
            "upstream_unreachable",
            "the destination could not be reached",
        )
    };
    refuse(StatusCode::BAD_GATEWAY, code, message)
}

/// A client presenting `identity` (certificate and key PEM), trusting `roots` only (else the
/// system roots), connecting `host` to `socket`, following no redirect.
fn build_client(
    identity: &str,
    roots: Option<&str>,
    host: &str,
    socket: SocketAddr,
    timeout: Duration,
) -> Result<reqwest::Client, &'static str> {
    let id = reqwest::Identity::from_pem(identity.as_bytes())
        .map_err(|_| "the credential is not a certificate and key")?;
    let mut builder = reqwest::Client::builder()
        .identity(id)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .resolve(host, socket);
    if let Some(pem) = roots {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|_| "the root certificate does not parse")?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|_| "the client cannot be set up")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host connected to is the one decided on, however the caller spelled it (found by
    /// the `egress_target` fuzz target: `http://1/` was decided as 0.0.0.1 but resolved as
    /// the text "1").
    #[test]
    fn the_target_host_is_the_decided_host_in_canonical_form() {
        let t = |u: &str| target(&axum::http::Uri::try_from(u).unwrap()).unwrap();
        for (url, host, url_host) in [
            ("http://1/", "0.0.0.1", "0.0.0.1"),
            ("http://0x7f000001/x", "127.0.0.1", "127.0.0.1"),
            (
                "http://API.Partner.Example/v1",
                "api.partner.example",
                "api.partner.example",
            ),
            ("http://[0:0::1]:8443/", "::1", "[::1]"),
        ] {
            let got = t(url);
            assert_eq!(
                (got.host.as_str(), got.url_host.as_str()),
                (host, url_host),
                "{url}"
            );
        }
        assert_eq!(t("http://a.example/").port, 443);
        // The path decided on is the resolved one; encoded separators are refused.
        let got = t("http://a.example/v1/./x/../y?q=%2F");
        assert_eq!(got.path_and_query, "/v1/y?q=%2F");
        assert_eq!(got.dest.to_string(), "https://a.example:443/v1/y");
        for ambiguous in [
            "http://a.example/v1/..%2Fadmin",
            "http://a.example/v1/%2E%2E/x",
            "http://a.example/a%5cb",
        ] {
            let uri = axum::http::Uri::try_from(ambiguous).unwrap();
            assert_eq!(
                target(&uri).unwrap_err(),
                TargetError::AmbiguousPath,
                "{ambiguous}"
            );
        }
        assert_eq!(
            target(&axum::http::Uri::from_static("/origin-form")).unwrap_err(),
            TargetError::NotAbsolute
        );
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            // THREATS row 41: the IPv6 forms that carry an internal IPv4 address.
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::5",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_keybrokers_own_are_not_forwarded() {
        let n = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        for h in [
            "connection",
            "proxy-authorization",
            "keybroker-credential",
            "te",
            "host",
            "upgrade",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
        ] {
            assert!(hop_by_hop(&n(h), &[]), "{h}");
        }
        assert!(hop_by_hop(&n("x-secret-hop"), &["x-secret-hop".into()]));
        assert!(!hop_by_hop(&n("accept"), &[]));
    }

    /// A client holding a credential's key lives at most `keep_alive`, used or not, and goes
    /// at once with any change (a rotation, a reload, a deletion, a purge).
    #[tokio::test]
    async fn pooled_clients_go_with_a_change_and_with_age() {
        let key = || {
            (
                "payments/partner-api".to_owned(),
                "api.partner.example".to_owned(),
                SocketAddr::from(([127, 0, 0, 1], 443)),
            )
        };
        let digest = [7u8; 32];
        let fresh = Arc::new(Pool::new(Duration::from_secs(3600)));
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        Pool::spawn_keeper(&fresh, rx);
        fresh.put(key(), digest, reqwest::Client::new());
        assert!(fresh.get(&key(), &digest).is_some());
        assert!(fresh.get(&key(), &[8u8; 32]).is_none(), "other material");
        tx.send_modify(|g| *g += 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fresh.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "not dropped on change"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let aged = Pool::new(Duration::ZERO);
        aged.put(key(), digest, reqwest::Client::new());
        assert!(
            aged.get(&key(), &digest).is_none(),
            "past keep_alive: not reused"
        );
        aged.expire();
        assert!(aged.is_empty(), "past keep_alive: dropped");
    }
}
