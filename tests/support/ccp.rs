//! A CyberArk CCP double that follows docs/CCP-API.md, strict where CCP is strict:
//! HTTPS with optional client certificates, per-AppID authentication by source IP and
//! certificate serial/subject/issuer, safes with member AppIDs (403 before 404), objects with
//! properties, CCP's error codes and HTTP statuses, case-insensitive parameter names, and the
//! faults of the spec on demand. `ErrorMsg` echoes the query, AppID and serial — as the real
//! service does — so tests can check keybroker never passes it on.

// Shared by several test binaries, each of which uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;

/// Marker planted in every `ErrorMsg`; it must never reach keybroker's output.
pub const ERRORMSG_CANARY: &str = "ERRORMSG-CANARY-51e3";

#[derive(Clone, Debug, Default)]
pub struct AppAuth {
    pub ips: Vec<IpAddr>,
    pub serials: Vec<String>,
    pub subjects: Vec<String>,
    pub issuers: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Object {
    pub folder: String,
    pub name: String,
    pub props: BTreeMap<String, String>,
    pub changing: bool,
}

#[derive(Clone, Debug)]
pub enum Fault {
    VaultUnreachable,
    HtmlError,
    Redirect,
    Reset,
    Slow(Duration),
    /// `PasswordChangeInProcess` as a JSON boolean instead of `"True"`/`"False"`.
    BoolPasswordChange,
    /// CCP's own cache still holds the value from before a rotation: objects answer with
    /// their `PreviousContent` property as `Content`.
    Stale,
}

#[derive(Default)]
pub struct Store {
    pub apps: BTreeMap<String, AppAuth>,
    /// safe → (member AppIDs, objects)
    pub safes: BTreeMap<String, (Vec<String>, Vec<Object>)>,
    pub fault: Option<Fault>,
    /// Raw query strings as received.
    pub queries: Vec<String>,
    /// Answer this many requests with `APPAP007E` (vault unreachable) before serving.
    pub unreachable_next: usize,
    /// TLS connections accepted so far (keep-alive reuse is visible as fewer of them).
    pub connections: usize,
}

/// Test PKI: a CA, the server certificate, and a client certificate for keybroker.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub client_serial: String,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
    ca_der: CertificateDer<'static>,
    ca_key: Vec<u8>,
}

impl Store {
    /// A store where AppID `keybroker` may call from loopback with the `pki` client
    /// certificate (the setup every user of the double starts from).
    pub fn for_keybroker(pki: &Pki) -> Self {
        let mut s = Self::default();
        s.apps.insert(
            "keybroker".into(),
            AppAuth {
                ips: vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
                serials: vec![pki.client_serial.clone()],
                ..AppAuth::default()
            },
        );
        s
    }
}

impl Pki {
    /// A second client certificate from the same CA (another serial), as `client2*.pem`.
    pub fn second_client(&self) {
        let ca_key = KeyPair::try_from(self.ca_key.as_slice()).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "CCP test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["intruder.test".to_owned()]).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "intruder");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = cp.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.dir.path().join("client2.pem"), cert.pem()).unwrap();
        std::fs::write(self.dir.path().join("client2-key.pem"), key.serialize_pem()).unwrap();
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "CCP test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["keybroker.test".to_owned()]).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "keybroker");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&client_key, &issuer).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(client.der()).unwrap();
        let client_serial = parsed.raw_serial_as_string();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("client.pem", client.pem()),
            ("client-key.pem", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Self {
            dir,
            client_serial,
            server_der: server.der().clone(),
            server_key: server_key.serialize_der(),
            ca_der: ca.der().clone(),
            ca_key: ca_key.serialize_der(),
        }
    }
}

/// Who connected: peer address and the client certificate's serial/subject/issuer.
#[derive(Clone, Debug)]
struct Peer {
    ip: IpAddr,
    cert: Option<(String, String, String)>,
}

pub struct CcpDouble {
    pub url: String,
    pub store: Arc<Mutex<Store>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CcpDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CcpDouble {
    pub async fn start(pki: &Pki, store: Store) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
        let mut tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server_der.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(store));
        let app = Router::new()
            .route("/{service}/api/Accounts", axum::routing::get(accounts))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(Arc::clone(&store));
        let shared = Arc::clone(&store);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, remote)) = listener.accept().await else {
                    return;
                };
                if matches!(shared.lock().unwrap().fault, Some(Fault::Reset)) {
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let app = app.clone();
                let counted = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.lock().unwrap().connections += 1;
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|der| {
                            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
                            (
                                c.raw_serial_as_string(),
                                c.subject().to_string(),
                                c.issuer().to_string(),
                            )
                        });
                    let peer = Peer {
                        ip: remote.ip(),
                        cert,
                    };
                    let svc = TowerToHyperService::new(app.layer(Extension(peer)));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let _: SocketAddr = addr;
        Self {
            url: format!("https://127.0.0.1:{}", addr.port()),
            store,
            task,
        }
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        self.store.lock().unwrap().fault = fault;
    }

    pub fn connections(&self) -> usize {
        self.store.lock().unwrap().connections
    }

    pub fn queries(&self) -> Vec<String> {
        self.store.lock().unwrap().queries.clone()
    }
}

fn error(status: StatusCode, code: &str, echo: &str) -> Response {
    let body = serde_json::json!({
        "ErrorCode": code,
        "ErrorMsg": format!("{code} request failed ({echo}) {ERRORMSG_CANARY}"),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn html(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        format!("<html><body><h1>Server Error</h1>{ERRORMSG_CANARY}</body></html>"),
    )
        .into_response()
}

/// Forbidden inside CCP values (after decoding).
fn bad_value(v: &str) -> bool {
    v.chars()
        .any(|c| matches!(c, ';' | '&' | '+' | '%' | '=') || c.is_control())
}

async fn accounts(
    State(store): State<Arc<Mutex<Store>>>,
    Extension(peer): Extension<Peer>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let raw = raw.unwrap_or_default();
    let fault = {
        let mut s = store.lock().unwrap();
        s.queries.push(raw.clone());
        s.fault.clone()
    };
    if service != "AIMWebService" {
        return StatusCode::NOT_FOUND.into_response();
    }
    match &fault {
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        Some(Fault::HtmlError) => return html(StatusCode::INTERNAL_SERVER_ERROR),
        Some(Fault::Redirect) => {
            return (
                StatusCode::FOUND,
                [(
                    header::LOCATION,
                    "https://elsewhere.example/AIMWebService/api/Accounts",
                )],
            )
                .into_response();
        }
        _ => {}
    }
    // Parameters: names case-insensitive; a raw `+` is not a space to CCP, it is refused.
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return error(StatusCode::BAD_REQUEST, "AIMWS030E", &raw);
        };
        let key = k.to_ascii_lowercase();
        let Ok(value) = percent_encoding::percent_decode_str(v).decode_utf8() else {
            return error(StatusCode::BAD_REQUEST, "APPAP081E", &raw);
        };
        // `Query` is the one value whose syntax uses `;` and `=`.
        let checked = if key == "query" {
            value.split([';', '=']).any(bad_value)
        } else {
            bad_value(&value)
        };
        if v.contains('+') || checked {
            return error(StatusCode::BAD_REQUEST, "APPAP081E", &raw);
        }
        if params.insert(key, value.into_owned()).is_some() {
            return error(StatusCode::BAD_REQUEST, "AIMWS030E", &raw);
        }
    }
    let Some(app_id) = params.get("appid").cloned() else {
        return error(StatusCode::BAD_REQUEST, "AIMWS031E", &raw);
    };
    if params.len() < 2 {
        return error(StatusCode::BAD_REQUEST, "AIMWS030E", &raw);
    }
    let serial = peer.cert.as_ref().map(|c| c.0.clone()).unwrap_or_default();
    let echo = format!("AppID={app_id} serial={serial} query={raw}");
    let s = store.lock().unwrap();
    // Application authentication: every configured kind must match.
    let Some(auth) = s.apps.get(&app_id) else {
        return error(StatusCode::FORBIDDEN, "APPAP008E", &echo);
    };
    let kind_ok = |allowed: &Vec<String>, have: Option<&String>| {
        allowed.is_empty() || have.is_some_and(|h| allowed.contains(h))
    };
    let cert = peer.cert.as_ref();
    let authorized = (auth.ips.is_empty() || auth.ips.contains(&peer.ip))
        && kind_ok(&auth.serials, cert.map(|c| &c.0))
        && kind_ok(&auth.subjects, cert.map(|c| &c.1))
        && kind_ok(&auth.issuers, cert.map(|c| &c.2));
    if !authorized {
        return error(StatusCode::FORBIDDEN, "APPAP306E", &echo);
    }
    if matches!(fault, Some(Fault::VaultUnreachable)) {
        return error(StatusCode::BAD_REQUEST, "APPAP007E", &echo);
    }
    drop(s);
    {
        let mut m = store.lock().unwrap();
        if m.unreachable_next > 0 {
            m.unreachable_next -= 1;
            return error(StatusCode::BAD_REQUEST, "APPAP007E", &echo);
        }
    }
    let s = store.lock().unwrap();
    let (safe, folder, object) = if let Some(q) = params.get("query") {
        if params
            .get("queryformat")
            .is_some_and(|f| !f.eq_ignore_ascii_case("exact"))
        {
            return error(StatusCode::BAD_REQUEST, "AIMWS030E", &echo);
        }
        let mut parts = BTreeMap::new();
        for kv in q.split(';') {
            if let Some((k, v)) = kv.split_once('=') {
                parts.insert(k.to_ascii_lowercase(), v.to_owned());
            }
        }
        (
            parts.get("safe").cloned(),
            parts.get("folder").cloned(),
            parts.get("object").cloned(),
        )
    } else {
        (
            params.get("safe").cloned(),
            params.get("folder").cloned(),
            params.get("object").cloned(),
        )
    };
    let Some(safe) = safe else {
        return error(StatusCode::BAD_REQUEST, "AIMWS030E", &echo);
    };
    // Membership before existence: an unknown safe looks like a forbidden one.
    let Some((members, objects)) = s.safes.get(&safe).filter(|(m, _)| m.contains(&app_id)) else {
        return error(StatusCode::FORBIDDEN, "APPAP306E", &echo);
    };
    let _ = members;
    let folder = folder.unwrap_or_else(|| "Root".to_owned());
    let matches: Vec<&Object> = objects
        .iter()
        .filter(|o| o.folder == folder)
        .filter(|o| object.as_ref().is_none_or(|n| &o.name == n))
        .filter(|o| {
            ["username", "address", "database", "policyid"]
                .iter()
                .all(|p| {
                    params.get(*p).is_none_or(|want| {
                        o.props
                            .iter()
                            .any(|(k, v)| k.eq_ignore_ascii_case(p) && v == want)
                    })
                })
        })
        .collect();
    let o = match matches.as_slice() {
        [] => return error(StatusCode::NOT_FOUND, "APPAP004E", &echo),
        [o] => *o,
        _ => return error(StatusCode::BAD_REQUEST, "APPAP227E", &echo),
    };
    let fail_on_change = params
        .get("failrequestonpasswordchange")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if o.changing && fail_on_change {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "APPAP282E", &echo);
    }
    let mut body = serde_json::Map::new();
    for (k, v) in o
        .props
        .iter()
        .filter(|(k, _)| k.as_str() != "PreviousContent")
    {
        body.insert(k.clone(), serde_json::Value::from(v.clone()));
    }
    if matches!(fault, Some(Fault::Stale))
        && let Some(old) = o.props.get("PreviousContent")
    {
        body.insert("Content".into(), old.clone().into());
    }
    body.insert("Safe".into(), safe.clone().into());
    body.insert("Folder".into(), o.folder.clone().into());
    body.insert("Name".into(), o.name.clone().into());
    let pcip = if matches!(fault, Some(Fault::BoolPasswordChange)) {
        serde_json::Value::Bool(o.changing)
    } else {
        serde_json::Value::from(if o.changing { "True" } else { "False" })
    };
    body.insert("PasswordChangeInProcess".into(), pcip);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::Value::Object(body).to_string(),
    )
        .into_response()
}

/// How CCP returns a multi-line value stored through the single-line password field.
pub fn flatten(value: &str) -> String {
    value.replace("\r\n", "\n").trim_end().replace('\n', " ")
}

/// The ways a multi-line value can be stored in CCP (CCP-API.md, "Multi-line values").
pub fn stored_as(value: &str, how: &str) -> String {
    match how {
        "newlines_kept" => value.to_owned(),
        "crlf_kept" => value.replace('\n', "\r\n"),
        "spaces" => flatten(value),
        "whitespace_removed" => value.split_whitespace().collect(),
        other => panic!("unknown storage form {other}"),
    }
}
