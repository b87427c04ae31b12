//! `keybroker agent` (docs/AGENT.md): runs next to a gateway, authenticates to a keybroker
//! server as a consumer and keeps key material as files — verified before they are written,
//! swapped atomically, the gateway reloaded, the previous files put back if the reload fails.
//! Changes arrive by blocking queries (ETag + `wait`).
//!
//! **Boundary:** a client of the HTTP API; it uses `pem` (verification), `secret` and the
//! source module's zeroizing field decoder, never the broker.

mod client;
pub mod config;
mod files;

use std::time::Duration;

use secrecy::ExposeSecret;

pub use client::FetchError;
use client::{Client, Fetched};
pub use config::{AgentConfig, AgentConfigError};

/// How one pass over an output or template ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
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
    pub fn exit_code(passes: &[Pass]) -> u8 {
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

/// One output's state between passes.
#[derive(Default)]
struct Watch {
    etag: Option<String>,
}

/// Writes every output and template once (`--once`).
pub async fn once(cfg: &AgentConfig) -> Result<Vec<Pass>, FetchError> {
    let client = Client::new(&cfg.server)?;
    let mut passes = Vec::new();
    for o in &cfg.output {
        passes.push(output_pass(&client, o, &mut Watch::default(), None).await);
    }
    for t in &cfg.template {
        passes.push(template_pass(&client, t, &mut Watch::default(), None).await);
    }
    Ok(passes)
}

/// Keeps every output and template current until the process is stopped.
pub async fn run(cfg: AgentConfig) -> Result<(), FetchError> {
    let client = std::sync::Arc::new(Client::new(&cfg.server)?);
    let wait = cfg.server.wait;
    let mut tasks = tokio::task::JoinSet::new();
    for o in cfg.output {
        let client = std::sync::Arc::clone(&client);
        tasks.spawn(async move {
            let mut w = Watch::default();
            let mut backoff = Backoff::default();
            loop {
                let pass = output_pass(&client, &o, &mut w, Some(wait)).await;
                backoff.after(pass).await;
            }
        });
    }
    for t in cfg.template {
        let client = std::sync::Arc::clone(&client);
        tasks.spawn(async move {
            let mut w = Watch::default();
            let mut backoff = Backoff::default();
            loop {
                let pass = template_pass(&client, &t, &mut w, Some(wait)).await;
                backoff.after(pass).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Jittered back-off after failures (1 s doubling to 60 s); none after a success.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    async fn after(&mut self, pass: Pass) {
        if pass == Pass::Done {
            self.0 = 0;
            return;
        }
        self.0 = (self.0 + 1).min(7);
        let backoff = crate::backoff::Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.25,
        };
        tokio::time::sleep(backoff.delay(self.0)).await;
    }
}

async fn output_pass(
    client: &Client,
    o: &config::Output,
    w: &mut Watch,
    wait: Option<Duration>,
) -> Pass {
    let fetched = client
        .material(&o.credential, &o.host, o.next, w.etag.as_deref(), wait)
        .await;
    let (etag, mut material) = match fetched {
        Ok(Fetched::Unchanged) => return Pass::Done,
        Ok(Fetched::Changed { etag, value }) => (etag, value),
        Err(e) => return report_fetch(&o.credential, &e),
    };
    let password = match &o.pkcs12_password_file {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(zeroize::Zeroizing::new(
                t.lines().next().unwrap_or("").to_owned(),
            )),
            Err(e) => {
                tracing::error!(file = %p.display(), error = %e, "cannot read the keystore password");
                return Pass::Failed;
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
            return Pass::Failed;
        }
    };
    let next = material.next.take();
    drop(material);
    let mode = config::parse_mode(&o.key_mode).unwrap_or(0o600);
    if let Some(next) = next
        && !stage_next(o, &next, password.as_deref().map(String::as_str), mode)
    {
        return Pass::Failed;
    }
    // Only the next changed (staged at a period's start): no new generation, no reload.
    if files::is_current(&o.dir, &contents) {
        w.etag = etag;
        return Pass::Done;
    }
    let previous = match files::swap_in(&o.dir, &contents, mode) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "cannot write the files");
            return Pass::Failed;
        }
    };
    drop(contents);
    let new = files::current(&o.dir).unwrap_or_default();
    match reload(&o.reload, o.reload_timeout).await {
        Ok(()) => {
            files::prune(&o.dir, &new);
            tracing::info!(credential = %o.credential, dir = %o.dir.display(), "new material in place");
            w.etag = etag;
            Pass::Done
        }
        // The first files (nothing to put back): the gateway is not running yet — the init
        // container case — and will read them when it starts. Keep them; say so.
        Err(why) if previous.is_none() => {
            tracing::warn!(credential = %o.credential, %why, "reload failed with no previous files; the new files stay for the gateway to read when it starts");
            files::prune(&o.dir, &new);
            w.etag = etag;
            Pass::Done
        }
        Err(why) => {
            tracing::error!(credential = %o.credential, %why, "reload failed; the previous files are put back");
            if let Some(prev) = previous {
                if let Err(e) = files::point_data_at(&o.dir, &prev) {
                    tracing::error!(error = %e, "cannot put the previous files back");
                }
                let _ = reload(&o.reload, o.reload_timeout).await;
                files::prune(&o.dir, &prev);
            }
            Pass::Failed
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
) -> bool {
    let dir = o.dir.join("next");
    let mut contents = match files::prepare(&next.values, &o.files, &o.credential, password) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "next material refused; next/ stays as it is");
            return false;
        }
    };
    if files::is_current(&dir, &contents) {
        return true;
    }
    let stamp = format!("{}\n", next.not_before);
    contents.push((
        "not_before".to_owned(),
        zeroize::Zeroizing::new(stamp.into_bytes()),
    ));
    match files::swap_in(&dir, &contents, mode) {
        Ok(_) => {
            if let Some(new) = files::current(&dir) {
                files::prune(&dir, &new);
            }
            tracing::info!(credential = %o.credential, not_before = %next.not_before, "next material staged");
            true
        }
        Err(e) => {
            tracing::error!(credential = %o.credential, error = %e, "cannot write next/");
            false
        }
    }
}

async fn template_pass(
    client: &Client,
    t: &config::Template,
    w: &mut Watch,
    wait: Option<Duration>,
) -> Pass {
    let text = match std::fs::read_to_string(&t.source) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(template = %t.source.display(), error = %e, "cannot read the template");
            return Pass::Failed;
        }
    };
    match client.expand(&text, &t.host, w.etag.as_deref(), wait).await {
        Ok(Fetched::Unchanged) => Pass::Done,
        Ok(Fetched::Changed { etag, value }) => {
            let mode = config::parse_mode(&t.mode).unwrap_or(0o600);
            match files::write_file(&t.destination, value.expose_secret(), mode) {
                Ok(()) => {
                    w.etag = etag;
                    Pass::Done
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the template's destination");
                    Pass::Failed
                }
            }
        }
        Err(e) => report_fetch(&t.source.display().to_string(), &e),
    }
}

fn report_fetch(what: &str, e: &FetchError) -> Pass {
    match e {
        FetchError::Unreachable(_) => {
            tracing::warn!(%what, error = %e, "keybroker unreachable; the files stay as they are");
            Pass::Unreachable
        }
        FetchError::Misconfigured(_) => {
            tracing::error!(%what, error = %e, "the agent's configuration is wrong; the files stay as they are");
            Pass::Misconfigured
        }
        _ => {
            tracing::error!(%what, error = %e, "refused");
            Pass::Failed
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
