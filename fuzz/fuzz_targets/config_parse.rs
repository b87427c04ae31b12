//! The configuration loader on arbitrary text: never panics, and every diagnostic points
//! inside the file.
#![no_main]

use std::path::Path;

use keybroker::testing::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(ConfigError::Invalid(diags)) = Config::parse(text, Path::new("/nonexistent/kb.toml"))
    {
        let lines = text.matches('\n').count() + 1;
        for d in diags {
            assert!(d.line >= 1 && d.line <= lines, "{d}");
            assert!(d.column >= 1, "{d}");
        }
    }
});
