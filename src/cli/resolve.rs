//! `keybroker resolve`: a document expanded through the same broker the server uses.

use std::io::{Read, Write};
use std::path::Path;

use crate::broker::{Ask, Broker, Caller, Document, Expand, ResolveError};
use crate::identity::Door;
use crate::policy::Destination;
use crate::reference::{Format, Layout};

use super::{Failure, load_config};

pub async fn resolve(
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
        Some(name) => match crate::broker::ConsumerRef::of(broker.policy(), &name) {
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
        .read(
            Ask::new(
                &caller,
                Door::Cli,
                Expand {
                    document: Document::Text { format, text },
                    layout,
                },
            )
            .towards(host.as_ref()),
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
            // The class decides the code (crate::exit, the CLI's row of the one table).
            let class = e.failure();
            if let Some(hint) = crate::exit::hint(class) {
                eprintln!("keybroker: {hint}");
            }
            Err(Failure::Code(crate::exit::code(class)))
        }
    }
}

/// The errors of a failed resolution as one JSON object on stderr. Never a value.
pub fn error_json(e: &ResolveError) -> String {
    let mut error = serde_json::json!({ "code": e.code(), "message": e.to_string() });
    if let ResolveError::Unresolved { errors, omitted } = e {
        error["details"] = serde_json::json!(errors);
        error["omitted"] = serde_json::json!(omitted);
    }
    serde_json::json!({ "error": error }).to_string()
}

pub fn read_document(
    file: Option<&Path>,
    format: Option<Format>,
) -> Result<(String, Format), Failure> {
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
