//! The process around a running server: hardening at start, the open-files check, signals
//! (SIGHUP reload, SIGINT/SIGTERM stop) and the ready file. `main.rs` calls these; it only
//! parses arguments and prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::AppState;
use crate::config::Config;

/// Every connection is a file descriptor: when `[limits] max_connections` (counted across
/// every listener of the process) plus some for sources, the audit file and the policies
/// exceeds what the process may open, the limit that bites first is the kernel's — accept
/// errors instead of keybroker's clean refusals. Said at start, with the numbers.
pub(crate) fn warn_if_files_run_out(config: &Config) {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(open_files) = files.current else {
        return;
    };
    let needed = config.limits.max_connections.saturating_add(64);
    if needed as u64 > open_files {
        tracing::warn!(
            max_connections = config.limits.max_connections,
            open_files,
            "[limits] max_connections exceeds the process's open-files limit (RLIMIT_NOFILE): raise LimitNOFILE / ulimit -n, or lower max_connections"
        );
    }
}

/// No core dumps (they would hold every cached secret) and no ptrace attach by other
/// processes of the same user. Failure is logged, not fatal: containers may forbid it.
pub(crate) fn harden() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    // Every client connection is a file descriptor: use all the kernel allows this process.
    let files = rustix::process::getrlimit(Resource::Nofile);
    if files.maximum != files.current {
        let raised = Rlimit {
            current: files.maximum,
            maximum: files.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
}

/// SIGHUP reopens the audit file and reloads the policy and every listener's TLS files; what
/// does not load leaves the previous version in force.
pub(crate) fn spawn_reload_on_sighup(state: Arc<AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered before returning, so a SIGHUP right after `READY=1` reloads, not kills.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler; reload with POST /v1/admin/reload");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // After logrotate's rename: the audit trail goes to the path again.
                state.broker.reopen_audit();
                // The outcomes are logged (and the policy's counted) where they happen.
                let policy = state.broker.reload_policy();
                let _ = state.reload_tls();
                if policy.is_ok() {
                    state.broker.sweep_expiry().await;
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Installs the stop handlers now and returns the wait for them: a signal that arrives after
/// this returns (e.g. right after `READY=1`) stops the server cleanly instead of killing it with
/// the default action.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // `tokio::signal::ctrl_c()` registers only when first polled; `signal()` registers now.
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            // A handler that cannot be installed waits forever; the other still stops the server.
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested; finishing open requests");
    }
}
/// Where each listener listens, as one JSON object, written beside `file` and renamed onto
/// it so a reader never sees half of it.
pub(crate) fn write_ready_file(
    file: &Path,
    addresses: &[(&str, SocketAddr)],
) -> std::io::Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = addresses
        .iter()
        .map(|(name, addr)| ((*name).to_owned(), addr.to_string().into()))
        .collect();
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::Value::Object(map).to_string())
        .and_then(|()| std::fs::rename(&tmp, file))
}
