//! The `keybroker` command: argument parsing and dispatch. The commands are the library's
//! (`keybroker::cli`); this file alone turns their end into exit codes (docs/DESIGN.md §13):
//! 0 ok, 1 rejected or unresolved, 2 usage or configuration error.

// The one place that writes to the terminal on purpose.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// Freed memory is wiped (see the `zeroize-heap` feature in Cargo.toml): a guarantee that no
/// freed buffer holds a secret, instead of hoping it was overwritten (THREATS row 29).
#[cfg(feature = "zeroize-heap")]
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use keybroker::Format;
use keybroker::cli::{
    Failure, agent::agent, check::check, health, logging::LogFormat, logging::init_logging,
    pem::PemCommand, pem::pem_command, policy::PolicyCommand, policy::policy_command,
    resolve::resolve, runtime, serve::serve,
};

#[derive(Parser)]
#[command(
    name = "keybroker",
    version,
    about = "A secrets broker for gateways and automation platforms"
)]
struct Cli {
    /// Log lines on stderr: `text`, `json` (one object per line), or `auto` (text with colour
    /// on a terminal, JSON otherwise).
    #[arg(long, global = true, env = "KEYBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// The configuration file (keybroker.toml).
        #[arg(long, env = "KEYBROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Development mode: examples/dev/keybroker.toml, plain HTTP on 127.0.0.1:8080,
        /// a fresh bearer token printed at start.
        #[arg(long)]
        dev: bool,
        /// Listen address (overrides [server] listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Once every listener is bound, write where each listens to this file as JSON
        /// (`{"listen": "127.0.0.1:41234", "ops_listen": …, "vault_api": …, "egress": …}`),
        /// by rename: for `listen = "127.0.0.1:0"` and supervisors that wait for a port.
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
    },
    /// Expand the references of a document and print it.
    Resolve {
        /// The configuration file (keybroker.toml).
        #[arg(long, env = "KEYBROKER_CONFIG", default_value = "keybroker.toml")]
        config: PathBuf,
        /// Apply this consumer's policy, exactly as the server would.
        #[arg(long = "as", value_name = "CONSUMER")]
        as_consumer: Option<String>,
        /// Where the values will be used (checked against allowed_hosts).
        #[arg(long)]
        host: Option<String>,
        /// Document format; by default from the file extension (.json, .yaml/.yml, else text).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// The document; `-` or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Repair flattened PEM or describe PEM material.
    Pem {
        #[command(subcommand)]
        command: PemCommand,
    },
    /// Explain the access decision for a consumer, as JSON.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Validate the configuration and list every error with file:line:column.
    Check {
        /// The configuration file (keybroker.toml).
        #[arg(long, env = "KEYBROKER_CONFIG", default_value = "keybroker.toml")]
        config: PathBuf,
        /// Also log in to every source, probe it, and verify every credential as a whole.
        #[arg(long)]
        online: bool,
    },
    /// Keep key material as files for a gateway (docs/AGENT.md).
    Agent {
        /// The agent's configuration file (docs/AGENT.md).
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Write everything once and exit: 0 all written, 1 refused or failed, 75 the server
        /// was unreachable (try again later).
        #[arg(long)]
        once: bool,
    },
    /// Ask a running keybroker whether it is ready, for container health checks (no curl
    /// needed in the image): exit 0 when the URL answers 2xx, 1 otherwise.
    Health {
        /// What to ask. Without it: `/readyz` on the configuration's `ops_listen`, else on its
        /// main listener when that is plain HTTP (a TLS listener may ask for client
        /// certificates: set `ops_listen`, or give `--url` and `--ca-cert`).
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose listeners to ask (when no `--url` is given).
        #[arg(long, env = "KEYBROKER_CONFIG", default_value = "keybroker.toml")]
        config: PathBuf,
        /// A PEM CA to verify an https URL with (replaces the system roots).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "5s")]
        timeout: humantime::Duration,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Version => {
            println!(
                "keybroker {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("KEYBROKER_COMMIT")
            );
            Ok(())
        }
        Command::Check { config, online } => check(&config, online),
        Command::Pem { command } => pem_command(command),
        Command::Policy { command } => policy_command(command),
        Command::Resolve {
            config,
            as_consumer,
            host,
            format,
            file,
        } => runtime().and_then(|rt| {
            rt.block_on(resolve(
                &config,
                as_consumer,
                host.as_deref(),
                format,
                file.as_deref(),
            ))
        }),
        Command::Serve {
            config,
            dev,
            listen,
            ready_file,
        } => runtime().and_then(|rt| rt.block_on(serve(config, dev, listen, ready_file))),
        Command::Agent { config, once } => {
            runtime().and_then(|rt| rt.block_on(agent(&config, once)))
        }
        Command::Health {
            url,
            config,
            ca_cert,
            timeout,
        } => health::health_url(url, &config).and_then(|url| {
            runtime().and_then(|rt| rt.block_on(health::health(&url, ca_cert.as_deref(), *timeout)))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected) => ExitCode::from(1),
        Err(Failure::Code(code)) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            eprintln!("keybroker: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_flag_has_a_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "keybroker", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
