//! The `keybroker.toml` schema (docs/DESIGN.md §12) as plain data.
//!
//! Unknown keys are found by [`super::load`] with `serde_ignored`, so that every one of
//! them is reported with its line, not only the first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Deserialize)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Turns on client-certificate authentication.
    pub client_ca: Option<PathBuf>,
    /// Revocation lists (PEM `X509 CRL`) of the CAs in `client_ca`; reloaded with the policy.
    pub client_crl: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Peers allowed to send `client_cert_header`.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    pub client_cert_header: Option<String>,
    /// A request (body read, decision, source reads) that takes longer is answered 503.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// A plain-HTTP listener with `/healthz`, `/readyz` and `/metrics` only.
    pub ops_listen: Option<SocketAddr>,
    /// The key of answers' ETags, shared by replicas so they tag the same content alike
    /// (random per process when absent).
    pub etag_key_file: Option<PathBuf>,
}

fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_crl: None,
            client_auth: ClientAuth::default(),
            trusted_proxies: Vec::new(),
            client_cert_header: None,
            request_timeout: default_request_timeout(),
            ops_listen: None,
            etag_key_file: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

/// How a source's or credential's PEM values are treated (docs/PEM.md). Defined here, with
/// the configuration that names it, and re-exported as `pem::Mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PemMode {
    /// Restore flattened values, then verify.
    #[default]
    Repair,
    /// Only intact values (a missing final newline is tolerated); then verify.
    Strict,
    /// Pass values through untouched and unchecked.
    Off,
}

/// The kinds of backend keybroker speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Vault,
    Ccp,
    File,
    Pki,
}

/// One `[[source]]`, by `kind`.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    Vault(VaultSourceConfig),
    Ccp(CcpSourceConfig),
    File(FileSourceConfig),
    Pki(PkiSourceConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            Self::Vault(s) => &s.name,
            Self::Ccp(s) => &s.name,
            Self::File(s) => &s.name,
            Self::Pki(s) => &s.name,
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            Self::Vault(_) => SourceKind::Vault,
            Self::Ccp(_) => SourceKind::Ccp,
            Self::Pki(_) => SourceKind::Pki,
            Self::File(_) => SourceKind::File,
        }
    }
}

/// `address = "https://v1:8200"` or `address = ["https://v1:8200", "https://v2:8200"]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses(pub Vec<String>);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d)? {
            OneOrMany::One(a) => Ok(Self(vec![a])),
            OneOrMany::Many(list) if !list.is_empty() => Ok(Self(list)),
            OneOrMany::Many(_) => Err(serde::de::Error::custom("address: an empty list")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct VaultSourceConfig {
    pub name: String,
    /// One address or a list tried in order (a Raft cluster's nodes); else `VAULT_ADDR`.
    pub address: Option<Addresses>,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default)]
    pub kv_version: KvVersion,
    /// Else `VAULT_NAMESPACE`.
    pub namespace: Option<String>,
    #[serde(default)]
    pub auth: VaultAuth,
    /// Else `VAULT_CACERT`.
    pub ca_cert: Option<PathBuf>,
    /// mTLS to Vault; else `VAULT_CLIENT_CERT` / `VAULT_CLIENT_KEY`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub timeout: Option<Dur>,
    pub ttl: Option<Dur>,
    /// How long a connection to the backend may be kept and reused (default 5 s, at most
    /// half of the shortest cache TTL; "0s": one connection per request). THREATS row 29.
    pub keep_alive: Option<Dur>,
    #[serde(default)]
    pub pem: PemMode,
    /// Allows `http://` to a non-loopback address. For development only.
    #[serde(default)]
    pub insecure_dev: bool,
}

fn default_mount() -> String {
    "secret".to_owned()
}

/// KV engine version: `"auto"` (detected per mount), `1` or `2` (number or string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvVersion {
    #[default]
    Auto,
    V1,
    V2,
}

impl<'de> Deserialize<'de> for KvVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(1) => Ok(Self::V1),
            Raw::Int(2) => Ok(Self::V2),
            Raw::Str(s) => match s.as_str() {
                "auto" => Ok(Self::Auto),
                "1" => Ok(Self::V1),
                "2" => Ok(Self::V2),
                _ => Err(serde::de::Error::custom(
                    "kv_version must be \"auto\", 1 or 2",
                )),
            },
            Raw::Int(_) => Err(serde::de::Error::custom(
                "kv_version must be \"auto\", 1 or 2",
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuth {
    /// `VAULT_TOKEN`, or a token file re-read when it changes.
    Token { token_file: Option<PathBuf> },
    AppRole {
        role_id_file: Option<PathBuf>,
        secret_id_file: Option<PathBuf>,
        mount: Option<String>,
    },
    Cert {
        name: Option<String>,
        mount: Option<String>,
    },
    /// `auth/<mount>/login` with `{role, jwt}`, the JWT read from `token_file` at every login
    /// (a projected service-account token or a workload identity file is rotated under us).
    Jwt {
        role: String,
        token_file: PathBuf,
        mount: Option<String>,
    },
    /// As `jwt`, on the `kubernetes` mount, with the pod's service-account token by default.
    Kubernetes {
        role: String,
        token_file: Option<PathBuf>,
        mount: Option<String>,
    },
}

/// Where Kubernetes mounts a pod's service-account token.
pub(crate) const KUBERNETES_TOKEN_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Default for VaultAuth {
    fn default() -> Self {
        Self::Token { token_file: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct CcpSourceConfig {
    pub name: String,
    pub url: String,
    pub app_id: String,
    #[serde(default = "default_service_path")]
    pub service_path: String,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Option<Dur>,
    /// CCP's own `ConnectionTimeout` (seconds it allows for its trip to the vault).
    pub connection_timeout: Option<u32>,
    pub reason: Option<String>,
    #[serde(default)]
    pub fail_request_on_password_change: bool,
    /// Send Safe/Folder/Object as one `Query` parameter (`QueryFormat=Exact`) instead of
    /// separate parameters.
    #[serde(default)]
    pub use_query: bool,
    pub ttl: Option<Dur>,
    /// How long a connection to the backend may be kept and reused (default 5 s, at most
    /// half of the shortest cache TTL; "0s": one connection per request). THREATS row 29.
    pub keep_alive: Option<Dur>,
    #[serde(default)]
    pub pem: PemMode,
    #[serde(default)]
    pub insecure_dev: bool,
}

fn default_service_path() -> String {
    "AIMWebService".to_owned()
}

/// `kind = "pki"`: short-lived certificates issued by an OpenBao/Vault PKI mount through a
/// vault source. A reference's path names one of the operator's issuance `profiles` — the
/// policy and its consumers choose which profile, never the name or lifetime a certificate
/// gets (docs/PKI.md).
#[derive(Clone, Debug, Deserialize)]
pub struct PkiSourceConfig {
    pub name: String,
    /// The vault source whose address and token issue.
    pub vault: String,
    /// The PKI secrets engine's mount.
    #[serde(default = "default_pki_mount")]
    pub mount: String,
    pub profiles: std::collections::BTreeMap<String, PkiProfile>,
}

fn default_pki_mount() -> String {
    "pki".to_owned()
}

/// What `<mount>/issue/<role>` is asked for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiProfile {
    pub role: String,
    pub common_name: String,
    /// Asked lifetime; the role's default (and its `max_ttl` bound) otherwise.
    #[serde(default)]
    pub ttl: Option<Dur>,
    #[serde(default)]
    pub alt_names: Vec<String>,
    #[serde(default)]
    pub ip_sans: Vec<String>,
    #[serde(default)]
    pub uri_sans: Vec<String>,
    /// `rsa`, `ec` or `ed25519` when the role allows the caller to choose; with
    /// `issue = "sign"`, the only key family a CSR may carry.
    #[serde(default)]
    pub key_type: Option<String>,
    /// `issue` (the default: OpenBao makes the key, `<mount>/issue/<role>`) or `sign`: the
    /// caller makes its key and sends a CSR (`POST /v1/credentials/{name}/sign`,
    /// `<mount>/sign/<role>`); a read of a signing profile issues nothing.
    #[serde(default)]
    pub issue: PkiIssue,
}

/// Who makes a profile's private key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PkiIssue {
    /// OpenBao, and the key travels through keybroker.
    #[default]
    Issue,
    /// The caller, on its own host: only the CSR and the certificate travel.
    Sign,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FileSourceConfig {
    pub name: String,
    /// The directory of secrets; relative to the config file.
    pub path: PathBuf,
    #[serde(default)]
    pub pem: PemMode,
}

/// `[limits]`: what one caller may make keybroker do (tenant isolation). Wave-2 limits not
/// listed here are not enforced yet (see docs/POLICY.md, "Limits").
#[derive(Clone, Debug, Deserialize)]
pub struct LimitsConfig {
    /// Distinct reads (secrets) one request may cause; more is `400 too_many_references`,
    /// refused before any read.
    #[serde(default = "default_max_references")]
    pub max_references: usize,
    /// Reads in flight per source, shared by all requests; the rest wait their turn.
    #[serde(default = "default_source_concurrency")]
    pub source_concurrency: usize,
    /// Reference occurrences in one document (duplicates included).
    #[serde(default = "default_max_sites")]
    pub max_sites: usize,
    /// Size of one expanded answer; checked before anything is reserved.
    #[serde(default = "default_max_answer_bytes")]
    pub max_answer_bytes: ByteSize,
    /// Failures listed in one error answer (then a count).
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// Open client connections; more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open client connections per peer address; more are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// An answer the client does not take within this is dropped with its connection.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Dur,
    /// Blocking queries (`?wait=`) one consumer may hold at once; more are `429
    /// too_many_waiting`. The operator is not counted.
    #[serde(default = "default_max_waiting_per_consumer")]
    pub max_waiting_per_consumer: usize,
    /// The share of a source's `source_concurrency` one team may hold while another team
    /// waits for a read (0 < share ≤ 1); a team alone may use them all.
    #[serde(default = "default_team_share")]
    pub team_share: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_references: default_max_references(),
            source_concurrency: default_source_concurrency(),
            max_sites: default_max_sites(),
            max_answer_bytes: default_max_answer_bytes(),
            max_errors: default_max_errors(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            write_timeout: default_write_timeout(),
            max_waiting_per_consumer: default_max_waiting_per_consumer(),
            team_share: default_team_share(),
        }
    }
}

fn default_team_share() -> f64 {
    0.5
}

fn default_max_waiting_per_consumer() -> usize {
    64
}

fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_write_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_max_sites() -> usize {
    10_000
}
fn default_max_answer_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_max_errors() -> usize {
    100
}

fn default_max_references() -> usize {
    1000
}
fn default_source_concurrency() -> usize {
    64
}

/// `[vault_api]`: the Vault-compatible read API (docs/VAULT-API.md), on its own listener with
/// the TLS keys and rules of `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultApiConfig {
    #[serde(default = "default_vault_api_listen")]
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_crl: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The key that signs tokens of `auth/cert/login`, shared by replicas (random per process
    /// when absent: tokens then work only on the replica that issued them).
    pub token_key_file: Option<PathBuf>,
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Dur,
    /// `auth/jwt/login` (and `auth/kubernetes/login` when `kubernetes` is not set): how a
    /// presented JWT is verified.
    pub jwt: Option<JwtConfig>,
    /// `auth/kubernetes/login`'s own keys and issuer (a cluster's service-account issuer), so
    /// the JWT login's issuer and the cluster's are never confused: when set, each login is
    /// verified by its own keys only.
    pub kubernetes: Option<JwtConfig>,
}

/// How the Vault API verifies a JWT login (Vault's `jwt_validation_pubkeys` and
/// `bound_issuer`, as a file): which consumer a role is, and what it binds, is the policy's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519) any of which may have signed a token.
    pub validation_pubkeys: Option<PathBuf>,
    /// Or a JWKS file (Vault's `jwks_url`, as a file: a cluster's `/openid/v1/jwks` saved),
    /// read at start and again whenever it changes. Exactly one of the two.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry (a Kubernetes cluster's service-account issuer).
    pub bound_issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_jwt_leeway")]
    pub leeway: Dur,
}

fn default_jwt_leeway() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_vault_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}

fn default_token_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}

impl VaultApiConfig {
    /// The `[server]` settings its listener is built from.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            client_ca: self.client_ca.clone(),
            client_crl: self.client_crl.clone(),
            client_auth: self.client_auth,
            ..ServerConfig::default()
        }
    }
}

/// `[ccp_api]`: the CCP-shaped door (docs/CCP-API.md, "keybroker as CCP"), on its own TLS
/// listener; callers are identified by client certificate, so `client_ca` is required.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CcpApiConfig {
    #[serde(default = "default_ccp_api_listen")]
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_crl: Option<PathBuf>,
    /// The IIS application in the path (`/<service_path>/api/Accounts`).
    #[serde(default = "default_ccp_service_path")]
    pub service_path: String,
}

fn default_ccp_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8444))
}

fn default_ccp_service_path() -> String {
    "AIMWebService".to_owned()
}

impl CcpApiConfig {
    /// The `[server]` settings its listener is built from: client certificates required.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            client_ca: self.client_ca.clone(),
            client_crl: self.client_crl.clone(),
            client_auth: ClientAuth::Required,
            ..ServerConfig::default()
        }
    }
}

/// `[egress]`: the egress proxy (docs/EGRESS.md), on its own listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(default = "default_egress_listen")]
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Names pinned to addresses; a destination named here may be private.
    #[serde(default)]
    pub resolve: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// A request to a destination that takes longer is answered 502 `upstream_timeout`.
    #[serde(default = "default_egress_timeout")]
    pub timeout: Dur,
    /// CA certificates (PEM bundle) upstreams are verified against when the credential has
    /// no `root_certificate` (e.g. an issued certificate, whose CA is the client's issuer);
    /// none: the system roots.
    pub ca_cert: Option<PathBuf>,
    /// How long a client holding a credential's key (and its upstream connections) is
    /// reused; then it is dropped, used or not — the key leaves memory with it.
    #[serde(default = "default_egress_keep_alive")]
    pub keep_alive: Dur,
}

fn default_egress_keep_alive() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_egress_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

fn default_egress_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

impl EgressConfig {
    /// The `[server]` settings its listener is built from.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            ..ServerConfig::default()
        }
    }
}

/// `[expiry]`: the certificate expiry sweep (docs/DESIGN.md §15).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryConfig {
    /// How often every certificate keybroker knows is looked at (also at start).
    #[serde(default = "default_expiry_interval")]
    pub interval: Dur,
    /// A certificate that expires sooner than this is `certificate.expiring`.
    #[serde(default = "default_warn_before")]
    pub warn_before: Dur,
    /// Whether the sweep reads credentials a source issues (pki): a read issues a
    /// certificate, so by default the first use does, not the sweep.
    #[serde(default)]
    pub issue: bool,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        Self {
            interval: default_expiry_interval(),
            warn_before: default_warn_before(),
            issue: false,
        }
    }
}

fn default_expiry_interval() -> Dur {
    Dur(Duration::from_secs(3600))
}

fn default_warn_before() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}

#[derive(Clone, Debug, Deserialize)]
pub struct CacheConfig {
    #[serde(default = "default_ttl")]
    pub ttl: Dur,
    #[serde(default = "default_max_stale")]
    pub max_stale: Dur,
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Dur,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_stale: default_max_stale(),
            negative_ttl: default_negative_ttl(),
            max_bytes: default_max_bytes(),
        }
    }
}

fn default_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_max_stale() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_negative_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuditConfig {
    /// A file, or `-` for stdout.
    pub path: PathBuf,
    pub hmac_key_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub fail_closed: bool,
    /// `always` (each line is on disk before the answer leaves) or `never` (the OS decides).
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    #[default]
    Always,
    Never,
}

fn yes() -> bool {
    true
}

/// A duration written as a string: `"250ms"`, `"5m"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not a duration like \"250ms\" or \"5m\""))
        })
    }
}

/// A size: an integer number of bytes or a string such as `"64MiB"`, `"512KiB"`, `"1GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => parse_byte_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a size like \"64MiB\""))
            }),
        }
    }
}

/// Six units are all this needs; a crate for it would be larger than the function.
fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_byte_size("10 KB"), Some(10_000));
        assert_eq!(parse_byte_size("12"), Some(12));
        assert_eq!(parse_byte_size("MiB"), None);
        assert_eq!(parse_byte_size("1TiB"), None);
        assert_eq!(parse_byte_size("99999999999999GiB"), None);
    }
}

/// `[notify]` in keybroker.toml (see `notify.rs`).
#[derive(Clone, Debug, Deserialize)]
pub struct NotifyConfig {
    /// Where events are POSTed: `https://…` (or `http://` to a loopback address).
    pub webhook: String,
    /// A PEM bundle that replaces the system roots for the webhook's certificate.
    pub ca_cert: Option<PathBuf>,
    /// A key (at least 16 bytes) that signs every body.
    pub hmac_key_file: Option<PathBuf>,
    /// One delivery attempt's limit.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Attempts per event (the first and the retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Events waiting to be sent; past it new events are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_attempts() -> u32 {
    5
}
fn default_queue() -> usize {
    1000
}

/// The name of the file source that serves the store's material (`$SECRET_store:…`).
pub(crate) const STORE_SOURCE: &str = "store";

/// `[store]`: where credentials created through the management API are kept (see
/// docs/MANAGEMENT.md). `kind = "file"`: a folder (the `serve --dev` default);
/// `kind = "vault"`: a vault source's KV v2 mount, shared by replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// The folder (`kind = "file"`), or the vault store's local mirror; relative to the
    /// configuration file.
    pub path: PathBuf,
    /// `kind = "vault"`: the vault source whose mount holds the store.
    #[serde(default)]
    pub source: Option<String>,
    /// `kind = "vault"`: the folder of the mount the store writes under.
    #[serde(default = "default_store_prefix")]
    pub prefix: String,
    /// `kind = "vault"`: how often each replica checks the store's generation.
    #[serde(default = "default_store_poll")]
    pub poll: Dur,
    /// `kind = "vault"`: the store's own login for its writes (and its reads of definitions),
    /// so the token consumers' reads use cannot write; none: the source's `auth`.
    #[serde(default)]
    pub auth: Option<VaultAuth>,
    /// Material versions no definition references (a write that crashed, or lost a race,
    /// between its two steps) are removed once this old — and looked for this often.
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace: Dur,
    /// What one team may keep in the store: one team's writes cannot spend another's room.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// `kind = "vault"`: a replica whose last successful pull is older than this is not
    /// ready (`/readyz` 503, `store.stale`): it may still accept a consumer deleted, or a
    /// certificate revoked, on another replica — for at most this long plus one `poll`.
    #[serde(default = "default_store_stale_after")]
    pub stale_after: Dur,
}

fn default_store_stale_after() -> Dur {
    Dur(Duration::from_secs(30))
}

/// `[store.quota]`: per team.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Credentials a team may hold in the store.
    #[serde(default = "default_quota_credentials")]
    pub credentials: usize,
    /// Consumers a team may hold in the store.
    #[serde(default = "default_quota_consumers")]
    pub consumers: usize,
    /// Bytes of material (the current version of each credential) a team may hold.
    #[serde(default = "default_quota_bytes")]
    pub material_bytes: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            credentials: default_quota_credentials(),
            consumers: default_quota_consumers(),
            material_bytes: default_quota_bytes(),
        }
    }
}

fn default_quota_credentials() -> usize {
    1000
}

fn default_quota_consumers() -> usize {
    200
}

fn default_quota_bytes() -> u64 {
    8 << 20
}

fn default_orphan_grace() -> Dur {
    Dur(Duration::from_secs(600))
}

fn default_store_prefix() -> String {
    "keybroker".to_owned()
}
fn default_store_poll() -> Dur {
    Dur(Duration::from_secs(1))
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    File,
    Vault,
}
