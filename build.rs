//! Names the commit keybroker was built from (`keybroker version`, `keybroker_build_info`):
//! `$KEYBROKER_COMMIT` when set (an image build without `.git`), else `git rev-parse`, else
//! `unknown`. (No `+dirty` mark: watching the index would rebuild keybroker on every
//! `git add`.)

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KEYBROKER_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{head}");
    }
    let commit = std::env::var("KEYBROKER_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEYBROKER_COMMIT={commit}");
}
