//! `keybroker agent` (docs/AGENT.md): runs next to a gateway, authenticates to a keybroker
//! server as a consumer and keeps key material as files — verified before they are written,
//! swapped atomically, the gateway reloaded, the previous files put back if the reload fails.
//! Changes arrive by blocking queries (ETag + `wait`).
//!
//! **A pass** starts when any output's or template's blocking query answers with a change:
//! every other one is then asked at once (its own blocking query is dropped), everything that
//! changed is verified and written, and each *distinct* reload command of what changed runs
//! once — three outputs rotating together reload nginx once. `reload_min_interval` holds a
//! command back until that long after its last run; what changes meanwhile is written at once
//! and joins the held reload. `ops_listen` (`ops.rs`) shows health, readiness and metrics.
//!
//! **Boundary:** a client of the HTTP API; it uses `pem` (verification), `secret` and the
//! source module's zeroizing field decoder, never the broker.

mod client;
pub(crate) mod config;
mod files;
mod generate;
mod identity;
mod ops;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

pub(crate) use client::FetchError;
use client::{Client, Fetched, Material};
pub use config::AgentConfig;

/// How one pass over an output or template ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Written (or already current).
    Done,
    /// Refused by the server, the material did not verify, or the reload failed.
    Failed,
    /// The server could not be reached.
    Unreachable,
    /// The agent's configuration is wrong (an untrusted server certificate).
    Misconfigured,
}

impl Pass {
    /// The `--once` exit code of a set of passes: 2 if the configuration is wrong, else 1 if
    /// any failed, else 75 if any could not reach the server, else 0 — so an init container
    /// retries only what a retry can fix.
    pub(crate) fn exit_code(passes: &[Pass]) -> u8 {
        if passes.contains(&Pass::Misconfigured) {
            2
        } else if passes.contains(&Pass::Failed) {
            1
        } else if passes.contains(&Pass::Unreachable) {
            75
        } else {
            0
        }
    }
}

/// Why a pass failed: a closed vocabulary (the `cause` label of
/// `keybroker_agent_failures_total`, `last_failure` in `/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The server could not be reached, or answered 5xx.
    Unreachable,
    /// The server refused (4xx, a credential it verified and rejected, our client
    /// certificate refused in the handshake).
    Refused,
    /// The agent's configuration is wrong (`ca_cert` does not trust the server).
    Misconfigured,
    /// The material did not verify here (key and leaf, chain order, expiry, not a CA).
    InvalidMaterial,
    /// A file could not be read or written (the template's source, the keystore password,
    /// the output folder).
    Io,
    /// The reload command failed or outlived `reload_timeout`.
    Reload,
}

impl Cause {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Refused => "refused",
            Self::Misconfigured => "misconfigured",
            Self::InvalidMaterial => "invalid_material",
            Self::Io => "io",
            Self::Reload => "reload",
        }
    }

    fn pass(self) -> Pass {
        match self {
            Self::Unreachable => Pass::Unreachable,
            Self::Misconfigured => Pass::Misconfigured,
            _ => Pass::Failed,
        }
    }
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("ops_listen {addr}: {error}")]
    OpsListen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// An output or a template.
#[derive(Clone)]
enum Item {
    Output(Arc<config::Output>),
    Template(Arc<config::Template>),
}

impl Item {
    fn reload(&self) -> (&[String], Duration) {
        match self {
            Self::Output(o) => (&o.reload, o.reload_timeout),
            Self::Template(t) => (&t.reload, t.reload_timeout),
        }
    }
}

/// What a fetch brought.
enum Got {
    Unchanged,
    /// An output whose agent makes its key: its files are kept (their certificate's
    /// validity), not yet due for a new key.
    Kept(Option<(i64, i64)>),
    Material(Option<String>, Material),
    Document(Option<String>, SecretString),
}

/// One item's state between passes.
#[derive(Default)]
struct Watch {
    /// The ETag of the answer whose files are in place.
    etag: Option<String>,
    /// Failed passes in a row (the back-off before its next query).
    failures: u32,
    /// How its last pass ended.
    last: Option<Pass>,
}

/// What to do if the reload of a written change fails.
enum Undo {
    /// Point `..data` back at `previous` (the generation the gateway last loaded).
    Files {
        dir: PathBuf,
        previous: Option<String>,
        new: String,
    },
    /// Write `previous` back into `path`.
    Template {
        path: PathBuf,
        previous: Option<Zeroizing<Vec<u8>>>,
        mode: u32,
    },
}

impl Undo {
    /// Whether there is something to put back (else the new files stay, whatever happens).
    fn has_previous(&self) -> bool {
        match self {
            Self::Files { previous, .. } => previous.is_some(),
            Self::Template { previous, .. } => previous.is_some(),
        }
    }
}

/// A change written whose reload has not run yet.
struct Written {
    item: usize,
    etag: Option<String>,
    undo: Undo,
    /// The certificate validity `ops_listen` showed before (shown again on a rollback).
    before: Option<(i64, i64)>,
}

/// The agent: its items, their state, the reloads waiting to run.
struct Agent {
    items: Vec<Item>,
    watches: Vec<Watch>,
    /// Written changes by reload command (argv), waiting for it to run.
    pending: BTreeMap<Vec<String>, Vec<Written>>,
    /// When each reload command last ran.
    last_reload: HashMap<Vec<String>, Instant>,
    min_interval: Duration,
    ops: Arc<ops::State>,
}

/// Writes every output and template once (`--once`), then runs each distinct reload command
/// of what was written once.
pub(crate) async fn once(cfg: &AgentConfig) -> Result<Vec<Pass>, FetchError> {
    identity::recover(&cfg.server);
    let client = Arc::new(Client::new(&cfg.server)?);
    let mut agent = Agent::new(cfg, Arc::new(ops::State::new(cfg)));
    let all: Vec<usize> = (0..agent.items.len()).collect();
    agent.sweep(&client, &all).await;
    agent.reload_due(true).await;
    Ok(agent
        .watches
        .iter()
        .map(|w| w.last.unwrap_or(Pass::Done))
        .collect())
}

/// Keeps every output and template current until `stop` completes; then runs the reloads
/// `reload_min_interval` holds back (their files are written already) and returns.
pub(crate) async fn run(
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let mut stop = std::pin::pin!(stop);
    // Before anything reads the identity (the metric, the client).
    identity::recover(&cfg.server);
    let state = Arc::new(ops::State::new(&cfg));
    serve_ops(&cfg, &state).await?;
    let client = Arc::new(Client::new(&cfg.server)?);
    // Dropped (the renewal stopped) when `run` returns.
    let mut renewing = tokio::task::JoinSet::new();
    if cfg.server.renew && cfg.server.client_cert.is_some() {
        renewing.spawn(identity::keep(
            Arc::clone(&client),
            cfg.server.clone(),
            Arc::clone(&state),
        ));
    }
    let wait = cfg.server.wait;
    let mut agent = Agent::new(&cfg, state);
    let n = agent.items.len();
    let all: Vec<usize> = (0..n).collect();
    // A sweep waits for the server (up to the client's timeout) and is stopped by `stop`
    // too; it applies nothing until every answer is in, so stopping it writes nothing.
    let stopped = tokio::select! {
        () = agent.sweep(&client, &all) => false,
        () = &mut stop => true,
    };
    if stopped {
        agent.reload_due(true).await;
        return Ok(());
    }
    if n == 0 {
        // Nothing to keep (ops_listen may still answer): wait to be stopped.
        stop.await;
        return Ok(());
    }
    let mut watching = tokio::task::JoinSet::new();
    // The blocking query in flight for each item; a result from any other task (one aborted
    // by a sweep that finished first) is stale and dropped.
    let mut in_flight: Vec<Option<tokio::task::AbortHandle>> = (0..n).map(|_| None).collect();
    loop {
        agent.reload_due(false).await;
        agent.watch_idle(&client, wait, &mut in_flight, &mut watching);
        let deadline = agent.next_reload();
        let joined = tokio::select! {
            j = watching.join_next_with_id() => j,
            () = sleep_until(deadline) => continue,
            () = &mut stop => {
                // Files written but not yet reloaded would otherwise wait for the next
                // change after a restart (they are current then): reload them now.
                watching.abort_all();
                agent.reload_due(true).await;
                return Ok(());
            }
        };
        let (id, got) = match joined {
            None => continue,
            Some(Ok((id, got))) => (id, Some(got)),
            // Aborted, or a task that panicked: watch it again.
            Some(Err(e)) => (e.id(), None),
        };
        let Some(i) = in_flight
            .iter()
            .position(|h| h.as_ref().is_some_and(|h| h.id() == id))
        else {
            continue;
        };
        in_flight[i] = None;
        let Some(got) = got else { continue };
        if matches!(got, Ok(Got::Material(..) | Got::Document(..))) {
            // A change: ask every other item now rather than when its own wait ends, so what
            // changed together is written in one pass and reloads its gateway once.
            let others: Vec<usize> = in_flight
                .iter_mut()
                .enumerate()
                .filter_map(|(j, h)| h.take().map(|h| (j, h)))
                .map(|(j, h)| {
                    h.abort();
                    j
                })
                .collect();
            agent.apply(i, got);
            let stopped = tokio::select! {
                () = agent.sweep(&client, &others) => false,
                () = &mut stop => true,
            };
            if stopped {
                agent.reload_due(true).await;
                return Ok(());
            }
        } else {
            agent.apply(i, got);
        }
    }
}

/// `ops_listen`, when set: bound now (a taken address fails the start), served in the
/// background.
async fn serve_ops(cfg: &AgentConfig, state: &Arc<ops::State>) -> Result<(), RunError> {
    if let Some(addr) = cfg.ops_listen {
        let listener = ops::bind(addr)
            .await
            .map_err(|error| RunError::OpsListen { addr, error })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(ops_listen = %bound, "serving /healthz, /readyz and /metrics");
        tokio::spawn(ops::serve(listener, Arc::clone(state)));
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The wait before an item's next query after `failures` failed passes in a row: none after
/// a success, else 1 s doubling to 60 s, jittered.
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    crate::backoff::Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.25,
    }
    .delay(failures.min(7))
}

/// Asks the server for `item` (a blocking query when `wait` and an ETag are given).
async fn fetch(
    client: &Client,
    item: &Item,
    etag: Option<&str>,
    wait: Option<Duration>,
) -> Result<Got, Cause> {
    match item {
        Item::Output(o) if o.key == config::KeySource::Generate => {
            generate::fetch(client, o, wait).await
        }
        Item::Output(o) => {
            match client
                .material(&o.credential, &o.host, o.next, etag, wait)
                .await
            {
                Ok(Fetched::Unchanged) => Ok(Got::Unchanged),
                Ok(Fetched::Changed { etag, value }) => Ok(Got::Material(etag, value)),
                Err(e) => Err(report_fetch(&o.credential, &e)),
            }
        }
        Item::Template(t) => {
            let text = match tokio::fs::read_to_string(&t.source).await {
                Ok(s) => Zeroizing::new(s),
                Err(e) => {
                    tracing::error!(template = %t.source.display(), error = %e, "cannot read the template");
                    return Err(Cause::Io);
                }
            };
            match client.expand(&text, &t.host, etag, wait).await {
                Ok(Fetched::Unchanged) => Ok(Got::Unchanged),
                Ok(Fetched::Changed { etag, value }) => Ok(Got::Document(etag, value)),
                Err(e) => Err(report_fetch(&t.source.display().to_string(), &e)),
            }
        }
    }
}

impl Agent {
    fn new(cfg: &AgentConfig, ops: Arc<ops::State>) -> Self {
        let items: Vec<Item> = cfg
            .output
            .iter()
            .map(|o| Item::Output(Arc::new(o.clone())))
            .chain(
                cfg.template
                    .iter()
                    .map(|t| Item::Template(Arc::new(t.clone()))),
            )
            .collect();
        Self {
            watches: items.iter().map(|_| Watch::default()).collect(),
            items,
            pending: BTreeMap::new(),
            last_reload: HashMap::new(),
            min_interval: cfg.reload_min_interval,
            ops,
        }
    }

    /// Asks the server for each of `which` at once (no wait) and applies what it answers.
    async fn sweep(&mut self, client: &Arc<Client>, which: &[usize]) {
        let mut asked = tokio::task::JoinSet::new();
        for &i in which {
            let (client, item) = (Arc::clone(client), self.items[i].clone());
            let etag = self.watches[i].etag.clone();
            asked.spawn(async move { (i, fetch(&client, &item, etag.as_deref(), None).await) });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asked.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        for (i, got) in answers {
            self.apply(i, got);
        }
    }

    fn done(&mut self, i: usize) {
        self.watches[i].failures = 0;
        self.watches[i].last = Some(Pass::Done);
        self.ops.pass_ok(i);
    }

    fn failed(&mut self, i: usize, cause: Cause) {
        self.watches[i].failures = self.watches[i].failures.saturating_add(1);
        self.watches[i].last = Some(cause.pass());
        self.ops.pass_failed(i, cause);
    }

    /// Verifies and writes what a fetch brought; a change waits in `pending` for its reload.
    fn apply(&mut self, i: usize, got: Result<Got, Cause>) {
        let written = match got {
            Err(cause) => return self.failed(i, cause),
            Ok(Got::Unchanged) => {
                // Still waiting for its reload: the pass ends with it.
                if !self.is_pending(i) {
                    self.done(i);
                }
                return;
            }
            Ok(Got::Kept(validity)) => {
                self.ops.written(i, validity);
                if !self.is_pending(i) {
                    self.done(i);
                }
                return;
            }
            Ok(Got::Material(etag, material)) => {
                let Item::Output(o) = &self.items[i] else {
                    return;
                };
                match write_output(o, material) {
                    Ok(Wrote::Current(validity)) => {
                        self.ops.written(i, validity);
                        self.watches[i].etag = etag;
                        if !self.is_pending(i) {
                            self.done(i);
                        }
                        return;
                    }
                    Ok(Wrote::New { undo, validity }) => {
                        let before = self.ops.validity(i);
                        self.ops.written(i, validity);
                        Written {
                            item: i,
                            etag,
                            undo,
                            before,
                        }
                    }
                    Err(cause) => return self.failed(i, cause),
                }
            }
            Ok(Got::Document(etag, document)) => {
                let Item::Template(t) = &self.items[i] else {
                    return;
                };
                match write_template(t, &document) {
                    Ok(None) => {
                        self.ops.written(i, None);
                        self.watches[i].etag = etag;
                        if !self.is_pending(i) {
                            self.done(i);
                        }
                        return;
                    }
                    Ok(Some(undo)) => {
                        self.ops.written(i, None);
                        Written {
                            item: i,
                            etag,
                            undo,
                            before: None,
                        }
                    }
                    Err(cause) => return self.failed(i, cause),
                }
            }
        };
        // Asked again from the new files on: the next query waits for the next change.
        self.watches[i].etag.clone_from(&written.etag);
        self.queue(written);
    }

    fn is_pending(&self, i: usize) -> bool {
        self.pending.values().flatten().any(|w| w.item == i)
    }

    /// Adds a written change to its reload command's batch. An item already waiting keeps
    /// what it would be rolled back to (the files the gateway last loaded); the generation in
    /// between is dropped.
    fn queue(&mut self, mut w: Written) {
        let (argv, _) = self.items[w.item].reload();
        if argv.is_empty() {
            // Nothing to reload (Envoy's watched_directory, a template read on each use).
            self.settle(w);
            return;
        }
        let batch = self.pending.entry(argv.to_vec()).or_default();
        if let Some(held) = batch.iter_mut().find(|h| h.item == w.item) {
            // A template keeps its first previous content as it is.
            if let (
                Undo::Files {
                    dir,
                    previous,
                    new: held_new,
                },
                Undo::Files { new, .. },
            ) = (&mut held.undo, &mut w.undo)
            {
                *held_new = std::mem::take(new);
                let mut keep = vec![held_new.as_str()];
                keep.extend(previous.as_deref());
                files::prune(dir, &keep);
            }
            held.etag = w.etag;
        } else {
            batch.push(w);
        }
        self.ops.pending(self.pending.len());
    }

    /// A written change whose reload succeeded (or that needs none): the previous files go.
    fn settle(&mut self, w: Written) {
        if let Undo::Files { dir, new, .. } = &w.undo {
            files::prune(dir, &[new.as_str()]);
        }
        if let Item::Output(o) = &self.items[w.item] {
            tracing::info!(credential = %o.credential, dir = %o.dir.display(), "new material in place");
        }
        self.watches[w.item].etag = w.etag;
        self.done(w.item);
    }

    /// A blocking query (after its item's backoff) for every item with none in flight.
    fn watch_idle(
        &self,
        client: &Arc<Client>,
        wait: Duration,
        in_flight: &mut [Option<tokio::task::AbortHandle>],
        watching: &mut tokio::task::JoinSet<Result<Got, Cause>>,
    ) {
        for (i, slot) in in_flight.iter_mut().enumerate() {
            if slot.is_none() {
                let delay = backoff(self.watches[i].failures);
                let (client, item) = (Arc::clone(client), self.items[i].clone());
                let etag = self.watches[i].etag.clone();
                *slot = Some(watching.spawn(async move {
                    tokio::time::sleep(delay).await;
                    fetch(&client, &item, etag.as_deref(), Some(wait)).await
                }));
            }
        }
    }

    /// When the next held reload may run.
    fn next_reload(&self) -> Option<Instant> {
        let now = Instant::now();
        self.pending
            .keys()
            .map(|argv| self.allowed_at(argv).unwrap_or(now))
            .min()
    }

    /// When `argv` may run again; `None`: now (it never ran).
    fn allowed_at(&self, argv: &[String]) -> Option<Instant> {
        self.last_reload.get(argv).map(|t| *t + self.min_interval)
    }

    /// Runs every reload command with written changes whose `reload_min_interval` has passed
    /// (all of them when `force`), each once.
    async fn reload_due(&mut self, force: bool) {
        let now = Instant::now();
        let due: Vec<Vec<String>> = self
            .pending
            .keys()
            .filter(|argv| force || self.allowed_at(argv).is_none_or(|at| at <= now))
            .cloned()
            .collect();
        for argv in due {
            if let Some(batch) = self.pending.remove(&argv) {
                self.reload_batch(&argv, batch).await;
            }
        }
        self.ops.pending(self.pending.len());
    }

    async fn run_reload(&mut self, argv: &[String], timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        self.last_reload.insert(argv.to_vec(), started);
        let result = reload(argv, timeout).await;
        self.ops.reloaded(result.is_ok(), started.elapsed());
        result
    }

    /// Runs `argv` once for every change in `batch`. If it fails, each change with previous
    /// files puts them back and `argv` runs once more; a change with none keeps its files
    /// (the gateway is not running yet — the init container case — and reads them when it
    /// starts).
    async fn reload_batch(&mut self, argv: &[String], batch: Vec<Written>) {
        let timeout = batch
            .iter()
            .map(|w| self.items[w.item].reload().1)
            .max()
            .unwrap_or(Duration::from_secs(30));
        let why = match self.run_reload(argv, timeout).await {
            Ok(()) => {
                for w in batch {
                    self.settle(w);
                }
                return;
            }
            Err(why) => why,
        };
        let mut put_back = false;
        for w in batch {
            let what = self.describe(w.item);
            if !w.undo.has_previous() {
                tracing::warn!(%what, %why, "reload failed with no previous files; the new files stay for the gateway to read when it starts");
                self.settle(w);
                continue;
            }
            tracing::error!(%what, %why, "reload failed; the previous files are put back");
            put_back = true;
            match w.undo {
                Undo::Files { dir, previous, .. } => {
                    if let Some(prev) = previous {
                        if let Err(e) = files::point_data_at(&dir, &prev) {
                            tracing::error!(error = %e, "cannot put the previous files back");
                        }
                        files::prune(&dir, &[prev.as_str()]);
                    }
                }
                Undo::Template {
                    path,
                    previous,
                    mode,
                } => {
                    if let Some(prev) = previous
                        && let Err(e) = files::write_file(&path, &prev, mode)
                    {
                        tracing::error!(error = %e, "cannot put the previous template back");
                    }
                }
            }
            // Fetched again (after the back-off): a fixed gateway then gets the change.
            self.watches[w.item].etag = None;
            if w.before.is_some() {
                self.ops.written(w.item, w.before);
            }
            self.failed(w.item, Cause::Reload);
        }
        if put_back {
            let _ = self.run_reload(argv, timeout).await;
        }
    }

    fn describe(&self, i: usize) -> String {
        match &self.items[i] {
            Item::Output(o) => o.credential.clone(),
            Item::Template(t) => t.destination.display().to_string(),
        }
    }
}

/// What writing an output did.
enum Wrote {
    /// The files in place hold this material already.
    Current(Option<(i64, i64)>),
    /// A new generation is in place.
    New {
        undo: Undo,
        validity: Option<(i64, i64)>,
    },
}

/// Verifies `material`, stages its next, and swaps a new generation in when it differs.
fn write_output(o: &config::Output, mut material: Material) -> Result<Wrote, Cause> {
    let password = match &o.pkcs12_password_file {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(Zeroizing::new(t.lines().next().unwrap_or("").to_owned())),
            Err(e) => {
                tracing::error!(file = %p.display(), error = %e, "cannot read the keystore password");
                return Err(Cause::Io);
            }
        },
    };
    let prepared = files::prepare(
        &material,
        &o.files,
        &o.credential,
        password.as_deref().map(String::as_str),
    );
    let contents = match prepared {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "material refused; the files stay as they are");
            return Err(Cause::InvalidMaterial);
        }
    };
    let validity = material
        .certificate
        .as_ref()
        .and_then(|c| files::leaf_validity(c.0.expose_secret()));
    let next = material.next.take();
    drop(material);
    let mode = config::parse_mode(&o.key_mode).unwrap_or(0o600);
    if let Some(next) = next {
        stage_next(o, &next, password.as_deref().map(String::as_str), mode)?;
    }
    // Only the next changed (staged at a period's start): no new generation, no reload.
    if files::is_current(&o.dir, &contents) {
        return Ok(Wrote::Current(validity));
    }
    let previous = match files::swap_in(&o.dir, &contents, mode) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "cannot write the files");
            return Err(Cause::Io);
        }
    };
    drop(contents);
    let new = files::current(&o.dir).unwrap_or_default();
    Ok(Wrote::New {
        undo: Undo::Files {
            dir: o.dir.clone(),
            previous,
            new,
        },
        validity,
    })
}

/// Writes a template's expansion over its destination (atomically), keeping what was there;
/// `None` when the destination holds it already (no write, no reload).
fn write_template(t: &config::Template, document: &SecretString) -> Result<Option<Undo>, Cause> {
    let mode = config::parse_mode(&t.mode).unwrap_or(0o600);
    let previous = files::read_previous(&t.destination);
    let text = document.expose_secret().as_bytes();
    if previous.as_deref().is_some_and(|p| p.as_slice() == text) {
        return Ok(None);
    }
    match files::write_file(&t.destination, text, mode) {
        Ok(()) => Ok(Some(Undo::Template {
            path: t.destination.clone(),
            previous,
            mode,
        })),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the template's destination");
            Err(Cause::Io)
        }
    }
}

fn report_fetch(what: &str, e: &FetchError) -> Cause {
    match e {
        FetchError::Unreachable(_) => {
            tracing::warn!(%what, error = %e, "keybroker unreachable; the files stay as they are");
            Cause::Unreachable
        }
        FetchError::Misconfigured(_) | FetchError::Setup(_) => {
            tracing::error!(%what, error = %e, "the agent's configuration is wrong; the files stay as they are");
            Cause::Misconfigured
        }
        FetchError::Refused { .. } | FetchError::CertificateRefused(_) => {
            tracing::error!(%what, error = %e, "refused");
            Cause::Refused
        }
    }
}

/// Writes the next material into `dir/next/` (verified first, swapped whole like the
/// current files, with `not_before` beside them). No reload: the gateway pre-loads it on its
/// own schedule. False when it was refused or could not be written.
fn stage_next(
    o: &config::Output,
    next: &client::NextMaterial,
    password: Option<&str>,
    mode: u32,
) -> Result<(), Cause> {
    let dir = o.dir.join("next");
    let mut contents = match files::prepare(&next.values, &o.files, &o.credential, password) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "next material refused; next/ stays as it is");
            return Err(Cause::InvalidMaterial);
        }
    };
    if files::is_current(&dir, &contents) {
        return Ok(());
    }
    let stamp = format!("{}\n", next.not_before);
    contents.push((
        "not_before".to_owned(),
        zeroize::Zeroizing::new(stamp.into_bytes()),
    ));
    match files::swap_in(&dir, &contents, mode) {
        Ok(_) => {
            if let Some(new) = files::current(&dir) {
                files::prune(&dir, &[new.as_str()]);
            }
            tracing::info!(credential = %o.credential, not_before = %next.not_before, "next material staged");
            Ok(())
        }
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "cannot write next/");
            Err(Cause::Io)
        }
    }
}

/// Runs `argv` (no shell) within `timeout`; `Err` with why when it fails or times out.
async fn reload(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{program} did not finish within {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!("{program} exited with {}", out.status)),
    }
}

/// Now, in Unix seconds: the clock certificates' `not_before`/`not_after` are read against.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
