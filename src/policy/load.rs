//! Loading the policies folder: every `*.toml` under it (the `vault/` subfolder holds HCL for
//! Vault and is skipped), all errors of all files listed with `file:line:column`. A policy
//! that fails to load is rejected whole.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::host::HostPattern;
use super::model::{
    Consumer, Credential, CredentialMode, CredentialValues, Grant, MAX_BOUND_CIDRS, PathPattern,
    Policy, ReadAccess, parse_net,
};
use crate::diag::{Diagnostic, Diags, Seg, diagnostic};
use crate::reference::parse_reference;

mod identity;
use identity::IdentityPinDef;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policies: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    /// The file changed while it was being read (an editor rewriting it in place): what was
    /// read may be half a file that still parses. Write policies to a temporary file and
    /// rename it into place.
    #[error("{}: changed while it was being read; write policy files elsewhere and rename them into place", path.display())]
    Changed { path: PathBuf },
}

#[derive(Clone, Deserialize)]
struct TeamDef {
    slug: String,
    /// The team's numeric ID in Tines' API (`team_id`), for the Tines-shaped management
    /// routes.
    tines_id: Option<u64>,
    /// The DNS domains of the client certificates the team's admins may claim through the
    /// management API (a certificate's CN is the domain or under it).
    #[serde(default)]
    identity_domains: Vec<String>,
}

#[derive(Clone, Deserialize)]
struct PinDef {
    fingerprint: String,
    not_before: Option<String>,
    not_after: Option<String>,
}

#[derive(Clone, Deserialize)]
struct ConsumerDef {
    name: String,
    team: String,
    #[serde(default)]
    cert_sha256: Vec<PinDef>,
    issuer_ca: Option<PathBuf>,
    /// The issuer CA inline (what the management API stores; public certificates).
    issuer_ca_pem: Option<String>,
    subject: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    admin: bool,
    /// Teams this consumer administers through the management API.
    #[serde(default)]
    admin_teams: Vec<String>,
    /// The destination this consumer's reads through the Vault-compatible API are for.
    vault_api_host: Option<String>,
    /// Vault's AppRole login on the Vault-compatible API.
    approle: Option<AppRoleDef>,
    /// Vault's JWT login on the Vault-compatible API.
    jwt: Option<JwtDef>,
    /// Vault's Kubernetes login on the Vault-compatible API.
    kubernetes: Option<KubernetesDef>,
    /// The CCP `AppID`s this consumer may name at the CCP-shaped door.
    #[serde(default)]
    ccp_app_ids: Vec<String>,
    /// The signing profile that renews this consumer's certificate (operator files only).
    identity_profile: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtDef {
    role: String,
    bound_audiences: Vec<String>,
    bound_subject: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesDef {
    role: String,
    service_account: String,
    namespace: String,
    audience: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppRoleDef {
    role_id: String,
    secret_id_sha256: String,
    /// RFC 3339: no login after it (what the management API's `secret_id_ttl` becomes).
    secret_id_expires_at: Option<String>,
    #[serde(default)]
    secret_id_bound_cidrs: Vec<String>,
    #[serde(default)]
    token_bound_cidrs: Vec<String>,
}

#[derive(Deserialize)]
struct CredentialDef {
    name: String,
    mode: CredentialMode,
    team: String,
    #[serde(default)]
    read_access: ReadAccess,
    #[serde(default)]
    shared_team_slugs: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    description: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    pem: Option<crate::pem::Mode>,
    client_certificate: Option<String>,
    client_private_key: Option<String>,
    root_certificate: Option<String>,
    /// The trust for the upstream server when it differs from the CA that anchors the client
    /// chain: then it alone is that trust, and `root_certificate` anchors the chain only.
    upstream_ca: Option<String>,
    value: Option<String>,
    /// A rotation staged for a time.
    next: Option<NextDef>,
    /// What a load built of this definition (it lives as long as the file's cached parse):
    /// reused by the next load under the same teams and sources.
    #[serde(skip)]
    built: std::sync::Mutex<Option<Built>>,
}

/// A credential as built from its definition, with the lines its checks wrote, under the
/// teams and sources of [`Context`] `context`.
struct Built {
    context: u64,
    credential: Arc<Credential>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// What a credential's own checks depend on beyond its definition — the team slugs and the
/// sources — numbered: a definition's [`Built`] stands while the number is the same.
#[derive(Default)]
struct Context {
    id: u64,
    last: Option<(BTreeSet<String>, Option<KnownSources>)>,
}

impl Context {
    fn of(&mut self, slugs: &BTreeSet<String>, sources: Option<&KnownSources>) -> u64 {
        let same = self
            .last
            .as_ref()
            .is_some_and(|(s, k)| s == slugs && k.as_ref() == sources);
        if !same {
            self.id += 1;
            self.last = Some((slugs.clone(), sources.cloned()));
        }
        self.id
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextDef {
    activate_at: String,
    client_certificate: Option<String>,
    client_private_key: Option<String>,
    root_certificate: Option<String>,
    upstream_ca: Option<String>,
    value: Option<String>,
}

#[derive(Clone, Deserialize)]
struct GrantDef {
    team: String,
    source: String,
    paths: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

/// One parsed item with where it came from: the spans of its keys and array elements.
#[derive(Clone)]
struct Item<T> {
    def: T,
    file: usize,
    span: Range<usize>,
    /// Shared: a load numbers the cached items of every file without copying them.
    keys: Arc<BTreeMap<Vec<Seg>, Range<usize>>>,
}

struct Files {
    paths: Vec<Arc<Path>>,
    /// Per path: whether it is the management store's.
    managed: Vec<bool>,
    texts: Vec<std::sync::Arc<str>>,
    list: Vec<Diagnostic>,
    /// Problems that do not stop the policy from loading (`check` prints them).
    warnings: Vec<Diagnostic>,
}

impl Files {
    /// A diagnostic at `key` of an item (or at the item).
    fn at<T>(&mut self, item: &Item<T>, key: &[Seg], message: String) {
        let span = item
            .keys
            .get(key)
            .cloned()
            .unwrap_or_else(|| item.span.clone());
        let file = item.file;
        self.list.push(diagnostic(
            &self.paths[file],
            &self.texts[file],
            span,
            message,
        ));
    }

    /// A warning at `key` of an item.
    fn warn<T>(&mut self, item: &Item<T>, key: &[Seg], message: String) {
        self.at(item, key, message);
        let w = self.list.pop().expect("just pushed");
        self.warnings.push(w);
    }
}

fn key(k: &str) -> Vec<Seg> {
    vec![Seg::Key(k.to_owned())]
}

fn key_index(k: &str, i: usize) -> Vec<Seg> {
    vec![Seg::Key(k.to_owned()), Seg::Index(i)]
}

/// The sources a policy is loaded against: grants and credentials must name one of them
/// (a misspelt source would otherwise load and silently grant nothing, or fail on use).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnownSources {
    pub names: BTreeSet<String>,
    /// Where `$SECRET_<path>` without `<source>:` goes.
    pub default: Option<String>,
    /// Where `$SAFE_ $NAME_` goes.
    pub ccp: Option<String>,
    /// The management store's area of a source — (source, folder; empty: all of it): no
    /// grant may reach into it, so the store's material is read only through its own
    /// definitions, each decided for its own team.
    pub store: Option<(String, String)>,
    /// Sources whose reads issue (kind `pki`): what a credential names there is made for it,
    /// not a stored secret a grant could cover.
    pub issuing: BTreeSet<String>,
    /// (pki source, profile) pairs that sign CSRs (`issue = "sign"`): an mtls credential whose
    /// certificate comes from one has no private key — its caller makes it.
    pub signing: BTreeSet<(String, String)>,
    /// The names each (pki source, profile) puts in its certificates — its common name, then
    /// its `alt_names`: a credential of one team may not be given another team's identity
    /// (THREATS row 89).
    pub pki_names: std::collections::BTreeMap<(String, String), Vec<String>>,
}

/// Reads and validates every policy file under `dir`, without knowing the sources (for
/// `policy explain --policies` and tests); see [`load_checked`].
pub fn load(dir: &Path) -> Result<Policy, PolicyError> {
    load_inner(&[dir], None)
}

/// As [`load`], and every source a grant or a credential names must be one of `sources`.
pub fn load_checked(dir: &Path, sources: &KnownSources) -> Result<Policy, PolicyError> {
    load_inner(&[dir], Some(sources))
}

/// As [`load_checked`], over several folders as one policy (the policy folder and the
/// management store's definitions): a name defined in two of them is a load error like one
/// defined twice in a folder.
/// `store` are the management store's folders: what they define has origin `api`.
pub fn load_checked_dirs(
    dirs: &[std::path::PathBuf],
    store: &[std::path::PathBuf],
    sources: &KnownSources,
) -> Result<Policy, PolicyError> {
    load_checked_dirs_cached(dirs, store, sources, &mut LoadCache::default(), None)
}

/// As [`load_checked_dirs`], reading and parsing again only the files that changed since
/// the load that filled `cache` (see [`LoadCache`]).
/// `changed`: when the caller knows every file that changed since that load (a management
/// write, a pull's change list), only those are looked at — the folders are not walked and
/// no other file is `stat`ed; `None` walks and checks everything (start, SIGHUP, a full pull).
pub(crate) fn load_checked_dirs_cached(
    dirs: &[std::path::PathBuf],
    store: &[std::path::PathBuf],
    sources: &KnownSources,
    cache: &mut LoadCache,
    changed: Option<&[PathBuf]>,
) -> Result<Policy, PolicyError> {
    let dirs: Vec<&Path> = dirs.iter().chain(store).map(|d| d.as_path()).collect();
    load_managed(
        &dirs,
        dirs.len() - store.len(),
        Some(sources),
        cache,
        changed,
    )
}

fn load_inner(dirs: &[&Path], sources: Option<&KnownSources>) -> Result<Policy, PolicyError> {
    load_managed(dirs, dirs.len(), sources, &mut LoadCache::default(), None)
}

/// Loads `dirs` as one policy; those from index `store_from` on are the store's.
///
/// A store entry never fails the load: the operator's files are loaded as written (an error
/// there fails the load, as always), and a store file with any error — a name or pin a policy
/// file also defines, another store entry's pin or token, a malformed definition — is set
/// aside and the rest loaded again, until nothing of the store errs. What was set aside is
/// [`Policy::quarantined`] (logged, counted, printed by `check`, answered to its writer). An
/// operator's definition therefore always wins over a store entry of the same name, and a
/// team admin's entry can never stop a reload — revocations included.
fn load_managed(
    dirs: &[&Path],
    store_from: usize,
    sources: Option<&KnownSources>,
    cache: &mut LoadCache,
    changed: Option<&[PathBuf]>,
) -> Result<Policy, PolicyError> {
    // The operator's folders are small and edited by hand: always walked and checked. The
    // store's are taken from the last load plus `changed` when that is known.
    let trusted = changed.is_some_and(|c| cache.apply_changes(dirs, store_from, c));
    cache.walk(dirs, if trusted { store_from } else { dirs.len() })?;
    let mut excluded = BTreeSet::new();
    let mut quarantined = Vec::new();
    loop {
        match load_once(store_from, sources, &excluded, cache, trusted)? {
            Ok(mut policy) => {
                quarantined.sort_by(|a: &Diagnostic, b: &Diagnostic| {
                    (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column))
                });
                policy.quarantined = quarantined;
                return Ok(policy);
            }
            Err(list) => {
                let is_store =
                    |d: &Diagnostic| dirs[store_from..].iter().any(|s| d.file.starts_with(s));
                if list.iter().any(|d| !is_store(d)) {
                    return Err(PolicyError::Invalid(list));
                }
                // Each round sets at least one file aside: it ends.
                excluded.extend(list.iter().map(|d| d.file.clone()));
                quarantined.extend(list);
            }
        }
    }
}

/// One load of the files `cache` lists, without those in `excluded`: the policy, or every
/// error.
fn load_once(
    store_from: usize,
    sources: Option<&KnownSources>,
    excluded: &BTreeSet<PathBuf>,
    cache: &mut LoadCache,
    trusted: bool,
) -> Result<Result<Policy, Vec<Diagnostic>>, PolicyError> {
    let mut paths = Vec::new();
    let mut managed = Vec::new();
    for (i, found) in cache.listed.iter().enumerate() {
        let found = found.iter().filter(|p| !excluded.contains(&***p));
        for p in found {
            managed.push(i >= store_from);
            paths.push(Arc::clone(p));
        }
    }
    // A load told what changed has dropped what went (`apply_changes`).
    if !trusted {
        cache.keep_only(&paths);
    }
    let mut files = Files {
        texts: Vec::with_capacity(paths.len()),
        paths,
        managed,
        list: Vec::new(),
        warnings: Vec::new(),
    };
    let mut parsed = Parsed::default();
    for i in 0..files.paths.len() {
        let one = cache.parsed(&files.paths[i], trusted && files.managed[i])?;
        files.texts.push(std::sync::Arc::clone(&one.text));
        files.list.extend(one.diags.iter().cloned());
        parsed.extend_from(one, i);
    }
    let Parsed {
        teams,
        consumers,
        credentials,
        grants,
        identity_pins,
        ..
    } = parsed;
    let mut policy = validate(
        &mut files,
        (teams, consumers, credentials, grants, identity_pins),
        sources,
        &mut cache.context,
    );
    for list in [&mut files.list, &mut files.warnings] {
        list.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }
    if files.list.is_empty() {
        policy.warnings = files.warnings;
        Ok(Ok(policy))
    } else {
        Ok(Err(files.list))
    }
}

/// What loads read and parsed, by file: a later load reads and parses again only a file
/// whose identity (size, modification time, inode) changed — the store's writes rename a new
/// file into place — and validates everything as a load from scratch does, so every rule
/// across definitions (unique names, pins and tokens identifying one consumer, issuer ACLs)
/// holds exactly as before. A broker keeps one (docs/DESIGN.md §21).
#[derive(Default)]
pub(crate) struct LoadCache {
    files: std::collections::HashMap<PathBuf, Parsed>,
    /// The folders of the last load and the files found in each (sorted, as a walk finds
    /// them): a load told what changed updates this instead of walking again.
    dirs: Vec<PathBuf>,
    listed: Vec<BTreeSet<Arc<Path>>>,
    context: Context,
}

impl std::fmt::Debug for LoadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadCache({} files)", self.files.len())
    }
}

/// One file's text and what it defines (its items' `file` is 0 until a load numbers them),
/// or everything a load parsed.
#[derive(Clone, Default)]
struct Parsed {
    identity: Identity,
    text: std::sync::Arc<str>,
    diags: Vec<Diagnostic>,
    teams: Vec<Item<Arc<TeamDef>>>,
    consumers: Vec<Item<Arc<ConsumerDef>>>,
    credentials: Vec<Item<Arc<CredentialDef>>>,
    grants: Vec<Item<Arc<GrantDef>>>,
    identity_pins: Vec<Item<Arc<IdentityPinDef>>>,
}

impl Parsed {
    /// Adds `one`'s items, as the load's file `file`.
    fn extend_from(&mut self, one: &Parsed, file: usize) {
        fn numbered<T: Clone>(items: &[Item<T>], file: usize) -> impl Iterator<Item = Item<T>> {
            items.iter().cloned().map(move |i| Item { file, ..i })
        }
        self.teams.extend(numbered(&one.teams, file));
        self.consumers.extend(numbered(&one.consumers, file));
        self.credentials.extend(numbered(&one.credentials, file));
        self.grants.extend(numbered(&one.grants, file));
        self.identity_pins
            .extend(numbered(&one.identity_pins, file));
    }
}

impl LoadCache {
    fn keep_only(&mut self, paths: &[Arc<Path>]) {
        let wanted: std::collections::HashSet<&Path> = paths.iter().map(|p| &**p).collect();
        self.files.retain(|p, _| wanted.contains(p.as_path()));
    }

    /// Walks `dirs` for their files and remembers them — all but those from `keep` on,
    /// whose last listing stands.
    fn walk(&mut self, dirs: &[&Path], keep: usize) -> Result<(), PolicyError> {
        // `keep` below `dirs.len()` only after `apply_changes` matched the same folders.
        let kept = if keep < dirs.len() {
            self.listed.split_off(keep)
        } else {
            Vec::new()
        };
        self.dirs.clear();
        self.listed.clear();
        for dir in &dirs[..keep] {
            let mut found = Vec::new();
            let read = collect_files(dir, &mut found).map_err(|source| PolicyError::Read {
                path: (*dir).to_owned(),
                source,
            });
            if let Err(e) = read {
                self.listed.clear();
                return Err(e);
            }
            self.dirs.push(dir.to_path_buf());
            self.listed
                .push(found.into_iter().map(|p| Arc::from(p.as_path())).collect());
        }
        self.dirs
            .extend(dirs[keep..].iter().map(|d| d.to_path_buf()));
        self.listed.extend(kept);
        Ok(())
    }

    /// Takes `changed` into the store's files of the last load of the same `dirs`: each is
    /// found again (there, or gone) and will be read again. `false` when there is no such
    /// load or a path is in none of the store's folders — then the caller walks them.
    fn apply_changes(&mut self, dirs: &[&Path], store_from: usize, changed: &[PathBuf]) -> bool {
        let same = self.listed.len() == dirs.len()
            && self.dirs.len() == dirs.len()
            && self.dirs.iter().zip(dirs).all(|(a, b)| a == b);
        if !same {
            return false;
        }
        for path in changed {
            let Some(i) = dirs.iter().rposition(|d| path.starts_with(d)) else {
                return false;
            };
            if i < store_from {
                return false;
            }
            self.files.remove(path);
            let is_toml = path.extension().is_some_and(|e| e == "toml");
            if is_toml && path.is_file() {
                self.listed[i].insert(Arc::from(path.as_path()));
            } else {
                self.listed[i].remove(path.as_path());
            }
        }
        true
    }

    /// `path` parsed: from the cache while its identity is the same, else read and parsed.
    /// `trusted`: a cached file is taken as it is, without a `stat` (only the files named
    /// changed were dropped from the cache).
    fn parsed(&mut self, path: &Path, trusted: bool) -> Result<&Parsed, PolicyError> {
        let fresh = if trusted && self.files.contains_key(path) {
            true
        } else {
            let now = identity(path)?;
            self.files.get(path).is_some_and(|p| p.identity == now)
        };
        if !fresh {
            let (text, identity) = read_stable(path, || ())?;
            let one = parse_file(path, text, identity);
            self.files.insert(path.to_owned(), one);
        }
        Ok(&self.files[path])
    }
}

/// What names one version of a file: size, modification time, inode, device.
type Identity = (u64, i64, i64, u64, u64);

fn identity(path: &Path) -> Result<Identity, PolicyError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev()))
}

/// One file's text parsed into its items (numbered file 0) and its diagnostics.
fn parse_file(path: &Path, text: String, identity: Identity) -> Parsed {
    let mut one = Parsed {
        identity,
        ..Parsed::default()
    };
    let mut d = Diags::new(path, &text);
    match DeTable::parse(&text) {
        Err(e) => d.at(e.span().unwrap_or(0..0), e.message().trim().to_owned()),
        Ok(root) => {
            for (k, v) in root.get_ref().iter() {
                let Some(items) = v.get_ref().as_array() else {
                    d.at(
                        k.span(),
                        format!(
                            "`{}` must be an array of tables: write [[{}]]",
                            k.get_ref(),
                            k.get_ref()
                        ),
                    );
                    continue;
                };
                for item in items.iter() {
                    match k.get_ref().as_ref() {
                        "team" => push(&mut d, &mut one.teams, item, 0),
                        "consumer" => push(&mut d, &mut one.consumers, item, 0),
                        "credential" => push(&mut d, &mut one.credentials, item, 0),
                        "grant" => push(&mut d, &mut one.grants, item, 0),
                        "identity_pin" => push(&mut d, &mut one.identity_pins, item, 0),
                        other => {
                            d.at(k.span(), format!("unknown key `{other}` (expected team, consumer, credential, grant)"));
                            break;
                        }
                    }
                }
            }
        }
    }
    one.diags = d.list;
    one.text = text.into();
    one
}

fn push<T: serde::de::DeserializeOwned>(
    d: &mut Diags<'_>,
    out: &mut Vec<Item<Arc<T>>>,
    item: &Spanned<DeValue<'_>>,
    file: usize,
) {
    let Some(def) = d.section::<T>(item, &[]) else {
        return;
    };
    // Keep the spans the cross-checks may point at: each key, and each array element.
    let mut keys = BTreeMap::new();
    if let Some(table) = item.get_ref().as_table() {
        for (k, v) in table.iter() {
            let name = k.get_ref().to_string();
            keys.insert(vec![Seg::Key(name.clone())], k.span());
            if let Some(arr) = v.get_ref().as_array() {
                for (i, elem) in arr.iter().enumerate() {
                    keys.insert(vec![Seg::Key(name.clone()), Seg::Index(i)], elem.span());
                }
            }
        }
    }
    out.push(Item {
        def: Arc::new(def),
        file,
        span: item.span(),
        keys: Arc::new(keys),
    });
}

/// Reads `path`, refusing it when its size, modification time or inode changed between
/// before and after the read, or the bytes read are not the size it has (THREATS row 30).
/// `between` runs after the read (tests use it to change the file at that moment).
fn read_stable(path: &Path, between: impl FnOnce()) -> Result<(String, Identity), PolicyError> {
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let before = std::fs::metadata(path).map_err(read_error)?;
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    between();
    let after = std::fs::metadata(path).map_err(read_error)?;
    let same = |m: &std::fs::Metadata| (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev());
    if same(&before) != same(&after) || text.len() as u64 != after.len() {
        return Err(PolicyError::Changed {
            path: path.to_owned(),
        });
    }
    Ok((text, same(&after)))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // The entry's type costs no `stat` (but a symbolic link's target is looked at).
        let is_dir = match entry.file_type()? {
            t if t.is_symlink() => path.is_dir(),
            t => t.is_dir(),
        };
        if is_dir {
            if path.file_name().is_some_and(|n| n == "vault") {
                continue;
            }
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    Ok(())
}

fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Every definition a load found, by kind.
type Defs = (
    Vec<Item<Arc<TeamDef>>>,
    Vec<Item<Arc<ConsumerDef>>>,
    Vec<Item<Arc<CredentialDef>>>,
    Vec<Item<Arc<GrantDef>>>,
    Vec<Item<Arc<IdentityPinDef>>>,
);

fn validate(
    files: &mut Files,
    (teams, consumers, credentials, grants, identity_pins): Defs,
    sources: Option<&KnownSources>,
    context: &mut Context,
) -> Policy {
    let mut policy = Policy::default();
    let slugs = validate_teams(files, &teams, &mut policy);
    let consumer_items = validate_consumers(files, consumers, &slugs, &mut policy);
    let context = context.of(&slugs, sources);
    let cred_items =
        validate_credentials(files, &credentials, (&slugs, sources, context), &mut policy);
    validate_grants(files, grants, &slugs, sources, &mut policy);
    if let Some(known) = sources {
        warn_credentials_outside_grants(files, &policy, &cred_items, known);
        check_pki_names_are_the_teams(files, &policy, &cred_items, known);
    }
    identity::check_profiles(files, &mut policy, &consumer_items, &cred_items, sources);
    identity::attach_renewed(files, &mut policy, identity_pins, &consumer_items);
    check_private_keys(files, &policy, &cred_items, sources);
    policy
}

/// An mtls credential has a `client_private_key` unless its certificate is signed from its
/// caller's CSR (a signing profile): then it has none — keybroker never holds that key. Without
/// the sources (`load` for `policy explain --policies`) a missing key is not judged.
fn check_private_keys(
    files: &mut Files,
    policy: &Policy,
    items: &[Item<usize>],
    sources: Option<&KnownSources>,
) {
    let Some(known) = sources else { return };
    for item in items {
        let cred = &policy.credentials[item.def];
        if cred.mode != CredentialMode::Mtls {
            continue;
        }
        let roles = &cred.values.by_role;
        let signing = !known.signing.is_empty()
            && roles.get("client_certificate").is_some_and(|r| {
                let (Ok(source), Ok(path)) =
                    (known.source_of(&r.target), super::path_of(&r.target))
                else {
                    return false;
                };
                known
                    .signing
                    .contains(&(source.to_owned(), path.to_string()))
            });
        match (signing, roles.contains_key("client_private_key")) {
            (false, false) => files.at(
                item,
                &key("mode"),
                "mode \"mtls\" needs `client_private_key` (or a certificate from a signing profile)"
                    .to_owned(),
            ),
            (true, true) => files.at(
                item,
                &key("client_private_key"),
                "the certificate comes from a signing profile: its key is made by the caller, not read"
                    .to_owned(),
            ),
            _ => {}
        }
    }
}

/// Team slugs (valid, once each) and Tines IDs (once each).
fn validate_teams(
    files: &mut Files,
    teams: &[Item<Arc<TeamDef>>],
    policy: &mut Policy,
) -> BTreeSet<String> {
    let mut slugs = BTreeSet::new();
    for t in teams {
        let slug = &t.def.slug;
        if !valid_slug(slug) {
            files.at(
                t,
                &key("slug"),
                format!("team slug {slug:?} must match [a-z0-9_-]+"),
            );
        } else if !slugs.insert(slug.clone()) {
            files.at(t, &key("slug"), format!("team `{slug}` is defined twice"));
        }
    }
    policy.teams = slugs.iter().cloned().collect();
    // Identity domains: DNS names, each held by one team — no domain of one team is another's
    // or under it (a certificate's CN falls in one team's domain or in none).
    let mut domains: Vec<(String, String)> = Vec::new();
    for t in teams {
        for (i, d) in t.def.identity_domains.iter().enumerate() {
            let d = d.to_ascii_lowercase();
            let dns = d.split('.').count() >= 2
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !dns {
                files.at(
                    t,
                    &key_index("identity_domains", i),
                    format!("identity domain {d:?} must be a DNS name of two labels or more"),
                );
                continue;
            }
            let clash = domains.iter().find(|(_, other)| {
                other == &d
                    || d.ends_with(&format!(".{other}"))
                    || other.ends_with(&format!(".{d}"))
            });
            if let Some((team, other)) = clash {
                files.at(
                    t,
                    &key_index("identity_domains", i),
                    format!("identity domain {d:?} overlaps team `{team}`'s {other:?}: a certificate must fall in one team's domain"),
                );
                continue;
            }
            domains.push((t.def.slug.clone(), d));
        }
    }
    for (team, d) in domains {
        policy.identity_domains.entry(team).or_default().push(d);
    }
    let mut tines_ids = BTreeMap::new();
    for t in teams {
        if let Some(id) = t.def.tines_id
            && let Some(other) = tines_ids.insert(id, t.def.slug.clone())
        {
            files.at(
                t,
                &key("tines_id"),
                format!("tines_id {id} is also team `{other}`'s"),
            );
        }
    }
    policy.tines_ids = tines_ids;
    slugs
}

/// Consumers: names, pins, tokens (one holder each), issuer ACLs, admin teams.
/// The first holder of a name, token or pin: where it was defined.
struct Holder {
    name: String,
    at: Item<()>,
}

impl Holder {
    fn of<T>(c: &Item<T>, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            at: Item {
                def: (),
                file: c.file,
                span: c.span.clone(),
                keys: Arc::clone(&c.keys),
            },
        }
    }

    /// When both the first holder and `second` are store entries, the first errs too: a
    /// conflict between two team admins' entries sets both aside.
    fn also_errs<T>(&self, files: &mut Files, second: &Item<T>, message: &str) {
        if files.managed[self.at.file] && files.managed[second.file] && self.at.file != second.file
        {
            files.at(&self.at, &[], message.to_owned());
        }
    }
}

/// `c` claims `k` (a login's role, a token digest) at `field`: another consumer holding it
/// is a load error — and, between two store entries, for the first as well.
fn claim<K: Ord>(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    owners: &mut BTreeMap<K, Holder>,
    k: K,
    field: &str,
    what: &str,
) {
    if let Some(first) = owners.insert(k, Holder::of(c, &c.def.name)) {
        files.at(
            c,
            &key(field),
            format!("consumer `{}` has the same {what}", first.name),
        );
        first.also_errs(files, c, &format!("a store entry has the same {what}"));
    }
}

/// Consumer `c`'s AppRole login, checked; its `role_id` held by no other consumer.
fn approle_of(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    role_owner: &mut BTreeMap<String, Holder>,
) -> Option<super::model::AppRole> {
    let a = c.def.approle.as_ref()?;
    let mut digest = [0u8; 32];
    if hex::decode_to_slice(&a.secret_id_sha256, &mut digest).is_err() {
        files.at(
            c,
            &key("approle"),
            "approle.secret_id_sha256 must be the hex SHA-256 of the secret_id (64 hex digits)"
                .to_owned(),
        );
        return None;
    }
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if a.role_id.is_empty() || a.role_id.len() > 256 || !printable(&a.role_id) {
        files.at(
            c,
            &key("approle"),
            "approle.role_id is 1 to 256 printable ASCII characters".to_owned(),
        );
        return None;
    }
    claim(
        files,
        c,
        role_owner,
        a.role_id.clone(),
        "approle",
        "approle.role_id",
    );
    let expires = match a.secret_id_expires_at.as_deref().map(super::rfc3339) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            files.at(
                c,
                &key("approle"),
                "approle.secret_id_expires_at must be an RFC 3339 time".to_owned(),
            );
            return None;
        }
    };
    let mut nets = |list: &[String], field: &str| -> Option<Vec<ipnet::IpNet>> {
        let parsed: Option<Vec<ipnet::IpNet>> = list.iter().map(|n| parse_net(n)).collect();
        match parsed {
            Some(v) if v.len() <= MAX_BOUND_CIDRS => Some(v),
            _ => {
                files.at(c, &key("approle"), format!("approle.{field} holds at most {MAX_BOUND_CIDRS} CIDR blocks or addresses (`10.0.0.0/8`, `192.0.2.7`)"));
                None
            }
        }
    };
    let secret_id_bound_cidrs = nets(&a.secret_id_bound_cidrs, "secret_id_bound_cidrs")?;
    let token_bound_cidrs = nets(&a.token_bound_cidrs, "token_bound_cidrs")?;
    Some(super::model::AppRole {
        role_id: a.role_id.clone(),
        secret_id_sha256: digest,
        secret_id_expires_at: expires,
        secret_id_bound_cidrs,
        token_bound_cidrs,
    })
}

/// A role name of the JWT and Kubernetes logins: a slug of at most 128 bytes.
fn role_ok(role: &str) -> bool {
    !role.is_empty() && role.len() <= 128 && super::is_slug(role)
}

/// Consumer `c`'s JWT login, checked; its role held by no other consumer.
fn jwt_role(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    jwt_owner: &mut BTreeMap<String, Holder>,
) -> Option<super::model::JwtRole> {
    let j = c.def.jwt.as_ref()?;
    if !role_ok(&j.role)
        || j.bound_audiences.is_empty()
        || j.bound_audiences.iter().any(String::is_empty)
        || j.bound_subject.is_empty()
    {
        files.at(
            c,
            &key("jwt"),
            "jwt needs a role ([a-z0-9_-]), at least one bound_audiences entry and a bound_subject"
                .to_owned(),
        );
        return None;
    }
    claim(files, c, jwt_owner, j.role.clone(), "jwt", "jwt.role");
    Some(super::model::JwtRole {
        role: j.role.clone(),
        bound_audiences: j.bound_audiences.clone(),
        bound_subject: j.bound_subject.clone(),
    })
}

/// Consumer `c`'s Kubernetes login, checked; its role held by no other consumer.
fn kubernetes_role(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    kube_owner: &mut BTreeMap<String, Holder>,
) -> Option<super::model::KubernetesRole> {
    let k = c.def.kubernetes.as_ref()?;
    let part = |s: &str| !s.is_empty() && !s.contains(':');
    if !role_ok(&k.role)
        || !part(&k.service_account)
        || !part(&k.namespace)
        || k.audience.is_empty()
    {
        files.at(
            c,
            &key("kubernetes"),
            "kubernetes needs a role ([a-z0-9_-]), a service_account, a namespace (no `:`) and an audience"
                .to_owned(),
        );
        return None;
    }
    claim(
        files,
        c,
        kube_owner,
        k.role.clone(),
        "kubernetes",
        "kubernetes.role",
    );
    Some(super::model::KubernetesRole {
        role: k.role.clone(),
        service_account: k.service_account.clone(),
        namespace: k.namespace.clone(),
        audience: k.audience.clone(),
    })
}

/// Who holds each name, token digest, login role and pin: a second holder is a load error,
/// never "the first one in file order wins" (THREATS row 32). Between two store entries
/// (replicas racing), both err: path order — which team's slug sorts first — decides nothing.
#[derive(Default)]
struct Owners {
    names: BTreeMap<String, Holder>,
    token: BTreeMap<[u8; 32], Holder>,
    role: BTreeMap<String, Holder>,
    jwt: BTreeMap<String, Holder>,
    kube: BTreeMap<String, Holder>,
    pin: BTreeMap<[u8; 32], Holder>,
}

fn validate_consumers(
    files: &mut Files,
    consumers: Vec<Item<Arc<ConsumerDef>>>,
    slugs: &BTreeSet<String>,
    policy: &mut Policy,
) -> identity::ConsumerItems {
    let mut owners = Owners::default();
    let mut acl_items: Vec<(Item<()>, String, usize)> = Vec::new();
    let mut profile_items: Vec<(Item<()>, usize, String)> = Vec::new();
    for c in consumers {
        let def = &c.def;
        if !super::is_slug(&def.name) {
            files.at(
                &c,
                &key("name"),
                format!("consumer name {:?} must match [a-z0-9_-]{{1,64}}", def.name),
            );
        } else if let Some(first) = owners
            .names
            .insert(def.name.clone(), Holder::of(&c, &def.name))
        {
            files.at(
                &c,
                &key("name"),
                format!("consumer `{}` is defined twice", def.name),
            );
            first.also_errs(files, &c, "a store entry defines this consumer name too");
        }
        if !slugs.contains(&def.team) {
            files.at(&c, &key("team"), format!("unknown team `{}`", def.team));
        }
        let pins = consumer_pins(files, &c, &mut owners.pin);
        let token = consumer_token(files, &c, &mut owners.token);
        let (issuer_ca, issuer_certs, subject) = consumer_issuer(files, &c);
        let has_issuer = def.issuer_ca.is_some() || def.issuer_ca_pem.is_some();
        let approle = approle_of(files, &c, &mut owners.role);
        let jwt = jwt_role(files, &c, &mut owners.jwt);
        let kubernetes = kubernetes_role(files, &c, &mut owners.kube);
        if def.cert_sha256.is_empty()
            && !has_issuer
            && def.token_sha256.is_none()
            && def.approle.is_none()
            && def.jwt.is_none()
            && def.kubernetes.is_none()
        {
            files.at(&c, &key("name"), format!("consumer `{}` has no way to authenticate (cert_sha256, issuer_ca + subject, token_sha256, approle, jwt or kubernetes)", def.name));
        }
        if subject.is_some() {
            let at = Item {
                def: (),
                file: c.file,
                span: c.span.clone(),
                keys: Arc::clone(&c.keys),
            };
            acl_items.push((at, def.team.clone(), policy.consumers.len()));
        }
        profile_items.extend(identity::profile_item(files, &c, policy.consumers.len()));
        let vault_api_host = def.vault_api_host.as_ref().and_then(|h| {
            super::Destination::parse(h)
                .map_err(|e| {
                    files.at(
                        &c,
                        &key("vault_api_host"),
                        format!("vault_api_host {h:?}: {e}"),
                    )
                })
                .ok()
        });
        policy.consumers.push(Consumer {
            origin: if files.managed[c.file] {
                super::model::Origin::Api
            } else {
                super::model::Origin::File
            },
            name: def.name.clone(),
            team: def.team.clone(),
            cert_sha256: pins,
            issuer_certs,
            issuer_ca,
            subject,
            token_sha256: token,
            approle,
            jwt,
            kubernetes,
            ccp_app_ids: def.ccp_app_ids.clone(),
            admin: def.admin,
            admin_teams: admin_teams(files, &c, slugs),
            vault_api_host,
            identity_profile: None,
            renewed: super::model::Renewed::default(),
        });
    }
    warn_overlapping_acls(files, policy, &acl_items);
    identity::ConsumerItems {
        acl: acl_items,
        profiles: profile_items,
        pins: owners.pin,
    }
}

/// A consumer's `cert_sha256` pins, each fingerprint held by one consumer only.
fn consumer_pins(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    pin_owner: &mut BTreeMap<[u8; 32], Holder>,
) -> Vec<super::model::Pin> {
    let def = &c.def;
    let mut pins = Vec::new();
    for (i, pin) in def.cert_sha256.iter().enumerate() {
        let hex_text: String = pin.fingerprint.chars().filter(|c| *c != ':').collect();
        let mut fp = [0u8; 32];
        if hex::decode_to_slice(&hex_text, &mut fp).is_err() {
            files.at(
                c,
                &key_index("cert_sha256", i),
                "fingerprint must be 32 bytes of hex (colons allowed)".to_owned(),
            );
            continue;
        }
        let mut time = |what: &str, t: &Option<String>| match t {
            None => Ok(None),
            Some(t) => super::rfc3339(t).map(Some).ok_or_else(|| {
                files.at(
                    c,
                    &key_index("cert_sha256", i),
                    format!("{what} {t:?} is not an RFC 3339 time"),
                );
            }),
        };
        let (Ok(not_before), Ok(not_after)) = (
            time("not_before", &pin.not_before),
            time("not_after", &pin.not_after),
        ) else {
            continue;
        };
        if let Some(first) = pin_owner.insert(fp, Holder::of(c, &def.name)) {
            files.at(
                c,
                &key_index("cert_sha256", i),
                format!(
                    "this fingerprint is already pinned by consumer `{}`",
                    first.name
                ),
            );
            first.also_errs(files, c, "a store entry pins this fingerprint too");
        }
        pins.push(super::model::Pin {
            sha256: fp,
            not_before,
            not_after,
        });
    }
    pins
}

/// The teams a consumer administers; an unknown one is a load error (and is not kept).
fn admin_teams(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    slugs: &BTreeSet<String>,
) -> Vec<String> {
    let mut known = Vec::new();
    for t in &c.def.admin_teams {
        if slugs.contains(t) {
            known.push(t.clone());
        } else {
            files.at(c, &key("admin_teams"), format!("unknown team `{t}`"));
        }
    }
    known
}

/// A consumer's `token_sha256`, each digest held by one consumer only.
fn consumer_token(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
    token_owner: &mut BTreeMap<[u8; 32], Holder>,
) -> Option<[u8; 32]> {
    let def = &c.def;
    match &def.token_sha256 {
        None => None,
        Some(h) => {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(h, &mut d).is_err() {
                files.at(
                    c,
                    &key("token_sha256"),
                    "token_sha256 must be the hex SHA-256 of the token (64 hex digits)".to_owned(),
                );
            } else {
                claim(files, c, token_owner, d, "token_sha256", "token");
            }
            Some(d)
        }
    }
}

/// A consumer's issuer ACL: its CA (a file relative to the policy file, or inline PEM, read
/// now so a decision never does I/O) and its subject pattern.
fn consumer_issuer(
    files: &mut Files,
    c: &Item<Arc<ConsumerDef>>,
) -> (
    Option<std::path::PathBuf>,
    Vec<Vec<u8>>,
    Option<super::SubjectPattern>,
) {
    let def = &c.def;
    let has_issuer = def.issuer_ca.is_some() || def.issuer_ca_pem.is_some();
    if def.issuer_ca.is_some() && def.issuer_ca_pem.is_some() {
        files.at(
            c,
            &key("issuer_ca_pem"),
            "issuer_ca and issuer_ca_pem: one of them".to_owned(),
        );
    }
    if has_issuer != def.subject.is_some() {
        files.at(
            c,
            &key("name"),
            "issuer_ca and subject go together".to_owned(),
        );
    }
    // Relative to the policy file; the CA certificates are read now, so a decision
    // never does I/O.
    let issuer_ca = def.issuer_ca.as_ref().map(|p| {
        let base = files.paths[c.file].parent().unwrap_or(Path::new("."));
        base.join(p)
    });
    let mut issuer_certs = Vec::new();
    if let Some(pem) = &def.issuer_ca_pem {
        match pem_certificates(pem.as_bytes()) {
            Ok(certs) => issuer_certs = certs,
            Err(why) => files.at(c, &key("issuer_ca_pem"), format!("issuer_ca_pem: {why}")),
        }
    }
    if let Some(path) = &issuer_ca {
        match read_certificates(path) {
            Ok(certs) => issuer_certs = certs,
            Err(why) => files.at(
                c,
                &key("issuer_ca"),
                format!("issuer_ca {}: {why}", path.display()),
            ),
        }
    }
    let subject = def.subject.as_ref().and_then(|pattern| {
        super::SubjectPattern::parse(pattern)
            .map_err(|why| files.at(c, &key("subject"), format!("subject {pattern:?}: {why}")))
            .ok()
    });
    (issuer_ca, issuer_certs, subject)
}

/// Credentials: each built from its definition (or taken as the last load built it), then
/// one definition per team and name.
fn validate_credentials(
    files: &mut Files,
    credentials: &[Item<Arc<CredentialDef>>],
    (slugs, sources, context): (&BTreeSet<String>, Option<&KnownSources>, u64),
    policy: &mut Policy,
) -> Vec<Item<usize>> {
    let mut cred_items = Vec::with_capacity(credentials.len());
    for c in credentials {
        let cred = built_credential(files, c, slugs, sources, context);
        cred_items.push(Item {
            def: policy.credentials.len(),
            file: c.file,
            span: c.span.clone(),
            keys: Arc::clone(&c.keys),
        });
        policy.credentials.push(cred);
    }
    let mut cred_names = BTreeSet::new();
    for item in &cred_items {
        let cred = &policy.credentials[item.def];
        if !super::is_slug(&cred.name) {
            files.at(
                item,
                &key("name"),
                format!(
                    "credential name {:?} must match [a-z0-9_-]{{1,64}}",
                    cred.name
                ),
            );
        } else if !cred_names.insert((cred.team.as_str(), cred.name.as_str())) {
            files.at(
                item,
                &key("name"),
                format!(
                    "team `{}` defines credential `{}` twice",
                    cred.team, cred.name
                ),
            );
        }
    }
    cred_items
}

/// Credential `c` built and checked against the teams and sources, with its lines — or
/// taken, lines and all, from the last load that built it under the same `context`.
fn built_credential(
    files: &mut Files,
    c: &Item<Arc<CredentialDef>>,
    slugs: &BTreeSet<String>,
    sources: Option<&KnownSources>,
    context: u64,
) -> Arc<Credential> {
    let mut memo = c
        .def
        .built
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(b) = memo.as_ref().filter(|b| b.context == context) {
        files.list.extend(b.errors.iter().cloned());
        files.warnings.extend(b.warnings.iter().cloned());
        return Arc::clone(&b.credential);
    }
    let (errors, warnings) = (files.list.len(), files.warnings.len());
    let mut cred = credential(files, c, slugs);
    if files.managed[c.file] {
        cred.origin = super::model::Origin::Api;
    }
    if let Some(known) = sources {
        let staged = cred.next.iter().flat_map(|n| &n.values.by_role);
        for (role, r) in cred.values.by_role.iter().chain(staged) {
            match known.source_of(&r.target) {
                Ok(name) if known.names.contains(name) => {}
                Ok(name) => files.at(c, &key(role), format!("unknown source `{name}`")),
                Err(why) => files.at(c, &key(role), why.to_string()),
            }
        }
    }
    let cred = Arc::new(cred);
    *memo = Some(Built {
        context,
        credential: Arc::clone(&cred),
        errors: files.list[errors..].to_vec(),
        warnings: files.warnings[warnings..].to_vec(),
    });
    cred
}

/// Grants: known teams and sources, path patterns, hosts.
fn validate_grants(
    files: &mut Files,
    grants: Vec<Item<Arc<GrantDef>>>,
    slugs: &BTreeSet<String>,
    sources: Option<&KnownSources>,
    policy: &mut Policy,
) {
    for g in grants {
        if !slugs.contains(&g.def.team) {
            files.at(&g, &key("team"), format!("unknown team `{}`", g.def.team));
        }
        if sources.is_some_and(|k| !k.names.contains(&g.def.source)) {
            files.at(
                &g,
                &key("source"),
                format!("unknown source `{}`", g.def.source),
            );
        }
        let store = sources
            .and_then(|k| k.store.as_ref())
            .filter(|(source, _)| *source == g.def.source);
        let mut paths = Vec::new();
        for (i, p) in g.def.paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(pattern) => {
                    if let Some((_, folder)) = store
                        && pattern.may_reach_under(folder)
                    {
                        files.at(
                            &g,
                            &key_index("paths", i),
                            format!(
                                "{p:?} reaches the management store's material (`{}:{folder}`): it is read only through its credentials",
                                g.def.source
                            ),
                        );
                    }
                    paths.push(pattern);
                }
                Err(why) => files.at(&g, &key_index("paths", i), format!("{p:?}: {why}")),
            }
        }
        let allowed_hosts = hosts(files, &g, &g.def.allowed_hosts);
        policy.grants.push(Grant {
            team: g.def.team.clone(),
            source: g.def.source.clone(),
            paths,
            allowed_hosts,
        });
    }
}

/// Issuer ACLs of different teams that one certificate could satisfy: the first in file
/// order would win, so a team could end up holding another's identity.
fn warn_overlapping_acls(files: &mut Files, policy: &Policy, items: &[(Item<()>, String, usize)]) {
    // Issuers compared by public key, as authentication matches them — never by DER.
    let keys: Vec<Vec<Vec<u8>>> = items
        .iter()
        .map(|(_, _, c)| issuer_keys(&policy.consumers[*c].issuer_certs))
        .collect();
    for (i, (item, _, a)) in items.iter().enumerate() {
        for (j, (_, other_team, b)) in items[..i].iter().enumerate() {
            let (ca, cb) = (&policy.consumers[*a], &policy.consumers[*b]);
            let same_ca = keys[i].iter().any(|k| keys[j].contains(k));
            let overlap = match (&ca.subject, &cb.subject) {
                (Some(pa), Some(pb)) => pa.overlaps(pb),
                _ => false,
            };
            if same_ca && overlap {
                let outcome = if ca.origin == cb.origin {
                    "a certificate both match identifies nobody"
                } else {
                    "a certificate both match is the policy file's consumer's"
                };
                files.warn(
                    item,
                    &key("subject"),
                    format!(
                        "issuer ACL overlaps consumer `{}` of team `{other_team}`: {outcome}",
                        cb.name
                    ),
                );
            }
        }
    }
}

/// The public key (SubjectPublicKeyInfo DER) of each CA certificate that parses: how issuers
/// are compared — by key, never by the certificate's DER.
pub(crate) fn issuer_keys(ders: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    ders.iter()
        .filter_map(|d| X509Certificate::from_der(d).ok())
        .map(|(_, c)| c.public_key().raw.to_vec())
        .collect()
}

/// A credential hands out what its references read, with no grant check: one whose
/// references lie outside every grant of its own team lets that team (and whoever the
/// credential is shared with) read what the team itself may not.
fn warn_credentials_outside_grants(
    files: &mut Files,
    policy: &Policy,
    items: &[Item<usize>],
    known: &KnownSources,
) {
    for item in items {
        let cred = &policy.credentials[item.def];
        // The store's own definitions name the team's own material, which only they serve.
        if cred.origin == super::model::Origin::Api {
            continue;
        }
        let staged = cred.next.iter().flat_map(|n| &n.values.by_role);
        for (role, r) in cred.values.by_role.iter().chain(staged) {
            let (Ok(source), Ok(path)) = (known.source_of(&r.target), super::path_of(&r.target))
            else {
                continue;
            };
            if known.issuing.contains(source) {
                continue;
            }
            let granted = policy.grants.iter().any(|g| {
                g.team == cred.team
                    && g.source == source
                    && g.paths.iter().any(|p| p.matches(&path))
            });
            if !granted {
                files.warn(
                    item,
                    &key(role),
                    format!(
                        "`{source}:{path}` is outside every grant of team `{}`: this credential gives its readers a secret the team cannot read itself",
                        cred.team
                    ),
                );
            }
        }
    }
}

/// A credential whose certificate a pki profile issues or signs hands its team's readers a
/// certificate with the profile's names: none of them may be another team's identity — in
/// its `identity_domains` (refused), or a CN another team's issuer ACL matches (warned: the
/// ACL's CA is not known here, only the CN) — or that team's consumer could be impersonated
/// with it (attack review: a nameless CSR on another team's signing credential authenticated
/// as payments' `issuer_ca` + `subject` consumer).
fn check_pki_names_are_the_teams(
    files: &mut Files,
    policy: &Policy,
    items: &[Item<usize>],
    known: &KnownSources,
) {
    if known.pki_names.is_empty() {
        return;
    }
    for item in items {
        let cred = &policy.credentials[item.def];
        let staged = cred.next.iter().flat_map(|n| &n.values.by_role);
        for (role, r) in cred.values.by_role.iter().chain(staged) {
            let (Ok(source), Ok(path)) = (known.source_of(&r.target), super::path_of(&r.target))
            else {
                continue;
            };
            let Some(names) = known.pki_names.get(&(source.to_owned(), path.to_string())) else {
                continue;
            };
            for name in names {
                if let Some(owner) = policy
                    .identity_domain_of(name)
                    .filter(|owner| *owner != cred.team)
                {
                    files.at(
                        item,
                        &key(role),
                        format!(
                            "`{source}:{path}` gives certificates for {name:?}, in the identity_domains of team `{owner}`: team `{}` would hold its identity",
                            cred.team
                        ),
                    );
                }
            }
            let cn = names.first().map(String::as_str);
            for c in &policy.consumers {
                let claims = c.team != cred.team
                    && c.subject
                        .as_ref()
                        .is_some_and(|s| s.matches(&[("2.5.4.3", cn)]));
                if claims {
                    files.warn(
                        item,
                        &key(role),
                        format!(
                            "`{source}:{path}` gives certificates whose CN consumer `{}` of team `{}` is identified by (issuer_ca + subject), if its CA signs them: team `{}` would hold that identity",
                            c.name, c.team, cred.team
                        ),
                    );
                }
            }
        }
    }
}

fn hosts<T>(files: &mut Files, item: &Item<T>, list: &[String]) -> Vec<HostPattern> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) => out.push(p),
            Err(e) => files.at(
                item,
                &key_index("allowed_hosts", i),
                format!("{h:?}: {e} ({})", e.code()),
            ),
        }
    }
    out
}

fn credential(
    files: &mut Files,
    c: &Item<Arc<CredentialDef>>,
    slugs: &BTreeSet<String>,
) -> Credential {
    let def = &c.def;
    if !slugs.contains(&def.team) {
        files.at(c, &key("team"), format!("unknown team `{}`", def.team));
    }
    match def.read_access {
        ReadAccess::SpecificTeams if def.shared_team_slugs.is_empty() => files.at(
            c,
            &key("read_access"),
            "SPECIFIC_TEAMS needs shared_team_slugs".to_owned(),
        ),
        ReadAccess::SpecificTeams => {
            for (i, s) in def.shared_team_slugs.iter().enumerate() {
                if !slugs.contains(s) {
                    files.at(
                        c,
                        &key_index("shared_team_slugs", i),
                        format!("unknown team `{s}`"),
                    );
                }
            }
        }
        _ if !def.shared_team_slugs.is_empty() => files.at(
            c,
            &key("shared_team_slugs"),
            "shared_team_slugs only applies with read_access = \"SPECIFIC_TEAMS\"".to_owned(),
        ),
        _ => {}
    }
    let allowed_hosts = hosts(files, c, &def.allowed_hosts);
    let roles: [(&'static str, &Option<String>); 5] = [
        ("client_certificate", &def.client_certificate),
        ("client_private_key", &def.client_private_key),
        ("root_certificate", &def.root_certificate),
        ("upstream_ca", &def.upstream_ca),
        ("value", &def.value),
    ];
    let by_role = role_values(files, c, def.mode, roles, key);
    let next = def.next.as_ref().and_then(|n| {
        let at = |k: &str| vec![Seg::Key("next".to_owned()), Seg::Key(k.to_owned())];
        let roles: [(&'static str, &Option<String>); 5] = [
            ("client_certificate", &n.client_certificate),
            ("client_private_key", &n.client_private_key),
            ("root_certificate", &n.root_certificate),
            ("upstream_ca", &n.upstream_ca),
            ("value", &n.value),
        ];
        let by_role = role_values(files, c, def.mode, roles, at);
        match super::rfc3339(&n.activate_at).ok_or(()) {
            Ok(activate_at) => Some(super::model::NextValues {
                values: CredentialValues { by_role },
                activate_at,
            }),
            Err(_) => {
                files.at(
                    c,
                    &at("activate_at"),
                    format!("activate_at {:?} is not an RFC 3339 time", n.activate_at),
                );
                None
            }
        }
    });
    Credential {
        name: def.name.clone(),
        mode: def.mode,
        team: def.team.clone(),
        read_access: def.read_access,
        shared_team_slugs: def.shared_team_slugs.clone(),
        allowed_hosts,
        description: def.description.clone(),
        metadata: def.metadata.clone(),
        pem: def.pem,
        values: CredentialValues { by_role },
        origin: super::model::Origin::File,
        next,
    }
}

/// The references of one set of a credential's values (`at` names where each role's key is,
/// for the diagnostics), checked against the mode.
fn role_values(
    files: &mut Files,
    c: &Item<Arc<CredentialDef>>,
    mode: CredentialMode,
    roles: [(&'static str, &Option<String>); 5],
    at: impl Fn(&str) -> Vec<Seg>,
) -> BTreeMap<&'static str, crate::reference::Reference> {
    let (required, allowed): (&[&str], &[&str]) = match mode {
        // `client_private_key` is judged with the sources (`check_private_keys`).
        CredentialMode::Mtls => (
            &["client_certificate"],
            &[
                "client_certificate",
                "client_private_key",
                "root_certificate",
                "upstream_ca",
            ],
        ),
        CredentialMode::Text | CredentialMode::Fields => (&["value"], &["value"]),
    };
    let mut by_role = BTreeMap::new();
    for (role, text) in roles {
        match text {
            None if required.contains(&role) => files.at(
                c,
                &key("mode"),
                format!("mode \"{}\" needs `{role}`", mode.code()),
            ),
            None => {}
            Some(_) if !allowed.contains(&role) => files.at(
                c,
                &at(role),
                format!("`{role}` does not apply to mode \"{}\"", mode.code()),
            ),
            Some(text) => match parse_reference(text) {
                Ok(r) => {
                    let whole = r.is_whole_secret();
                    if whole != (mode == CredentialMode::Fields) {
                        let want = if whole {
                            "a field (`$KEY_…`)"
                        } else {
                            "a whole secret (no `$KEY_`)"
                        };
                        files.at(c, &at(role), format!("this mode needs {want} reference"));
                    }
                    by_role.insert(role, r);
                }
                Err(e) => files.at(
                    c,
                    &at(role),
                    format!("not a reference: {} ({})", e.kind, e.kind.code()),
                ),
            },
        }
    }
    by_role
}

/// The certificates of a CA file (PEM). CA certificates are public: parse errors may be shown.
fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    pem_certificates(&std::fs::read(path).map_err(|e| e.to_string())?)
}

/// The CERTIFICATE blocks of a PEM text, DER (public certificates only: other blocks are
/// skipped, never quoted).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// THREATS row 30: a file rewritten while it is read is refused, not half-loaded.
    #[test]
    fn threat_30_a_file_changed_during_the_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let full = "[[team]]\nslug = \"a\"\n";
        std::fs::write(&path, full).unwrap();
        assert_eq!(read_stable(&path, || ()).unwrap().0, full);
        let changed = read_stable(&path, || {
            std::fs::write(&path, "[[team]]\nslug = \"a\"\n[[team]]\nslug = \"b\"\n").unwrap();
        });
        assert!(
            matches!(changed, Err(PolicyError::Changed { .. })),
            "{changed:?}"
        );
        // The same length, rewritten in place: the modification time tells.
        std::fs::write(&path, full).unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        let same_length = read_stable(&path, || {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_modified(before + std::time::Duration::from_secs(1))
                .unwrap();
        });
        assert!(
            matches!(same_length, Err(PolicyError::Changed { .. })),
            "{same_length:?}"
        );
    }

    /// `[credential.next]`: the staged values are in force from `activate_at` on, the
    /// current ones before; a bad time is a load error at its key.
    #[test]
    fn a_staged_rotation_switches_at_activate_at_and_a_bad_time_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let policy = |at: &str| {
            format!(
                "[[team]]\nslug = \"a\"\n[[credential]]\nname = \"c\"\nteam = \"a\"\nmode = \"text\"\nvalue = \"$SECRET_s:a/v1 $KEY_value\"\n[credential.next]\nactivate_at = \"{at}\"\nvalue = \"$SECRET_s:a/v2 $KEY_value\"\n"
            )
        };
        std::fs::write(dir.path().join("p.toml"), policy("2030-01-01T00:00:00Z")).unwrap();
        let p = load(dir.path()).unwrap();
        let c = &p.credentials[0];
        let at = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let path = |v: &CredentialValues| {
            super::super::path_of(&v.by_role["value"].target)
                .unwrap()
                .to_string()
        };
        let before = at - std::time::Duration::from_secs(1);
        assert_eq!(path(c.values_at(before)), "a/v1");
        assert_eq!(path(c.values_at(at)), "a/v2");
        assert_eq!(
            c.staged(before).map(|(v, t)| (path(v), t)),
            Some(("a/v2".to_owned(), at))
        );
        assert!(c.staged(at).is_none());
        std::fs::write(dir.path().join("p.toml"), policy("next tuesday")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("activate_at"), "{err}");
    }

    /// Issue 48: a reload told which store files changed (a write, a pull's change list)
    /// reads only those — and its policy is the one a load from scratch makes, a refused
    /// file included (set aside with its lines, as the put-back of a write relies on).
    #[test]
    fn a_reload_told_what_changed_loads_what_a_load_from_scratch_loads() {
        let root = tempfile::tempdir().unwrap();
        let (ops, store) = (root.path().join("ops"), root.path().join("store"));
        std::fs::create_dir_all(&ops).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(ops.join("p.toml"), "[[team]]\nslug = \"a\"\n").unwrap();
        let def = |name: &str, v: &str| {
            format!(
                "[[credential]]\nname = \"{name}\"\nteam = \"a\"\nmode = \"text\"\nvalue = \"$SECRET_s:a/{v} $KEY_value\"\n"
            )
        };
        for (n, v) in [("one", "v1"), ("two", "v1"), ("three", "v1")] {
            std::fs::write(store.join(format!("{n}.toml")), def(n, v)).unwrap();
        }
        let sources = KnownSources {
            names: ["s".to_owned()].into(),
            ..KnownSources::default()
        };
        let (dirs, stores) = (vec![ops.clone()], vec![store.clone()]);
        let mut cache = LoadCache::default();
        let load = |cache: &mut LoadCache, changed: Option<&[PathBuf]>| {
            load_checked_dirs_cached(&dirs, &stores, &sources, cache, changed).unwrap()
        };
        let summary = |p: &Policy| {
            let mut c: Vec<String> = p
                .credentials
                .iter()
                .map(|c| {
                    let path = super::super::path_of(&c.values.by_role["value"].target).unwrap();
                    format!("{} {path}", c.name)
                })
                .collect();
            c.sort();
            let q: Vec<String> = p.quarantined.iter().map(|d| d.to_string()).collect();
            (c, q)
        };
        load(&mut cache, None);
        // Rewritten (renamed into place, as the store does), made, removed, and refused.
        let tmp = root.path().join("tmp.toml");
        std::fs::write(&tmp, def("one", "v2")).unwrap();
        std::fs::rename(&tmp, store.join("one.toml")).unwrap();
        std::fs::write(store.join("four.toml"), def("four", "v1")).unwrap();
        std::fs::remove_file(store.join("two.toml")).unwrap();
        std::fs::write(store.join("five.toml"), "[[credential]]\nname = \"five\"\nteam = \"nobody\"\nmode = \"text\"\nvalue = \"$SECRET_s:a/v $KEY_value\"\n").unwrap();
        let changed: Vec<PathBuf> = ["one", "two", "four", "five"]
            .iter()
            .map(|n| store.join(format!("{n}.toml")))
            .collect();
        let told = load(&mut cache, Some(&changed));
        let scratch = load(&mut LoadCache::default(), None);
        assert_eq!(summary(&told), summary(&scratch));
        assert_eq!(
            summary(&told).0,
            ["four a/v1", "one a/v2", "three a/v1"],
            "{:?}",
            summary(&told)
        );
        assert_eq!(told.quarantined.len(), 1, "{:?}", told.quarantined);
    }
}
