//! `keybroker.toml` (docs/DESIGN.md §12): loaded into typed configuration, with every
//! problem — syntax, unknown keys, wrong types, inconsistent values — reported at once with
//! `file:line:column`.
//!
//! Each top-level section is deserialized on its own from toml's spanned tree, so a bad
//! section does not hide the errors of the next one; `serde_ignored` collects every unknown
//! key instead of stopping at the first. Relative paths are made relative to the file.

mod schema;

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(crate) use crate::diag::Diagnostic;
use crate::diag::{Diags, Seg, span_of};
#[cfg(test)]
pub(crate) use schema::ByteSize;
pub use schema::LimitsConfig;
pub use schema::PemMode;
pub use schema::SourceConfig;
pub(crate) use schema::{
    AuditConfig, CacheConfig, CcpApiConfig, CcpSourceConfig, ClientAuth, Dur, EgressConfig,
    ExpiryConfig, FsyncPolicy, JwtConfig, KUBERNETES_TOKEN_FILE, KvVersion, NotifyConfig, PkiIssue,
    PkiProfile, PkiSourceConfig, QuotaConfig, STORE_SOURCE, ServerConfig, SourceKind, StoreConfig,
    StoreKind, VaultApiConfig, VaultAuth, VaultSourceConfig,
};

/// The whole configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The access-policy folder (read from issue 6 on).
    pub policies: Option<PathBuf>,
    default_source: Option<String>,
    pub server: ServerConfig,
    pub sources: Vec<SourceConfig>,
    pub cache: CacheConfig,
    pub expiry: ExpiryConfig,
    /// `[notify]`: expiry and rejection events pushed to a webhook.
    pub notify: Option<NotifyConfig>,
    /// `[store]`: where the management API keeps what it creates.
    pub store: Option<StoreConfig>,
    pub vault_api: Option<VaultApiConfig>,
    /// `[ccp_api]`: the CCP-shaped door.
    pub ccp_api: Option<CcpApiConfig>,
    pub egress: Option<EgressConfig>,
    pub limits: LimitsConfig,
    pub audit: Option<AuditConfig>,
    /// Where each setting is written, for problems found after loading (assembly).
    positions: Positions,
}

/// A setting of the configuration file, named by an error found after loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting<'a> {
    /// `[section] key` (the section itself when the key is not written).
    Key(&'static str, &'static str),
    /// The `[[source]]` with this name.
    Source(&'a str),
}

/// `file:line:column` of the settings errors after loading can name.
#[derive(Clone, Debug, Default)]
struct Positions {
    text_spans: std::collections::HashMap<(&'static str, &'static str), (usize, usize)>,
    sources: Vec<(String, (usize, usize))>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("{}", display_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn display_all(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `file` (relative paths resolve against its folder).
    // Long by nature: one arm per top-level section, each handing its table to that section's
    // reader in `schema.rs`; splitting it would scatter the one list of sections.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let mut d = Diags::new(file, text);
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                d.at(e.span().unwrap_or(0..0), e.message().trim().to_owned());
                return Err(ConfigError::Invalid(d.list));
            }
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let mut cfg = Config {
            file: file.to_owned(),
            policies: None,
            default_source: None,
            server: ServerConfig::default(),
            sources: Vec::new(),
            cache: CacheConfig::default(),
            expiry: ExpiryConfig::default(),
            notify: None,
            store: None,
            vault_api: None,
            ccp_api: None,
            egress: None,
            limits: LimitsConfig::default(),
            audit: None,
            positions: Positions::default(),
        };
        let mut spans = Spans::default();
        for (key, value) in root.get_ref().iter() {
            match key.get_ref().as_ref() {
                "policies" => {
                    spans.sections.insert("policies", value.span());
                    cfg.policies = d.section(value, &[]);
                }
                "default_source" => {
                    spans.default_source = value.span();
                    cfg.default_source = d.section(value, &[]);
                }
                "server" => {
                    spans.record(
                        "server",
                        value,
                        &[
                            "listen",
                            "tls_cert",
                            "tls_key",
                            "client_ca",
                            "client_cert_header",
                            "etag_key_file",
                            "ops_listen",
                        ],
                    );
                    cfg.server = d.section(value, &[]).unwrap_or_default();
                }
                "cache" => cfg.cache = d.section(value, &[]).unwrap_or_default(),
                "expiry" => cfg.expiry = d.section(value, &[]).unwrap_or_default(),
                "store" => {
                    spans.record(
                        "store",
                        value,
                        &[
                            "kind",
                            "path",
                            "source",
                            "prefix",
                            "poll",
                            "auth",
                            "orphan_grace",
                        ],
                    );
                    cfg.store = d.section(value, &[]);
                }
                "notify" => {
                    spans.record("notify", value, &["webhook", "ca_cert", "hmac_key_file"]);
                    cfg.notify = d.section(value, &[]);
                }
                "egress" => {
                    spans.record("egress", value, &["listen", "tls_cert", "ca_cert"]);
                    cfg.egress = d.section(value, &[]);
                }
                "vault_api" => {
                    spans.record(
                        "vault_api",
                        value,
                        &["listen", "tls_cert", "token_key_file"],
                    );
                    cfg.vault_api = d.section(value, &[]);
                }
                "ccp_api" => {
                    spans.record("ccp_api", value, &["listen", "tls_cert", "client_ca"]);
                    cfg.ccp_api = d.section(value, &[]);
                }
                "limits" => {
                    spans.record(
                        "limits",
                        value,
                        &["max_references", "source_concurrency", "team_share"],
                    );
                    cfg.limits = d.section(value, &[]).unwrap_or_default();
                }
                "audit" => {
                    spans.record("audit", value, &["path", "hmac_key_file"]);
                    cfg.audit = d.section(value, &[]);
                }
                "source" => cfg.sources = ConfigSections::sources(&mut d, value, &mut spans),
                other => d.at(key.span(), format!("unknown key `{other}`")),
            }
        }
        cfg.resolve_paths(base);
        cfg.validate(&mut d, &spans);
        cfg.positions = Positions::of(&cfg, &spans, text);
        if d.list.is_empty() {
            Ok(cfg)
        } else {
            d.list.sort_by_key(|x| (x.line, x.column));
            Err(ConfigError::Invalid(d.list))
        }
    }

    /// The source `$SECRET_<path>` (without `<source>:`) reads from: `default_source`, or
    /// the only non-CCP source when there is exactly one.
    pub fn default_source(&self) -> Option<&str> {
        if let Some(name) = &self.default_source {
            return Some(name);
        }
        let mut candidates = self
            .sources
            .iter()
            .filter(|s| !matches!(s.kind(), SourceKind::Ccp | SourceKind::Pki));
        match (candidates.next(), candidates.next()) {
            (Some(only), None) => Some(only.name()),
            _ => None,
        }
    }

    /// The source `$SAFE_ … $NAME_ …` reads from: the first CCP source.
    pub fn ccp_source(&self) -> Option<&str> {
        self.sources
            .iter()
            .find(|s| s.kind() == SourceKind::Ccp)
            .map(SourceConfig::name)
    }

    /// The vault source `name`'s settings.
    pub fn vault_source(&self, name: &str) -> Option<&VaultSourceConfig> {
        self.sources.iter().find_map(|s| match s {
            SourceConfig::Vault(v) if v.name == name => Some(v),
            _ => None,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                fix(p);
            }
        };
        fix_opt(&mut self.policies);
        fix_opt(&mut self.server.tls_cert);
        fix_opt(&mut self.server.tls_key);
        fix_opt(&mut self.server.client_ca);
        fix_opt(&mut self.server.client_crl);
        fix_opt(&mut self.server.etag_key_file);
        if let Some(e) = &mut self.egress {
            fix_opt(&mut e.tls_cert);
            fix_opt(&mut e.tls_key);
            fix_opt(&mut e.ca_cert);
        }
        if let Some(st) = &mut self.store {
            fix(&mut st.path);
            if let Some(auth) = &mut st.auth {
                fix_auth(auth, &fix);
            }
        }
        if let Some(n) = &mut self.notify {
            fix_opt(&mut n.ca_cert);
            fix_opt(&mut n.hmac_key_file);
        }
        if let Some(c) = &mut self.ccp_api {
            fix_opt(&mut c.tls_cert);
            fix_opt(&mut c.tls_key);
            fix_opt(&mut c.client_ca);
            fix_opt(&mut c.client_crl);
        }
        if let Some(v) = &mut self.vault_api {
            fix_opt(&mut v.tls_cert);
            fix_opt(&mut v.tls_key);
            fix_opt(&mut v.client_ca);
            fix_opt(&mut v.client_crl);
            fix_opt(&mut v.token_key_file);
            for jwt in [&mut v.jwt, &mut v.kubernetes].into_iter().flatten() {
                fix_opt(&mut jwt.validation_pubkeys);
                fix_opt(&mut jwt.jwks_file);
            }
        }
        for s in &mut self.sources {
            match s {
                SourceConfig::Vault(v) => {
                    fix_opt(&mut v.ca_cert);
                    fix_opt(&mut v.client_cert);
                    fix_opt(&mut v.client_key);
                    fix_auth(&mut v.auth, &fix);
                }
                SourceConfig::Ccp(c) => {
                    fix_opt(&mut c.ca_cert);
                    fix_opt(&mut c.client_cert);
                    fix_opt(&mut c.client_key);
                }
                SourceConfig::File(f) => fix(&mut f.path),
                SourceConfig::Pki(_) => {}
            }
        }
        if let Some(audit) = &mut self.audit {
            if audit.path != Path::new("-") {
                fix(&mut audit.path);
            }
            fix_opt(&mut audit.hmac_key_file);
        }
    }

    /// Checks that need more than one value, or the file system.
    // Long by nature: one independent check after another, each with its own diagnostic; the
    // list is the specification of what a configuration must hold together.
    fn validate(&self, d: &mut Diags<'_>, spans: &Spans) {
        let mut seen: Vec<&str> = Vec::new();
        for (s, span) in self.sources.iter().zip(&spans.source_names) {
            let name = s.name();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                d.at(span.clone(), format!("source name {name:?} must match [A-Za-z0-9_-]+ (it is written in references as `$SECRET_<name>:`)"));
            } else if seen.contains(&name) {
                d.at(span.clone(), format!("source name `{name}` is used twice"));
            }
            seen.push(name);
        }
        for (s, span) in self.sources.iter().zip(&spans.source_paths) {
            if let SourceConfig::File(f) = s
                && !f.path.is_dir()
            {
                d.at(
                    span.clone(),
                    format!("file source directory {} does not exist", f.path.display()),
                );
            }
        }
        if let Some(name) = &self.default_source
            && !self.sources.iter().any(|s| s.name() == name)
        {
            d.at(
                spans.default_source.clone(),
                format!("default_source `{name}` is not a configured source"),
            );
        }
        if let Some(p) = &self.policies
            && !p.is_dir()
        {
            d.at(
                spans.at("policies", ""),
                format!("policies directory {} does not exist", p.display()),
            );
        }
        if self.limits.max_references == 0 || self.limits.source_concurrency == 0 {
            let key = if self.limits.max_references == 0 {
                "max_references"
            } else {
                "source_concurrency"
            };
            d.at(
                spans.at("limits", key),
                "[limits] max_references and source_concurrency must be at least 1".to_owned(),
            );
        }
        if self.store.is_some() && self.policies.is_none() {
            d.at(
                spans.at("store", "path"),
                "[store] needs `policies`: the teams it keeps credentials for are defined there"
                    .to_owned(),
            );
        }
        if let Some(st) = &self.store {
            let vault_source = |name: &str| {
                self.sources
                    .iter()
                    .any(|s| s.name() == name && s.kind() == SourceKind::Vault)
            };
            match (st.kind, st.source.as_deref()) {
                (StoreKind::Vault, Some(name)) if vault_source(name) => {}
                (StoreKind::Vault, _) => d.at(
                    spans.at("store", "source"),
                    "[store] kind = \"vault\" needs `source`, the name of a vault source"
                        .to_owned(),
                ),
                (StoreKind::File, Some(_)) => d.at(
                    spans.at("store", "source"),
                    "[store] source is for kind = \"vault\"".to_owned(),
                ),
                (StoreKind::File, None) => {}
            }
            if st.kind == StoreKind::Vault && st.poll.0 < std::time::Duration::from_millis(100) {
                d.at(
                    spans.at("store", "poll"),
                    "[store] poll must be at least 100ms".to_owned(),
                );
            }
            if st.kind == StoreKind::Vault && st.stale_after.0 < st.poll.0 * 2 {
                d.at(
                    spans.at("store", "stale_after"),
                    "[store] stale_after must be at least twice poll".to_owned(),
                );
            }
            if st.orphan_grace.0 < std::time::Duration::from_secs(1) {
                d.at(
                    spans.at("store", "orphan_grace"),
                    "[store] orphan_grace must be at least 1s".to_owned(),
                );
            }
            if st.kind == StoreKind::File && st.auth.is_some() {
                d.at(
                    spans.at("store", "auth"),
                    "[store] auth is for kind = \"vault\"".to_owned(),
                );
            }
        }
        if self.sources.iter().any(|s| s.name() == STORE_SOURCE)
            && self
                .store
                .as_ref()
                .is_some_and(|s| s.kind == StoreKind::File)
        {
            d.at(
                spans.at("store", "kind"),
                format!(
                    "the source name `{}` is the store's own: rename that source",
                    STORE_SOURCE
                ),
            );
        }
        let share = self.limits.team_share;
        if !(share > 0.0 && share <= 1.0) {
            d.at(
                spans.at("limits", "team_share"),
                format!("[limits] team_share must be above 0 and at most 1, not {share}"),
            );
        }
        let srv = &self.server;
        if srv.tls_cert.is_some() != srv.tls_key.is_some() {
            let set = if srv.tls_cert.is_some() {
                "tls_cert"
            } else {
                "tls_key"
            };
            d.at(
                spans.at("server", set),
                "[server] tls_cert and tls_key must be set together".to_owned(),
            );
        }
        if srv.client_ca.is_some() && srv.tls_cert.is_none() {
            d.at(
                spans.at("server", "client_ca"),
                "[server] client_ca needs tls_cert and tls_key".to_owned(),
            );
        }
        if srv.client_cert_header.is_some() && srv.trusted_proxies.is_empty() {
            d.at(
                spans.at("server", "client_cert_header"),
                "[server] client_cert_header is never accepted without trusted_proxies".to_owned(),
            );
        }
        if srv.client_cert_header.is_some() && srv.client_ca.is_none() {
            d.at(
                spans.at("server", "client_cert_header"),
                "[server] client_cert_header needs client_ca: forwarded certificates are verified like TLS ones".to_owned(),
            );
        }
    }
}

/// Spans kept for checks that run after deserialization.
#[derive(Default)]
struct Spans {
    default_source: Range<usize>,
    source_names: Vec<Range<usize>>,
    source_paths: Vec<Range<usize>>,
    /// (section, key) → span of the key, and section → span of the section, so that
    /// relational errors point at a setting involved instead of 1:1.
    keys: std::collections::HashMap<(&'static str, &'static str), Range<usize>>,
    sections: std::collections::HashMap<&'static str, Range<usize>>,
}

impl Positions {
    fn of(cfg: &Config, spans: &Spans, text: &str) -> Self {
        let line_col = |span: &Range<usize>| {
            let d = crate::diag::diagnostic(Path::new(""), text, span.clone(), String::new());
            (d.line, d.column)
        };
        let mut text_spans = std::collections::HashMap::new();
        for (k, span) in &spans.keys {
            text_spans.insert(*k, line_col(span));
        }
        for (section, span) in &spans.sections {
            text_spans.insert((*section, ""), line_col(span));
        }
        let sources = cfg
            .sources
            .iter()
            .zip(&spans.source_names)
            .map(|(s, span)| (s.name().to_owned(), line_col(span)))
            .collect();
        Self {
            text_spans,
            sources,
        }
    }
}

impl Config {
    /// A diagnostic at `setting` of this file (at 1:1 when it is not written there).
    pub fn diagnostic(&self, setting: Setting<'_>, message: String) -> Diagnostic {
        let p = &self.positions;
        let (line, column) = match setting {
            Setting::Key(section, key) => p
                .text_spans
                .get(&(section, key))
                .or_else(|| p.text_spans.get(&(section, "")))
                .copied(),
            Setting::Source(name) => p.sources.iter().find(|(n, _)| n == name).map(|(_, at)| *at),
        }
        .unwrap_or((1, 1));
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }
}

impl Spans {
    fn record(
        &mut self,
        section: &'static str,
        value: &Spanned<DeValue<'_>>,
        keys: &[&'static str],
    ) {
        self.sections.insert(section, value.span());
        for k in keys {
            if let Some(span) = span_of(value, &[Seg::Key((*k).to_owned())]) {
                self.keys.insert((section, *k), span);
            }
        }
    }

    /// The span of `section.key`, else of the section, else the start of the file.
    fn at(&self, section: &'static str, key: &'static str) -> Range<usize> {
        self.keys
            .get(&(section, key))
            .or_else(|| self.sections.get(section))
            .cloned()
            .unwrap_or(0..0)
    }
}

struct ConfigSections;

impl ConfigSections {
    fn sources(
        d: &mut Diags<'_>,
        value: &Spanned<DeValue<'_>>,
        spans: &mut Spans,
    ) -> Vec<SourceConfig> {
        let Some(items) = value.get_ref().as_array() else {
            d.at(
                value.span(),
                "`source` must be an array of tables: write [[source]]".to_owned(),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let kind = item
                .get_ref()
                .get("kind")
                .map(|k| (k.get_ref().as_str(), k.span()));
            let parsed = match kind {
                Some((Some("vault"), _)) => d.section(item, &["kind"]).map(SourceConfig::Vault),
                Some((Some("ccp"), _)) => d.section(item, &["kind"]).map(SourceConfig::Ccp),
                Some((Some("file"), _)) => d.section(item, &["kind"]).map(SourceConfig::File),
                Some((Some("pki"), _)) => d.section(item, &["kind"]).map(SourceConfig::Pki),
                Some((_, span)) => {
                    d.at(
                        span,
                        "source `kind` must be \"vault\", \"ccp\", \"file\" or \"pki\"".to_owned(),
                    );
                    None
                }
                None => {
                    d.at(
                        item.span(),
                        "[[source]] needs `kind` (\"vault\", \"ccp\", \"file\" or \"pki\")"
                            .to_owned(),
                    );
                    None
                }
            };
            if let Some(source) = parsed {
                let key_span = |key: &str| {
                    span_of(item, &[Seg::Key(key.to_owned())]).unwrap_or_else(|| item.span())
                };
                spans.source_names.push(key_span("name"));
                spans.source_paths.push(key_span("path"));
                out.push(source);
            }
        }
        out
    }
}

/// The files of a vault login, relative to the configuration file.
fn fix_auth(auth: &mut VaultAuth, fix: &dyn Fn(&mut PathBuf)) {
    let fix_opt = |p: &mut Option<PathBuf>| {
        if let Some(p) = p {
            fix(p);
        }
    };
    match auth {
        VaultAuth::Token { token_file } => fix_opt(token_file),
        VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
            ..
        } => {
            fix_opt(role_id_file);
            fix_opt(secret_id_file);
        }
        VaultAuth::Jwt { token_file, .. } => fix(token_file),
        VaultAuth::Kubernetes { token_file, .. } => fix_opt(token_file),
        VaultAuth::Cert { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("/nonexistent/kb.toml")) {
            Err(ConfigError::Invalid(d)) => d
                .iter()
                .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
                .collect(),
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn the_design_example_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let text = include_str!("../tests/data/design-config.toml");
        let cfg = Config::parse(text, &dir.path().join("keybroker.toml")).unwrap();
        assert_eq!(cfg.sources.len(), 3);
        assert_eq!(cfg.default_source(), Some("vault"));
        assert_eq!(cfg.ccp_source(), Some("ccp"));
        assert_eq!(cfg.cache.max_bytes, ByteSize(64 << 20));
        assert_eq!(cfg.cache.ttl, Dur(std::time::Duration::from_secs(300)));
        assert_eq!(cfg.server.client_auth, ClientAuth::Optional);
        assert_eq!(cfg.limits.max_answer_bytes, ByteSize(8 << 20));
        assert_eq!(
            cfg.limits.write_timeout,
            Dur(std::time::Duration::from_secs(30))
        );
        let SourceConfig::File(f) = &cfg.sources[2] else {
            panic!("third source is the file source")
        };
        assert_eq!(f.path, dir.path().join("secrets"));
        let SourceConfig::Vault(v) = &cfg.sources[0] else {
            panic!("first source is vault")
        };
        assert_eq!(v.kv_version, KvVersion::Auto);
        assert_eq!(v.auth, VaultAuth::Token { token_file: None });
    }

    #[test]
    fn every_unknown_key_is_listed_with_its_line() {
        let got = errors(
            "polices = \"p\"\n[server]\nlisten = \"127.0.0.1:1\"\ntls_certt = \"x\"\n[[source]]\nname = \"v\"\nkind = \"vault\"\nadress = \"x\"\n[cache]\nttl = \"5m\"\nmax_sale = \"1h\"\n",
        );
        assert_eq!(
            got,
            vec![
                "1:1 unknown key `polices`",
                "4:1 unknown key `tls_certt`",
                "8:1 unknown key `adress`",
                "11:1 unknown key `max_sale`",
            ]
        );
    }

    #[test]
    fn type_errors_in_several_sections_are_all_reported() {
        let got = errors(
            "[server]\nlisten = \"not an address\"\n[cache]\nttl = \"soon\"\n[[source]]\nname = \"x\"\nkind = \"nfs\"\n[[source]]\nname = \"f\"\nkind = \"vault\"\nkv_version = 3\n",
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("2:10 "), "{got:?}");
        assert!(
            got[1].starts_with("4:7 ") && got[1].contains("not a duration"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("7:8 ") && got[2].contains("must be \"vault\""),
            "{got:?}"
        );
        assert!(
            got[3].starts_with("11:14 ") && got[3].contains("kv_version"),
            "{got:?}"
        );
    }

    #[test]
    fn semantic_errors() {
        let got = errors(
            "default_source = \"nope\"\n[[source]]\nname = \"a\"\nkind = \"file\"\npath = \"missing-dir\"\n[[source]]\nname = \"a\"\nkind = \"ccp\"\nurl = \"https://c\"\napp_id = \"kb\"\n[[source]]\nname = \"bad name\"\nkind = \"ccp\"\nurl = \"https://c\"\napp_id = \"kb\"\n",
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("1:18 default_source `nope`"), "{got:?}");
        assert!(got[1].starts_with("5:1 file source directory"), "{got:?}");
        assert!(
            got[2].starts_with("7:1 source name `a` is used twice"),
            "{got:?}"
        );
        assert!(
            got[3].starts_with("12:1 source name \"bad name\""),
            "{got:?}"
        );
    }

    #[test]
    fn a_team_share_outside_zero_to_one_is_refused_at_its_line() {
        for bad in ["0", "0.0", "1.5", "-1.0", "nan"] {
            let got = errors(&format!(
                "[[source]]\nname = \"f\"\nkind = \"file\"\npath = \".\"\n[limits]\nteam_share = {bad}\n"
            ));
            assert!(
                got.iter().any(|e| e.starts_with("6:1 [limits] team_share")),
                "{bad}: {got:?}"
            );
        }
        let fine = errors(
            "[[source]]\nname = \"f\"\nkind = \"file\"\npath = \".\"\n[limits]\nteam_share = 1.0\n",
        );
        assert!(!fine.iter().any(|e| e.contains("team_share")), "{fine:?}");
    }

    /// Relational errors point at a setting involved, not at 1:1.
    #[test]
    fn relational_errors_point_at_a_setting() {
        let got = errors(
            "[[source]]\nname = \"f\"\nkind = \"file\"\npath = \".\"\n[server]\nlisten = \"127.0.0.1:1\"\nclient_ca = \"ca.pem\"\nclient_cert_header = \"X-Cert\"\n[limits]\nmax_errors = 5\nsource_concurrency = 0\n",
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("7:1 [server] client_ca needs")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("8:1 [server] client_cert_header is never")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|e| e.starts_with("11:1 [limits]")),
            "{got:?}"
        );
        assert!(got.iter().all(|e| !e.starts_with("1:1 ")), "{got:?}");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let got = errors("[server\nlisten = 1\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("1:"), "{got:?}");
    }

    #[test]
    fn unknown_keys_inside_vault_auth_are_errors() {
        let got = errors(
            "[[source]]\nname = \"v\"\nkind = \"vault\"\nauth = { method = \"approle\", role_id = \"x\" }\n",
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("role_id"), "{got:?}");
    }

    #[test]
    fn default_source_falls_back_to_the_only_non_ccp_source() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            "[[source]]\nname = \"files\"\nkind = \"file\"\npath = \".\"\n[[source]]\nname = \"ccp\"\nkind = \"ccp\"\nurl = \"https://c\"\napp_id = \"kb\"\n",
            &dir.path().join("kb.toml"),
        )
        .unwrap();
        assert_eq!(cfg.default_source(), Some("files"));
    }
}
