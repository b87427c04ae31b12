//! The agent's configuration loader on an arbitrary file: never panics.
#![no_main]

use std::sync::OnceLock;

use keybroker::testing::agent::AgentConfig;
use libfuzzer_sys::fuzz_target;

fn file() -> &'static std::path::Path {
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kb-fuzz-agent-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("agent.toml")
    })
}

fuzz_target!(|text: &str| {
    std::fs::write(file(), text).unwrap();
    let _ = AgentConfig::load(file());
});
