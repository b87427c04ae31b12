//! `agent.toml` (docs/AGENT.md): where the server is, how to authenticate, which files to keep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Plain HTTP `/healthz`, `/readyz` and `/metrics` (docs/AGENT.md). Loopback only unless
    /// `ops_allow_non_loopback` says otherwise: the answers name credentials and folders.
    pub ops_listen: Option<SocketAddr>,
    /// Lets `ops_listen` be an address other hosts reach (`0.0.0.0`, a pod IP).
    #[serde(default)]
    pub ops_allow_non_loopback: bool,
    /// The least time between two runs of the same reload command; changes in between are
    /// written at once and reloaded together when it has passed. 0 (the default): no cap.
    #[serde(default, with = "humantime_serde_lite")]
    pub reload_min_interval: Duration,
    pub server: ServerSection,
    #[serde(default)]
    pub output: Vec<Output>,
    #[serde(default)]
    pub template: Vec<Template>,
}

fn renew_default() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub url: String,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Renew `client_cert` at two thirds of its life through the consumer's
    /// `identity_profile` (docs/AGENT.md); `false`: never.
    #[serde(default = "renew_default")]
    pub renew: bool,
    /// The key a renewed identity gets.
    #[serde(default)]
    pub renew_key_type: KeyType,
    pub token_file: Option<PathBuf>,
    /// How long one blocking query waits for a change (at most the server's 300 s).
    #[serde(default = "default_wait", with = "humantime_serde_lite")]
    pub wait: Duration,
}

/// One credential kept as files in one directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub credential: String,
    pub host: String,
    pub dir: PathBuf,
    #[serde(default = "default_files")]
    pub files: Vec<String>,
    /// Octal, for files holding a private key; other files are 0644.
    #[serde(default = "default_key_mode")]
    pub key_mode: String,
    /// The password of `keystore.p12` (first line of the file).
    pub pkcs12_password_file: Option<PathBuf>,
    /// argv run after each swap (no shell).
    #[serde(default)]
    pub reload: Vec<String>,
    #[serde(default = "default_reload_timeout", with = "humantime_serde_lite")]
    pub reload_timeout: Duration,
    /// Also keep the next material (a credential that rotates on a schedule) in `dir/next/`,
    /// with `not_before`, ahead of the switch: for gateways that pre-load a certificate.
    #[serde(default)]
    pub next: bool,
    /// `"generate"`: the agent makes the key itself and has keybroker sign only a CSR
    /// (`/v1/credentials/{name}/sign`); the key never leaves this host. Default: read it.
    #[serde(default)]
    pub key: KeySource,
    /// The key the agent makes with `key = "generate"`.
    #[serde(default)]
    pub key_type: KeyType,
}

/// The key an output's agent makes (`key_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "P-256")]
    P256,
    #[serde(rename = "P-384")]
    P384,
    #[serde(rename = "Ed25519")]
    Ed25519,
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    #[serde(rename = "RSA-3072")]
    Rsa3072,
}

/// The files of an output that hold its certificate, in the order they are looked in (when
/// the agent makes the key: when its certificate is due).
pub(crate) const CERT_FILES: &[&str] = &["cert.pem", "chain.pem", "bundle.pem"];

/// Where an output's key comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// The credential's material, read from the server.
    #[default]
    Read,
    /// Made by the agent, certified through the credential's signing profile.
    Generate,
}

/// A text document with references, expanded by `/v1/resolve` into `destination`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub host: String,
    #[serde(default = "default_key_mode")]
    pub mode: String,
    /// argv run after the destination changed (no shell), batched with the outputs' reloads.
    #[serde(default)]
    pub reload: Vec<String>,
    #[serde(default = "default_reload_timeout", with = "humantime_serde_lite")]
    pub reload_timeout: Duration,
}

fn default_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_files() -> Vec<String> {
    vec!["cert.pem".into(), "key.pem".into(), "ca.pem".into()]
}
fn default_key_mode() -> String {
    "0600".into()
}
fn default_reload_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Durations as humantime text (`"30s"`).
mod humantime_serde_lite {
    use serde::{Deserialize, Deserializer};
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// The files an output may name.
pub(crate) const KNOWN_FILES: &[&str] = &[
    "cert.pem",
    "key.pem",
    "ca.pem",
    "chain.pem",
    "bundle.pem",
    "keystore.p12",
];

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    /// `ops_listen` on an address other hosts reach, without `ops_allow_non_loopback`.
    #[error(
        "{}: ops_listen {addr} is not a loopback address: its answers name credentials and folders (set ops_allow_non_loopback = true to serve it there)",
        path.display()
    )]
    OpsListenNotLoopback { path: PathBuf, addr: SocketAddr },
}

impl AgentConfigError {
    fn invalid(path: &Path, why: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

impl AgentConfig {
    /// Reads `path`; relative paths are taken relative to its folder.
    pub fn load(path: &Path) -> Result<Self, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| AgentConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut cfg: Self =
            toml::from_str(&text).map_err(|e| AgentConfigError::invalid(path, e.to_string()))?;
        if let Some(addr) = cfg.ops_listen
            && !addr.ip().is_loopback()
            && !cfg.ops_allow_non_loopback
        {
            return Err(AgentConfigError::OpsListenNotLoopback {
                path: path.to_owned(),
                addr,
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut cfg.server.ca_cert,
            &mut cfg.server.client_cert,
            &mut cfg.server.client_key,
            &mut cfg.server.token_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for o in &mut cfg.output {
            fix(&mut o.dir);
            if let Some(p) = &mut o.pkcs12_password_file {
                fix(p);
            }
            if o.files.iter().any(|f| f == "keystore.p12") && o.pkcs12_password_file.is_none() {
                return Err(AgentConfigError::invalid(
                    path,
                    format!(
                        "output {}: keystore.p12 needs pkcs12_password_file",
                        o.credential
                    ),
                ));
            }
            if let Some(bad) = o.files.iter().find(|f| !KNOWN_FILES.contains(&f.as_str())) {
                return Err(AgentConfigError::invalid(
                    path,
                    format!(
                        "output {}: unknown file {bad:?} (one of {KNOWN_FILES:?})",
                        o.credential
                    ),
                ));
            }
            secret_mode(&o.key_mode)
                .map_err(|why| AgentConfigError::invalid(path, format!("key_mode: {why}")))?;
            generate_fits(o).map_err(|why| {
                AgentConfigError::invalid(path, format!("output {}: {why}", o.credential))
            })?;
        }
        for t in &cfg.template {
            secret_mode(&t.mode).map_err(|why| {
                AgentConfigError::invalid(
                    path,
                    format!("template {}: mode: {why}", t.destination.display()),
                )
            })?;
        }
        for t in &mut cfg.template {
            fix(&mut t.source);
            fix(&mut t.destination);
        }
        if cfg.server.client_cert.is_some() != cfg.server.client_key.is_some() {
            return Err(AgentConfigError::invalid(
                path,
                "client_cert and client_key go together",
            ));
        }
        Ok(cfg)
    }
}

/// What `key = "generate"` does not do: stage the next certificate (OpenBao cannot date a
/// signed certificate's start ahead, so it would be a second live one — docs/PKI.md). A
/// `key_type` other than the default without `generate` is a mistake.
fn generate_fits(o: &Output) -> Result<(), &'static str> {
    match o.key {
        KeySource::Generate if o.next => Err(
            "key = \"generate\" cannot stage the next certificate (next = true): the agent signs its next key when the current certificate is a third through its life",
        ),
        KeySource::Read if o.key_type != KeyType::default() => {
            Err("key_type needs key = \"generate\"")
        }
        KeySource::Generate if !o.files.iter().any(|f| CERT_FILES.contains(&f.as_str())) => Err(
            "key = \"generate\" needs cert.pem, chain.pem or bundle.pem among the files (the agent reads when its certificate is due from them)",
        ),
        _ => Ok(()),
    }
}

/// The mode of a file holding secrets: octal, and giving no one but the owner (and, for
/// reading only, its group — a gateway running in the agent's group) any access. `0644`,
/// `0666` or `0660` on a private key are refused, not obeyed.
pub(crate) fn secret_mode(text: &str) -> Result<u32, String> {
    let mode = parse_mode(text).ok_or_else(|| format!("{text:?} is not an octal mode"))?;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{text} lets every user of the host read or change secrets"
        ));
    }
    if mode & 0o030 != 0 {
        return Err(format!(
            "{text} lets the group change or run secrets (group read, 0640, is the most)"
        ));
    }
    Ok(mode)
}

pub(crate) fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::{AgentConfig, AgentConfigError, secret_mode};

    fn load(text: &str) -> Result<AgentConfig, AgentConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path)
    }

    /// `ops_listen` answers whoever reaches it: an address other hosts reach is refused at
    /// load, with a typed error, unless the operator says so.
    #[test]
    fn a_non_loopback_ops_listen_is_refused_unless_allowed() {
        let server = "[server]\nurl = \"https://kb:8443\"\n";
        for bad in ["0.0.0.0:9180", "[::]:9180", "10.1.2.3:9180"] {
            match load(&format!("ops_listen = \"{bad}\"\n{server}")) {
                Err(AgentConfigError::OpsListenNotLoopback { addr, .. }) => {
                    assert_eq!(addr.to_string(), bad);
                }
                other => panic!("{bad}: {other:?}"),
            }
            let allowed = load(&format!(
                "ops_listen = \"{bad}\"\nops_allow_non_loopback = true\n{server}"
            ))
            .unwrap();
            assert_eq!(allowed.ops_listen.unwrap().to_string(), bad);
        }
        for ok in ["127.0.0.1:9180", "[::1]:0"] {
            let cfg = load(&format!("ops_listen = \"{ok}\"\n{server}")).unwrap();
            assert!(cfg.ops_listen.unwrap().ip().is_loopback());
        }
        // A host name is not an address: refused, not resolved.
        assert!(matches!(
            load(&format!("ops_listen = \"localhost:9180\"\n{server}")),
            Err(AgentConfigError::Invalid { .. })
        ));
        let cfg = load(&format!("reload_min_interval = \"30s\"\n{server}")).unwrap();
        assert_eq!(cfg.reload_min_interval, std::time::Duration::from_secs(30));
        assert_eq!(
            load(server).unwrap().reload_min_interval,
            std::time::Duration::ZERO
        );
    }

    /// `key = "generate"` with `next = true` (a second CSR per period, not built), without a
    /// file the certificate's due time is read from, or a `key_type` without it: refused at
    /// load, each with its reason.
    #[test]
    fn generate_options_that_cannot_work_are_refused_at_load() {
        let base = "[server]\nurl = \"https://kb:8443\"\n[[output]]\ncredential = \"c\"\nhost = \"h\"\ndir = \"d\"\n";
        let cfg = load(&format!(
            "{base}key = \"generate\"\nkey_type = \"Ed25519\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.output[0].key, super::KeySource::Generate);
        assert_eq!(cfg.output[0].key_type, super::KeyType::Ed25519);
        for (extra, why) in [
            ("key = \"generate\"\nnext = true\n", "next = true"),
            (
                "key = \"generate\"\nfiles = [\"key.pem\", \"keystore.p12\"]\npkcs12_password_file = \"p\"\n",
                "cert.pem, chain.pem or bundle.pem",
            ),
            ("key_type = \"P-384\"\n", "key_type needs"),
        ] {
            match load(&format!("{base}{extra}")) {
                Err(AgentConfigError::Invalid { why: got, .. }) => {
                    assert!(got.contains(why), "{extra}: {got}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
        assert!(load(&format!("{base}key = \"make\"\n")).is_err());
    }

    /// THREATS row 42: a mode that lets the world, or the group to write, reach a private key
    /// is refused at load.
    #[test]
    fn threat_42_world_or_group_writable_secret_modes_are_refused() {
        for ok in ["0600", "0400", "0640", "0440", "600"] {
            assert!(secret_mode(ok).is_ok(), "{ok}");
        }
        for bad in ["0644", "0666", "0777", "0660", "0604", "0610", "x", "01000"] {
            assert!(secret_mode(bad).is_err(), "{bad}");
        }
    }
}
