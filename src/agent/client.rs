//! The agent's side of the HTTP API: material and expansions, with ETags and blocking queries.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::config::ServerSection;
use crate::source::FieldValue;

/// Why a fetch did not give new material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The server could not be reached (or answered 5xx): try again later.
    #[error("the keybroker server is unreachable or unavailable: {0}")]
    Unreachable(String),
    /// The server answered and refused (4xx).
    #[error("the keybroker server refused: {status} {code}")]
    Refused { status: u16, code: String },
    /// The server refused our client certificate in the TLS handshake (no HTTP status came).
    #[error(
        "the keybroker server refused the agent's client certificate in the TLS handshake: {0}"
    )]
    CertificateRefused(String),
    /// The agent's own configuration is wrong in a way retrying cannot fix (the server's
    /// certificate is not trusted by `ca_cert`): exit 2, not "try again later".
    #[error("{0}")]
    Misconfigured(String),
    #[error("cannot set up the client: {0}")]
    Setup(String),
}

/// The values of one credential, as the server sent them.
#[derive(Deserialize)]
pub(super) struct Material {
    pub certificate: Option<FieldValue>,
    pub private_key: Option<FieldValue>,
    pub ca: Option<FieldValue>,
    /// Asked for with `include_next`: the values that take over at `not_before`.
    pub next: Option<Box<NextMaterial>>,
}

#[derive(Deserialize)]
pub(super) struct NextMaterial {
    pub not_before: String,
    #[serde(flatten)]
    pub values: Material,
}

/// A certificate signed for the agent's CSR (public: no key travels).
#[derive(Deserialize)]
pub(super) struct SignedCertificate {
    pub certificate: String,
    pub issuing_ca: String,
    pub serial_number: String,
    pub key_sha256: String,
}

#[derive(Deserialize)]
struct Expanded {
    document: FieldValue,
}

/// An answer: new content with its ETag, or "unchanged".
pub(super) enum Fetched<T> {
    Changed { etag: Option<String>, value: T },
    Unchanged,
}

/// The agent's own next client certificate (public: its key stays here).
#[derive(Deserialize)]
pub(super) struct RenewedIdentity {
    pub certificate: String,
    #[serde(default)]
    pub ca_chain: Option<String>,
    pub serial_number: String,
}

pub(super) struct Client {
    /// Swapped whole when the agent's identity is renewed: requests after it present the new
    /// certificate; those in flight finish on their connection.
    http: std::sync::RwLock<reqwest::Client>,
    base: String,
    token: Option<SecretString>,
}

impl Client {
    pub(super) fn new(server: &ServerSection) -> Result<Self, FetchError> {
        let token = match &server.token_file {
            None => None,
            Some(p) => {
                let t = Zeroizing::new(
                    std::fs::read_to_string(p)
                        .map_err(|e| FetchError::Setup(format!("{}: {e}", p.display())))?,
                );
                Some(crate::secret::secret_string(t.trim()))
            }
        };
        Ok(Self {
            http: std::sync::RwLock::new(Self::http(server)?),
            base: server.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Reads `client_cert` and `client_key` again (a renewed identity) into a new HTTP client
    /// for the requests to come; on error the one in use stays.
    pub(super) fn reload_identity(&self, server: &ServerSection) -> Result<(), FetchError> {
        let http = Self::http(server)?;
        *self
            .http
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = http;
        Ok(())
    }

    fn http(server: &ServerSection) -> Result<reqwest::Client, FetchError> {
        let setup = |e: String| FetchError::Setup(e);
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(server.wait + Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &server.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| setup(format!("{}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| setup(e.to_string()))?;
            b = b.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&server.client_cert, &server.client_key) {
            let mut pem = Zeroizing::new(
                std::fs::read(cert).map_err(|e| setup(format!("{}: {e}", cert.display())))?,
            );
            // A certificate file without a final newline would run into the key's line.
            pem.push(b'\n');
            pem.extend_from_slice(&Zeroizing::new(
                std::fs::read(key).map_err(|e| setup(format!("{}: {e}", key.display())))?,
            ));
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|_| setup("the client certificate or key does not parse".into()))?,
            );
        }
        b.build().map_err(|e| setup(e.to_string()))
    }

    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        etag: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<Option<(Option<String>, Zeroizing<Vec<u8>>)>, FetchError> {
        let mut url = format!("{}{path}", self.base);
        if let (Some(_), Some(w)) = (etag, wait) {
            url.push_str(&format!("?wait={}s", w.as_secs().clamp(1, 300)));
        }
        let http = self
            .http
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut req = http.post(url).json(&body);
        if let Some(t) = &self.token {
            use secrecy::ExposeSecret;
            req = req.bearer_auth(t.expose_secret());
        }
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        let resp = req.send().await.map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == 304 {
            return Ok(None);
        }
        let bytes = capped_body(resp, status).await?;
        if status == 200 {
            return Ok(Some((etag, bytes)));
        }
        // Error bodies hold codes, never values.
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match status {
            // A credential the server verified and refused is wrong until someone fixes it:
            // a refusal, not "try again later".
            502 if code == "credential_rejected" => Err(FetchError::Refused { status, code }),
            500..=599 => Err(FetchError::Unreachable(format!("status {status} {code}"))),
            _ => Err(FetchError::Refused { status, code }),
        }
    }

    pub(super) async fn material(
        &self,
        credential: &str,
        host: &str,
        include_next: bool,
        etag: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<Fetched<Material>, FetchError> {
        let path = format!("/v1/credentials/{credential}/material");
        let body = serde_json::json!({ "host": host, "include_next": include_next });
        match self.post(&path, body, etag, wait).await? {
            None => Ok(Fetched::Unchanged),
            Some((etag, bytes)) => {
                let value: Material = serde_json::from_slice(&bytes)
                    .map_err(|_| FetchError::Unreachable("an answer that does not parse".into()))?;
                Ok(Fetched::Changed { etag, value })
            }
        }
    }

    /// `POST /v1/credentials/{credential}/sign` with `csr`: the certificate for the agent's
    /// own key (never an ETag or a blocking query: each call signs).
    pub(super) async fn sign(
        &self,
        credential: &str,
        host: &str,
        csr: &str,
    ) -> Result<SignedCertificate, FetchError> {
        let path = format!("/v1/credentials/{credential}/sign");
        let body = serde_json::json!({ "csr": csr, "host": host });
        match self.post(&path, body, None, None).await? {
            None => Err(FetchError::Unreachable("an unexpected 304".into())),
            Some((_, bytes)) => serde_json::from_slice(&bytes)
                .map_err(|_| FetchError::Unreachable("an answer that does not parse".into())),
        }
    }

    /// `POST /v1/consumers/self/certificates` with `csr`: the agent's own next certificate,
    /// through its consumer's `identity_profile` (the client certificate is the caller).
    pub(super) async fn renew_identity(&self, csr: &str) -> Result<RenewedIdentity, FetchError> {
        let body = serde_json::json!({ "csr": csr });
        match self
            .post("/v1/consumers/self/certificates", body, None, None)
            .await?
        {
            None => Err(FetchError::Unreachable("an unexpected 304".into())),
            Some((_, bytes)) => serde_json::from_slice(&bytes)
                .map_err(|_| FetchError::Unreachable("an answer that does not parse".into())),
        }
    }

    pub(super) async fn expand(
        &self,
        text: &str,
        host: &str,
        etag: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<Fetched<SecretString>, FetchError> {
        let body = serde_json::json!({ "document": text, "format": "text", "host": host });
        match self.post("/v1/resolve", body, etag, wait).await? {
            None => Ok(Fetched::Unchanged),
            Some((etag, bytes)) => {
                let value: Expanded = serde_json::from_slice(&bytes)
                    .map_err(|_| FetchError::Unreachable("an answer that does not parse".into()))?;
                Ok(Fetched::Changed {
                    etag,
                    value: value.document.0,
                })
            }
        }
    }
}

/// What a failed exchange with the server means, with its cause kept (the URL, the TLS
/// error): an untrusted server certificate is the agent's configuration (`ca_cert`), a TLS
/// alert from the server is a refusal of our client certificate, anything else (refused
/// connection, timeout, reset) is the server being away.
/// The most of an answer the agent reads: twice the server's own default cap on an answer
/// (`[limits] max_answer_bytes`, 8 MiB). A server that sends more — compromised, or not
/// keybroker — costs the gateway's host no more memory than this.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The answer's body, read chunk by chunk into a zeroizing buffer, refused past
/// [`MAX_ANSWER_BYTES`] before it is all in.
async fn capped_body(
    mut resp: reqwest::Response,
    status: u16,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let too_large = || FetchError::Refused {
        status,
        code: "answer_too_large".to_owned(),
    };
    // What the server announces sizes the buffer, never past the cap.
    let announced = usize::try_from(resp.content_length().unwrap_or(0)).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(announced.min(MAX_ANSWER_BYTES)));
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&e))? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn transport(e: &reqwest::Error) -> FetchError {
    let causes = crate::source::http_causes(e);
    let url = e
        .url()
        .map(|u| format!("{}{}", u.origin().ascii_serialization(), u.path()));
    let at = url.unwrap_or_default();
    let lower = causes.to_ascii_lowercase();
    if lower.contains("invalid peer certificate") {
        FetchError::Misconfigured(format!(
            "{at}: the server's certificate is not trusted (check [server] ca_cert): {causes}"
        ))
    } else if lower.contains("received fatal alert") {
        FetchError::CertificateRefused(format!("{at}: {causes}"))
    } else {
        FetchError::Unreachable(format!("{at}: {causes}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: Vec<u8>) -> reqwest::Response {
        let b = axum::http::Response::builder().status(200);
        reqwest::Response::from(b.body(reqwest::Body::from(body)).unwrap())
    }

    fn refused(r: Result<Zeroizing<Vec<u8>>, FetchError>) -> bool {
        matches!(r, Err(FetchError::Refused { ref code, .. }) if code == "answer_too_large")
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_refused() {
        let ok = capped_body(answer(vec![b'x'; MAX_ANSWER_BYTES]), 200).await;
        assert_eq!(ok.unwrap().len(), MAX_ANSWER_BYTES);
        let over = capped_body(answer(vec![b'x'; MAX_ANSWER_BYTES + 1]), 200).await;
        assert!(refused(over), "one byte past the cap");
    }
}
