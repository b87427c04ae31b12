//! Log lines on stderr: the format (`--log-format`) and the `RUST_LOG` filter.

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
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
pub fn unknown_log_word(spec: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
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
