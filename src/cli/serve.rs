//! `keybroker serve [--dev]`: the server, and the development mode's defaults.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::{App, Options};
use crate::config::Config;
use crate::identity::TokenDigest;

use super::{Failure, assembly, load_config};

/// `examples/dev/keybroker.toml` from the working directory, or from the source checkout
/// this binary was built in (so `cargo run -- serve --dev` works from any folder in it).
pub fn dev_config_path() -> Result<PathBuf, Failure> {
    let relative = Path::new("examples/dev/keybroker.toml");
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    [relative.to_path_buf(), built_in]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::Usage(
                "--dev needs examples/dev/keybroker.toml: run it from the keybroker checkout"
                    .to_owned(),
            )
        })
}

/// `serve --dev`'s configuration: examples/dev/, plus a `vault` source (mount `secret`) when
/// `BAO_ADDR` or `VAULT_ADDR` is set, with the environment's token or `~/.vault-token` — what
/// the vault and bao CLIs would use.
pub fn dev_config(path: &Path) -> Result<Config, Failure> {
    let env = crate::source::VaultEnv::from_process();
    let Some(addr) = env.addr else {
        return load_config(path);
    };
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    text.push_str("\n[[source]]\nname = \"vault\"\nkind = \"vault\"\nmount = \"secret\"\n");
    if env.token.is_none() {
        let file = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".vault-token"));
        match file.filter(|f| f.is_file()) {
            Some(f) => text.push_str(&format!(
                "auth = {{ method = \"token\", token_file = {:?} }}\n",
                f.display().to_string()
            )),
            None => {
                return Err(Failure::Usage(format!(
                    "serve --dev with a Vault at {addr} needs BAO_TOKEN / VAULT_TOKEN or ~/.vault-token"
                )));
            }
        }
    }
    let config = Config::parse(&text, path)
        .map_err(|e| Failure::Usage(format!("invalid configuration:\n{e}")))?;
    tracing::info!(%addr, "serve --dev: added the source `vault` (mount secret) from the environment");
    Ok(config)
}

pub async fn serve(
    config: Option<PathBuf>,
    dev: bool,
    listen: Option<SocketAddr>,
    ready_file: Option<PathBuf>,
) -> Result<(), Failure> {
    crate::app::process::harden();
    let (path, built_in_dev) = match (config, dev) {
        (Some(p), _) => (p, false),
        (None, true) => (dev_config_path()?, true),
        // Like `resolve` and `check`: keybroker.toml of the working directory.
        (None, false) if Path::new("keybroker.toml").is_file() => {
            (PathBuf::from("keybroker.toml"), false)
        }
        (None, false) => {
            return Err(Failure::Usage(
                "serve needs --config FILE (or KEYBROKER_CONFIG, or a keybroker.toml here), or --dev"
                    .to_owned(),
            ));
        }
    };
    let config = if built_in_dev {
        dev_config(&path)?
    } else {
        load_config(&path)?
    };
    let default_dev = SocketAddr::from(([127, 0, 0, 1], 8080));
    let addr = listen.unwrap_or(if dev {
        default_dev
    } else {
        config.server.listen
    });
    if config.audit.is_none() && !dev {
        tracing::warn!("no [audit] section: decisions are not recorded in an audit trail");
    }
    crate::app::process::warn_if_files_run_out(&config);
    let options = Options {
        listen: addr,
        dev,
        open_audit: true,
    };
    let App {
        broker: _,
        state,
        tls,
        vault_api,
        egress,
        ccp_api,
        operations,
    } = App::build(&config, &options).map_err(|e| assembly(&config, &e))?;
    // Installed before anything is announced (banner, READY=1), so no signal is lost.
    let signalled = crate::app::process::shutdown_signal();
    let listeners =
        crate::app::Listeners::bind(addr, config.server.ops_listen, [vault_api, egress, ccp_api])
            .await
            .map_err(|e| Failure::Usage(e.to_string()))?;
    let bound = listeners.main_addr();
    let mut state = state;
    if dev {
        let (token, dev_token) = TokenDigest::generate();
        state = state.with_dev_token(dev_token);
        let scheme = if tls.is_tls() { "https" } else { "http" };
        print_dev_banner(scheme, bound, &token, &path.with_file_name("document.json"));
    }
    tracing::info!(
        %bound,
        tls = tls.is_tls(),
        client_certificates = match (&config.server.client_ca, config.server.client_auth) {
            (None, _) => "off",
            (Some(_), crate::config::ClientAuth::Optional) => "optional",
            (Some(_), crate::config::ClientAuth::Required) => "required",
        },
        config = %path.display(),
        "keybroker serving"
    );
    let state = Arc::new(state);
    crate::app::operations::start(operations, &state).await;
    if let Some(file) = &ready_file {
        crate::app::process::write_ready_file(file, &listeners.addresses())
            .map_err(|e| Failure::Usage(format!("--ready-file {}: {e}", file.display())))?;
    }
    // Every listener is bound and every signal handler installed: tell systemd
    // (`Type=notify`; nothing happens without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    let stop = async move {
        signalled.await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    };
    listeners
        .serve(tls, state, &(&config.limits).into(), stop)
        .await;
    tracing::info!("keybroker stopped");
    Ok(())
}

/// The dev token is meant to be seen: it is new on every start and only valid on loopback.
pub fn print_dev_banner(scheme: &str, addr: SocketAddr, token: &str, example: &Path) {
    let mut out = std::io::stdout().lock();
    // A closed stdout is no reason to stop serving.
    let _ = writeln!(
        out,
        "keybroker dev server listening on {scheme}://{addr}\n\
         dev bearer token (new on every start): {token}\n\
         try:\n  \
         curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n    \
         --data \"{{\\\"document\\\": $(cat {example})}}\" {scheme}://{addr}/v1/resolve\n\
         stop with Ctrl-C",
        example = example.display()
    );
    let _ = out.flush();
}
