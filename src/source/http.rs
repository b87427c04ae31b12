//! The HTTPS client setup the network sources share: rustls, no redirects, timeouts, an
//! optional private CA and client certificate — and the loopback test for `http://`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;
use zeroize::Zeroizing;

/// Why a source's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a usable PEM certificate or key")]
    BadPem(String),
    #[error("cannot build the HTTP client")]
    Client,
}

/// True when `url` names a loopback host (the only place plain `http://` is allowed by
/// default).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// A client that never follows redirects, keeps no idle connections, trusts only `ca` (when
/// given) instead of the system roots, and presents `identity` (certificate, key) when given.
pub(crate) fn client(
    timeout: Duration,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<reqwest::Client, HttpSetupError> {
    ClientSettings::load(timeout, ca, identity, None)?.build(Duration::ZERO)
}

/// What a source's HTTP client is made of, read and checked once at start, so that a new
/// client (a new generation of connections, `source/connections.rs`) is built without touching
/// the files again.
#[derive(Clone)]
pub(super) struct ClientSettings {
    timeout: Duration,
    /// The given CAs *replace* the system roots, as the vault CLI treats VAULT_CACERT: a
    /// private backend trusts exactly its own CA.
    roots: Option<Vec<reqwest::Certificate>>,
    identity: Option<reqwest::Identity>,
    /// (name, addresses): requests to `name` go to those addresses, and TLS checks the
    /// server's certificate for `name` (Vault's `tls_server_name`).
    pinned: Option<(String, Vec<std::net::SocketAddr>)>,
}

impl ClientSettings {
    pub(super) fn load(
        timeout: Duration,
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
        pinned: Option<(&str, &[std::net::SocketAddr])>,
    ) -> Result<Self, HttpSetupError> {
        let roots = match ca {
            None => None,
            Some(ca) => {
                // A bundle file (every certificate in it) or a folder of them (VAULT_CAPATH).
                let pem = if ca.is_dir() {
                    read_folder(ca)?
                } else {
                    read(ca)?
                };
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| HttpSetupError::BadPem(ca.display().to_string()))?;
                Some(certs)
            }
        };
        let identity = match identity {
            None => None,
            Some((cert, key)) => {
                // Certificate and key in one zeroizing buffer, as reqwest wants them.
                let mut pem = Zeroizing::new(read(cert)?.to_vec());
                pem.extend_from_slice(&read(key)?);
                Some(
                    reqwest::Identity::from_pem(&pem)
                        .map_err(|_| HttpSetupError::BadPem(cert.display().to_string()))?,
                )
            }
        };
        let settings = Self {
            timeout,
            roots,
            identity,
            pinned: pinned.map(|(n, a)| (n.to_owned(), a.to_vec())),
        };
        // Built once here so that a bad combination fails at start, not at the first read.
        settings.build(Duration::ZERO)?;
        Ok(settings)
    }

    /// A client that never follows redirects. `keep_alive` zero: no idle connections, each
    /// request opens its own and closes it (its buffers are freed — and wiped — at once);
    /// else an idle connection is closed after `keep_alive` (THREATS row 29).
    pub(super) fn build(&self, keep_alive: Duration) -> Result<reqwest::Client, HttpSetupError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        builder = if keep_alive.is_zero() {
            builder.pool_max_idle_per_host(0)
        } else {
            builder.pool_idle_timeout(keep_alive)
        };
        if let Some(roots) = &self.roots {
            builder = builder.tls_certs_only(roots.iter().cloned());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        if let Some((name, addrs)) = &self.pinned {
            builder = builder.resolve_to_addrs(name, addrs);
        }
        builder.build().map_err(|_| HttpSetupError::Client)
    }
}

/// Every `.pem`/`.crt` file of a folder, in name order, one after the other.
fn read_folder(dir: &Path) -> Result<Zeroizing<Vec<u8>>, HttpSetupError> {
    let err = |source| HttpSetupError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "pem" || x == "crt"))
        .collect();
    files.sort();
    let mut all = Zeroizing::new(Vec::new());
    for f in files {
        all.extend_from_slice(&read(&f)?);
        all.push(b'\n');
    }
    Ok(all)
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, HttpSetupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| HttpSetupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Vault or CCP; it counts as
/// absent, and the caller's default pause applies).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What went wrong under a transport error, for the log: the chain of causes below reqwest's
/// own message (which quotes the URL, and CCP's URL carries the query) — e.g. "tcp connect
/// error: Connection refused (os error 111)".
pub(crate) fn causes(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    if out.is_empty() {
        out.push_str(if e.is_timeout() {
            "timed out"
        } else {
            "request failed"
        });
    }
    out
}
