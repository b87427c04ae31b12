//! Every input that ever found a bug (`fuzz/regressions/<target>/`) and the named seeds
//! (`fuzz/seeds/<target>/`) replayed through their target's own check, on stable and without
//! the fuzzer: a regression comes back as a failing `cargo test`, not only in a fuzz campaign.

#[path = "../fuzz/checks/client_identity.rs"]
mod client_identity;
#[path = "../fuzz/checks/csr_check.rs"]
mod csr_check;
#[path = "../fuzz/checks/egress_target.rs"]
mod egress_target;
#[path = "../fuzz/checks/json_spans.rs"]
mod json_spans;
#[path = "../fuzz/checks/pem_repair.rs"]
mod pem_repair;
#[path = "../fuzz/checks/source_answer.rs"]
mod source_answer;

use std::path::Path;

/// A target's name and its check.
type Target = (&'static str, fn(&[u8]));

/// The inputs of `target` in `fuzz/<kind>/<target>/`, by file name.
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_regression_and_seed_passes_its_targets_check() {
    let targets: [Target; 6] = [
        ("client_identity", client_identity::check),
        ("csr_check", csr_check::check),
        ("egress_target", egress_target::check),
        ("json_spans", json_spans::check),
        ("pem_repair", pem_repair::check),
        ("source_answer", source_answer::check),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        for kind in ["regressions", "seeds"] {
            for (name, data) in inputs(kind, target) {
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "fuzz/{kind}/{target}/{name} fails its check"
                );
                replayed += 1;
            }
        }
    }
    // The regressions named in fuzz/README.md are all here.
    for (target, name) in [
        ("client_identity", "issue-22-hang"),
        ("egress_target", "numeric-host"),
        ("egress_target", "trailing-dots"),
        ("pem_repair", "cert-before-1970"),
        ("source_answer", "huge-number"),
    ] {
        assert!(
            inputs("regressions", target).iter().any(|(n, _)| n == name),
            "fuzz/regressions/{target}/{name} is missing"
        );
    }
    assert!(replayed >= 20, "{replayed} inputs replayed");
}

/// The seed of a CSR that names nothing (what `keybroker agent` sends with `key = "generate"`)
/// is accepted: the profile's names are signed (docs/PKI.md).
#[test]
fn the_nameless_csr_seed_is_accepted() {
    let (_, data) = inputs("seeds", "csr_check")
        .into_iter()
        .find(|(n, _)| n == "p256-nameless.csr")
        .expect("fuzz/seeds/csr_check/p256-nameless.csr");
    let rules = keybroker::testing::pem::csr::CsrRules {
        key_type: Some("ec"),
        common_name: "gw.payments.example",
        names: &[],
    };
    keybroker::testing::pem::csr::check(std::str::from_utf8(&data).unwrap(), &rules).unwrap();
}
