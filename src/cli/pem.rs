//! `keybroker pem repair|inspect`: the PEM engine on one value.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::Failure;

#[derive(Debug, Subcommand)]
pub enum PemCommand {
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

#[derive(Debug, clap::Args)]
pub struct PemArgs {
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

pub fn pem_command(command: PemCommand) -> Result<(), Failure> {
    use crate::pem::{self, Checks, Mode, Options};
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
pub fn read_secret_input(file: Option<&Path>) -> Result<zeroize::Zeroizing<String>, Failure> {
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
