//! A private copy of `examples/dev` for a test: the walkthroughs write into the real one's
//! store (`target/dev-store`) and run `serve --dev` on its port, and no test may depend on
//! what a newcomer's walkthrough left behind, or on a fixed port being free.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A copy of `examples/dev` in a temporary folder, its store inside the copy (empty), its
/// listener on `listen`; returns the folder and its `keybroker.toml`.
pub fn copy(listen: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dev");
    copy_dir(&from, dir.path());
    let config = dir.path().join("keybroker.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text
        .replace("path = \"../../target/dev-store\"", "path = \"store\"")
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"{listen}\""),
        );
    assert_ne!(text, changed, "examples/dev/keybroker.toml changed shape");
    std::fs::write(&config, changed).unwrap();
    (dir, config)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
