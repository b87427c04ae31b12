//! `keybroker check [--online]`: every stage of the configuration checked in one run.

use std::path::{Path, PathBuf};

use crate::app::{App, Options};
use crate::broker::Broker;
use crate::config::Config;

use super::policy::load_with_store;
use super::{Failure, assembly, load_config, runtime};

pub fn check(path: &Path, online: bool) -> Result<(), Failure> {
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
pub fn check_unparsed(path: &Path, config_problems: String) -> String {
    let mut out = vec![config_problems];
    let policies = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("policies")?.as_str().map(PathBuf::from))
        .map(|p| path.parent().unwrap_or(Path::new(".")).join(p));
    match policies {
        Some(dir) => {
            match crate::policy::load(&dir) {
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

pub fn check_online(config: &Config) -> Result<(), Failure> {
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
