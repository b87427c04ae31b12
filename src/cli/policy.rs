//! `keybroker policy explain`: a decision printed as JSON, from the same policy `serve`
//! loads (the store's definitions included).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::policy::Destination;

use super::{Failure, load_config};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
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

pub fn policy_command(command: PolicyCommand) -> Result<(), Failure> {
    use crate::policy::Subject;
    use crate::reference::parse_reference;
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
        None => crate::policy::load(&dir),
    }
    .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(team) = manage {
        return explain_manage(&policy, &consumer, &team);
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
            let known = config
                .as_ref()
                .map(crate::policy::KnownSources::of)
                .unwrap_or_default();
            let source = known
                .source_of(&r.target)
                .map(str::to_owned)
                .map_err(|e| Failure::Usage(format!("--reference: {e} (or give --config)")))?;
            let path = crate::policy::path_of(&r.target)
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
        (None, None) => return explain_destination(&policy, &consumer, &dest),
    };
    let decision = policy.decide(&consumer, subject, Some(&dest));
    println!(
        "{}",
        serde_json::to_string_pretty(&decision).unwrap_or_default()
    );
    allowed(decision.allowed)
}

/// The exit of an explanation: 0 allowed, `Rejected` otherwise.
fn allowed(yes: bool) -> Result<(), Failure> {
    if yes { Ok(()) } else { Err(Failure::Rejected) }
}

/// `--manage TEAM`: whether `consumer` may manage `team`, and why.
fn explain_manage(
    policy: &crate::policy::Policy,
    consumer: &str,
    team: &str,
) -> Result<(), Failure> {
    let who = policy.consumers.iter().find(|c| c.name == consumer);
    let why = who.and_then(|c| c.manages(team));
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
    allowed(why.is_some())
}

/// The egress proxy's question: which credential fits `dest`, then the decision on it.
fn explain_destination(
    policy: &crate::policy::Policy,
    consumer: &str,
    dest: &Destination,
) -> Result<(), Failure> {
    let chosen = match policy.credential_for_destination(consumer, dest) {
        Ok(c) => c,
        Err(reason) => {
            println!(
                "{}",
                serde_json::json!({"allowed": false, "reason": reason, "credential": null})
            );
            return Err(Failure::Rejected);
        }
    };
    let (decision, _) = policy.decide_credential(consumer, &chosen.name, Some(dest));
    let mut out = serde_json::to_value(&decision).unwrap_or_default();
    out["credential"] = serde_json::Value::from(chosen.name.as_str());
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    allowed(decision.allowed)
}

/// The policy folder `dir` with the management store's definitions (for a vault store, its
/// local mirror), as `serve` loads them: what the API made is decided and checked like what a
/// file defines.
pub fn load_with_store(
    config: &crate::config::Config,
    dir: &Path,
) -> Result<crate::policy::Policy, crate::policy::PolicyError> {
    let store: Vec<PathBuf> = config
        .store
        .iter()
        .flat_map(|s| crate::store::Kind::ALL.map(|k| s.path.join(k.dir())))
        .filter(|d| d.is_dir())
        .collect();
    crate::policy::load_checked_dirs(
        &[dir.to_owned()],
        &store,
        &crate::policy::KnownSources::of(config),
    )
}
