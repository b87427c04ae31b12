//! The policy loader on an arbitrary policy file: never panics, gives the same answer twice,
//! and every diagnostic points inside the file.
#![no_main]

use std::sync::OnceLock;

use keybroker::testing::policy::{PolicyError, load};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kb-fuzz-policy-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn outcome(r: &Result<keybroker::testing::policy::Policy, PolicyError>) -> String {
    match r {
        Ok(p) => format!(
            "ok {} {} {} {}",
            p.teams.len(),
            p.consumers.len(),
            p.credentials.len(),
            p.grants.len()
        ),
        Err(e) => format!("err {e}"),
    }
}

fuzz_target!(|text: &str| {
    let file = dir().join("teams.toml");
    std::fs::write(&file, text).unwrap();
    let first = load(dir());
    if let Err(PolicyError::Invalid(diags)) = &first {
        let lines = text.matches('\n').count() + 1;
        for d in diags {
            assert!(d.line >= 1 && d.line <= lines, "{d}");
            assert!(d.column >= 1, "{d}");
        }
    }
    assert_eq!(outcome(&first), outcome(&load(dir())), "not deterministic");
});
