//! The `keybroker` command: argument parsing and glue. The library does the work; this file
//! alone turns errors into messages and exit codes (docs/DESIGN.md §13):
//! 0 ok, 1 rejected or unresolved, 2 usage or configuration error.

// The one place that writes to the terminal on purpose.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// Freed memory is wiped (see the `zeroize-heap` feature in Cargo.toml): a guarantee that no
/// freed buffer holds a secret, instead of hoping it was overwritten (THREATS row 29).
#[cfg(feature = "zeroize-heap")]
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use keybroker::app::{App, Options};
use keybroker::broker::{Broker, Caller, Document, ResolveError};
use keybroker::config::Config;
use keybroker::identity::TokenDigest;
use keybroker::policy::Destination;
use keybroker::reference::{Format, Layout};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
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

#[derive(Subcommand)]
enum PemCommand {
    /// Print the repaired PEM on stdout, byte-exact; the repairs applied (or the reason for
    /// rejection) as JSON on stderr.
    Repair {
        /// Accept only intact PEM (a missing final newline is tolerated).
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        checks: PemArgs,
    },
    /// JSON facts about each block (types, fingerprints, validity, repairs); never key bytes.
    Inspect {
        #[command(flatten)]
        checks: PemArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for one request as JSON; exit 0 when allowed, 1 when denied.
    Explain {
        /// Read the policies (and source names) from this configuration.
        #[arg(long, env = "KEYBROKER_CONFIG", conflicts_with = "policies")]
        config: Option<PathBuf>,
        /// Read the policies from this folder.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The consumer (its `name` in the policy) the request is decided for.
        #[arg(long)]
        consumer: String,
        /// A named credential the consumer asks for. With neither this nor `--reference`: the
        /// egress proxy's choice of credential for `--host` when the caller names none.
        #[arg(long, conflicts_with = "reference")]
        credential: Option<String>,
        /// A reference, e.g. `$SECRET_vault:payments/db $KEY_password`.
        #[arg(long)]
        reference: Option<String>,
        /// The destination the values would be used for: host, host:port or URL.
        #[arg(long, required_unless_present = "manage")]
        host: Option<String>,
        /// Instead: whether the consumer may manage this team's credentials and consumers
        /// through the management API.
        #[arg(long, conflicts_with_all = ["credential", "reference", "host"])]
        manage: Option<String>,
    },
}

#[derive(clap::Args)]
struct PemArgs {
    /// The label of a bare base64 body to wrap (e.g. "PRIVATE KEY"); off by default.
    #[arg(long, value_name = "LABEL")]
    armour: Option<String>,
    /// Accept a value that is the base64 encoding of a whole PEM text.
    #[arg(long)]
    base64: bool,
    /// Reject certificates outside their validity window.
    #[arg(long)]
    reject_expired: bool,
    /// Reject a CA certificate where the first certificate should be a leaf.
    #[arg(long)]
    expect_leaf: bool,
    /// The PEM value; `-` or nothing for standard input.
    file: Option<PathBuf>,
}

/// How a command ended, mapped to an exit code in one place.
enum Failure {
    /// 1: the request was understood and refused or could not be satisfied.
    Rejected,
    /// 2: usage, configuration or environment error.
    Usage(String),
    /// Another code (the agent's 75: try again later).
    Code(u8),
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
        } => health_url(url, &config).and_then(|url| {
            runtime().and_then(|rt| rt.block_on(health(&url, ca_cert.as_deref(), *timeout)))
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

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let unknown = unknown_log_word(&spec);
    let filter = match unknown {
        _ if spec.trim().is_empty() => tracing_subscriber::EnvFilter::new("info"),
        Some(_) => tracing_subscriber::EnvFilter::new("info"),
        None => tracing_subscriber::EnvFilter::try_new(&spec)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        // Colour only on a terminal: a log file gets no escape codes.
        builder.with_ansi(terminal).init();
    }
    if let Some(word) = unknown {
        tracing::warn!(
            word,
            "RUST_LOG names neither a level nor a module of keybroker; logging at info"
        );
    }
}

/// A bare `RUST_LOG` word that is neither a level nor a crate keybroker logs from (`verbose`,
/// `INFO:`): taken as a target it would silence every log line.
fn unknown_log_word(spec: &str) -> Option<String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    const TARGETS: [&str; 9] = [
        "keybroker",
        "hyper",
        "hyper_util",
        "reqwest",
        "rustls",
        "tokio",
        "axum",
        "tower",
        "h2",
    ];
    spec.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains('=') && !d.contains('['))
        .find(|d| {
            let root = d.split("::").next().unwrap_or(d);
            !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) && !TARGETS.contains(&root)
        })
        .map(str::to_owned)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the async runtime: {e}")))
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Usage(format!("invalid configuration:\n{e}")))
}

fn policy_command(command: PolicyCommand) -> Result<(), Failure> {
    use keybroker::policy::Subject;
    use keybroker::reference::parse_reference;
    let PolicyCommand::Explain {
        config,
        policies,
        consumer,
        credential,
        reference,
        host,
        manage,
    } = command;
    let config = config.map(|c| load_config(&c)).transpose()?;
    let dir = match (&policies, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(cfg)) => cfg.policies.clone().ok_or_else(|| {
            Failure::Usage("the configuration names no policies folder".to_owned())
        })?,
        (None, None) => return Err(Failure::Usage("give --config or --policies".to_owned())),
    };
    // With a configuration, the management store's definitions too (for a vault store, its
    // local mirror): what the API made is decided like what a file defines.
    let policy = match &config {
        Some(cfg) => load_with_store(cfg, &dir),
        None => keybroker::policy::load(&dir),
    }
    .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(team) = manage {
        let who = policy.consumers.iter().find(|c| c.name == consumer);
        let why = who.and_then(|c| c.manages(&team));
        let reason = match (who, why) {
            (None, _) => "unknown_consumer",
            (Some(_), None) => "not_an_admin_of_the_team",
            (Some(_), Some(why)) => why,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "allowed": why.is_some(), "consumer": consumer, "manage": team, "reason": reason,
            }))
            .unwrap_or_default()
        );
        return if why.is_some() {
            Ok(())
        } else {
            Err(Failure::Rejected)
        };
    }
    let host = host.unwrap_or_default();
    let dest =
        Destination::parse(&host).map_err(|e| Failure::Usage(format!("--host {host:?}: {e}")))?;
    let (source, path) = match &reference {
        None => (String::new(), None),
        Some(text) => {
            let r = parse_reference(text)
                .map_err(|e| Failure::Usage(format!("--reference: {}", e.kind)))?;
            // The broker's routing: without a configuration only named sources route.
            let known = config.as_ref().map(known_sources).unwrap_or_default();
            let source = known
                .source_of(&r.target)
                .map(str::to_owned)
                .map_err(|e| Failure::Usage(format!("--reference: {e} (or give --config)")))?;
            let path = keybroker::policy::path_of(&r.target)
                .map_err(|e| Failure::Usage(format!("--reference: {e}")))?;
            (source, Some(path))
        }
    };
    let subject = match (&credential, &path) {
        (Some(name), _) => Subject::Credential(name),
        (None, Some(path)) => Subject::Reference {
            source: &source,
            path,
        },
        // The egress proxy's question: which credential, then the decision on it.
        (None, None) => {
            let chosen = match policy.credential_for_destination(&consumer, &dest) {
                Ok(c) => c,
                Err(reason) => {
                    println!(
                        "{}",
                        serde_json::json!({"allowed": false, "reason": reason, "credential": null})
                    );
                    return Err(Failure::Rejected);
                }
            };
            let (decision, _) = policy.decide_credential(&consumer, &chosen.name, Some(&dest));
            let mut out = serde_json::to_value(&decision).unwrap_or_default();
            out["credential"] = serde_json::Value::from(chosen.name.as_str());
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            return if decision.allowed {
                Ok(())
            } else {
                Err(Failure::Rejected)
            };
        }
    };
    let decision = policy.decide(&consumer, subject, Some(&dest));
    println!(
        "{}",
        serde_json::to_string_pretty(&decision).unwrap_or_default()
    );
    if decision.allowed {
        Ok(())
    } else {
        Err(Failure::Rejected)
    }
}

/// The configured sources, for checking the policies against them.
/// The policy folder `dir` with the management store's definitions (for a vault store, its
/// local mirror), as `serve` loads them: what the API made is decided and checked like what a
/// file defines.
fn load_with_store(
    config: &keybroker::config::Config,
    dir: &Path,
) -> Result<keybroker::policy::Policy, keybroker::policy::PolicyError> {
    let store: Vec<PathBuf> = config
        .store
        .iter()
        .flat_map(|s| keybroker::store::Kind::ALL.map(|k| s.path.join(k.dir())))
        .filter(|d| d.is_dir())
        .collect();
    keybroker::policy::load_checked_dirs(&[dir.to_owned()], &store, &known_sources(config))
}

fn known_sources(config: &keybroker::config::Config) -> keybroker::policy::KnownSources {
    // A file store's material is served by its own file source, `store`, which `serve` adds.
    let file_store = config
        .store
        .as_ref()
        .is_some_and(|st| st.kind == keybroker::config::StoreKind::File)
        .then(|| keybroker::config::STORE_SOURCE.to_owned());
    keybroker::policy::KnownSources {
        names: config
            .sources
            .iter()
            .map(|s| s.name().to_owned())
            .chain(file_store)
            .collect(),
        default: config.default_source().map(str::to_owned),
        ccp: config.ccp_source().map(str::to_owned),
        store: config.store.as_ref().map(|st| match (st.kind, &st.source) {
            (keybroker::config::StoreKind::Vault, Some(source)) => {
                (source.clone(), st.prefix.trim_matches('/').to_owned())
            }
            _ => (keybroker::config::STORE_SOURCE.to_owned(), String::new()),
        }),
        issuing: config
            .sources
            .iter()
            .filter(|s| s.kind() == keybroker::config::SourceKind::Pki)
            .map(|s| s.name().to_owned())
            .collect(),
    }
}

fn check(path: &Path, online: bool) -> Result<(), Failure> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(Failure::Usage(why)) => return Err(Failure::Usage(check_unparsed(path, why))),
        Err(other) => return Err(other),
    };
    // Every stage runs, and every problem of every stage is listed in one run.
    let mut problems: Vec<String> = Vec::new();
    // What `serve` would refuse, `check` refuses: sources, TLS files, listener, audit folder.
    if let Err(e) = App::build(&config, &Options::check(&config)) {
        problems.push(match assembly(&config, &e) {
            Failure::Usage(why) => why,
            _ => e.to_string(),
        });
    }
    if let Some(dir) = &config.policies {
        match load_with_store(&config, dir) {
            Ok(policy) => {
                for w in &policy.warnings {
                    eprintln!("warning: {w}");
                }
                for q in &policy.quarantined {
                    eprintln!("warning: store entry set aside: {q}");
                }
                println!(
                    "{}: OK ({} team(s), {} consumer(s), {} credential(s), {} grant(s))",
                    dir.display(),
                    policy.teams.len(),
                    policy.consumers.len(),
                    policy.credentials.len(),
                    policy.grants.len()
                );
            }
            Err(e) => problems.push(format!("invalid policies:\n{e}")),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::Usage(problems.join("\n")));
    }
    if online {
        check_online(&config)?;
    }
    let names: Vec<&str> = config.sources.iter().map(|s| s.name()).collect();
    println!(
        "{}: OK ({} source(s): {}; default source: {})",
        path.display(),
        names.len(),
        names.join(", "),
        config.default_source().unwrap_or("none")
    );
    Ok(())
}

/// `check --online`: every source logged in to and probed, every credential read and verified
/// as a whole — one line per problem, exit 1 when there is any.
/// `check` on a configuration that does not parse: its problems, then whatever can still be
/// checked — the policy folder it names, if that much reads — and what could not be, so one run
/// lists every problem it can.
fn check_unparsed(path: &Path, config_problems: String) -> String {
    let mut out = vec![config_problems];
    let policies = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("policies")?.as_str().map(PathBuf::from))
        .map(|p| path.parent().unwrap_or(Path::new(".")).join(p));
    match policies {
        Some(dir) => {
            match keybroker::policy::load(&dir) {
                Ok(_) => out.push(format!("{}: the policy folder loads", dir.display())),
                Err(e) => out.push(format!("invalid policies:\n{e}")),
            }
            out.push(
                "sources, TLS files and the store are not checked: the configuration does not parse"
                    .to_owned(),
            );
        }
        None => out.push(
            "the policy folder, sources and store are not checked: the configuration does not say where they are"
                .to_owned(),
        ),
    }
    out.join("\n")
}

fn check_online(config: &Config) -> Result<(), Failure> {
    let broker = Broker::from_config(config).map_err(|e| Failure::Usage(e.to_string()))?;
    let lines = runtime()?.block_on(broker.check_online());
    let mut failed = false;
    for (ok, line) in &lines {
        failed |= !ok;
        if *ok {
            println!("ok: {line}");
        } else {
            eprintln!("problem: {line}");
        }
    }
    if failed {
        Err(Failure::Rejected)
    } else {
        Ok(())
    }
}

async fn resolve(
    config: &Path,
    as_consumer: Option<String>,
    host: Option<&str>,
    format: Option<Format>,
    file: Option<&Path>,
) -> Result<(), Failure> {
    let config = load_config(config)?;
    let broker = Broker::from_config(&config).map_err(|e| Failure::Usage(e.to_string()))?;
    let caller = match as_consumer {
        None => Caller::Operator,
        Some(name) => match keybroker::broker::ConsumerRef::of(broker.policy(), &name) {
            Some(c) => Caller::Consumer(c),
            None => {
                return Err(Failure::Usage(format!(
                    "--as: no consumer `{name}` in the policies"
                )));
            }
        },
    };
    let host = match host {
        None => None,
        Some(h) => {
            Some(Destination::parse(h).map_err(|e| Failure::Usage(format!("--host {h:?}: {e}")))?)
        }
    };
    let (text, format) = read_document(file, format)?;
    let layout = Layout::Pretty;
    let result = broker
        .resolve(
            &caller,
            Document::Text { format, text },
            layout,
            host.as_ref(),
        )
        .await;
    match result {
        Ok(resolution) => {
            let mut stdout = std::io::stdout().lock();
            let bytes = resolution.document.as_bytes();
            let newline = format == Format::Json && !bytes.ends_with(b"\n");
            stdout
                .write_all(bytes)
                .and_then(|()| {
                    if newline {
                        stdout.write_all(b"\n")
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::Usage(format!("cannot write the document: {e}")))
        }
        Err(e) => {
            eprintln!("{}", error_json(&e));
            // The class decides the code (keybroker::exit, the CLI's row of the one table).
            let class = e.failure();
            if let Some(hint) = keybroker::exit::hint(class) {
                eprintln!("keybroker: {hint}");
            }
            Err(Failure::Code(keybroker::exit::code(class)))
        }
    }
}

/// The errors of a failed resolution as one JSON object on stderr. Never a value.
fn error_json(e: &ResolveError) -> String {
    let mut error = serde_json::json!({ "code": e.code(), "message": e.to_string() });
    if let ResolveError::Unresolved { errors, omitted } = e {
        error["details"] = serde_json::json!(errors);
        error["omitted"] = serde_json::json!(omitted);
    }
    serde_json::json!({ "error": error }).to_string()
}

fn pem_command(command: PemCommand) -> Result<(), Failure> {
    use keybroker::pem::{self, Checks, Mode, Options};
    let (strict, args, inspect) = match command {
        PemCommand::Repair { strict, checks } => (strict, checks, false),
        PemCommand::Inspect { checks } => (false, checks, true),
    };
    let armour_for = match args.armour.as_deref() {
        None => None,
        Some(label) => Some(
            pem::known_label(label)
                .ok_or_else(|| Failure::Usage(format!("--armour: unknown label {label:?}")))?,
        ),
    };
    let options = Options {
        mode: if strict { Mode::Strict } else { Mode::Repair },
        checks: Checks {
            reject_expired: args.reject_expired,
            expect_leaf: args.expect_leaf,
            ..Checks::default()
        },
        armour_for,
        base64_wrapped: args.base64,
    };
    let input = read_secret_input(args.file.as_deref())?;
    match pem::repair(&input, &options) {
        Ok(repaired) => {
            let write = |out: &mut dyn Write, bytes: &[u8]| {
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| Failure::Usage(format!("cannot write: {e}")))
            };
            if inspect {
                let facts =
                    serde_json::json!({"repairs": repaired.repairs, "blocks": repaired.blocks});
                write(
                    &mut std::io::stdout().lock(),
                    format!("{facts:#}\n").as_bytes(),
                )
            } else {
                eprintln!("{}", serde_json::json!({"repairs": repaired.repairs}));
                write(&mut std::io::stdout().lock(), repaired.pem.as_bytes())
            }
        }
        Err(e) => {
            eprintln!(
                "{}",
                serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}})
            );
            Err(Failure::Rejected)
        }
    }
}

/// Reads key material into a zeroizing buffer.
fn read_secret_input(file: Option<&Path>) -> Result<zeroize::Zeroizing<String>, Failure> {
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(16 * 1024));
    let result = match file.filter(|f| *f != Path::new("-")) {
        None => std::io::stdin().read_to_end(&mut bytes),
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
    };
    result.map_err(|e| Failure::Usage(format!("cannot read the input: {e}")))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Failure::Usage("the input is not UTF-8".to_owned()))?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

fn read_document(file: Option<&Path>, format: Option<Format>) -> Result<(String, Format), Failure> {
    let mut text = String::new();
    let from_stdin = file.is_none_or(|f| f == Path::new("-"));
    let read = if from_stdin {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(file.unwrap_or(Path::new("-")))
            .and_then(|mut f| f.read_to_string(&mut text))
            .map(|_| ())
    };
    read.map_err(|e| Failure::Usage(format!("cannot read the document: {e}")))?;
    let format =
        format.unwrap_or_else(
            || match file.and_then(Path::extension).and_then(|e| e.to_str()) {
                Some("json") => Format::Json,
                Some("yaml" | "yml") => Format::Yaml,
                _ => Format::Text,
            },
        );
    Ok((text, format))
}

/// `examples/dev/keybroker.toml` from the working directory, or from the source checkout
/// this binary was built in (so `cargo run -- serve --dev` works from any folder in it).
fn dev_config_path() -> Result<PathBuf, Failure> {
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
fn dev_config(path: &Path) -> Result<Config, Failure> {
    let env = keybroker::source::VaultEnv::from_process();
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

async fn serve(
    config: Option<PathBuf>,
    dev: bool,
    listen: Option<SocketAddr>,
    ready_file: Option<PathBuf>,
) -> Result<(), Failure> {
    keybroker::app::process::harden();
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
    keybroker::app::process::warn_if_files_run_out(&config);
    let options = Options {
        listen: addr,
        dev,
        open_audit: true,
    };
    let App {
        broker,
        state,
        tls,
        vault_api,
        egress,
    } = App::build(&config, &options).map_err(|e| assembly(&config, &e))?;
    // Installed before anything is announced (banner, READY=1), so no signal is lost.
    let signalled = keybroker::app::process::shutdown_signal();
    let listeners = keybroker::app::Listeners::bind(
        addr,
        config.server.ops_listen,
        [("[vault_api]", vault_api), ("[egress]", egress)],
    )
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
    // Readiness: the trail proves writable, each source answers once; then expiry sweeps.
    broker.audit_start().await;
    broker.spawn_startup_checks();
    broker.spawn_self_checks();
    broker.spawn_expiry_sweep();
    if let Some(store) = &config.store {
        if store.kind == keybroker::config::StoreKind::Vault {
            state
                .manager
                .spawn_store_poll(store.poll.0, store.stale_after.0);
        }
        state.manager.spawn_orphan_sweep(store.orphan_grace.0);
    }
    tracing::info!(
        %bound,
        tls = tls.is_tls(),
        client_certificates = match (&config.server.client_ca, config.server.client_auth) {
            (None, _) => "off",
            (Some(_), keybroker::config::ClientAuth::Optional) => "optional",
            (Some(_), keybroker::config::ClientAuth::Required) => "required",
        },
        config = %path.display(),
        "keybroker serving"
    );
    let state = Arc::new(state);
    keybroker::app::process::spawn_reload_on_sighup(Arc::clone(&state));
    if let Some(file) = &ready_file {
        keybroker::app::process::write_ready_file(file, &listeners.addresses())
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

/// The URL `keybroker health` asks: the one given, else the configuration's readiness probe
/// on a listener that needs no client certificate.
fn health_url(url: Option<String>, config: &Path) -> Result<String, Failure> {
    if let Some(url) = url {
        return Ok(url);
    }
    let config = load_config(config)?;
    // A wildcard address is asked on loopback.
    let local = |addr: SocketAddr| -> SocketAddr {
        match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        }
    };
    match (config.server.ops_listen, &config.server.tls_cert) {
        (Some(ops), _) => Ok(format!("http://{}/readyz", local(ops))),
        (None, None) => Ok(format!("http://{}/readyz", local(config.server.listen))),
        (None, Some(_)) => Err(Failure::Usage(
            "the main listener is TLS (it may ask for client certificates): set [server] ops_listen for health checks, or give --url and --ca-cert".to_owned(),
        )),
    }
}

/// `keybroker health`: one GET; the status line goes to stdout for the container log.
async fn health(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<(), Failure> {
    let client = keybroker::source::http_client(timeout, ca, None)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    match client.get(url).send().await {
        Ok(answer) if answer.status().is_success() => {
            println!("{url}: {}", answer.status());
            Ok(())
        }
        Ok(answer) => {
            println!("{url}: {}", answer.status());
            Err(Failure::Rejected)
        }
        Err(e) => {
            println!("{url}: {}", keybroker::source::http_causes(&e));
            Err(Failure::Rejected)
        }
    }
}

async fn agent(path: &Path, once: bool) -> Result<(), Failure> {
    let cfg =
        keybroker::agent::AgentConfig::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    if once {
        let passes = keybroker::agent::once(&cfg)
            .await
            .map_err(|e| Failure::Usage(e.to_string()))?;
        return match keybroker::agent::Pass::exit_code(&passes) {
            0 => Ok(()),
            1 => Err(Failure::Rejected),
            // The configuration: fixed by a person, not by retrying (the cause is logged).
            2 => Err(Failure::Code(2)),
            _ => Err(Failure::Code(keybroker::exit::TEMPFAIL)),
        };
    }
    tokio::select! {
        r = keybroker::agent::run(cfg) => r.map_err(|e| Failure::Usage(e.to_string())),
        () = keybroker::app::process::shutdown_signal() => Ok(()),
    }
}

/// An assembly error, at the setting it is about.
fn assembly(config: &Config, e: &keybroker::app::AppError) -> Failure {
    match e.diagnostic(config) {
        Some(d) => Failure::Usage(d.to_string()),
        None => Failure::Usage(e.to_string()),
    }
}

/// The dev token is meant to be seen: it is new on every start and only valid on loopback.
fn print_dev_banner(scheme: &str, addr: SocketAddr, token: &str, example: &Path) {
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

    #[test]
    fn a_log_word_that_would_silence_everything_is_named() {
        use super::unknown_log_word as w;
        for fine in [
            "",
            "info",
            "DEBUG",
            "keybroker=debug",
            "warn,keybroker::api=trace",
            "hyper",
        ] {
            assert_eq!(w(fine), None, "{fine}");
        }
        assert_eq!(w("verbose").as_deref(), Some("verbose"));
        assert_eq!(w("info,loud").as_deref(), Some("loud"));
    }
}
