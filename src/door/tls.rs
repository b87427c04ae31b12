//! The TLS settings of a listener — server certificate and key, `client_ca`, `client_crl` —
//! loaded once and swapped whole on reload (SIGHUP, `POST /v1/admin/reload`).
//!
//! A handshake takes the settings current when it starts; an open connection keeps the ones it
//! was made with, so a reload drops nothing. A reload that fails (a half-written file, a key
//! that does not match) leaves the previous settings in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {why}")]
    Certificates { path: PathBuf, why: String },
    /// Never the parser's message: it can quote key bytes.
    #[error("no usable private key in {0} (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    Key(PathBuf),
    #[error("cannot read the revocation list {path}: {why}")]
    Crl { path: PathBuf, why: String },
    #[error("client_crl needs client_ca: a revocation list revokes certificates of a CA")]
    CrlWithoutCa,
    #[error("{0}")]
    Rustls(String),
}

/// The files a listener's TLS is made of.
#[derive(Clone, Debug, Default)]
struct Files {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_crl: Option<PathBuf>,
    client_auth: ClientAuth,
}

/// One loaded generation of a listener's TLS.
pub struct Loaded {
    /// `None`: plain HTTP (no `tls_cert`).
    pub acceptor: Option<TlsAcceptor>,
    /// Checks client certificates against `client_ca` and `client_crl`: in handshakes, and
    /// for certificates forwarded in `client_cert_header`.
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// `client_ca`'s certificates (DER): what an issuer ACL's CA must be or chain to.
    pub client_cas: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("tls", &self.acceptor.is_some())
            .field("verifies_clients", &self.verifier.is_some())
            .finish()
    }
}

/// A listener's TLS, reloadable.
pub struct ServerTls {
    files: Files,
    current: ArcSwap<Loaded>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the TLS files `server` names.
    pub fn load(server: &ServerConfig) -> Result<Self, TlsSetupError> {
        let files = Files {
            cert: server.tls_cert.clone(),
            key: server.tls_key.clone(),
            client_ca: server.client_ca.clone(),
            client_crl: server.client_crl.clone(),
            client_auth: server.client_auth,
        };
        let loaded = files.load()?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(loaded),
        })
    }

    /// Plain HTTP (the ops listener).
    pub fn plain() -> Self {
        Self {
            files: Files::default(),
            current: ArcSwap::from_pointee(Loaded {
                acceptor: None,
                verifier: None,
                client_cas: Vec::new(),
            }),
        }
    }

    /// The same files read again; on any error the previous settings stay in force.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let loaded = self.files.load()?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// The settings a new handshake (or a forwarded certificate) is checked with.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Whether this listener speaks TLS (fixed for its life: a reload swaps files, not modes).
    pub fn is_tls(&self) -> bool {
        self.files.cert.is_some()
    }

    /// Whether client certificates are checked.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The files this listener reads, for the reload log line.
    pub fn describe(&self) -> String {
        [
            &self.files.cert,
            &self.files.client_ca,
            &self.files.client_crl,
        ]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
    }
}

impl Files {
    fn load(&self) -> Result<Loaded, TlsSetupError> {
        let verifier = self.verifier()?;
        let acceptor = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(acceptor(cert, key, verifier.clone())?),
            _ => None,
        };
        let client_cas = match &self.client_ca {
            Some(ca) => certificates(ca)?.iter().map(|c| c.to_vec()).collect(),
            None => Vec::new(),
        };
        Ok(Loaded {
            acceptor,
            verifier,
            client_cas,
        })
    }

    fn verifier(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsSetupError> {
        let Some(ca) = &self.client_ca else {
            return match self.client_crl {
                Some(_) => Err(TlsSetupError::CrlWithoutCa),
                None => Ok(None),
            };
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots
                .add(cert)
                .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", ca.display())))?;
        }
        let mut builder = WebPkiClientVerifier::builder(Arc::new(roots));
        if let Some(crl) = &self.client_crl {
            // Like nginx's `ssl_crl`: every CA that issues client certificates needs its list
            // in the file; a certificate whose issuer has none is refused, not waved through.
            builder = builder
                .with_crls(revocation_lists(crl)?)
                .only_check_end_entity_revocation();
        }
        let builder = match self.client_auth {
            ClientAuth::Optional => builder.allow_unauthenticated(),
            ClientAuth::Required => builder,
        };
        builder
            .build()
            .map(Some)
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))
    }
}

fn acceptor(
    cert: &Path,
    key: &Path,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsSetupError::Key(key.to_owned()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Reads a PEM certificate file (public data: parse errors may be shown).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    pem_blocks(path, "CERTIFICATE").map_err(|why| TlsSetupError::Certificates {
        path: path.to_owned(),
        why,
    })
}

/// Reads a PEM file of `X509 CRL` blocks (public data).
fn revocation_lists(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
    pem_blocks(path, "X509 CRL").map_err(|why| TlsSetupError::Crl {
        path: path.to_owned(),
        why,
    })
}

/// Every block of one kind in a PEM file of public data; none is an error.
fn pem_blocks<T: PemObject>(path: &Path, label: &str) -> Result<Vec<T>, String> {
    let blocks = T::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if blocks.is_empty() {
        return Err(format!("no {label} block"));
    }
    Ok(blocks)
}
